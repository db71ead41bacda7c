"""What a training run scored, as types. Metric names are made here, in ``metrics()``, and only
here: the tracker, ``metrics.json`` and the sweeper read them from these objects (``result.json``
holds the object itself, so nothing parses metric names back)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESULT_FILE = "result.json"  # the run's result, beside metrics.json in the run folder
OOS_RETURNS_FILE = "oos_returns.npy"  # a cross-validated run's out-of-sample excess returns per bar

# Metrics of one backtest (Backtest.metrics), the agent's then the benchmark's.
BACKTEST_METRICS = (
    "total_return", "annual_return", "annual_volatility", "sharpe", "sortino", "max_drawdown",
    "calmar", "fees_paid", "turnover", "annual_turnover", "n_periods", "excess_sharpe",
    "benchmark_total_return", "benchmark_annual_return", "benchmark_annual_volatility",
    "benchmark_sharpe", "benchmark_sortino", "benchmark_max_drawdown", "benchmark_calmar",
)  # fmt: skip
HOLDOUT_PARTS = ("val", "test")
# What each reference strategy (``references``) reports beside the agent, and the agent's share
# of the oracle's excess Sharpe ratio.
REFERENCE_METRICS = ("sharpe", "excess_sharpe", "total_return", "max_drawdown", "annual_turnover", "fees_paid")
ORACLE_RATIO = "agent_oracle_ratio"
CV_METRICS = ("objective", "excess_sharpe_mean", "sharpe_mean", "sharpe_std", "benchmark_sharpe_mean")


@dataclass(frozen=True)
class ReturnMoments:
    """Per-period (not annualised) Sharpe, number of returns, skewness and plain (normal = 3)
    kurtosis of one out-of-sample history: the deflated Sharpe ratio's inputs."""

    sharpe_per_period: float
    n_periods: float
    skewness: float
    kurtosis: float


@dataclass(frozen=True)
class HoldoutResult:
    """Metrics of the stitched validation and test backtests, and of the reference strategies
    on the same test bars (``references``: name -> metrics; ``evaluation.references``)."""

    val: dict[str, float]
    test: dict[str, float]
    references: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        out = {f"{part}/{k}": v for part in HOLDOUT_PARTS for k, v in getattr(self, part).items()}
        out.update(_reference_metrics("test", self.references))
        if "oracle" in self.references:
            out[f"test/{ORACLE_RATIO}"] = oracle_ratio(self.test["excess_sharpe"], self.references["oracle"]["excess_sharpe"])
        return out


@dataclass(frozen=True)
class SplitResult:
    index: int
    test: dict[str, float]  # metrics of the split's stitched test groups


@dataclass(frozen=True)
class CVResult:
    """Per-split test metrics and the cross-split scores (module ``scoring``)."""

    splits: tuple[SplitResult, ...]
    excess_sharpe_mean: float
    sharpe_mean: float
    sharpe_std: float
    benchmark_sharpe_mean: float
    objective: float
    moments: ReturnMoments
    path_sharpes: tuple[float, ...] | None = None  # CPCV's backtest paths, when every split ran
    # Each reference strategy's metrics on the splits' test groups, averaged over the splits.
    references: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def split_excess_sharpes(self) -> list[float]:
        return [split.test["excess_sharpe"] for split in self.splits]

    def metrics(self) -> dict[str, float]:
        out = {f"split{s.index}/test/{k}": v for s in self.splits for k, v in s.test.items()}
        out.update({f"cv/{name}": getattr(self, name) for name in CV_METRICS[1:]})
        out["cv/objective"] = self.objective
        if self.path_sharpes is not None:
            out.update({f"cv/path{p}/sharpe": s for p, s in enumerate(self.path_sharpes)})
            out.update({"cv/path_sharpe_mean": float(np.mean(self.path_sharpes)), "cv/path_sharpe_min": min(self.path_sharpes)})
        out.update({f"cv/{k}": v for k, v in dataclasses.asdict(self.moments).items()})
        out.update({f"cv/{k}_mean": v for k, v in _reference_metrics("", self.references).items()})
        if "oracle" in self.references:
            out[f"cv/{ORACLE_RATIO}"] = oracle_ratio(self.excess_sharpe_mean, self.references["oracle"]["excess_sharpe"])
        return out


def oracle_ratio(agent_excess_sharpe: float, oracle_excess_sharpe: float) -> float:
    """The agent's share of the oracle's excess Sharpe ratio; NaN when the oracle has none."""
    return agent_excess_sharpe / oracle_excess_sharpe if oracle_excess_sharpe > 0 else float("nan")


def _reference_metrics(prefix: str, references: dict[str, dict[str, float]]) -> dict[str, float]:
    head = f"{prefix}/" if prefix else ""
    return {f"{head}{name}_{k}": metrics[k] for name, metrics in references.items() for k in REFERENCE_METRICS}


Result = HoldoutResult | CVResult


def metric_keys(holdout: bool) -> list[str]:
    """The metrics ``trainer.objective`` may name for a holdout or a cross-validated run."""
    if holdout:
        return [f"{part}/{name}" for part in HOLDOUT_PARTS for name in BACKTEST_METRICS]
    return [f"cv/{name}" for name in CV_METRICS]


def save_result(result: Result, path: Path) -> None:
    path.write_text(json.dumps({"type": type(result).__name__, **dataclasses.asdict(result)}, indent=2))


def load_result(path: Path) -> Result:
    """The result ``save_result`` wrote."""
    data: dict[str, Any] = json.loads(Path(path).read_text())
    kind = data.pop("type")
    if kind == "HoldoutResult":
        return HoldoutResult(**data)
    if kind == "CVResult":
        splits = tuple(SplitResult(**s) for s in data.pop("splits"))
        moments = ReturnMoments(**data.pop("moments"))
        paths = data.pop("path_sharpes")
        return CVResult(splits=splits, moments=moments, path_sharpes=None if paths is None else tuple(paths), **data)
    raise ValueError(f"{path} holds a {kind!r}, not a result this version writes")
