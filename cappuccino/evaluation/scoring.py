"""Scoring a trained policy: deterministic backtests of a split's validation and test segments,
and the scores of a configuration across cross-validation splits.

Per split, the agent's Sharpe and the equal-weight buy-and-hold benchmark's Sharpe on that
split's test groups (stitched, same fees). Objective = mean(agent - benchmark) - penalty *
std(agent), the original system's risk-adjusted score (penalty 0.1 by default). For CPCV the
test groups are also stitched into the phi backtest paths, each covering every group once.

The moments (``ReturnMoments``) describe one whole out-of-sample history of per-bar returns, the
inputs of the deflated Sharpe ratio: averaged over the CPCV paths when there are paths, else of
the splits' test returns one after the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cappuccino.data.tensors import MarketTensors
from cappuccino.errors import ConfigError
from cappuccino.evaluation.backtest import Backtest, backtest, stitch
from cappuccino.evaluation.results import CVResult, HoldoutResult, ReturnMoments, SplitResult, metric_keys
from cappuccino.evaluation.splits import Split
from cappuccino.models.loading import Policy
from cappuccino.trading.rules import TradingRules

SplitBacktests = dict[str, list[Backtest]]  # "val" and "test": one backtest per segment


def evaluate(policy: Policy, market: MarketTensors, split: Split, rules: TradingRules, initial_cash: float) -> SplitBacktests:
    """Deterministic backtests of every validation and test segment of ``split``, each on its own.

    The validation segments form one batch and the test segments another (``backtest``), as
    periodic validation and a test-only replay of a checkpoint batch them: a batch's size changes
    the matmuls' float rounding, so each part always gets the same numbers.
    """
    return {
        part: backtest(policy, market, segments, rules, initial_cash)
        for part, segments in (("val", split.validation), ("test", split.test))
    }


def score_holdout(backtests: SplitBacktests, periods_per_year: float) -> HoldoutResult:
    return HoldoutResult(**{part: stitch(runs).metrics(periods_per_year) for part, runs in backtests.items()})


def score_cv(
    tests: Mapping[int, Sequence[Backtest]],
    periods_per_year: float,
    std_penalty: float,
    paths: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> CVResult:
    """``tests[i]``: split i's test-group backtests in bar order; ``paths`` as
    :meth:`CombinatorialPurgedCV.paths` gives them (only when every split ran)."""
    splits = tuple(SplitResult(i, stitch(results).metrics(periods_per_year)) for i, results in tests.items())
    agent = np.array([s.test["sharpe"] for s in splits])
    excess = np.array([s.test["excess_sharpe"] for s in splits])
    path_sharpes = None
    if paths is not None:
        histories = [stitch([tests[i][j] for i, j in path]) for path in paths]
        path_sharpes = tuple(float(h.metrics(periods_per_year)["sharpe"]) for h in histories)
    else:
        histories = [stitch([result for i in sorted(tests) for result in tests[i]])]
    moments = [return_moments(history.equity) for history in histories]
    return CVResult(
        splits=splits,
        excess_sharpe_mean=float(excess.mean()),
        sharpe_mean=float(agent.mean()),
        sharpe_std=float(agent.std()),
        benchmark_sharpe_mean=float((agent - excess).mean()),
        objective=float(excess.mean() - std_penalty * agent.std()),
        moments=ReturnMoments(**{k: float(np.mean([getattr(m, k) for m in moments])) for k in ReturnMoments.__dataclass_fields__}),
        path_sharpes=path_sharpes,
    )


def oos_excess_returns(tests: Mapping[int, Sequence[Backtest]], paths: Sequence[Sequence[tuple[int, int]]] | None = None) -> np.ndarray:
    """(T,) one out-of-sample history of per-bar excess returns (the agent's simple return minus
    the benchmark's), each test bar once: with CPCV's ``paths``, the mean over the paths at each
    bar (every path covers every group once, in bar order); else the splits' test pieces in split
    order. Disjoint blocks of it are what CSCV (the probability of backtest overfitting) needs."""

    def excess(pieces: Sequence[Backtest]) -> np.ndarray:
        history = stitch(pieces)
        return np.diff(history.equity) / history.equity[:-1] - np.diff(history.benchmark) / history.benchmark[:-1]

    if paths is None:
        return excess([result for i in sorted(tests) for result in tests[i]])
    return np.mean([excess([tests[i][j] for i, j in path]) for path in paths], axis=0)


def return_moments(equity: np.ndarray) -> ReturnMoments:
    """The moments of the simple returns of ``equity`` (what ``deflated_sharpe_ratio`` takes)."""
    returns = np.diff(equity) / equity[:-1]  # (N,)
    centered = returns - returns.mean()
    variance = np.mean(centered**2)
    std = returns.std(ddof=1)
    return ReturnMoments(
        sharpe_per_period=float(returns.mean() / std) if std > 0 else 0.0,
        n_periods=float(len(returns)),
        skewness=float(np.mean(centered**3) / variance**1.5) if variance > 0 else 0.0,
        kurtosis=float(np.mean(centered**4) / variance**2) if variance > 0 else 3.0,
    )


def objective_key(objective: str | None, holdout: bool) -> str:
    """The metric returned to Hydra. A holdout run may only optimise its validation segments:
    an objective read from the test segments would tune on test data. Cross-validated runs
    optimise ``cv/*`` scores, which by design are measured on each split's held-out test groups."""
    chosen = objective or ("val/excess_sharpe" if holdout else "cv/objective")
    known = metric_keys(holdout)
    if holdout and chosen.startswith("test/") and chosen in known:
        allowed = [key for key in known if key.startswith("val/")]
        raise ConfigError(
            f"trainer.objective: {chosen!r} is measured on the test segments, and optimising it would tune "
            f"on test data; choose a validation metric: {allowed}"
        )
    if chosen not in known:
        scope = "validation metrics of cv=holdout" if holdout else (
            "cross-validation scores, measured by design on each split's held-out test groups"
        )
        allowed = [key for key in known if not key.startswith("test/")]
        raise ConfigError(f"trainer.objective: {chosen!r} is not one of the {scope}; choose one of {allowed}")
    return chosen


def objective_definition(key: str, std_penalty: float = 0.0) -> str:
    """What the objective ``key`` measures, in words, for the run's tags."""
    if key == "cv/objective":
        return (
            f"mean test excess Sharpe over the cv splits minus {std_penalty:g} x the std of their agent Sharpe "
            "(cv.std_penalty); each split's test groups are out of sample, after fees"
        )
    part, _, metric = key.partition("/")
    where = {"val": "the validation segments' backtest", "cv": "the cross-validation splits' test backtests"}[part]
    return f"{metric} of {where}, after fees (excess: minus equal-weight buy-and-hold's on the same bars)"

