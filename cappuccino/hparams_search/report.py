"""What a study leaves behind, in its sweep folder and on its MLflow run.

The study's MLflow run (``study <name>``; every trial a child run, every CV split a grandchild)
holds the best value so far (metric ``objective``, the name every trial's run logs it under;
step = complete trials), its trial's run tagged ``best=true``, the design (params ``study.*``:
objective, direction, target trials, sampler and seed; ``search.*``: the search space), the best parameters (tags
``best.<key>``; tags, because a resumed study's best changes), the best trial's run id and page
(tags ``best.run_id``, ``best.run_url``: its ``policy`` model holds its checkpoints), a Markdown
description kept up to date (``study_description``), and the files below. With
``logger.register_as=NAME`` the best trial's policy model is registered as ``models:/NAME/<version>``.
Its id is kept in the study (user attribute ``mlflow_run_id``), so a resumed study, or another
worker on the same storage, logs into the same run.

Files, written to the sweep folder and logged to that run:

* ``optimization_results.yaml``: best parameters and value, as hydra-optuna-sweeper writes it;
* ``best_trial.yaml``: the best trial's whole config, ready to run:
  ``python train.py --config-dir <sweep folder> --config-name best_trial``;
* ``optimization_history.png`` and ``param_importances.png``: Optuna's plots (importances by
  PED-ANOVA, which needs no scikit-learn);
* ``overfitting.json``: the probability of backtest overfitting (CSCV over ``pbo_blocks`` disjoint
  blocks of time of the complete trials' out-of-sample excess returns per bar; see
  ``overfitting``) and the deflated Sharpe ratio of the best trial (per-bar Sharpe of its
  out-of-sample returns against the expected maximum of all trials'), each with what its rows,
  blocks and inputs were; and the minimum track record length of the best trial (bars of paper
  trading before its Sharpe would be significant at 95 %, above 0 and above the expected
  maximum of the trials'); also logged as metrics and printed.
"""

from __future__ import annotations

import json
import math
import logging
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import OmegaConf
from rich.table import Table

from cappuccino.config import LoggerConfig
from cappuccino.evaluation.overfitting import (
    deflated_sharpe_ratio,
    expected_maximum_sharpe,
    minimum_track_record_length,
    probability_of_backtest_overfitting,
)
from cappuccino.evaluation.results import OOS_RETURNS_FILE
from cappuccino.hparams_search import OUTPUT_DIR_ATTR
from cappuccino.progress import console, print_line
from cappuccino.secrets import mask_text, mask_url
from cappuccino.tracking import MAX_TAG_VALUE_LENGTH, STUDY_TAG, TRIAL_TAG, Tracker, build_tracker, truncate

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
RUN_ATTR = "mlflow_run_id"


def study_tracker(
    cfg: LoggerConfig, study: optuna.Study, project_dir: Path, creator: bool, params: Mapping[str, Any] = {}
) -> Tracker:
    """The study's MLflow run: reopened when the study names one, else started by the ``creator``.

    Workers sharing a storage must agree on one run, and storages offer no compare-and-set: the
    worker that asked trial 0 (trial numbers are unique) is the ``creator``; the others wait until
    the study names the run. Starting it before any trial also creates a new SQLite store once,
    before parallel jobs would race to create it.
    """
    if cfg.name == "none":
        return build_tracker(cfg, "", project_dir)
    name = f"study {study.study_name}"
    while (run_id := study.user_attrs.get(RUN_ATTR)) is None and not (creator or first_trial_ended(study)):
        time.sleep(0.5)
    if run_id is not None:
        try:
            return build_tracker(cfg, name, project_dir, run_id=run_id)
        except Exception as error:  # noqa: BLE001 - e.g. the study moved to another tracking store
            log.warning(f"The study's MLflow run {run_id} cannot be reopened ({mask_text(str(error))}); starting a new one")
    tracker = build_tracker(cfg, name, project_dir)
    tracker.set_tags({STUDY_TAG: study.study_name})
    tracker.log_params(params)  # once, by the run's creator: params are write-once
    study.set_user_attr(RUN_ATTR, tracker.run_id)
    return tracker


def study_params(
    space: Mapping[str, Any], direction: str, n_trials: int, objective: str, sampler: Any, sampler_seed: Any
) -> dict[str, str]:
    """What the study run shows of its design: the search space, the sampler and its seed, the
    direction, the target number of trials and the objective every trial returns."""
    return {
        "study.objective": objective, "study.direction": direction, "study.n_trials": str(n_trials),
        "study.sampler": type(sampler).__name__, "study.sampler_seed": str(sampler_seed),
        **{f"search.{key}": str(distribution) for key, distribution in space.items()},
    }  # fmt: skip


def report_progress(
    study: optuna.Study, tracker: Tracker, n_trials: int, objective: str, stats: Mapping[str, Any] | None = None, rerun: str | None = None
) -> None:
    """After each batch of trials: the best value so far as ``objective`` (step = complete
    trials), the trial counts, the ``best=true`` tag on the best trial's run alone, and the
    study run's description (``study_description``; ``stats`` and ``rerun`` once it finished)."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    if not complete:
        return
    best = study.best_trial
    tracker.log_metrics({"objective": best.value, "trials_complete": len(complete), "trials_failed": len(failed)}, step=len(complete))
    mark_best_trial(tracker, best.number)
    best_run = trial_run_id(tracker, best.number)
    best_url = tracker.url_of(best_run) if best_run else None
    progress = StudyProgress(study.study_name, len(complete), len(failed), n_trials, objective, study.direction.name.lower())
    tags = {"best.trial": str(best.number), **{f"best.{k}": _shown(v) for k, v in best.params.items()}}
    tags |= {"best.run_id": best_run} if best_run else {}
    tags |= {"best.run_url": best_url} if best_url else {}
    description = study_description(progress, best, best_url, stats, rerun)
    tracker.set_tags({**tags, "mlflow.note.content": truncate(description, MAX_TAG_VALUE_LENGTH)})


@dataclass(frozen=True)
class StudyProgress:
    name: str
    complete: int
    failed: int
    n_trials: int
    objective: str
    direction: str  # "maximize" or "minimize"


def study_description(
    progress: StudyProgress,
    best: optuna.trial.FrozenTrial,
    best_url: str | None,
    stats: Mapping[str, Any] | None = None,
    rerun: str | None = None,
) -> str:
    """The study run's Markdown description (the UI renders it on the run's page): progress, the
    best trial with its value, parameters and a link to its run, then, once the study finished,
    its overfitting statistics and the command that re-runs the best trial. Values are rounded
    for display (4 significant digits); the metrics and params keep full precision."""
    state = "finished" if stats is not None else "running"
    trial = f"[trial {best.number}]({best_url})" if best_url else f"trial {best.number}"
    lines = [
        f"**Study `{progress.name}`** ({state}): {progress.complete} of {progress.n_trials} trials complete, "
        f"{progress.failed} failed; objective `{progress.objective}`, {progress.direction}d.",
        "",
        f"**Best: {trial}**, objective {best.value:.4g}.",
        "",
        "| parameter | value |",
        "|---|---|",
        *(f"| `{key}` | {_shown(value)} |" for key, value in best.params.items()),
    ]
    if stats is not None:
        shown = {key: "n/a" if stats.get(key) is None else f"{stats[key]:.3f}" for key in ("pbo", "deflated_sharpe")}
        lines += ["", f"Probability of backtest overfitting: {shown['pbo']}; deflated Sharpe ratio of the best trial: {shown['deflated_sharpe']}."]
        if (bars := stats.get("min_track_record_bars")) is not None:
            proof = "never (its Sharpe is not above 0)" if bars == float("inf") else f"{bars:,.0f} bars"
            lines += [f"Minimum track record length (95 %, its skewness and kurtosis): {proof} of paper trading before the best trial's Sharpe is significant."]
    if rerun is not None:
        lines += ["", "Run the best trial again:", "", "```bash", rerun, "```"]
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


PRUNED_ARTIFACTS = ("checkpoint", "policy")  # artifact names starting with these are a trial's agents


def prune_checkpoints(study: optuna.Study, tracker: Tracker, keep: int) -> None:
    """Delete the agents of complete trials outside the best ``keep``: the ``checkpoint*.pt``
    files of their folders and their runs' checkpoint and policy-model artifacts (split runs
    included). A trial's rank only falls as trials complete, so none ever needs them back; it
    is idempotent, and what it removed is logged once per trial (tag ``checkpoints=deleted``)."""
    from cappuccino.hparams_search.best import ranked_complete_trials

    for trial in ranked_complete_trials(study)[keep:]:
        folder = trial.user_attrs.get(OUTPUT_DIR_ATTR)
        for file in Path(folder).glob("checkpoint*.pt") if folder else ():
            file.unlink()
        run_id = trial_run_id(tracker, trial.number)
        try:
            if run_id is not None and delete_agent_artifacts(tracker, run_id):
                log.info(f"Trial {trial.number} is not among the best {keep}: its checkpoints and policy models are deleted")
        except Exception as error:  # noqa: BLE001 - disk left in use is no reason to stop a study
            log.warning(f"Trial {trial.number}'s MLflow artifacts could not be deleted ({mask_text(str(error))}); the study goes on")


def delete_agent_artifacts(tracker: Tracker, run_id: str) -> bool:
    """Delete run ``run_id``'s and its child runs' checkpoint and policy artifacts; whether any were there."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client = tracker.client  # type: ignore[attr-defined]
    trial_run = client.get_run(run_id)
    if trial_run.data.tags.get("checkpoints") == "deleted":
        return False
    children = client.search_runs([tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")  # type: ignore[attr-defined]
    for run in [trial_run, *children]:
        # The client's store: an mlflow-artifacts:/ location resolves against its tracking server.
        repository = get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri)
        for artifact in client.list_artifacts(run.info.run_id):
            if artifact.path.startswith(PRUNED_ARTIFACTS):
                repository.delete_artifacts(artifact.path)
    client.set_tag(run_id, "checkpoints", "deleted")
    return True


def mark_best_trial(tracker: Tracker, number: int) -> None:
    """Tag trial ``number``'s run ``best=true`` and any other trial run of the study ``best=false``."""
    client = getattr(tracker, "client", None)
    if client is None or tracker.run_id is None:
        return
    best_run = trial_run_id(tracker, number)
    # Every trial run, not only the previous best: a trial that was never the best is tagged too,
    # so the UI's filter tags.best = 'false' finds it.
    query = f"tags.`mlflow.parentRunId` = '{tracker.run_id}'"
    for run in client.search_runs([tracker.experiment_id], filter_string=query):
        if run.info.run_id != best_run and run.data.tags.get("best") != "false":
            client.set_tag(run.info.run_id, "best", "false")
    if best_run is not None:
        client.set_tag(best_run, "best", "true")


def first_trial_ended(study: optuna.Study) -> bool:
    """Trial 0 ended without naming the study's run: its worker died first; anyone may create it."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return bool(trials) and trials[0].state not in (TrialState.RUNNING, TrialState.WAITING)


def finish_study(
    study: optuna.Study,
    tracker: Tracker,
    sweep_dir: Path,
    n_trials: int,
    pbo_blocks: int,
    objective: str = "objective",
    register_as: str | None = None,
) -> None:
    """Write and log the study's results; print the best trial and the overfitting statistics.
    With ``register_as``, the best trial's policy model becomes a version of that registered model."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    if not complete:
        raise RuntimeError(
            f"no trial of study {study.study_name!r} completed ({len(failed)} failed): read the "
            f"trials' logs under {sweep_dir}"
        )
    best = study.best_trial
    sweep_dir.mkdir(parents=True, exist_ok=True)
    results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
    files = [save_yaml(results, sweep_dir / "optimization_results.yaml")]
    best_config = write_best_config(best, sweep_dir)
    files += [best_config] if best_config else []
    files += plot_study(study, sweep_dir, objective)
    stats = overfitting(complete, best, pbo_blocks)
    files.append(sweep_dir / "overfitting.json")
    files[-1].write_text(json.dumps(stats, indent=2))

    best_run = trial_run_id(tracker, best.number)
    rerun = f"python train.py --config-dir {best_config.parent} --config-name best_trial" if best_config else None
    report_progress(study, tracker, n_trials, objective, stats, rerun)
    tracker.log_metrics(numbers(stats), step=len(complete))
    for file in files:
        tracker.log_artifact(file)
    registered = None
    if register_as is not None and best_run is not None:
        registered = tracker.register_policy(best_run, register_as)
        if registered is not None:
            tracker.set_tags({"best.registered_model": registered})
    print_study(study.study_name, best, best_run, stats, len(complete), len(failed), n_trials, rerun, registered, tracker)


def write_best_config(best: optuna.trial.FrozenTrial, sweep_dir: Path) -> Path | None:
    """``best_trial.yaml``: the trial's resolved config under a defaults list with its group
    choices, so Hydra types and checks it exactly as it did for the trial."""
    output_dir = Path(best.user_attrs.get(OUTPUT_DIR_ATTR, ""))
    config_file, hydra_file = output_dir / "config.yaml", output_dir / ".hydra" / "hydra.yaml"
    if not (config_file.is_file() and hydra_file.is_file()):
        log.warning(f"Trial {best.number} ran elsewhere ({output_dir}): its config is the config.yaml artifact of its run")
        return None
    choices = OmegaConf.load(hydra_file).hydra.runtime.choices
    groups = [{g: c} for g, c in choices.items() if not g.startswith(("hydra", "schema", "hparams_search")) and c is not None]
    config = OmegaConf.load(config_file)
    header = OmegaConf.create({"defaults": ["train_schema", *groups, "_self_"], "hydra": {"job": {"chdir": False}}})
    return save_yaml(OmegaConf.merge(header, config), sweep_dir / "best_trial.yaml")


def plot_study(study: optuna.Study, sweep_dir: Path, objective: str = "objective") -> list[Path]:
    """Optimisation history (the ``objective``'s name on the y-axis, whole trial numbers on the
    x-axis) and parameter importances as PNGs (importances need two complete trials and a varied
    parameter; skipped with a log line otherwise)."""
    import optuna
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as optuna_plots

    from cappuccino.reporting.figures import close_figure

    def history() -> Any:
        axes = optuna_plots.plot_optimization_history(study, target_name=objective)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(f"optimisation history of study {study.study_name}: {objective} per trial and best so far")
        return axes

    plots = {
        "optimization_history.png": history,
        "param_importances.png": lambda: optuna_plots.plot_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
        ),
    }
    files = []
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot()
        except (ValueError, RuntimeError) as error:
            log.info(f"No {name}: {error}")
            continue
        figure = axes.figure
        figure.savefig(sweep_dir / name, dpi=110, bbox_inches="tight")
        close_figure(figure)
        files.append(sweep_dir / name)
    return files


PBO_PERFORMANCE = (
    "per-bar simple return of the agent minus that of equal-weight buy-and-hold, one out-of-sample "
    "history per trial (oos_returns.npy): at each bar the mean over CPCV's backtest paths, each of which "
    "tests every group once; for walk-forward, the test windows in order"
)
DSR_INPUTS = (
    "the best trial's per-bar Sharpe, number of bars, skewness and kurtosis of one out-of-sample history "
    "(CPCV: averaged over the paths), against the expected maximum Sharpe of n_trials trials with the "
    "variance of the complete trials' per-bar Sharpes"
)


def overfitting(complete: list[optuna.trial.FrozenTrial], best: optuna.trial.FrozenTrial, blocks: int) -> dict[str, Any]:
    """The probability of backtest overfitting and the best trial's deflated Sharpe ratio.

    PBO is CSCV (``probability_of_backtest_overfitting``) over disjoint periods: a (bars, trials)
    matrix of the trials' out-of-sample excess returns, cut into ``blocks`` contiguous blocks of
    time, so the in-sample and out-of-sample halves never share a bar. (Per-split CPCV scores
    cannot be rows: every test group is in several splits, and both halves would hold it.)
    A statistic that its inputs cannot give is reported as null with the reason.
    """
    out: dict[str, Any] = {"n_trials": len(complete)}
    histories = [np.load(file) for t in complete if (file := Path(t.user_attrs.get(OUTPUT_DIR_ATTR, "")) / OOS_RETURNS_FILE).is_file()]
    if histories:  # trials of one cv scheme on the same bars: the usual length (a resumed study could mix)
        n_bars = Counter(len(h) for h in histories).most_common(1)[0][0]
        histories = [h for h in histories if len(h) == n_bars]
    try:
        result = probability_of_backtest_overfitting(np.stack(histories, axis=1), blocks)
        out.update({"pbo": result.pbo, "pbo_blocks": blocks, "pbo_bars": n_bars, "pbo_trials": len(histories)})
        out["pbo_performance"] = PBO_PERFORMANCE
    except ValueError as error:
        out.update({"pbo": None, "pbo_reason": f"needs cv=cpcv or walk_forward and two complete trials: {error}"})
    sharpes = [t.user_attrs["sharpe_per_period"] for t in complete if "sharpe_per_period" in t.user_attrs]
    attrs = best.user_attrs
    try:
        out["deflated_sharpe"] = deflated_sharpe_ratio(
            attrs["sharpe_per_period"], int(attrs["n_periods"]), attrs["skewness"], attrs["kurtosis"], sharpes
        )
        out.update({"best_sharpe_per_period": attrs["sharpe_per_period"], "deflated_sharpe_trials": len(sharpes)})
        out["deflated_sharpe_inputs"] = DSR_INPUTS
        # The bars of paper trading after which the best trial's Sharpe, if it held, would be
        # significant at 95 %: above 0, and above what the best of this many trials reaches by luck.
        moments = (attrs["sharpe_per_period"], attrs["skewness"], attrs["kurtosis"])
        out["min_track_record_bars"] = minimum_track_record_length(*moments)
        out["min_track_record_bars_deflated"] = minimum_track_record_length(*moments, benchmark=expected_maximum_sharpe(sharpes))
    except (KeyError, ValueError) as error:
        out.update({"deflated_sharpe": None, "deflated_sharpe_reason": f"needs two trials with cv/ metrics: {error!r}"})
    return out


def trial_run_id(tracker: Tracker, number: int) -> str | None:
    """MLflow run id of trial ``number`` of the study run ``tracker`` (None without MLflow)."""
    client = getattr(tracker, "client", None)
    if client is None or tracker.run_id is None:
        return None
    query = f"tags.`mlflow.parentRunId` = '{tracker.run_id}' and tags.`{TRIAL_TAG}` = '{number}'"
    runs = client.search_runs([tracker.experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def end_killed_trial_runs(tracker: Tracker, numbers: Sequence[int]) -> None:
    """End the MLflow runs of trials whose worker was killed (its heartbeats stopped), and the
    split runs under them, as KILLED: nothing else would close them."""
    client = getattr(tracker, "client", None)
    for number in numbers if client is not None else ():
        run_id = trial_run_id(tracker, number)
        if run_id is None:
            continue  # killed before its run started
        splits = client.search_runs([tracker.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
        for run in [*splits, client.get_run(run_id)]:
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "KILLED")
        log.info(f"Trial {number}'s worker was killed: its MLflow run {run_id} is ended as KILLED")


def numbers(stats: dict[str, Any]) -> dict[str, float]:
    """The finite numbers among ``stats`` (an infinite track record length is not a metric)."""
    return {k: float(v) for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def save_yaml(content: Any, path: Path) -> Path:
    OmegaConf.save(OmegaConf.create(content) if not OmegaConf.is_config(content) else content, path)
    return path


def print_study(
    name: str,
    best: optuna.trial.FrozenTrial,
    best_run: str | None,
    stats: dict[str, Any],
    n_complete: int,
    n_failed: int,
    n_trials: int,
    rerun: str | None,
    registered: str | None,
    tracker: Tracker,
) -> None:
    table = Table(title=f"study {name}: {n_complete} complete, {n_failed} failed (n_trials={n_trials})")
    table.add_column("best trial", justify="left")
    table.add_column(str(best.number), justify="right")
    table.add_row("objective", f"{best.value:.4f}")
    for key, value in best.params.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    for key, label in (("pbo", "probability of backtest overfitting"), ("deflated_sharpe", "deflated Sharpe ratio")):
        value = stats.get(key)
        table.add_row(label, "n/a" if value is None else f"{value:.3f}")
    for key, label in (("min_track_record_bars", "bars of paper trading to prove Sharpe > 0"), ("min_track_record_bars_deflated", "... > the best of N by luck")):
        value = stats.get(key)
        table.add_row(label, "n/a" if value is None else "never" if value == float("inf") else f"{value:,.0f}")
    console.print(table)
    lines = []
    if rerun is not None:
        lines.append(f"run the best trial again: {rerun}")
    if best_run is not None:
        lines.append(f"best trial's MLflow run (its policy model: runs:/{best_run}/policy): {best_run}")
    if registered is not None:
        lines.append(f"registered as {registered} (mlflow.pyfunc.load_model, trade.py)")
    if tracker.ui_command:
        lines.append(f"browse the study: {mask_url(tracker.ui_command)}")
    if tracker.run_url and tracker.run_url != tracker.ui_command:
        lines.append(f"the study's run: {mask_url(tracker.run_url)}")
    for line in lines:
        print_line(line)
