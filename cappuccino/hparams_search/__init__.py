"""Hyperparameter search (``hparams_search=...``): Hydra's Optuna sweeper made resumable, exact
with a shared storage, and tracked as one MLflow run per study (``hydra/sweeper=study``).

The trial side needs only the environment variables below, set per job by the sweeper through
``hydra.job.env_set``, so importing this package costs nothing.
"""

STUDY_RUN_ENV = "CAPPUCCINO_STUDY_RUN_ID"  # MLflow run of the study: trials nest under it
TRIAL_ENV = "CAPPUCCINO_TRIAL_NUMBER"  # Optuna trial number of the job
