"""Deterministic backtests of a policy, and of the equal-weight buy-and-hold benchmark, on the
same bars with the same fees and fill rules (both go through the environment's code)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cappuccino.config import EnvConfig
from cappuccino.env.portfolio import PortfolioEnv, Segment, equal_weight_buy_and_hold
from cappuccino.evaluation.metrics import performance_metrics

# (window (N, L, A, F), weights (N, A + 1)) -> action (N, A)
Policy = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Backtest:
    """Portfolio values at the close of ``bars``: bars[0] is the first decision bar, where the
    portfolio is still all cash; one value per bar after it."""

    bars: np.ndarray  # (N + 1,)
    equity: np.ndarray  # (N + 1,)
    benchmark: np.ndarray  # (N + 1,) equal-weight buy-and-hold, same fees
    fees_paid: float
    turnover: float  # summed per-step turnover (1.0 = the portfolio traded once over)

    def metrics(self, periods_per_year: float) -> dict[str, float]:
        """Agent metrics, ``benchmark_``-prefixed benchmark metrics, and the Sharpe difference."""
        agent = performance_metrics(self.equity, periods_per_year, self.fees_paid, self.turnover)
        bench = performance_metrics(self.benchmark, periods_per_year)
        out = dict(agent)
        out.update({f"benchmark_{k}": v for k, v in bench.items() if k not in ("fees_paid", "turnover", "n_periods")})
        out["excess_sharpe"] = agent["sharpe"] - bench["sharpe"]
        return out


@torch.no_grad()
def backtest(
    policy: Policy,
    features: Tensor,
    open: Tensor,
    close: Tensor,
    segment: Segment,
    cfg: EnvConfig,
    lookback: int,
    min_order_size: Tensor,
) -> Backtest:
    """Run ``policy`` through the whole of ``segment`` once, from its first observable bar."""
    env = PortfolioEnv(
        features, open, close, [segment], cfg, lookback, min_order_size,
        num_envs=1, random_start=False, episode_length=None,
    )
    obs = env.reset()
    first_bar = int(obs.bar[0])
    values, fees, turnover = [cfg.initial_cash], 0.0, 0.0
    while True:
        step = env.step(policy(env.window(obs.bar), obs.weights))
        values.append(float(step.value[0]))
        fees += float(step.fees[0])
        turnover += float(step.turnover[0])
        if bool(step.done[0]):
            break
        obs = step.obs
    bars = np.arange(first_bar, first_bar + len(values))
    held = equal_weight_buy_and_hold(open[first_bar + 1], close[first_bar + 1 : bars[-1] + 1], cfg.initial_cash, cfg.fee)
    benchmark = np.concatenate([[cfg.initial_cash], held.cpu().numpy().astype(np.float64)])
    return Backtest(bars, np.asarray(values, dtype=np.float64), benchmark, fees, turnover)


def random_policy(n_assets: int, seed: int) -> Policy:
    """Uniform actions in [-1, 1]: the baseline a learned policy must clearly beat."""
    generator = torch.Generator().manual_seed(seed)

    def act(window: Tensor, weights: Tensor) -> Tensor:
        action = torch.rand(window.shape[0], n_assets, generator=generator) * 2 - 1
        return action.to(window.device)

    return act


def stitch(backtests: Sequence[Backtest]) -> Backtest:
    """Join backtests of disjoint periods into one by chaining their per-bar returns, as CPCV
    stitches test groups into backtest paths. Bars may jump between pieces."""
    first = backtests[0]
    if len(backtests) == 1:
        return first

    def chain(series: list[np.ndarray]) -> np.ndarray:
        growth = np.concatenate([s[1:] / s[:-1] for s in series])
        return series[0][0] * np.concatenate([[1.0], np.cumprod(growth)])

    return Backtest(
        bars=np.concatenate([first.bars, *(b.bars[1:] for b in backtests[1:])]),
        equity=chain([b.equity for b in backtests]),
        benchmark=chain([b.benchmark for b in backtests]),
        fees_paid=float(sum(b.fees_paid for b in backtests)),
        turnover=float(sum(b.turnover for b in backtests)),
    )
