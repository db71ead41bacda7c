"""A study's best trials as files: the run folders an ensemble of its top models is built from.

``PolicyEnsemble.from_folders(best_trial_folders("ppo_mlp", "sqlite:///optuna.db", top_k=3))``
trades the per-split models of the three best complete trials.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from cappuccino.errors import ConfigError
from cappuccino.hparams_search import OUTPUT_DIR_ATTR
from cappuccino.secrets import mask_text, mask_url, url_secrets


def best_trial_folders(study_name: str, storage: str, top_k: int = 1) -> list[Path]:
    """The run folders of the study's ``top_k`` best complete trials, best first.

    Raises:
        ConfigError: the study cannot be opened (the message shows ``storage`` masked), it has no
            complete trial, or ``top_k`` is below 1.
        FileNotFoundError: a chosen trial recorded no folder (it ran with another sweeper).
    """
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    failure = None
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception as error:  # noqa: BLE001 - whatever the storage raised, shown masked
        reason = mask_text(f"{type(error).__name__}: {error}", url_secrets(storage))
        failure = f"cannot open study {study_name!r} in {mask_url(storage)}: {reason}"
    if failure is not None:  # raised outside the except block: no traceback chains the unmasked original
        raise ConfigError(failure)
    best = ranked_complete_trials(study)[:top_k]
    if not best:
        raise ConfigError(f"study {study_name!r} has no complete trial yet")
    missing = [t.number for t in best if OUTPUT_DIR_ATTR not in t.user_attrs]
    if missing:
        raise FileNotFoundError(f"trials {missing} of study {study_name!r} recorded no output folder")
    return [Path(t.user_attrs[OUTPUT_DIR_ATTR]) for t in best]


def ranked_complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's complete trials, best first in its direction."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(trials, key=lambda t: t.value, reverse=maximize)


__all__ = ["best_trial_folders", "ranked_complete_trials"]
