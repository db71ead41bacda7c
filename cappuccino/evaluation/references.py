"""Reference strategies an agent is scored beside, on the same bars, fees and fill rules.

- **oracle** (synthetic markets only): a fixed rule that trades on the generator's true
  conditional expected returns (``cappuccino.data.synthetic.planted_signal``). Each asset starts
  held at the benchmark's weight; it is sold when its expected gain over the signal's mean life
  (``1 / (1 - rho)`` bars) falls below minus the round-trip cost (two fees), and bought back when
  that gain exceeds the round-trip cost. A reference, not an optimum: a sizing rule, another
  horizon or threshold, or shorting would do better; it shows what the planted edge is worth
  after fees to a simple long-only rule that knows it.
- **random**: the action distribution of an untrained agent (mean 0, standard deviation
  ``exp(agent.init_log_std)``), sampled every bar: what exploring alone costs in fees.
- **flat**: hold cash (zero return, zero risk, no fees).
- **equal_weight**: always targets equal weight (an agent's action 0 on every asset), so it
  rebalances through the no-trade band where buy-and-hold, bought once, lets weights drift. It
  has no skill, yet its excess Sharpe is not 0: rebalancing gains or loses with the bars (a
  trending stretch costs it). An agent's excess Sharpe is read against this line, not against 0.

Buy-and-hold (equal weight, same fees) is in every backtest already (``Backtest.benchmark``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from cappuccino.data.market import MarketData
from cappuccino.data.synthetic import PlantedSignal
from cappuccino.data.tensors import LEDGER_DTYPE, MarketTensors, Segment
from cappuccino.evaluation.backtest import Backtest, backtest, stitch
from cappuccino.trading.rules import TradingRules, target_weights



class OracleRule:
    """The module's oracle: target weights from the known expected gains.

    ``gain[t, a]`` is the expected simple return of holding asset a over the signal's mean life
    after the close of bar t (``PlantedSignal.horizon_gain``), in the market's symbol order. Which
    assets are held is the rule's state: it starts with all held at every episode's first bar
    (one that does not follow the previous call's bar), like the benchmark.
    """

    def __init__(self, gain: Tensor, round_trip_cost: float) -> None:
        self.gain = gain  # (T, A)
        self.threshold = round_trip_cost
        self._held: Tensor | None = None  # (B, A) bool
        self._bars: Tensor | None = None  # (B,) the bars of the previous call

    def target_weights_at(self, bars: Tensor, weights: Tensor, cash_reserve: float) -> Tensor:
        gain = self.gain[bars]  # (B, A)
        new_episode = torch.ones_like(bars, dtype=torch.bool).unsqueeze(-1)  # (B, 1)
        previous = torch.ones_like(gain, dtype=torch.bool)  # a new episode starts held
        if self._held is not None and self._bars is not None and self._held.shape == gain.shape:
            new_episode = (bars != self._bars + 1).unsqueeze(-1)
            previous = self._held | new_episode
        held = (previous & (gain >= -self.threshold)) | (~previous & (gain > self.threshold))
        self._held, self._bars = held, bars.clone()
        # A kept position keeps its weight (it drifts with its price, as buy-and-hold's does); a
        # new one gets the benchmark's share.
        current = weights[..., 1:].to(LEDGER_DTYPE)  # (B, A), the cash column dropped
        share = torch.full_like(current, (1.0 - cash_reserve) / gain.shape[-1])
        kept = held & previous & ~new_episode
        return torch.where(kept, current, torch.where(held, share, torch.zeros_like(current)))


class FlatPolicy:
    """All cash, always."""

    def target_weights(self, window: Tensor, weights: Tensor, cash_reserve: float) -> Tensor:
        batch, _, n_assets, _ = window.shape  # (B, L, A, F)
        return torch.zeros(batch, n_assets, dtype=LEDGER_DTYPE, device=window.device)


class EqualWeightPolicy:
    """Action 0 on every asset, every bar: equal target weights less the cash reserve."""

    def target_weights(self, window: Tensor, weights: Tensor, cash_reserve: float) -> Tensor:
        batch, _, n_assets, _ = window.shape  # (B, L, A, F)
        return target_weights(torch.zeros(batch, n_assets, dtype=LEDGER_DTYPE, device=window.device), cash_reserve)


class RandomPolicy:
    """Gaussian actions of mean 0 and standard deviation ``exp(log_std)`` each bar: an untrained
    agent's (its actor head starts near zero), mapped to weights as the agent's are."""

    def __init__(self, n_assets: int, seed: int, log_std: float) -> None:
        self.n_assets, self.std = n_assets, math.exp(log_std)
        self.generator = torch.Generator().manual_seed(seed)

    def target_weights(self, window: Tensor, weights: Tensor, cash_reserve: float) -> Tensor:
        action = torch.randn(window.shape[0], self.n_assets, generator=self.generator, dtype=LEDGER_DTYPE) * self.std
        return target_weights(action.to(window.device), cash_reserve)


def oracle_gain(signal: PlantedSignal, market: MarketData, device: torch.device | str) -> Tensor:
    """(T, A) ``signal.horizon_gain()`` in ``market``'s symbol order, on ``device``."""
    order = [signal.symbols.index(s) for s in market.symbols]
    return torch.as_tensor(signal.horizon_gain()[:, order], dtype=LEDGER_DTYPE, device=device)


def reference_backtests(
    market: MarketTensors,
    segments: Sequence[Segment],
    rules: TradingRules,
    initial_cash: float,
    *,
    gain: Tensor | None,
    init_log_std: float,
    seed: int,
) -> dict[str, list[Backtest]]:
    """Each reference's backtests, one per segment of ``segments`` (as ``backtest`` gives them);
    no oracle without ``gain``."""
    policies: dict[str, object] = {
        "random": RandomPolicy(market.n_assets, seed, init_log_std),
        "flat": FlatPolicy(),
        "equal_weight": EqualWeightPolicy(),
    }
    if gain is not None:
        policies = {"oracle": OracleRule(gain, 2.0 * rules.fee), **policies}
    return {name: backtest(policy, market, segments, rules, initial_cash) for name, policy in policies.items()}  # type: ignore[arg-type]


def reference_metrics(runs: Mapping[str, Sequence[Backtest]], periods_per_year: float) -> dict[str, dict[str, float]]:
    """Each reference's metrics over its segments, stitched (as a split's agent is scored)."""
    return {name: stitch(pieces).metrics(periods_per_year) for name, pieces in runs.items()}


def mean_reference_metrics(per_split: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Each reference's metrics averaged over splits (as ``cv/excess_sharpe_mean`` averages the agent's)."""
    if not per_split:
        return {}
    return {
        name: {key: float(np.mean([split[name][key] for split in per_split])) for key in per_split[0][name]}
        for name in per_split[0]
    }


__all__ = [
    "EqualWeightPolicy",
    "FlatPolicy",
    "OracleRule",
    "RandomPolicy",
    "oracle_gain",
    "reference_backtests",
    "mean_reference_metrics",
    "reference_metrics",
]
