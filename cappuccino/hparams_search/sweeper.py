"""``hydra/sweeper=study``: Hydra's Optuna sweeper, made resumable, exact with a shared storage,
and tracked. It keeps hydra-optuna-sweeper's config, search-space syntax and samplers, and adds:

* ``n_trials`` is the study's total, not the number to add. Re-running a killed command resumes
  the study and stops once ``n_trials`` trials have finished (complete or failed). Running trials
  send heartbeats to the storage; a trial whose heartbeats stopped (its process was killed) is
  failed on the next start and its parameters are queued to run again, so it is neither counted
  nor lost (at most ``MAX_RETRIES`` times: a configuration that kills its process every time ends
  as a failed trial).
* Workers may share one storage (SQLite on one machine, PostgreSQL across machines). Each asks
  for trials as it frees up; a trial asked beyond ``n_trials`` in a race between workers is
  pruned without running; a worker with nothing left to ask waits for the others' running trials,
  so every worker ends on the finished study and reports it.
* With ``logger=mlflow`` the study is one MLflow run with every trial as a child run (and each
  CV split as a grandchild); see ``cappuccino.hparams_search.report`` for what it holds.

Only single-objective studies are supported (``direction: maximize`` or ``minimize``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import math
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from cappuccino.config import HoldoutConfig, TrainConfig, validate
from cappuccino.errors import ConfigError
from cappuccino.evaluation.scoring import objective_key
from cappuccino.runtime import Interrupted, graceful_interrupts, one_line_errors
from cappuccino.hparams_search import OUTPUT_DIR_ATTR, SKIPPED_ATTR, STUDY_RUN_ENV, TRIAL_ENV
from cappuccino.hparams_search.space import check_search_space, drop_invalid_queued_trials
from cappuccino.hparams_search.config import register_sweeper_config
from cappuccino.secrets import mask_url, refuse_passwords

if TYPE_CHECKING:
    import optuna

    from cappuccino.tracking import Tracker

register_sweeper_config()  # Hydra imports this module through the entry point before composing
log = logging.getLogger(__name__)

MAX_RETRIES = 2  # re-runs of a trial whose process was killed
TABLE_CREATION_TRIES = 5  # workers opening a new database at once: the losers try again
# The module SQLAlchemy imports for a storage URL's driver -> the package pip installs it from.
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "MySQLdb": "mysqlclient", "pymysql": "PyMySQL"}


class StudySweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        custom_search_space: str | None,
        params: DictConfig | None,
        heartbeat_interval: int,
        grace_period: int,
        pbo_blocks: int,
        keep_checkpoints: int,
    ) -> None:
        # hydra-optuna-sweeper has no public API for its search-space parsing and trial-to-override
        # conversion, only its whole optimisation loop, which is not resumable: we reuse
        # OptunaSweeperImpl and its helpers (tests/test_sweep.py pins them) and run our own loop.
        from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl  # imports optuna: only when sweeping

        sampler = instantiate(
            sampler, _execution_whitelist_=("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")
        )
        named = (("n_trials", n_trials), ("n_jobs", n_jobs), ("heartbeat_interval", heartbeat_interval), ("keep_checkpoints", keep_checkpoints))
        for name, value in named:
            if value < 1:
                raise ConfigError(f"hydra.sweeper.{name} must be >= 1, got {value}")
        if pbo_blocks < 2 or pbo_blocks % 2:
            raise ConfigError(f"hydra.sweeper.pbo_blocks must be an even number >= 2, got {pbo_blocks}")
        if grace_period <= heartbeat_interval:
            raise ConfigError(
                f"hydra.sweeper.grace_period ({grace_period}) must exceed heartbeat_interval ({heartbeat_interval}) "
                "or live trials would be taken for killed ones"
            )
        if storage is not None and not isinstance(storage, str):
            raise ConfigError(f"hydra.sweeper.storage must be a database URL or null, got {storage!r}")
        refuse_passwords({"storage": storage or ""}, "hydra.sweeper.")  # from a YAML file: before any job's .hydra/
        # Hydra's sweeper parses the search space and turns trials into overrides; the loop is ours.
        self.search = OptunaSweeperImpl(
            sampler, direction, storage, study_name, n_trials, n_jobs, max_failure_rate, custom_search_space, params
        )
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.pbo_blocks = pbo_blocks
        self.keep_checkpoints = keep_checkpoints

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config

    def checker(self, fixed_args: list[str]) -> Callable[[list[str]], None]:
        """Composes the task config with a trial's overrides and validates it, as its job would."""
        loader = self.search.hydra_context.config_loader

        def check(overrides: list[str]) -> None:
            base_config(loader.load_sweep_config(self.config, [*overrides, *fixed_args]))

        return check

    def sweep(self, arguments: list[str]) -> None:
        # The sweep's own errors: one line, before any trial. SIGINT/SIGTERM between jobs or in
        # one (which finishes its PPO update and ends its runs KILLED) end the sweep with 130/143.
        try:
            with graceful_interrupts(), one_line_errors(multirun=False):
                self._sweep(arguments)
        except Interrupted as stop:
            print(
                f"interrupted ({signal.Signals(stop.signum).name}): the study's runs are marked KILLED and "
                "its interrupted trials queued again; run the same command to resume it",
                file=sys.stderr,
            )
            raise SystemExit(stop.exit_code) from None

    def _sweep(self, arguments: list[str]) -> None:
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

        from cappuccino.hparams_search.report import (
            end_killed_trial_runs, finish_study, prune_checkpoints, report_progress, study_params, study_tracker,
        )  # fmt: skip

        search = self.search
        base = base_config(self.config)
        search._process_searchspace_config()
        space, fixed, fixed_overrides = create_params_from_overrides(search._parse_sweeper_params_config() + arguments)
        for name in fixed:
            space.pop(name, None)
        directions = search._get_directions()
        if len(directions) != 1:
            raise ConfigError(f"hydra.sweeper.direction: the study sweeper optimises one objective, got {directions}")
        if isinstance(search.sampler, functools.partial):  # GridSampler: built from the search space
            raise ConfigError(
                "hydra/sweeper/sampler=grid: the study sweeper does not support the grid sampler; use tpe, "
                "random, cmaes, nsgaii or qmc, or Hydra's basic sweeper for a grid (python train.py -m a=1,2 b=3,4)"
            )

        fixed_args = [*(f"{k}={v}" for k, v in fixed.items()), *fixed_overrides]
        check_search_space(self.checker(fixed_args), space)  # a misspelt key or option: before the study exists

        study, storage = open_study(search.storage, search.study_name, search.sampler, directions[0], self.heartbeat_interval, self.grace_period)
        drop_invalid_queued_trials(study, storage, self.checker(fixed_args), space)
        where = mask_url(search.storage) if search.storage else "memory"  # a password shows as ***
        log.info(f"Study {study.study_name!r} in {where}: {search.n_trials} trials in all")
        project_dir = Path.cwd()  # the trials' project folder: where train.py started
        holdout = isinstance(base.cv, HoldoutConfig)
        params = study_params(
            space, directions[0], search.n_trials, objective_key(base.trainer.objective, holdout), search.sampler,
            self.config.hydra.sweeper.sampler.get("seed"),
        )  # fmt: skip
        tracker: Tracker | None = None  # the study's run: started once the worker holding trial 0 is known
        job_index = len(study.trials)  # resumed studies keep numbering their job folders
        killed: list[int] = []  # trials of killed workers, their MLflow runs still to be ended KILLED
        try:
            while True:
                killed += fail_killed_trials(study) if storage is not None else []
                trials = ask(study, storage, search.n_trials, search.n_jobs)
                if not trials:
                    if not wait_for_others(study, self.heartbeat_interval):
                        break
                    continue
                if tracker is None:
                    tracker = study_tracker(base.logger, study, project_dir, any(t.number == 0 for t in trials), params)
                end_killed_trial_runs(tracker, killed)
                killed = []
                overrides = search._configure_trials(trials, space, fixed, fixed_overrides)
                overrides = [[*o, *tracking_overrides(trial, tracker)] for o, trial in zip(overrides, trials)]
                with heartbeats(storage, trials, self.heartbeat_interval), requeued_if_interrupted(study, trials):
                    returns = search.launcher.launch(overrides, initial_job_idx=job_index)
                job_index += len(returns)
                failures = [tell(study, trial, result) for trial, result in zip(trials, returns)]
                report_progress(study, tracker, search.n_trials, params["study.objective"])
                prune_checkpoints(study, tracker, self.keep_checkpoints)
                check_failure_rate([f for f in failures if f is not None], returns, search.max_failure_rate)
            tracker = tracker or study_tracker(base.logger, study, project_dir, True, params)
            end_killed_trial_runs(tracker, killed)
            finish_study(
                study, tracker, Path(self.config.hydra.sweep.dir), search.n_trials, self.pbo_blocks, params["study.objective"],
                register_as=getattr(base.logger, "register_as", None),
            )  # fmt: skip
        except BaseException as error:
            if tracker is not None:
                tracker.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
            raise
        tracker.close()


def open_study(
    url: str | None, name: str | None, sampler: Any, direction: str, heartbeat_interval: int, grace_period: int
) -> tuple[optuna.Study, optuna.storages.RDBStorage | None]:
    """Load or create the study; with a database, heartbeats on and killed trials queued again."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from cappuccino.sqlite_lock import opening_lock

    storage = None
    if url is None:
        log.warning("hydra.sweeper.storage is null: the study lives in memory and cannot be resumed")
    else:
        with warnings.catch_warnings(), opening_lock(url):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in practice
            storage = rdb_storage(
                url,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
            )
            study = optuna.create_study(
                study_name=name, storage=storage, sampler=sampler, direction=direction, load_if_exists=True
            )
        return study, storage
    return optuna.create_study(study_name=name, sampler=sampler, direction=direction), storage


def rdb_storage(url: str, **options: Any) -> optuna.storages.RDBStorage:
    """Optuna's storage at ``url``, its tables created if the database has none.

    Workers started at once on a new database race to create the tables; the loser's CREATE
    fails (PostgreSQL: duplicate key value violates unique constraint "pg_type_typname_nsp_index")
    and its transaction is rolled back, so it tries again and finds them. A missing driver is
    named with the package that provides it.
    """
    from optuna.storages import RDBStorage
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    attempt = 0
    while True:
        try:
            return RDBStorage(url, **options)
        except ImportError as error:
            raise ConfigError(missing_driver(url, error)) from error
        except (IntegrityError, ProgrammingError) as error:
            attempt += 1
            if attempt == TABLE_CREATION_TRIES:
                raise
            log.info(f"Creating the study's tables collided with another worker's ({type(error).__name__}); trying again")
            time.sleep(random.uniform(0.1, 0.3) * attempt)  # apart, so that one finishes first


def missing_driver(url: str, error: ImportError) -> str:
    """What to install when SQLAlchemy cannot import the driver of ``url``."""
    cause = error.__cause__ if isinstance(error.__cause__, ImportError) else error
    module = (cause.name or "").partition(".")[0]
    package = DRIVER_PACKAGES.get(module, module or "the database driver")
    return (
        f"hydra.sweeper.storage: the database driver for {mask_url(url)} is not installed "
        f"({cause}); pip install {package}"
    )


def counted(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards ``n_trials``: finished or running, except those whose process was
    killed (queued again) and those pruned unrun because the study was already full."""
    from optuna.trial import TrialState

    interrupted = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
    return [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING)
        and t.number not in interrupted
        and not t.user_attrs.get(SKIPPED_ATTR)
    ]


def ask(study: optuna.Study, storage: Any, n_trials: int, n_jobs: int) -> list[optuna.Trial]:
    """Up to ``n_jobs`` new trials, none beyond the study's ``n_trials``.

    A trial that a concurrent worker's ask made surplus is pruned unrun: trial numbers are given
    out by the storage in order, so counting the trials numbered below ours decides it the same
    way in every worker. Trials of killed processes are failed first (``fail_killed_trials``).
    """
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        free = n_trials - len(counted(study.get_trials(deepcopy=False)))
        trials = [study.ask() for _ in range(max(0, min(n_jobs, free)))]
    if storage is not None:
        for trial in trials:
            storage.record_heartbeat(trial._trial_id)  # at once: a trial without heartbeats never goes stale
    # Every trial numbered below ours exists once our asks returned: one read of the study serves all.
    taken = [t.number for t in counted(study.get_trials(deepcopy=False))] if trials else []
    kept = []
    for trial in trials:
        if sum(number < trial.number for number in taken) >= n_trials:
            trial.set_user_attr(SKIPPED_ATTR, True)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            kept.append(trial)
    return kept


def fail_killed_trials(study: optuna.Study) -> list[int]:
    """Fail (and queue again) the trials of killed processes, whose heartbeats stopped more than
    the grace period ago; their numbers."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for Study.optimize: here they come from heartbeats().
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        warnings.simplefilter("ignore", ExperimentalWarning)
        fail_stale_trials(study)
    return sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in running)


def wait_for_others(study: optuna.Study, interval: int) -> bool:
    """Whether trials are still running elsewhere (after sleeping ``interval`` seconds)."""
    from optuna.trial import TrialState

    running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    if not running:
        return False
    log.info(f"Waiting for trials {running}, running in other workers (or killed: then failed after the grace period)")
    time.sleep(interval)
    return True


@contextmanager
def heartbeats(storage: Any, trials: Sequence[optuna.Trial], interval: int) -> Iterator[None]:
    """Record the trials' heartbeats every ``interval`` seconds while they run (in this process
    with the basic launcher, in worker processes with joblib: either way this process lives)."""
    if storage is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for trial in trials:
                storage.record_heartbeat(trial._trial_id)

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def requeued_if_interrupted(study: optuna.Study, trials: Sequence[optuna.Trial]) -> Iterator[None]:
    """A stop request (``Interrupted``) while ``trials`` run fails those still running and queues
    their parameters again, as the heartbeat would after the grace period: a resumed study runs
    them next, at once."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    try:
        yield
    except Interrupted:
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
        for trial in trials:
            if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
                study.tell(trial, state=TrialState.FAIL)
                retry(study, study._storage.get_trial(trial._trial_id))
                log.info(f"Trial {trial.number} was interrupted: failed, and its parameters queued again")
        raise


def tracking_overrides(trial: optuna.Trial, tracker: Tracker) -> list[str]:
    """Tell the job its trial number and the study's MLflow run, as environment variables, so they
    stay out of the trial's config (and of the best trial's ready-to-run config)."""
    overrides = [f"++hydra.job.env_set.{TRIAL_ENV}='{trial.number}'"]
    if tracker.run_id is not None:
        overrides.append(f"++hydra.job.env_set.{STUDY_RUN_ENV}={tracker.run_id}")
    return overrides


def tell(study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> BaseException | None:
    """Record the job's objective (or its failure) and, for reports, what its metrics.json holds."""
    from optuna.trial import TrialState

    try:
        value = float(result.return_value)  # re-raises the job's exception
        if not math.isfinite(value):
            raise ValueError(f"the objective is {value}")
    except Exception as error:  # noqa: BLE001 - any failing trial is recorded and the study goes on
        log.warning(f"Trial {trial.number} failed: {error}")
        study.tell(trial, state=TrialState.FAIL)
        return error
    for key, attr in trial_results(result).items():
        trial.set_user_attr(key, attr)
    study.tell(trial, value)
    return None


def trial_results(result: JobReturn) -> dict[str, Any]:
    """The job's output folder and, from its result, the per-split excess Sharpe ratios and the
    moments of its out-of-sample returns: what the overfitting statistics need."""
    from cappuccino.evaluation.results import RESULT_FILE, CVResult, load_result

    output_dir = Path(result.hydra_cfg.hydra.runtime.output_dir)
    out: dict[str, Any] = {OUTPUT_DIR_ATTR: str(output_dir)}
    result_file = output_dir / RESULT_FILE
    if not result_file.is_file():
        return out
    scores = load_result(result_file)
    if isinstance(scores, CVResult):
        out["split_excess_sharpe"] = scores.split_excess_sharpes()
        out.update(dataclasses.asdict(scores.moments))
    return out


def base_config(config: DictConfig) -> TrainConfig:
    """The typed config of a sweep before its trials' overrides (``config`` holds ``hydra``):
    a sweep whose every trial would fail on a bad config fails here, before any work."""
    task = copy.deepcopy(config)  # keeps the structured type that validate builds on
    with open_dict(task):
        del task["hydra"]
    return validate(task)


def check_failure_rate(failures: list[BaseException], returns: Sequence[JobReturn], max_rate: float) -> None:
    if failures and len(failures) / len(returns) > max_rate:
        raise RuntimeError(
            f"{len(failures)} of {len(returns)} trials in a batch failed, more than "
            f"hydra.sweeper.max_failure_rate={max_rate}; the first error: {failures[0]!r}"
        ) from failures[0]

