"""Scores of a configuration across cross-validation splits.

Per split, the agent's Sharpe and the equal-weight buy-and-hold benchmark's Sharpe on that
split's test groups (stitched, same fees). Objective = mean(agent - benchmark) - penalty *
std(agent), the original system's risk-adjusted score (penalty 0.1 by default). For CPCV the
test groups are also stitched into the phi backtest paths, each covering every group once.

``cv/sharpe_per_period``, ``cv/n_periods``, ``cv/skewness`` and ``cv/kurtosis`` describe one whole
out-of-sample history of per-bar returns, the inputs of the deflated Sharpe ratio: averaged over
the CPCV paths when there are paths, else of the splits' test returns one after the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cappuccino.evaluation.backtest import Backtest, stitch

CV_METRICS = ("objective", "excess_sharpe_mean", "sharpe_mean", "sharpe_std", "benchmark_sharpe_mean")


def cv_metrics(
    tests: Mapping[int, Sequence[Backtest]],
    periods_per_year: float,
    std_penalty: float,
    paths: Sequence[Sequence[tuple[int, int]]] | None = None,
) -> dict[str, float]:
    """``tests[i]``: split i's test-group backtests in bar order; ``paths`` as
    :meth:`CombinatorialPurgedCV.paths` gives them (only when every split ran)."""
    per_split = {i: stitch(results).metrics(periods_per_year) for i, results in tests.items()}
    agent = np.array([m["sharpe"] for m in per_split.values()])
    excess = np.array([m["excess_sharpe"] for m in per_split.values()])
    out = {f"split{i}/test/{k}": v for i, m in per_split.items() for k, v in m.items()}
    out.update(
        {
            "cv/excess_sharpe_mean": float(excess.mean()),
            "cv/sharpe_mean": float(agent.mean()),
            "cv/sharpe_std": float(agent.std()),
            "cv/benchmark_sharpe_mean": float((agent - excess).mean()),
            "cv/objective": float(excess.mean() - std_penalty * agent.std()),
        }
    )
    if paths is not None:
        histories = [stitch([tests[i][j] for i, j in path]) for path in paths]
        sharpes = np.array([history.metrics(periods_per_year)["sharpe"] for history in histories])
        out.update({f"cv/path{p}/sharpe": float(s) for p, s in enumerate(sharpes)})
        out.update({"cv/path_sharpe_mean": float(sharpes.mean()), "cv/path_sharpe_min": float(sharpes.min())})
    else:
        histories = [stitch([result for i in sorted(tests) for result in tests[i]])]
    moments = [return_moments(history.equity) for history in histories]
    out.update({f"cv/{key}": float(np.mean([m[key] for m in moments])) for key in moments[0]})
    return out


def return_moments(equity: np.ndarray) -> dict[str, float]:
    """Per-period (not annualised) Sharpe, number of returns, skewness and plain (non-excess,
    normal = 3) kurtosis of the simple returns of ``equity``: what ``deflated_sharpe_ratio`` takes."""
    returns = np.diff(equity) / equity[:-1]  # (N,)
    centered = returns - returns.mean()
    variance = np.mean(centered**2)
    std = returns.std(ddof=1)
    return {
        "sharpe_per_period": float(returns.mean() / std) if std > 0 else 0.0,
        "n_periods": float(len(returns)),
        "skewness": float(np.mean(centered**3) / variance**1.5) if variance > 0 else 0.0,
        "kurtosis": float(np.mean(centered**4) / variance**2) if variance > 0 else 3.0,
    }
