"""The report of an experiment: which arm wins, and how sure that is.

Read from MLflow only: the experiment's run, its arm runs (nested under it, tagged
``experiment.arm``, the seed in param ``trainer.seed``) and their per-split test metrics
(``split<k>/test/<metric>``; a holdout run's ``test/<metric>`` is one split). Written to a folder
and logged to the experiment's run under ``report/``:

- ``report.md``: the verdicts first, then per arm the interquartile mean and median across splits
  x seeds with 95 % stratified bootstrap intervals, the references (buy-and-hold, the oracle),
  the paired comparisons, the resources, each arm against each reference run by run, and the
  figures;
- ``arms.csv``, ``pairs.csv``, ``references.csv``, ``runs.csv``: the same numbers, and every run's scores;
- ``aggregates.png``, ``profiles.png``, ``learning_curves.png``; for cv runs ``equity_paths.png``
  (the best arm per backtest path against buy-and-hold and the oracle, from each arm run's
  ``split_backtests.npz``) and, per FT arm, ``attention_<arm>.png`` (its split runs'
  ``attention*.npz`` averaged).

Statistics: ``cappuccino.evaluation.aggregate``. An arm "beats buy-and-hold" only when the interval
over periods of its test excess Sharpe lies above 0; "X beats Y" only when the interval of
P(X > Y) excludes 0.5; otherwise the report says the data cannot tell.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from cappuccino.config import ABLATION_ARMS
from cappuccino.errors import UserError
from cappuccino.evaluation.aggregate import (
    CLAIM_CONFIDENCE,
    CONFIDENCE,
    Interval,
    aggregate,
    aggregate_over_periods,
    beats_buy_and_hold,
    comparison_claim,
    interquartile_mean,
    paired_difference,
    performance_profile,
    probability_of_improvement,
    win_share,
)
from cappuccino.evaluation.backtest import stitch
from cappuccino.evaluation.gathering import BACKTESTS_FILE, SplitScores, load_split_scores
from cappuccino.models.attention_probe import AttentionMap, load_attention_map
from cappuccino.tracking import STUDY_TAG
from cappuccino.tracking.mlflow_tracker import child_runs
from cappuccino.reporting.figures import REFERENCE_COLORS, PathEquity, attention_figure, close_figure, paths_figure

ARM_TAG = "experiment.arm"
FACTORS_TAG = "experiment.factors"  # a grid's arm runs: the params that make the grid, comma-separated
MAIN_SCORE = "excess_sharpe"
CLAIM_RESAMPLES = 10_000  # a Bonferroni interval's tails hold few resamples: more of them
MIN_CLAIM_SEEDS = 3  # below, the claim rule erred more often than stated (5-7 % at 2 seeds per split)
# test metric -> (label, unit) in the order the report shows them
SCORES = {
    "excess_sharpe": ("excess Sharpe over buy-and-hold", "annualised"),
    "sharpe": ("Sharpe", "annualised"),
    "sortino": ("Sortino", "annualised"),
    "max_drawdown": ("max drawdown", "fraction of the peak"),
    "total_return": ("total return", "fraction"),
    "annual_turnover": ("turnover", "x portfolio value per year"),
    "fees_paid": ("fees paid", "cash"),
}
RESOURCES = {
    "wall_minutes": "training wall time (minutes, all splits)",
    "steps_per_second": "environment steps/s (whole job)",
    "peak_rss_mb": "peak RSS (MB)",
    "peak_vram_mb": "peak VRAM (MB)",
    "parameters": "policy parameters",
}
REFERENCES = {"buy-and-hold": "benchmark", "equal weight": "equal_weight", "oracle": "oracle", "random": "random", "flat": "flat"}
# the validation objective where the splits have validation segments (cv=holdout, or cpcv with
# cv.val_fraction), else the training reward
CURVE_METRICS = ("val/excess_sharpe", "train/step_reward")
MAX_PATHS_SHOWN = 4  # CPCV may stitch many paths: the figure shows the first ones
_SPLIT_KEY = re.compile(r"^split(\d+)/test/excess_sharpe$")


class ReportError(UserError):
    """The runs cannot be reported on as asked; the message says what is missing."""


@dataclass(frozen=True)
class ArmRuns:
    """One arm's runs: scores (n_splits, n_seeds) per test metric, resources per seed."""

    arm: str
    seeds: list[int]
    splits: list[str]
    scores: dict[str, np.ndarray]
    resources: dict[str, np.ndarray]
    run_ids: list[str]
    experiment_id: str
    levels: dict[str, str] = field(default_factory=dict)  # a grid's factor -> this arm's value (FACTORS_TAG)


@dataclass
class ExperimentReport:
    arms: dict[str, ArmRuns]
    summary: pd.DataFrame  # arm, metric, statistic, value, low, high
    pairs: pd.DataFrame  # x, y, P(X > Y) and its interval, mean paired difference and its interval, win share
    verdicts: list[str]
    best_arm: str
    best_iqm: float
    against_references: pd.DataFrame  # arm, reference, paired difference and its interval, win share, share of the IQM
    effects: pd.DataFrame  # a grid's factor, level, arms, IQM and its interval (empty for other experiments)
    files: list[Path] = field(default_factory=list)


def read_arms(client: MlflowClient, parent_run_id: str) -> tuple[dict[str, ArmRuns], dict[str, float]]:
    """The finished arm runs nested under ``parent_run_id``, on the seeds every arm has, and the
    references' mean test metrics (the same bars and fees for every arm)."""
    parent = client.get_run(parent_run_id)
    if STUDY_TAG in parent.data.tags:
        raise ReportError(
            f"run {parent_run_id} is the study {parent.data.tags[STUDY_TAG]!r}, not an experiment: its report is "
            "reporting.study_report.write_study_report (python -m cappuccino.report picks the right one)"
        )
    children = child_runs(client, parent.info.experiment_id, parent_run_id)
    by_arm: dict[str, dict[int, Run]] = {}
    for run in children:
        arm = run.data.tags.get(ARM_TAG)
        if arm is not None and run.info.status == "FINISHED":
            by_arm.setdefault(arm, {})[int(run.data.params["trainer.seed"])] = run
    if len(by_arm) < 2:
        raise ReportError(f"run {parent_run_id} has {len(by_arm)} finished arm run(s) tagged {ARM_TAG}: a comparison needs two or more")
    seeds = sorted(set.intersection(*(set(runs) for runs in by_arm.values())))
    if len(seeds) < 2:
        raise ReportError(f"the arms share {len(seeds)} finished seed(s) ({seeds}): intervals need two or more; rerun the missing ones")
    arms = {arm: _arm_runs(arm, [runs[s] for s in seeds], seeds) for arm, runs in sorted(by_arm.items(), key=lambda item: _arm_order(item[0]))}
    splits = {tuple(a.splits) for a in arms.values()}
    if len(splits) != 1:
        raise ReportError(f"the arms were scored on different splits {sorted(splits)}: run every arm with the same cv settings")
    return arms, _references(next(iter(by_arm.values()))[seeds[0]])


def _arm_order(arm: str) -> tuple[int, str]:
    return (ABLATION_ARMS.index(arm) if arm in ABLATION_ARMS else len(ABLATION_ARMS), arm)


def _arm_runs(arm: str, runs: list[Run], seeds: list[int]) -> ArmRuns:
    metrics = [run.data.metrics for run in runs]
    split_ids = sorted({int(m.group(1)) for key in metrics[0] if (m := _SPLIT_KEY.match(key))})
    prefixes = [f"split{k}/test/" for k in split_ids] if split_ids else ["test/"]
    missing = [(run.info.run_id, p + name) for run, m in zip(runs, metrics) for p in prefixes for name in SCORES if p + name not in m]
    if missing:
        raise ReportError(f"arm {arm}: runs lack test metrics, e.g. {missing[0][1]} in run {missing[0][0]}; rerun them to the end")
    scores = {name: np.array([[m[p + name] for m in metrics] for p in prefixes]) for name in SCORES}
    seconds = np.array([max(r.info.end_time - r.info.start_time, 1) / 1000 for r in runs])
    steps = np.array([int(r.data.params.get("trainer.total_steps", 0)) * len(prefixes) for r in runs])  # every split's agent
    resources = {
        "wall_minutes": seconds / 60,
        "steps_per_second": steps / seconds,
        "peak_rss_mb": np.array([m.get("peak_rss_mb", np.nan) for m in metrics]),
        "peak_vram_mb": np.array([m.get("peak_vram_mb", np.nan) for m in metrics]),  # CUDA runs only
        "parameters": np.array([float(r.data.params.get("policy.parameters", "nan")) for r in runs]),
    }
    names = [f"split {k}" for k in split_ids] if split_ids else ["holdout"]
    factors = [f for f in runs[0].data.tags.get(FACTORS_TAG, "").split(",") if f]
    levels = {factor: runs[0].data.params[factor] for factor in factors}
    return ArmRuns(arm, seeds, names, scores, resources, [r.info.run_id for r in runs], runs[0].info.experiment_id, levels)


def _references(run: Run) -> dict[str, float]:
    """Each reference's mean test excess Sharpe and Sharpe (cv runs: over splits)."""
    metrics, out = run.data.metrics, {}
    for label, name in REFERENCES.items():
        for key in (f"cv/{name}_{{}}_mean", f"test/{name}_{{}}"):
            if key.format("sharpe") in metrics:
                out[f"{label} sharpe"] = metrics[key.format("sharpe")]
                out[f"{label} excess_sharpe"] = metrics.get(key.format("excess_sharpe"), 0.0)  # buy-and-hold's own: 0
                break
    return out


def summarise(arms: dict[str, ArmRuns], seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, list[str], str]:
    """Per-arm aggregates, pairwise comparisons on the main score, the verdicts, the winning arm."""
    main = {arm: runs.scores[MAIN_SCORE] for arm, runs in arms.items()}
    periods = buy_and_hold_intervals(main, seed)
    rows = []
    for arm, runs in arms.items():
        for name, scores in runs.scores.items():
            for statistic in ("iqm", "median"):
                rows.append({"arm": arm, "metric": name, "statistic": statistic, **_interval_columns(aggregate(scores, statistic, seed=seed))})
        for name, values in runs.resources.items():  # one value per seed: its interval resamples the seeds
            if np.isfinite(values).all():
                rows.append({"arm": arm, "metric": name, "statistic": "iqm", **_interval_columns(aggregate(values[None, :], "iqm", seed=seed))})
        if periods[arm] is not None:
            rows.append({"arm": arm, "metric": MAIN_SCORE, "statistic": "iqm over periods", **_interval_columns(periods[arm])})
    pairs, verdicts = comparisons(main, seed)
    iqm = {arm: float(interquartile_mean(scores)) for arm, scores in main.items()}
    best = max(iqm, key=iqm.get)  # type: ignore[arg-type]
    beaten = [v.split(":")[0].removeprefix(f"{best} beats ") for v in verdicts if v.startswith(f"{best} beats ")]
    ranking = (
        f"highest IQM of test excess Sharpe: {best} ({iqm[best]:+.2f}); "
        + (f"it beats {', '.join(beaten)} with confidence" if beaten else "it beats no other arm with confidence")
    )
    return pd.DataFrame(rows), pairs, [buy_and_hold_verdict(periods), ranking, *verdicts], best


def comparisons(scores: dict[str, np.ndarray], seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """Every pair of arms: P(X > Y), the mean paired difference, the share of splits won, and a
    claim. The claims share one 5 % error budget (Bonferroni): each pair's interval of P(X > Y) is
    at 1 - (1 - CLAIM_CONFIDENCE) / n_pairs, so that no-skill arms are told apart at most about
    5 % of the time whatever the number of arms (tests/test_experiment_report.py)."""
    pairs = list(itertools.combinations(scores, 2))
    confidence = 1.0 - (1.0 - CLAIM_CONFIDENCE) / len(pairs)
    rows, verdicts = [], []
    for x, y in pairs:
        a, b = scores[x], scores[y]
        improvement = probability_of_improvement(a, b, seed=seed, confidence=confidence, n_resamples=CLAIM_RESAMPLES)
        difference = paired_difference(a, b, seed=seed)
        rows.append({
            "x": x, "y": y, "p_x_beats_y": improvement.value, "p_low": improvement.low, "p_high": improvement.high, "p_confidence": confidence,
            "mean_difference": difference.value, "difference_low": difference.low, "difference_high": difference.high,
            "x_wins_share_of_splits": win_share(a, b),
        })  # fmt: skip
        few = a.shape[1] < MIN_CLAIM_SEEDS
        verdicts.append(f"{a.shape[1]} seeds per split: too few to tell {x} and {y} apart (claims need {MIN_CLAIM_SEEDS})" if few else comparison_claim(x, y, improvement))
    return pd.DataFrame(rows), verdicts


def buy_and_hold_intervals(scores: dict[str, np.ndarray], seed: int = 0) -> dict[str, Interval | None]:
    """Each arm's excess Sharpe interval over periods (None with one split), at a confidence
    shared among the arms (Bonferroni): 1 - (1 - CONFIDENCE) / n_arms."""
    confidence = 1.0 - (1.0 - CONFIDENCE) / len(scores)
    return {arm: aggregate_over_periods(s, seed=seed, confidence=confidence) if s.shape[0] >= 2 else None for arm, s in scores.items()}


def buy_and_hold_verdict(periods: dict[str, Interval | None]) -> str:
    if None in periods.values():
        return "one test period: whether an arm beats buy-and-hold on bars not seen cannot be told (use cv=cpcv with cv.n_test_groups=1)"
    winners = [arm for arm, interval in periods.items() if interval is not None and beats_buy_and_hold(interval)]
    if winners:
        return f"beat buy-and-hold after fees with confidence (excess Sharpe's interval over periods above 0): {', '.join(winners)}"
    return "no arm beats buy-and-hold after fees with confidence: every arm's interval over periods of excess Sharpe includes 0 or lies below it"


def _interval_columns(interval: Interval) -> dict[str, float]:
    return {"value": interval.value, "low": interval.low, "high": interval.high, "confidence": interval.confidence}


def write_report(client: MlflowClient, parent_run_id: str, out_dir: Path, seed: int = 0) -> ExperimentReport:
    """Read, summarise, write the folder, and log it to the experiment's run (module docstring)."""
    arms, references = read_arms(client, parent_run_id)
    summary, pairs, verdicts, best = summarise(arms, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:  # downloads: read, never logged again
        backtests = {arm: read_backtests(client, runs, Path(scratch)) for arm, runs in arms.items()}
        attention = {arm: read_attention(client, runs, Path(scratch)) for arm, runs in arms.items()}
    per_split = next((reference_scores(b) for b in backtests.values() if b), {})
    against = reference_comparisons(arms, per_split, seed)
    effects = main_effects(arms, seed)
    report = ExperimentReport(arms, summary, pairs, verdicts, best, float(interquartile_mean(arms[best].scores[MAIN_SCORE])), against, effects)
    summary.to_csv(out_dir / "arms.csv", index=False)
    pairs.to_csv(out_dir / "pairs.csv", index=False)
    against.to_csv(out_dir / "references.csv", index=False)
    if not effects.empty:
        effects.to_csv(out_dir / "effects.csv", index=False)
    _runs_table(arms).to_csv(out_dir / "runs.csv", index=False)
    figures = {
        "aggregates.png": aggregates_figure(summary, references),
        "profiles.png": profiles_figure(arms, references, seed),
        "learning_curves.png": learning_curves_figure(client, arms),
    }
    if not effects.empty:
        figures["main_effects.png"] = main_effects_figure(effects)
    if backtests[best]:
        paths = path_equities(backtests[best])
        title = f"{best} (highest IQM) against buy-and-hold and the oracle, per backtest path" + (
            f" ({MAX_PATHS_SHOWN} of {len(paths)})" if len(paths) > MAX_PATHS_SHOWN else ""
        )
        figures["equity_paths.png"] = paths_figure(paths[:MAX_PATHS_SHOWN], best, title)
    for arm, probe in attention.items():
        if probe is not None:
            title = f"{arm}: [CLS] attention, mean over heads, {len(arms[arm].seeds)} seeds x {len(arms[arm].splits)} splits and {probe.windows} all-cash windows"
            figures[f"attention_{arm}.png"] = attention_figure(probe.cls, title, probe.lookback, probe.symbols, probe.patch_bars)
    for name, figure in figures.items():
        figure.savefig(out_dir / name, dpi=110, bbox_inches="tight")
        close_figure(figure)
    (out_dir / "report.md").write_text(markdown(report, references, client.get_run(parent_run_id), list(figures)))
    report.files = sorted(out_dir.iterdir())
    client.log_artifacts(parent_run_id, str(out_dir), "report")
    return report


def main_effects(arms: dict[str, ArmRuns], seed: int = 0) -> pd.DataFrame:
    """For a grid (arms tagged with their factors): per factor and level, the IQM of test excess
    Sharpe over every arm at that level, their seeds pooled within each split, with its
    stratified interval. In a full grid every level pools the same combinations of the other
    factors, so the levels are compared on equal terms. Empty when the arms form no grid."""
    factors = {tuple(sorted(runs.levels)) for runs in arms.values()}
    if len(factors) != 1 or not next(iter(factors)):
        return pd.DataFrame(columns=["factor", "level", "arms", "value", "low", "high", "confidence"])
    rows = []
    for factor in next(iter(factors)):
        by_level: dict[str, list[ArmRuns]] = {}
        for runs in arms.values():
            by_level.setdefault(runs.levels[factor], []).append(runs)
        if len(by_level) < 2:
            continue  # a factor the grid does not vary
        for level in sorted(by_level, key=_level_order):
            pooled = np.concatenate([runs.scores[MAIN_SCORE] for runs in by_level[level]], axis=1)  # (splits, arms x seeds)
            rows.append({"factor": factor, "level": level, "arms": len(by_level[level]), **_interval_columns(aggregate(pooled, "iqm", seed=seed))})
    return pd.DataFrame(rows, columns=["factor", "level", "arms", "value", "low", "high", "confidence"])


def _level_order(level: str) -> tuple[int, float, str]:
    try:
        return (0, float(level), level)
    except ValueError:
        return (1, 0.0, level)


# ----------------------------------------------------------- backtests and attention maps
def read_backtests(client: MlflowClient, runs: ArmRuns, into: Path) -> list[SplitScores]:
    """Each seed's ``split_backtests.npz`` (the agent's and the references' test backtests), in
    the order of ``runs.seeds``; empty for holdout runs, which keep none."""
    scores = []
    for seed, run_id in zip(runs.seeds, runs.run_ids):
        if BACKTESTS_FILE not in {a.path for a in client.list_artifacts(run_id)}:
            return []
        folder = into / f"{runs.arm}_seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        scores.append(load_split_scores(Path(client.download_artifacts(run_id, BACKTESTS_FILE, str(folder)))))
    return scores


def reference_scores(backtests: list[SplitScores], metric: str = MAIN_SCORE) -> dict[str, np.ndarray]:
    """Each reference's test ``metric`` per split and seed, (n_splits, n_seeds), paired with the
    arm's runs: the oracle's is the same for every seed, the random policy's is drawn per seed."""
    first = backtests[0].references
    names = next(iter(first.values())).keys() if first else ()
    return {name: np.array([[b.references[i][name][metric] for b in backtests] for i in sorted(first)]) for name in names}


def reference_comparisons(arms: dict[str, ArmRuns], references: dict[str, np.ndarray], seed: int = 0) -> pd.DataFrame:
    """Each arm against each reference on the same splits and seeds: the mean paired difference
    of test excess Sharpe with its interval, the share of runs the arm wins, and the arm's IQM as
    a share of the oracle's (what share of the known edge the arm captures; none when the oracle
    has no edge)."""
    rows = []
    for arm, runs in arms.items():
        for name, reference in references.items():
            agent = runs.scores[MAIN_SCORE]
            difference = paired_difference(agent, reference, seed=seed)
            reference_iqm = float(interquartile_mean(reference))
            rows.append({
                "arm": arm, "reference": name, "mean_difference": difference.value, "difference_low": difference.low,
                "difference_high": difference.high, "arm_wins_share_of_runs": float(np.mean(agent > reference)),
                "reference_iqm": reference_iqm,
                "share_of_oracle": float(interquartile_mean(agent)) / reference_iqm if name == "oracle" and reference_iqm > 0 else np.nan,
            })  # fmt: skip
    return pd.DataFrame(rows)


def path_equities(backtests: list[SplitScores], shown: tuple[str, ...] = ("oracle",)) -> list[PathEquity]:
    """The equity along each CPCV backtest path (every split's test groups chained, as the scores
    are), per seed, with buy-and-hold and the ``shown`` references; without paths (walk-forward,
    or one split of a fanned-out run), one history of the splits' test pieces in split order."""
    first = backtests[0]
    paths = first.paths or [[(i, j) for i in sorted(first.tests) for j in range(len(first.tests[i]))]]
    out = []
    for k, path in enumerate(paths):
        agent = np.array([stitch([b.tests[i][j] for i, j in path]).equity for b in backtests])  # (seeds, T)
        pieces = [first.tests[i][j] for i, j in path]
        references = {
            name: stitch([first.reference_tests[i][name][j] for i, j in path]).equity
            for name in shown if first.reference_tests and name in first.reference_tests[path[0][0]]
        }  # fmt: skip
        out.append(PathEquity(f"path {k}" if first.paths else "the splits' test periods in order", agent, stitch(pieces).benchmark, references))
    return out


def read_attention(client: MlflowClient, runs: ArmRuns, into: Path) -> AttentionMap | None:
    """The arm's [CLS] attention averaged over its seeds and splits (each split run's
    ``attention*.npz``), or None when its encoder has no attention (the MLP)."""
    maps = []
    for run_id in runs.run_ids:
        for source in _split_runs(client, runs.experiment_id, run_id):
            for artifact in client.list_artifacts(source):
                if artifact.path.startswith("attention") and artifact.path.endswith(".npz"):
                    folder = into / source
                    folder.mkdir(parents=True, exist_ok=True)
                    maps.append(load_attention_map(Path(client.download_artifacts(source, artifact.path, str(folder)))))
    if not maps:
        return None
    first = maps[0]
    return AttentionMap(np.mean([m.cls for m in maps], axis=0), first.lookback, first.symbols, first.patch_bars, sum(m.windows for m in maps))


def _runs_table(arms: dict[str, ArmRuns]) -> pd.DataFrame:
    rows = []
    for arm, runs in arms.items():
        for j, (seed, run_id) in enumerate(zip(runs.seeds, runs.run_ids)):
            for i, split in enumerate(runs.splits):
                rows.append({"arm": arm, "seed": seed, "split": split, "run_id": run_id, **{k: v[i, j] for k, v in runs.scores.items()}})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ text
FIGURE_CAPTIONS = {
    "aggregates.png": "IQM with intervals",
    "profiles.png": "Performance profiles",
    "learning_curves.png": "Learning curves",
    "equity_paths.png": "Equity per backtest path",
    "main_effects.png": "Main effects of the grid's factors",
}  # and attention_<arm>.png per FT arm


def markdown(report: ExperimentReport, references: dict[str, float], parent: Run, figures: list[str]) -> str:
    arms = report.arms
    first = next(iter(arms.values()))
    lines = [
        f"# {parent.data.tags.get('mlflow.runName', 'experiment')}: which arm wins, and how sure that is",
        "",
        f"{len(arms)} arms x {len(first.seeds)} seeds ({', '.join(map(str, first.seeds))}) x {len(first.splits)} splits, "
        "every arm on the same splits, seeds and step budget. Intervals: 95 % stratified bootstrap (seeds resampled "
        f"within each split); P(X > Y): {report.pairs['p_confidence'].iloc[0]:.2%}, the claims' 5 % error budget shared by the "
        f"{len(report.pairs)} pairs (a claim needs it to exclude 0.5); \"over periods\": splits resampled too, at "
        f"{1 - 0.05 / len(arms):.2%} for each of the {len(arms)} arms, for the claim against buy-and-hold.",
        "",
        "## Verdict",
        "",
        *[f"- {line}" for line in report.verdicts],
        "",
        "## Per arm (test split, interquartile mean [95 % interval])",
        "",
        "| arm | " + " | ".join(f"{SCORES[k][0]} ({SCORES[k][1]})" for k in SCORES) + " |",
        "|---|" + "---:|" * len(SCORES),
    ]
    iqm = report.summary[report.summary["statistic"] == "iqm"].set_index(["arm", "metric"])
    for arm in arms:
        cells = [f"{iqm.loc[(arm, k), 'value']:+.3g} [{iqm.loc[(arm, k), 'low']:+.3g}, {iqm.loc[(arm, k), 'high']:+.3g}]" for k in SCORES]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    over = report.summary[report.summary["statistic"] == "iqm over periods"]
    if len(over):
        lines += ["", "Excess Sharpe, interval over periods: " + "; ".join(f"{r.arm} {r.value:+.2f} [{r.low:+.2f}, {r.high:+.2f}]" for r in over.itertuples()) + "."]
    if references:
        lines += ["", "References on the same bars and fees (mean over splits): " + ", ".join(f"{k} {v:+.2f}" for k, v in references.items()) + "."]
    lines += ["", "## Paired comparisons (test excess Sharpe)", "", "| X | Y | P(X > Y) | mean X - Y [95 %] | splits X wins |", "|---|---|---:|---:|---:|"]
    for r in report.pairs.itertuples():
        lines.append(
            f"| {r.x} | {r.y} | {r.p_x_beats_y:.2f} [{r.p_low:.2f}, {r.p_high:.2f}] | "
            f"{r.mean_difference:+.3f} [{r.difference_low:+.3f}, {r.difference_high:+.3f}] | {r.x_wins_share_of_splits:.0%} |"
        )
    shown = [k for k in RESOURCES if any((arm, k) in iqm.index for arm in arms)]
    lines += ["", "## Resources (IQM over seeds [95 % interval])", "", "| arm | " + " | ".join(RESOURCES[k] for k in shown) + " |", "|---|" + "---:|" * len(shown)]
    for arm in arms:
        lines.append(f"| {arm} | " + " | ".join(_resource_cell(iqm, arm, k) for k in shown) + " |")
    lines += _main_effects(report.effects)
    lines += _against_references(report.against_references)
    lines += ["", "## Figures", ""]
    for name in figures:
        caption = FIGURE_CAPTIONS.get(name) or f"[CLS] attention of {name.removeprefix('attention_').removesuffix('.png')}"
        lines += [f"![{caption}]({name})", ""]
    lines += [
        "Files: `arms.csv` (every aggregate), `pairs.csv` (every comparison), `references.csv` (every arm against "
        "each reference), `runs.csv` (every run's scores)" + (", `effects.csv` (the main effects)." if not report.effects.empty else "."), "",
    ]  # fmt: skip
    return "\n".join(lines)


def _main_effects(effects: pd.DataFrame) -> list[str]:
    if effects.empty:
        return []
    spread = effects.groupby("factor", sort=False)["value"].agg(lambda v: v.max() - v.min())
    lines = [
        "", "## Main effects (test excess Sharpe, each level pooled over the grid's other factors)", "",
        "Spread of the levels' IQM: " + ", ".join(f"`{f}` {v:.3f}" for f, v in spread.sort_values(ascending=False).items())
        + " (the larger, the more the factor matters at this budget; compare it with the intervals).", "",
        "| factor | level | arms | IQM [95 % interval] |", "|---|---|---:|---:|",
    ]  # fmt: skip
    lines += [f"| `{r.factor}` | {r.level} | {r.arms} | {r.value:+.3f} [{r.low:+.3f}, {r.high:+.3f}] |" for r in effects.itertuples()]
    return lines


def _resource_cell(iqm: pd.DataFrame, arm: str, name: str) -> str:
    if (arm, name) not in iqm.index:
        return "-"
    row = iqm.loc[(arm, name)]
    if name == "parameters":  # the same for every seed
        return f"{row['value']:,.0f}"
    digits = 1 if name == "wall_minutes" else 0
    return f"{row['value']:,.{digits}f} [{row['low']:,.{digits}f}, {row['high']:,.{digits}f}]"


def _against_references(against: pd.DataFrame) -> list[str]:
    """The table of each arm against each reference, per split and seed (none for holdout runs)."""
    if against.empty:
        return []
    lines = [
        "", "## Against the references, run by run (test excess Sharpe, the same split and seed)", "",
        "The oracle knows the market's generator: a reference, not an optimum. Share of the oracle: "
        "the arm's IQM over the oracle's.", "",
        "| arm | reference | mean arm - reference [95 %] | runs the arm wins | share of the oracle's IQM |", "|---|---|---:|---:|---:|",
    ]  # fmt: skip
    for r in against.itertuples():
        share = "-" if not np.isfinite(r.share_of_oracle) else f"{r.share_of_oracle:.0%}"
        lines.append(
            f"| {r.arm} | {r.reference} | {r.mean_difference:+.2f} [{r.difference_low:+.2f}, {r.difference_high:+.2f}] | "
            f"{r.arm_wins_share_of_runs:.0%} | {share} |"
        )
    return lines


# ---------------------------------------------------------------------------------- figures
def _reference_lines(ax: Axes, references: dict[str, float]) -> None:
    """Vertical lines at buy-and-hold (0), the no-skill equal-weight policy and the oracle."""
    ax.axvline(0.0, color="grey", lw=1, ls="--", label="buy-and-hold")
    for label in ("equal weight", "oracle"):
        if f"{label} excess_sharpe" in references:
            ax.axvline(references[f"{label} excess_sharpe"], color=REFERENCE_COLORS[REFERENCES[label]], lw=1, ls=":", label=label)


def aggregates_figure(summary: pd.DataFrame, references: dict[str, float]) -> Figure:
    """Each arm's IQM with its 95 % interval, one panel per score."""
    iqm = summary[summary["statistic"] == "iqm"]
    arms = list(dict.fromkeys(iqm["arm"]))
    columns = 4
    rows_of_panels = -(-len(SCORES) // columns)
    figure = Figure(figsize=(3.4 * columns, (0.45 * len(arms) + 1.4) * rows_of_panels), layout="constrained")
    axes = figure.subplots(rows_of_panels, columns, squeeze=False).ravel()
    for ax in axes[len(SCORES) :]:
        ax.set_visible(False)
    for ax, (name, (label, unit)) in zip(axes, SCORES.items()):
        rows = iqm[iqm["metric"] == name].set_index("arm").loc[arms]
        y = -np.arange(len(arms))  # the first arm on top
        ax.errorbar(rows["value"], y, xerr=[rows["value"] - rows["low"], rows["high"] - rows["value"]], fmt="o", capsize=4, color="tab:blue")
        if name == "excess_sharpe":
            _reference_lines(ax, references)
            ax.legend(loc="best", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(unit, fontsize=8)
        ax.set_yticks(y, arms)
        ax.set_ylim(y[-1] - 0.5, 0.5)
        ax.grid(axis="x", alpha=0.3)
    figure.suptitle("Interquartile mean across splits x seeds, with 95 % stratified bootstrap intervals")
    return figure


def main_effects_figure(effects: pd.DataFrame) -> Figure:
    """Per factor of a grid, each level's IQM of test excess Sharpe with its 95 % interval."""
    factors = list(dict.fromkeys(effects["factor"]))
    figure = Figure(figsize=(3.6 * len(factors), 3.4), layout="constrained")
    axes = figure.subplots(1, len(factors), squeeze=False, sharey=True)[0]
    for ax, factor in zip(axes, factors):
        rows = effects[effects["factor"] == factor]
        x = np.arange(len(rows))
        ax.errorbar(x, rows["value"], yerr=[rows["value"] - rows["low"], rows["high"] - rows["value"]], fmt="o-", capsize=4, color="tab:blue")
        ax.axhline(0.0, color="grey", lw=1, ls="--")
        ax.set_xticks(x, rows["level"])
        ax.set_xlabel(factor)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test excess Sharpe, IQM (annualised)")
    figure.suptitle("Main effects: each level pooled over the other factors, with 95 % stratified intervals")
    return figure


def profiles_figure(arms: dict[str, ArmRuns], references: dict[str, float], seed: int) -> Figure:
    """Performance profiles of test excess Sharpe: the fraction of runs above each threshold."""
    every = np.concatenate([runs.scores[MAIN_SCORE].ravel() for runs in arms.values()])
    taus = np.linspace(every.min() - 0.1, every.max() + 0.1, 60)
    figure = Figure(figsize=(7, 4.2), layout="constrained")
    ax = figure.subplots()
    for arm, runs in arms.items():
        profile = performance_profile(runs.scores[MAIN_SCORE], taus, seed=seed, n_resamples=500)
        ax.plot(taus, profile.fraction, label=arm)
        ax.fill_between(taus, profile.low, profile.high, alpha=0.2)
    _reference_lines(ax, references)
    ax.set(xlabel="test excess Sharpe over buy-and-hold, tau (annualised)", ylabel="fraction of runs above tau", ylim=(-0.02, 1.02))
    ax.set_title("Performance profiles with 95 % bands")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def learning_curves_figure(client: MlflowClient, arms: dict[str, ArmRuns]) -> Figure:
    """Per arm, the IQM across seeds and splits of the validation objective (runs with validation
    segments) or else of the training reward per step, with the interquartile range as a band."""
    figure = Figure(figsize=(7, 4.2), layout="constrained")
    ax = figure.subplots()
    drawn = None
    for arm, runs in arms.items():
        metric, curves = _curves(client, runs)
        if not curves:
            continue
        drawn = metric
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        values = np.array([[c[s] for s in steps] for c in curves])  # (runs, steps)
        ax.plot(steps, interquartile_mean(values, axis=0), label=arm)
        ax.fill_between(steps, np.percentile(values, 25, axis=0), np.percentile(values, 75, axis=0), alpha=0.2)
    labels = {"val/excess_sharpe": "validation excess Sharpe (annualised)", "train/step_reward": "training reward per step (excess log return)"}
    ax.set(xlabel="environment steps", ylabel=labels.get(drawn or "", "no curve logged"))
    ax.set_title("Learning curves: IQM across seeds x splits, interquartile band")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    return figure


def _curves(client: MlflowClient, runs: ArmRuns) -> tuple[str, list[dict[int, float]]]:
    """Each run's (split run's) history of the first of ``CURVE_METRICS`` it logged."""
    sources = [source for run_id in runs.run_ids for source in _split_runs(client, runs.experiment_id, run_id)]
    for metric in CURVE_METRICS:
        curves = [{m.step: m.value for m in client.get_metric_history(source, metric)} for source in sources]
        if all(curves):
            return metric, curves
    return "", []


def _split_runs(client: MlflowClient, experiment_id: str, run_id: str) -> list[str]:
    """A cv run's per-split runs (nested under it), or the holdout run itself."""
    return [c.info.run_id for c in child_runs(client, experiment_id, run_id)] or [run_id]
