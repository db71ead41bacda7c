"""Batched long-only portfolio environment in torch: B episodes step at once on one device.

Timing (no look-ahead)
    At decision bar t the agent sees the features of bars t-L+1..t (``window``) and its portfolio
    weights valued at close[t] (``Observation``). Its action becomes target weights, orders fill
    at open[t+1], the portfolio is valued at close[t+1], and the reward is
    ``reward_scale * log(V[t+1] / V[t])`` with V[t] the value at close[t]. Nothing trades at a
    price the agent has seen, and the step taken at t reads no bar after t+1.

Actions and fills
    An action becomes target weights and the target weights orders by the trading rules
    (``cappuccino.trading.rules``: ``target_weights``, ``plan_orders``, ``fill_orders``), the
    same functions a live broker's orders come from. Long-only and unlevered: q >= 0 and
    cash >= 0 always, and the value right after the fill is its value at open[t+1] minus the fees.

Rewards
    "log_return" is the above; "excess_log_return" subtracts the log return of an equal-weight
    buy-and-hold benchmark of the same episode (``equal_weight_buy_and_hold``, the function the
    evaluation uses too), so an episode's rewards sum to
    ``reward_scale * (log(V_end / V_0) - log(B_end / B_0))``.

Episodes
    A segment [start, stop) gives decision bars t in [start + L - 1, stop - 2]
    (``MarketTensors.decision_bars``): the window and the fill bar t + 1 stay inside it, so
    episodes never cross a segment boundary and training sets with gaps (CPCV) work.

    With ``random_start`` every decision bar of every segment has the same chance of being in a
    new episode, however long its segment: an episode of E steps is a window of E bars whose
    first bar u is drawn uniformly from all windows that overlap a segment's n decision bars
    (u from E - 1 bars before the first to the last, n + E - 1 choices per segment), clipped to
    the segment. Each bar lies in exactly E of those windows, so visits per bar are uniform;
    episodes that start or end at a segment's edge are shorter. (Drawing only whole windows
    inside a segment would visit its edges less, and give a segment shorter than E one start
    among thousands: its bars would go unused.) Without ``random_start``, env b always runs
    segments[b] from its first decision bar (evaluation). Every episode starts all cash; an
    ended episode is reset inside ``step`` (auto-reset).

Numbers
    The ledger (prices, cash, holdings, values, fees) is float64 so that value conservation holds
    to float tolerance and 1e-5 BTC minimums are not lost to float32 rounding; observations and
    rewards are float32, StepResult's value, fees and turnover float64. ``step`` has no Python loop over environments and no host synchronisation, so it runs
    asynchronously on CUDA. Same seed -> same episodes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import EllipsisType
from typing import NamedTuple

import torch
from torch import Tensor

from cappuccino.data.tensors import LEDGER_DTYPE, MarketTensors, Segment
from cappuccino.errors import require
from cappuccino.trading.rules import TradingRules, fill_orders, plan_orders, target_weights

REWARDS = ("log_return", "excess_log_return")


@dataclass(frozen=True, kw_only=True)
class EpisodeSampling:
    """How training episodes are drawn and rewarded (the ``env`` config group).

    ``reward``: "excess_log_return" (over equal-weight buy-and-hold) removes the market's common
    moves from the reward and matches the objective; "log_return" is the plain log return.
    ``turnover_penalty`` charges each step's turnover (traded notional / value) once more in the
    reward, beyond the fees its return already paid: a training signal against churn that no
    backtest or metric sees. ``rebalance_band`` replaces the trading rules' no-trade band inside
    training episodes only (None: the rules' own): a band makes the reward flat in any action
    that stays inside it, so exploration noise smaller than the band earns no gradient, while
    backtests and trading keep the rules' band against churn.
    """

    num_envs: int = 64
    episode_length: int = 720  # decision steps per training episode
    initial_cash: float = 100_000.0
    reward: str = "excess_log_return"
    reward_scale: float = 100.0
    turnover_penalty: float = 0.0
    rebalance_band: float | None = None

    def __post_init__(self) -> None:
        require(self.num_envs >= 1, "num_envs", f"must be >= 1, got {self.num_envs}")
        require(self.episode_length >= 2, "episode_length", f"must be >= 2, got {self.episode_length}")
        require(self.initial_cash > 0, "initial_cash", f"must be > 0, got {self.initial_cash}")
        require(self.reward in REWARDS, "reward", f"must be one of {list(REWARDS)}, got {self.reward!r}")
        require(self.reward_scale > 0, "reward_scale", f"must be > 0, got {self.reward_scale}")
        require(self.turnover_penalty >= 0, "turnover_penalty", f"must be >= 0, got {self.turnover_penalty}")
        band = self.rebalance_band
        require(band is None or 0.0 <= band < 1.0, "rebalance_band", f"must be in [0, 1) or null, got {band}")

    def training_rules(self, rules: TradingRules) -> TradingRules:
        """``rules`` with this sampling's training band, if it sets one."""
        return rules if self.rebalance_band is None else replace(rules, rebalance_band=self.rebalance_band)


class Observation(NamedTuple):
    bar: Tensor  # (B,) long: decision bar index t into the market arrays
    weights: Tensor  # (B, A + 1) float32: [cash, asset_1..asset_A] shares of portfolio value at close[t]


class StepResult(NamedTuple):
    obs: Observation  # next observation (already reset where ``done``)
    reward: Tensor  # (B,) float32, scaled by reward_scale
    done: Tensor  # (B,) bool: the episode ended (always a time-limit truncation)
    final_obs: Observation  # the observation an ended episode stopped at (== obs where not done)
    value: Tensor  # (B,) portfolio value at close[t+1] (before any reset)
    fees: Tensor  # (B,) fees paid in this step, in cash units
    turnover: Tensor  # (B,) traded notional / portfolio value at the fill


def equal_weight_quantities(open_first: Tensor, initial_cash: float, fee: float) -> Tensor:
    """(..., A) units bought with 1/A of ``initial_cash`` per asset at ``open_first``, fee included."""
    return initial_cash / open_first.shape[-1] / ((1.0 + fee) * open_first)


def equal_weight_buy_and_hold(open_first: Tensor, close: Tensor, initial_cash: float, fee: float) -> Tensor:
    """Values (..., N) at each ``close`` (..., N, A) of an equal-weight portfolio bought at ``open_first``.

    1/A of ``initial_cash`` goes to each asset at ``open_first`` (..., A) (the open of the first
    fill bar), paying ``fee`` on top of the notional, and is then held. Before that fill the
    benchmark is worth ``initial_cash``.
    """
    quantities = equal_weight_quantities(open_first, initial_cash, fee)  # (..., A)
    return (quantities.unsqueeze(-2) * close).sum(-1)


class _State(NamedTuple):
    """Everything an episode carries; rebuilt from scratch at reset, so nothing else survives."""

    bar: Tensor  # (B,) long decision bar t
    last_bar: Tensor  # (B,) long last decision bar of the episode
    cash: Tensor  # (B,)
    holdings: Tensor  # (B, A)
    value: Tensor  # (B,) value at close[t]
    bench_holdings: Tensor  # (B, A) equal-weight buy-and-hold units
    bench_value: Tensor  # (B,) benchmark value at close[t] (initial cash before its fill)


class PortfolioEnv:
    """B long-only portfolio episodes over the same market, stepped together (see module docstring).

    market:         features (causally normalised: row t uses bars <= t) and prices, on the env's
                    device; prices > 0 inside the segments.
    segments:       bar ranges episodes may use; each needs at least ``lookback + 1`` bars and
                    must lie after the features' warm-up.
    rules:          fees, cash reserve, no-trade band and per-symbol order sizes.
    sampling:       number of envs, episode length, starting cash and reward.
    num_envs:       overrides ``sampling.num_envs``.
    episode_length: decision steps per episode; ``...`` takes sampling.episode_length; None runs
                    each episode to the end of its segment.
    random_start:   sample each episode's segment and first bar; False pins env b to the start
                    of segments[b] (then num_envs must equal len(segments)).
    """

    def __init__(
        self,
        market: MarketTensors,
        segments: Sequence[Segment],
        *,
        rules: TradingRules,
        sampling: EpisodeSampling,
        num_envs: int | None = None,
        random_start: bool = True,
        episode_length: int | None | EllipsisType = ...,
        seed: int = 0,
    ) -> None:
        device = market.device
        self.market = market
        self.rules = rules
        self.sampling = sampling
        self._num_envs = sampling.num_envs if num_envs is None else num_envs
        self._random_start = random_start
        if len(market.symbols) != market.n_assets:
            raise ValueError(
                f"market has {len(market.symbols)} symbols for {market.n_assets} assets: build it with "
                "MarketTensors(..., symbols=...) or MarketTensors.from_market, so the rules find each "
                "asset's minimum order size"
            )
        self._symbol_rules = rules.for_symbols(market.symbols, device)
        self._segments = tuple(segments)
        length = sampling.episode_length if episode_length is ... else episode_length
        self._check_inputs(length)
        self._prices = torch.stack([market.open, market.close], 1)  # (T, 2, A): one gather per step
        # Benchmark units of an episode whose first decision bar is t (bought at open[t+1]).
        self._bench_units = equal_weight_quantities(market.open[1:], sampling.initial_cash, rules.fee)  # (T - 1, A)

        # One row per segment: first decision bar, decision steps, episode windows before it.
        steps = [market.decision_steps(s) for s in self._segments]
        self._episode_length = length
        n_windows = [n + length - 1 for n in steps] if length is not None else [1] * len(steps)
        ends = list(itertools.accumulate(n_windows))
        first_bars = [market.first_decision_bar(s) for s in self._segments]
        rows = list(zip(first_bars, steps, [end - n for end, n in zip(ends, n_windows)]))
        self._segment_table = torch.tensor(rows, device=device)  # (S, 3)
        self._window_ends = torch.tensor(ends, device=device)  # (S,) cumulative episode windows
        self._total_windows = ends[-1]

        self._all_cash = torch.zeros(self.n_assets + 1, dtype=torch.float32, device=device)
        self._all_cash[0] = 1.0
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)
        self._state: _State | None = None

    def _check_inputs(self, episode_length: int | None) -> None:
        if self._num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self._num_envs}")
        if episode_length is not None and episode_length < 1:
            raise ValueError(f"episode_length must be >= 1 or None, got {episode_length}")
        if not self._segments:
            raise ValueError("segments is empty: pass at least one Segment(start, stop)")
        if not self._random_start and self._num_envs != len(self._segments):
            raise ValueError(
                f"random_start=False runs env b on segments[b], so num_envs ({self._num_envs}) must "
                f"equal len(segments) ({len(self._segments)})"
            )
        for segment in self._segments:
            self._check_segment(segment)

    def _check_segment(self, segment: Segment) -> None:
        market = self.market
        if not 0 <= segment.start < segment.stop <= market.n_bars:
            raise ValueError(f"{segment} is not a bar range inside [0, {market.n_bars})")
        if market.decision_steps(segment) < 1:
            raise ValueError(
                f"{segment} has {segment.stop - segment.start} bars, too few for lookback="
                f"{market.lookback}: one step needs lookback + 1 = {market.lookback + 1} bars"
            )
        bars = slice(segment.start, segment.stop)
        if not torch.isfinite(market.features[bars]).all():
            raise ValueError(f"{segment} has non-finite features (warm-up rows?); start it after them")
        prices = torch.stack([market.open[bars], market.close[bars]])
        if not (torch.isfinite(prices).all() and (prices > 0).all()):
            raise ValueError(f"{segment} has non-finite or non-positive open/close prices")

    # ------------------------------------------------------------------------- properties
    @property
    def num_envs(self) -> int:
        return self._num_envs

    @property
    def n_assets(self) -> int:
        return self.market.n_assets

    @property
    def n_features(self) -> int:
        return self.market.n_features

    @property
    def lookback(self) -> int:
        return self.market.lookback

    @property
    def device(self) -> torch.device:
        return self.market.device

    @property
    def reward_scale(self) -> float:
        return self.sampling.reward_scale

    @property
    def cash(self) -> Tensor:
        """(B,) float64 cash after the last fill."""
        return self._require_state().cash

    @property
    def holdings(self) -> Tensor:
        """(B, A) float64 asset units after the last fill."""
        return self._require_state().holdings

    # ---------------------------------------------------------------------------- dynamics
    def window(self, bar: Tensor, out: Tensor | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """(N,) decision bars -> (N, L, A, F) observation windows (``MarketTensors.window``)."""
        return self.market.window(bar, out, dtype)

    def reset(self, seed: int | None = None) -> Observation:
        """Start a fresh episode in every env, all cash; ``seed`` re-seeds the start sampler."""
        if seed is not None:
            self._generator.manual_seed(seed)
        first, last = self._sample_episodes()
        self._state = self._fresh_state(first, last)
        return Observation(first, self._all_cash.expand(self._num_envs, -1).clone())

    def step(self, action: Tensor) -> StepResult:
        """Fill ``action`` (B, A) at open[t+1], value at close[t+1]; auto-reset ended episodes."""
        if action.shape != (self._num_envs, self.n_assets):
            raise ValueError(f"action has shape {tuple(action.shape)}, expected (B={self._num_envs}, A={self.n_assets})")
        return self.step_to(target_weights(action.to(LEDGER_DTYPE), self.rules.cash_reserve))

    def step_to(self, weights: Tensor) -> StepResult:
        """Trade towards target ``weights`` (B, A) (float64, summing to at most 1 - cash reserve)
        at open[t+1], value at close[t+1]; auto-reset ended episodes."""
        state = self._require_state()
        bar = state.bar + 1  # the fill bar, and the next decision bar
        price_open, price_close = self._prices[bar].unbind(1)  # (B, A) each
        orders = plan_orders(state.cash, state.holdings, weights, price_open, self.rules, self._symbol_rules)
        fill = fill_orders(state.cash, state.holdings, orders, price_open, self.rules.fee)
        value = fill.cash + (fill.holdings * price_close).sum(-1)  # (B,)
        log_return = torch.log(value / state.value)
        bench_value = (state.bench_holdings * price_close).sum(-1)
        if self.sampling.reward == "excess_log_return":
            log_return = log_return - torch.log(bench_value / state.bench_value)
        reward = (self.sampling.reward_scale * (log_return - self.sampling.turnover_penalty * fill.turnover)).float()
        done = bar > state.last_bar
        final_obs = Observation(bar, _weights(fill.cash, fill.holdings, price_close, value))

        stepped = _State(bar, state.last_bar, fill.cash, fill.holdings, value, state.bench_holdings, bench_value)
        fresh = self._fresh_state(*self._sample_episodes())
        self._state = _State(*(_where(done, new, old) for new, old in zip(fresh, stepped)))
        obs = Observation(self._state.bar, _where(done, self._all_cash, final_obs.weights))
        return StepResult(obs, reward, done, final_obs, value, fill.fees, fill.turnover)

    # ----------------------------------------------------------------------------- helpers
    def _sample_episodes(self) -> tuple[Tensor, Tensor]:
        """(B,) first and (B,) last decision bar of new episodes; no host sync."""
        length = self._episode_length
        if not self._random_start or length is None:  # env b on segments[b], or whole segments
            first, steps, _ = self._segment_table.unbind(1)
            if self._random_start:  # whole segments, drawn by their number of windows (one each)
                u = torch.randint(self._total_windows, (self._num_envs,), generator=self._generator, device=self.device)
                first, steps, _ = self._segment_table[torch.searchsorted(self._window_ends, u, right=True)].unbind(1)
            return first, first + steps - 1
        # One uniform draw over every segment's windows, located by its cumulative count.
        u = torch.randint(self._total_windows, (self._num_envs,), generator=self._generator, device=self.device)
        first_bar, steps, windows_before = self._segment_table[torch.searchsorted(self._window_ends, u, right=True)].unbind(1)
        start = u - windows_before - (length - 1)  # window start relative to the first decision bar
        first = first_bar + start.clamp(min=0)
        last = first_bar + (start + length).clamp(max=steps) - 1
        return first, last

    def _fresh_state(self, first: Tensor, last: Tensor) -> _State:
        """Every env all cash at ``first``; the only constructor of episode state."""
        B, A = self._num_envs, self.n_assets
        cash = torch.full((B,), self.sampling.initial_cash, dtype=LEDGER_DTYPE, device=self.device)
        zeros = torch.zeros(B, A, dtype=LEDGER_DTYPE, device=self.device)
        return _State(first, last, cash, zeros, cash, self._bench_units[first], cash)

    def _require_state(self) -> _State:
        if self._state is None:
            raise RuntimeError("call reset() before step() or reading the portfolio")
        return self._state


def _weights(cash: Tensor, holdings: Tensor, price: Tensor, value: Tensor) -> Tensor:
    """(B, A + 1) float32 [cash, assets] shares of ``value``."""
    return (torch.cat([cash.unsqueeze(-1), holdings * price], -1) / value.unsqueeze(-1)).float()


def _where(done: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where ``done`` (B,), else ``old``; broadcasts over trailing dims."""
    return torch.where(done.view(-1, *([1] * (old.dim() - 1))), new, old)
