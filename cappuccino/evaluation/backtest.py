"""Deterministic backtests of a policy, and of the equal-weight buy-and-hold benchmark, on the
same bars with the same fees and fill rules: both go through the environment and the trading
rules, the decision path a live trader takes too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from cappuccino.data.tensors import MarketTensors, Segment
from cappuccino.env.portfolio import EpisodeSampling, PortfolioEnv, equal_weight_buy_and_hold
from cappuccino.evaluation.metrics import performance_metrics
from cappuccino.models.loading import Policy
from cappuccino.trading.rules import TradingRules


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
        out["annual_turnover"] = self.turnover * periods_per_year / max(agent["n_periods"], 1)
        return out


@torch.no_grad()
def backtest(
    policy: Policy | BarRule, market: MarketTensors, segments: Sequence[Segment], rules: TradingRules, initial_cash: float
) -> list[Backtest]:
    """Run ``policy`` through each of ``segments`` once, from its first decision bar, all cash.

    The segments step together, one env each. A deterministic policy depends on its own past
    trades only through the portfolio weights it observes, so the bars of one segment must run
    in order, one forward pass per bar; separate segments are independent and share every
    forward pass (batch = number of segments). A segment that ends first keeps stepping,
    auto-reset, until the longest one ends; those steps are not recorded.
    """
    if not segments:
        return []
    sampling = EpisodeSampling(num_envs=len(segments), initial_cash=initial_cash)
    env = PortfolioEnv(market, list(segments), rules=rules, sampling=sampling, random_start=False, episode_length=None)
    obs = env.reset()
    first_bars = obs.bar.tolist()
    lengths = [len(market.decision_bars(segment)) for segment in segments]  # steps until each one ends
    if isinstance(policy, BarRule):  # a reference rule reading the bar itself (the oracle)
        decide = policy.target_weights_at
    else:
        def decide(bars: Tensor, weights: Tensor, cash_reserve: float) -> Tensor:
            return policy.target_weights(env.window(bars), weights, cash_reserve)

    values, fees, turnover = [], [], []  # per step, (B,) each: no host sync inside the loop
    for _ in range(max(lengths)):
        step = env.step_to(decide(obs.bar, obs.weights, rules.cash_reserve))
        values.append(step.value)
        fees.append(step.fees)
        turnover.append(step.turnover)
        obs = step.obs
    value, fee, traded = (torch.stack(x).cpu().numpy() for x in (values, fees, turnover))  # (S, B) each
    return [
        _segment_backtest(market, first_bars[b], value[:n, b], float(fee[:n, b].sum()), float(traded[:n, b].sum()), rules, initial_cash)
        for b, n in enumerate(lengths)
    ]


def _segment_backtest(
    market: MarketTensors, first_bar: int, values: np.ndarray, fees: float, turnover: float, rules: TradingRules, initial_cash: float
) -> Backtest:
    """One segment's backtest from its per-step portfolio values, with buy-and-hold on its bars."""
    bars = np.arange(first_bar, first_bar + len(values) + 1)
    held = equal_weight_buy_and_hold(market.open[first_bar + 1], market.close[first_bar + 1 : bars[-1] + 1], initial_cash, rules.fee)
    benchmark = np.concatenate([[initial_cash], held.cpu().numpy()])
    equity = np.concatenate([[initial_cash], values]).astype(np.float64)
    return Backtest(bars, equity, benchmark, fees, turnover)


@runtime_checkable
class BarRule(Protocol):
    """A fixed rule that decides from the decision bars themselves, not the observed windows:
    a reference that knows the market's generator (``references.OracleRule``)."""

    def target_weights_at(self, bars: Tensor, weights: Tensor, cash_reserve: float) -> Tensor: ...


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
