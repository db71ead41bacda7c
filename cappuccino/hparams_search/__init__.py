"""Hyperparameter search (``hparams_search=...``): Hydra's Optuna sweeper made resumable, exact
with a shared storage, and tracked as one MLflow run per study (``hydra/sweeper=study``).

The trial side needs only the environment variables below, set per job by the sweeper through
``hydra.job.env_set`` and read by :func:`trial_context`, so importing this package costs nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

STUDY_RUN_ENV = "CAPPUCCINO_STUDY_RUN_ID"  # MLflow run of the study: trials nest under it
TRIAL_ENV = "CAPPUCCINO_TRIAL_NUMBER"  # Optuna trial number of the job
SKIPPED_ATTR = "skipped"  # user attribute of a trial never run: the study was full, or its parameters invalid
OUTPUT_DIR_ATTR = "output_dir"  # user attribute: the trial's run folder (checkpoints, result.json)


@dataclass(frozen=True)
class TrialContext:
    parent_run_id: str | None  # the study's MLflow run, which the job's run nests under
    number: int | None  # the Optuna trial number; None outside a sweep


def trial_context() -> TrialContext:
    """What the study sweeper told this job (nothing outside a sweep)."""
    trial = os.environ.get(TRIAL_ENV)
    return TrialContext(os.environ.get(STUDY_RUN_ENV) or None, int(trial) if trial else None)
