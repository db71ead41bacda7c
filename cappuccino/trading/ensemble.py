"""How an ensemble's members' target weights become one decision (``trade.ensemble``).

Every rule takes the members' targets (M, A) for one bar and the current weights (A,), and
returns (A,) targets that respect the cash reserve when each member's do (each is an average
of members' targets, or the current weights):

- ``mean``: the members' mean;
- ``median``: per asset, the members' median, scaled down if the medians sum above what the
  members' own totals allow;
- ``majority``: per asset, each member votes up, down or hold (a move of less than the
  no-trade band is hold); the direction most members vote for, if more than half do, is taken,
  with the mean of the agreeing members' targets; otherwise the weight stays;
- ``score_weighted``: the mean weighted by each member's validation objective (members at or
  below zero get no weight; all at or below zero: the plain mean).
"""

from __future__ import annotations

import numpy as np

VOTES = ("mean", "median", "majority", "score_weighted")


def combine(rule: str, targets: np.ndarray, current: np.ndarray, band: float, scores: np.ndarray | None = None) -> np.ndarray:
    """(M, A) member targets, (A,) current weights -> (A,) targets under ``rule`` (module docstring)."""
    if rule == "mean":
        return targets.mean(0)
    if rule == "median":
        median = np.median(targets, 0)
        allowed = targets.sum(1).max()
        return median * min(1.0, allowed / median.sum()) if median.sum() > 0 else median
    if rule == "majority":
        return _majority(targets, current, band)
    if rule == "score_weighted":
        if scores is None or len(scores) != len(targets):
            raise ValueError("score_weighted needs one validation score per member")
        weights = np.clip(scores, 0.0, None)
        return targets.mean(0) if weights.sum() == 0 else weights @ targets / weights.sum()
    raise ValueError(f"trade.ensemble={rule!r} is not a voting rule; choose one of {list(VOTES)}")


def _majority(targets: np.ndarray, current: np.ndarray, band: float) -> np.ndarray:
    move = targets - current  # (M, A)
    votes = np.where(move > band, 1, np.where(move < -band, -1, 0))
    out = current.astype(np.float64).copy()
    for asset in range(targets.shape[1]):
        for direction in (1, -1):
            agreeing = votes[:, asset] == direction
            if agreeing.sum() * 2 > len(targets):
                out[asset] = targets[agreeing, asset].mean()
    total, allowed = out.sum(), targets.sum(1).max()
    return out * (allowed / total) if total > allowed else out
