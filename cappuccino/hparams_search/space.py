"""The search space checked against the schema: before a study is created, and when a resumed
study holds queued trials."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cappuccino.errors import ConfigError
from cappuccino.hparams_search import SKIPPED_ATTR

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def check_search_space(check: Callable[[list[str]], None], space: dict[str, Any]) -> None:
    """Compose and validate the config at every choice and at both ends of every range of the
    search space, so a misspelt key (``agent.lrr``), a missing option (``encoder=ft_smal``) or
    an out-of-range bound fails before the study is created or touched."""
    from optuna.distributions import CategoricalDistribution

    for name, distribution in space.items():
        values = distribution.choices if isinstance(distribution, CategoricalDistribution) else (distribution.low, distribution.high)
        for value in values:
            try:
                check([f"{name}={value}"])
            except Exception as error:  # noqa: BLE001 - Hydra's composition errors and ours alike
                raise ConfigError(f"the sweep's {name}={value} cannot run: {error}") from None


def drop_invalid_queued_trials(
    study: optuna.Study, storage: Any, check: Callable[[list[str]], None], space: dict[str, Any]
) -> None:
    """A resumed study's queued trials (killed ones, re-queued by the heartbeat) whose parameters
    the current search space or schema rejects are failed, not run again, with a way out."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        params = trial.system_attrs.get("fixed_params", {})
        unknown = sorted(set(params) - set(space))
        try:
            if unknown:
                raise ConfigError(f"{unknown} are not searched any more")
            check([f"{k}={v}" for k, v in params.items()])
        except Exception as error:  # noqa: BLE001
            study._storage.set_trial_user_attr(trial._trial_id, SKIPPED_ATTR, True)  # not counted: it never ran
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            log.warning(
                f"Trial {trial.number} was queued to run again with {params}, which this sweep cannot run ({error}); "
                f"it is failed instead. To start the study over, use another hydra.sweeper.study_name or delete it: "
                f"optuna delete-study --study-name {study.study_name} --storage <hydra.sweeper.storage>"
            )
