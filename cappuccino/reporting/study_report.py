"""The report of a hyperparameter study: its best trial, and how far to trust it.

Read from MLflow only: the study's run (tag ``optuna.study``; the design in params ``study.*`` and
``search.*``, the best trial in tags ``best.*``, the overfitting statistics as metrics and in
``overfitting.json``, Optuna's figures) and its trial runs (nested under it, tag ``optuna.trial``).
Written to a folder and logged to the study's run under ``report/``:

- ``report.md``: the best trial and its parameters; the probability of backtest overfitting, the
  deflated Sharpe ratio of the best trial and its minimum track record length, each with what it
  means; the parameter importances and the optimisation history;
- ``trials.csv``: every trial's number, state, objective, cross-validation scores and parameters;
- ``slices.png``: the objective against each searched parameter, the best trial marked;
- ``param_importances.png``, ``optimization_history.png``: the sweep's own (Optuna's plots).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from cappuccino.errors import UserError
from cappuccino.evaluation.metrics import periods_per_year
from cappuccino.reporting.figures import close_figure
from cappuccino.tracking import STUDY_TAG, TRIAL_TAG
from cappuccino.tracking.mlflow_tracker import child_runs

OVERFITTING_FILE = "overfitting.json"
OPTUNA_FIGURES = ("param_importances.png", "optimization_history.png")
SCORES = ("cv/excess_sharpe_mean", "cv/sharpe_mean", "cv/sharpe_std", "cv/benchmark_sharpe_mean")
SIGNIFICANCE = 0.95  # the deflated Sharpe ratio a best trial needs to be called significant
PBO_WARNING = 0.5  # above: the in-sample best is more often than not below the median out of sample


class StudyReportError(UserError):
    """The run is no finished study, or the study has no complete trial."""


@dataclass
class StudyReport:
    study: str
    best_trial: int
    best_value: float
    trials: pd.DataFrame  # trial, state, objective, cv scores, parameters
    statistics: dict[str, Any]  # overfitting.json
    verdicts: list[str]
    files: list[Path] = field(default_factory=list)


def is_study(run: Run) -> bool:
    return STUDY_TAG in run.data.tags


def read_trials(client: MlflowClient, study_run: Run) -> pd.DataFrame:
    """One row per trial run nested under the study's run, in trial order: its state, objective,
    cross-validation scores, and the searched parameters' values (as the trial's params hold them)."""
    searched = [key.removeprefix("search.") for key in study_run.data.params if key.startswith("search.")]
    runs = [r for r in child_runs(client, study_run.info.experiment_id, study_run.info.run_id) if TRIAL_TAG in r.data.tags]
    rows = [
        {
            "trial": int(r.data.tags[TRIAL_TAG]), "state": r.info.status, "objective": r.data.metrics.get("objective", np.nan),
            **{k: r.data.metrics.get(k, np.nan) for k in SCORES}, **{k: r.data.params.get(k) for k in searched}, "run_id": r.info.run_id,
        }  # fmt: skip
        for r in runs
    ]
    return pd.DataFrame(rows, columns=["trial", "state", "objective", *SCORES, *searched, "run_id"]).sort_values("trial", ignore_index=True)


def verdicts(statistics: dict[str, Any], bars_per_day: float | None) -> list[str]:
    """What the overfitting statistics say about the best trial, in words."""
    lines = []
    pbo = statistics.get("pbo")
    if pbo is None:
        lines.append(f"probability of backtest overfitting: not computed ({statistics.get('pbo_reason', 'no out-of-sample returns')})")
    else:
        judged = "the selection is more likely overfit than not" if pbo > PBO_WARNING else "the in-sample best usually stays above the median out of sample"
        lines.append(
            f"probability of backtest overfitting {pbo:.2f} over {statistics['pbo_trials']} trials and {statistics['pbo_blocks']} disjoint blocks "
            f"of {statistics['pbo_bars']:,} bars: {judged}"
        )
    dsr = statistics.get("deflated_sharpe")
    if dsr is None:
        lines.append(f"deflated Sharpe ratio: not computed ({statistics.get('deflated_sharpe_reason', 'no trial statistics')})")
    else:
        judged = "significant" if dsr >= SIGNIFICANCE else f"not significant (needs {SIGNIFICANCE:.2f})"
        lines.append(
            f"deflated Sharpe ratio of the best trial {dsr:.2f}: the probability that its Sharpe beats the best of "
            f"{statistics['deflated_sharpe_trials']} trials' luck; {judged}"
        )
    for key, against in (("min_track_record_bars", "0"), ("min_track_record_bars_deflated", "the expected best of the trials by luck")):
        bars = statistics.get(key)
        if bars is None:
            continue
        if not math.isfinite(bars):
            lines.append(f"minimum track record against {against}: never (the best trial's Sharpe is not above it)")
            continue
        days = f" (about {bars / bars_per_day:,.0f} days)" if bars_per_day else ""
        lines.append(f"minimum track record against {against}: {bars:,.0f} bars{days} of paper trading before the best trial's Sharpe is significant at 95 %")
    return lines


def write_study_report(client: MlflowClient, study_run_id: str, out_dir: Path) -> StudyReport:
    """Read the study from MLflow, write the folder, and log it to the study's run (module docstring)."""
    run = client.get_run(study_run_id)
    if not is_study(run):
        raise StudyReportError(f"run {study_run_id} is not a study's run (no tag {STUDY_TAG}); studies come from python train.py -m hparams_search=...")
    trials = read_trials(client, run)
    complete = trials[trials["state"] == "FINISHED"]
    if complete.empty or "best.trial" not in run.data.tags:
        raise StudyReportError(f"the study {run.data.tags[STUDY_TAG]!r} has no complete trial yet: run the sweep (it resumes) and report again")
    out_dir.mkdir(parents=True, exist_ok=True)
    listed = {a.path for a in client.list_artifacts(study_run_id)}
    with tempfile.TemporaryDirectory() as scratch:
        statistics = json.loads(Path(client.download_artifacts(study_run_id, OVERFITTING_FILE, scratch)).read_text()) if OVERFITTING_FILE in listed else {}
        copied = [name for name in OPTUNA_FIGURES if name in listed]
        for name in copied:
            (out_dir / name).write_bytes(Path(client.download_artifacts(study_run_id, name, scratch)).read_bytes())
    best = int(run.data.tags["best.trial"])
    best_row = trials[trials["trial"] == best].iloc[0]
    searched = [c for c in trials.columns if c not in ("trial", "state", "objective", *SCORES, "run_id")]
    report = StudyReport(run.data.tags[STUDY_TAG], best, float(best_row["objective"]), trials, statistics, verdicts(statistics, _bars_per_day(client, best_row["run_id"])))
    trials.to_csv(out_dir / "trials.csv", index=False)
    figures = []
    if searched:
        figure = slices_figure(complete, searched, best, run.data.params.get("study.objective", "objective"))
        figure.savefig(out_dir / "slices.png", dpi=110, bbox_inches="tight")
        close_figure(figure)
        figures.append("slices.png")
    (out_dir / "report.md").write_text(markdown(report, run, best_row, searched, [*figures, *copied]))
    report.files = sorted(out_dir.iterdir())
    client.log_artifacts(study_run_id, str(out_dir), "report")
    return report


def _bars_per_day(client: MlflowClient, run_id: str) -> float | None:
    interval = client.get_run(run_id).data.params.get("data.interval")
    return periods_per_year(interval) / 365 if interval else None


def markdown(report: StudyReport, run: Run, best: pd.Series, searched: list[str], figures: list[str]) -> str:
    params = run.data.params
    counts = report.trials["state"].value_counts()
    lines = [
        f"# study {report.study}: its best trial, and how far to trust it",
        "",
        f"{counts.get('FINISHED', 0)} complete trials of {params.get('study.n_trials', '?')} ({counts.get('FAILED', 0)} failed, "
        f"{counts.get('KILLED', 0)} killed); objective `{params.get('study.objective', 'objective')}`, "
        f"{params.get('study.direction', 'maximize')}d; sampler {params.get('study.sampler', '?')} (seed {params.get('study.sampler_seed', '?')}).",
        "",
        "## Verdict",
        "",
        f"- best: trial {report.best_trial}, objective {report.best_value:+.4g} (run `{best['run_id']}`)",
        *[f"- {line}" for line in report.verdicts],
        "",
        "The probability of backtest overfitting (CSCV, Bailey et al. 2017) is the share of combinations of",
        "disjoint time blocks in which the in-sample best trial ranks below the median out of sample. The deflated",
        "Sharpe ratio (Bailey and López de Prado 2014) corrects the best trial's Sharpe for the number of trials,",
        "and the minimum track record length for its skewness and kurtosis.",
        "",
        "## Best trial's parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        *[f"| `{key}` | {best[key]} |" for key in searched],
        "",
        "## Trials (objective, best first)",
        "",
        "| trial | state | objective | " + " | ".join(f"`{k}`" for k in searched) + " |",
        "|---:|---|---:|" + "---|" * len(searched),
    ]
    ranked = report.trials.sort_values("objective", ascending=params.get("study.direction") == "minimize", na_position="last")
    for row in ranked.to_dict("records"):
        value = "-" if not np.isfinite(row["objective"]) else f"{row['objective']:+.4g}"
        lines.append(f"| {row['trial']} | {row['state']} | {value} | " + " | ".join(str(row[k]) for k in searched) + " |")
    lines += ["", "## Figures", ""]
    captions = {"slices.png": "Objective per parameter", "param_importances.png": "Parameter importances (PED-ANOVA)", "optimization_history.png": "Optimisation history"}
    for name in figures:
        lines += [f"![{captions[name]}]({name})", ""]
    lines += ["Files: `trials.csv` (every trial's scores and parameters).", ""]
    return "\n".join(lines)


def slices_figure(trials: pd.DataFrame, searched: list[str], best: int, objective: str) -> Figure:
    """The objective of every complete trial against each searched parameter, the best trial as a
    star; numeric parameters on their own axis (log scale when they span a factor above 100),
    the others as categories."""
    columns = min(3, len(searched))
    rows = -(-len(searched) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(searched) :]:
        ax.set_visible(False)
    is_best = (trials["trial"] == best).to_numpy()
    for ax, key in zip(axes, searched):
        numeric = pd.to_numeric(trials[key], errors="coerce")
        if numeric.notna().all():
            x = numeric.to_numpy(dtype=float)
            if (x > 0).all() and x.max() / x.min() > 100:
                ax.set_xscale("log")
        else:
            categories = sorted(trials[key].astype(str).unique())
            x = np.array([categories.index(v) for v in trials[key].astype(str)], dtype=float)
            ax.set_xticks(range(len(categories)), categories, rotation=20, fontsize=7)
        ax.scatter(x[~is_best], trials["objective"].to_numpy()[~is_best], s=18, color="tab:blue", alpha=0.7, label="trial")
        ax.scatter(x[is_best], trials["objective"].to_numpy()[is_best], s=120, marker="*", color="tab:red", label=f"best (trial {best})")
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel(objective, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    figure.suptitle("Objective of each complete trial against each searched parameter")
    return figure
