"""Scores of a configuration across cross-validation splits.

Per split, the agent's Sharpe and the equal-weight buy-and-hold benchmark's Sharpe on that
split's test groups (stitched, same fees). Objective = mean(agent - benchmark) - penalty *
std(agent), the original system's risk-adjusted score (penalty 0.1 by default). For CPCV the
test groups are also stitched into the phi backtest paths, each covering every group once.
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
        sharpes = np.array([stitch([tests[i][j] for i, j in path]).metrics(periods_per_year)["sharpe"] for path in paths])
        out.update({f"cv/path{p}/sharpe": float(s) for p, s in enumerate(sharpes)})
        out.update({"cv/path_sharpe_mean": float(sharpes.mean()), "cv/path_sharpe_min": float(sharpes.min())})
    return out
