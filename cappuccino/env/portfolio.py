"""Batched long-only portfolio environment in torch: B episodes step at once on one device.

Timing (no look-ahead)
    At decision bar t the agent sees the features of bars t-L+1..t (``window``) and its portfolio
    weights valued at close[t] (``Observation``). Its action becomes target weights, orders fill
    at open[t+1], the portfolio is valued at close[t+1], and the reward is
    ``reward_scale * log(V[t+1] / V[t])`` with V[t] the value at close[t]. Nothing trades at a
    price the agent has seen, and the step taken at t reads no bar after t+1.

Action -> target weights (``target_weights``)
    a = clamp(action, -1, 1); raw = (a + 1) / 2 in [0, 1] per asset; if sum(raw) > 1 then
    raw /= sum(raw); w = raw * (1 - cash_reserve), cash holds the rest. So -1 everywhere is all
    cash, 0 everywhere is equal weight fully invested (less the reserve), and each asset can go to
    zero on its own, which a softmax cannot do.

Fills at open[t+1] (``rebalance``)
    V_open = cash + q.open; target q* = w V_open / open; delta = q* - q, and any |delta| below the
    asset's minimum order size is skipped. Sells go first (cash += notional * (1 - fee)); buys
    cost notional * (1 + fee) and are scaled down together when they would overdraw the cash.
    Long-only and unlevered: q >= 0 and cash >= 0 always, and the value right after the fill is
    V_open minus the fees.

Rewards
    "log_return" is the above; "excess_log_return" subtracts the log return of an equal-weight
    buy-and-hold benchmark of the same episode (``equal_weight_buy_and_hold``, the function the
    evaluation uses too), so an episode's rewards sum to
    ``reward_scale * (log(V_end / V_0) - log(B_end / B_0))``.

Episodes
    A segment [start, stop) gives decision bars t in [start + L - 1, stop - 2]: the window and the
    fill bar t + 1 stay inside it, so episodes never cross a segment boundary and training sets
    with gaps (CPCV) work. With ``random_start`` each new episode picks a (segment, first bar) pair
    uniformly among all valid ones, i.e. a segment with probability proportional to its number of
    valid starts; a segment shorter than ``episode_length`` gives an episode of what fits.
    Without it, env b always starts at the first decision bar of segments[b] (evaluation). Every
    episode starts all cash; an ended episode is reset inside ``step`` (auto-reset).

Numbers
    The ledger (prices, cash, holdings, values, fees) is float64 so that value conservation holds
    to float tolerance and 1e-5 BTC minimums are not lost to float32 rounding; observations and
    rewards are float32, StepResult's value, fees and turnover float64. ``step`` has no Python loop over environments and no host synchronisation, so it runs
    asynchronously on CUDA. Same seed -> same episodes.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from types import EllipsisType
from typing import NamedTuple

import torch
from torch import Tensor

from cappuccino.config import EnvConfig
from cappuccino.data.market import MarketData

LEDGER_DTYPE = torch.float64


@dataclass(frozen=True)
class Segment:
    """A contiguous range of bars [start, stop) that episodes may use; episodes never cross it."""

    start: int
    stop: int


class Observation(NamedTuple):
    bar: Tensor  # (B,) long: decision bar index t into the market arrays
    weights: Tensor  # (B, A + 1) float32: [cash, asset_1..asset_A] shares of portfolio value at close[t]


class StepResult(NamedTuple):
    obs: Observation  # next observation (already reset where ``done``)
    reward: Tensor  # (B,) float32, scaled by env.reward_scale
    done: Tensor  # (B,) bool: the episode ended (always a time-limit truncation)
    final_obs: Observation  # the observation an ended episode stopped at (== obs where not done)
    value: Tensor  # (B,) portfolio value at close[t+1] (before any reset)
    fees: Tensor  # (B,) fees paid in this step, in cash units
    turnover: Tensor  # (B,) traded notional / portfolio value at the fill


class Fill(NamedTuple):
    cash: Tensor  # (B,) after the fill
    holdings: Tensor  # (B, A) asset units after the fill
    fees: Tensor  # (B,) fee * traded notional
    turnover: Tensor  # (B,) traded notional / value before the fill


def decision_steps(segment: Segment, lookback: int) -> int:
    """Decision bars an episode can use in ``segment``: t in [start + L - 1, stop - 2]."""
    return segment.stop - segment.start - lookback


def target_weights(action: Tensor, cash_reserve: float) -> Tensor:
    """(..., A) actions -> (..., A) long-only target weights summing to at most 1 - cash_reserve."""
    raw = (action.clamp(-1.0, 1.0) + 1.0) / 2.0
    raw = raw / raw.sum(-1, keepdim=True).clamp(min=1.0)
    return raw * (1.0 - cash_reserve)


def rebalance(
    cash: Tensor,
    holdings: Tensor,
    weights: Tensor,
    price: Tensor,
    min_order_size: Tensor,
    fee: float,
    band: float = 0.0,
) -> Fill:
    """Trade ``holdings`` (B, A) towards target ``weights`` (B, A) at ``price`` (B, A).

    Orders smaller than ``min_order_size`` (A,) units are skipped, also after buys were scaled
    down to the available cash, so every order sent is one the exchange accepts. Orders worth
    less than ``band`` of the portfolio value are skipped too: a no-trade band keeps a policy
    whose targets drift a little every bar from paying fees on every drift.
    """
    value = cash + (holdings * price).sum(-1)  # (B,)
    delta = weights * value.unsqueeze(-1) / price - holdings  # (B, A)
    too_small = (delta.abs() < min_order_size) | (delta.abs() * price < band * value.unsqueeze(-1))
    delta = delta.masked_fill(too_small, 0.0)
    sell = (-delta).clamp(min=0.0)
    buy = delta.clamp(min=0.0)
    cash = cash + (1.0 - fee) * (sell * price).sum(-1)
    cost = (1.0 + fee) * (buy * price).sum(-1)
    # Fees make a fully invested target cost more than the cash freed; shrink all buys alike.
    scale = torch.where(cost > cash, cash / cost, torch.ones_like(cash))
    buy = buy * scale.unsqueeze(-1)
    buy = buy.masked_fill(buy < min_order_size, 0.0)
    cash = (cash - (1.0 + fee) * (buy * price).sum(-1)).clamp(min=0.0)
    holdings = (holdings - sell + buy).clamp(min=0.0)  # clamp only absorbs rounding of q* - q + q
    notional = ((sell + buy) * price).sum(-1)
    return Fill(cash, holdings, fee * notional, notional / value)


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

    features:       (T, A, F) float32, causally normalised (row t uses bars <= t); its device is
                    the env's device.
    open, close:    (T, A) prices, > 0 inside the segments.
    segments:       bar ranges episodes may use; each needs at least ``lookback + 1`` bars.
    min_order_size: (A,) smallest order per asset in asset units, in the column order of ``open``.
    episode_length: decision steps per episode; ``...`` takes cfg.episode_length; None runs each
                    episode to the end of its segment.
    random_start:   sample each episode's segment and first bar; False pins env b to the start
                    of segments[b] (then num_envs must equal len(segments)).
    """

    def __init__(
        self,
        features: Tensor,
        open: Tensor,
        close: Tensor,
        segments: Sequence[Segment],
        cfg: EnvConfig,
        lookback: int,
        min_order_size: Tensor,
        num_envs: int | None = None,
        random_start: bool = True,
        episode_length: int | None | EllipsisType = ...,
        seed: int = 0,
    ) -> None:
        device = features.device
        self._cfg = cfg
        self._num_envs = cfg.num_envs if num_envs is None else num_envs
        self._lookback = lookback
        self._random_start = random_start
        self._features = features.to(torch.float32)
        self._features_as = {torch.float32: self._features.flatten(1)}  # (T, A * F) per dtype that window() gathers
        self._min_order_size = min_order_size.to(device, LEDGER_DTYPE)
        self._segments = tuple(segments)
        length = cfg.episode_length if episode_length is ... else episode_length
        open, close = open.to(device, LEDGER_DTYPE), close.to(device, LEDGER_DTYPE)
        self._check_inputs(open, close, length)
        self._prices = torch.stack([open, close], 1)  # (T, 2, A): one gather per step
        # Benchmark units of an episode whose first decision bar is t (bought at open[t+1]).
        self._bench_units = equal_weight_quantities(open[1:], cfg.initial_cash, cfg.fee)  # (T - 1, A)

        # One row per segment: first decision bar, steps per episode, valid starts before it.
        steps = [decision_steps(s, lookback) for s in self._segments]
        lengths = steps if length is None else [min(length, n) for n in steps]
        n_starts = [n - e + 1 for n, e in zip(steps, lengths)]
        ends = list(itertools.accumulate(n_starts))
        first_bars = [s.start + lookback - 1 for s in self._segments]
        rows = list(zip(first_bars, lengths, [end - n for end, n in zip(ends, n_starts)]))
        self._segment_table = torch.tensor(rows, device=device)  # (S, 3)
        self._start_ends = torch.tensor(ends, device=device)  # (S,) cumulative valid starts
        self._total_starts = ends[-1]

        self._window_offsets = torch.arange(1 - lookback, 1, device=device)  # (L,)
        self._all_cash = torch.zeros(self.n_assets + 1, dtype=torch.float32, device=device)
        self._all_cash[0] = 1.0
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)
        self._state: _State | None = None

    # ------------------------------------------------------------------------------ build
    @classmethod
    def from_market(
        cls,
        market: MarketData,
        segments: Sequence[Segment],
        cfg: EnvConfig,
        lookback: int,
        device: torch.device | str,
        **kwargs,
    ) -> "PortfolioEnv":
        """Build the tensors from ``market`` (which needs features) on ``device``.

        Minimum order sizes are looked up by symbol in ``cfg.min_order_size``, never by position.
        """
        if market.features is None:
            raise ValueError("market has no features: build them first and attach them with market.with_features(...)")
        missing = [symbol for symbol in market.symbols if symbol not in cfg.min_order_size]
        if missing:
            raise ValueError(
                f"env.min_order_size has no entry for symbol(s) {missing}; add one per symbol, "
                f"e.g. env.min_order_size.{missing[0]}=0.01"
            )
        for segment in segments:
            if segment.start < market.first_valid:
                raise ValueError(
                    f"{segment} starts before market.first_valid={market.first_valid}, inside the "
                    f"feature warm-up; start segments at or after first_valid"
                )
        min_order_size = torch.tensor([cfg.min_order_size[s] for s in market.symbols], dtype=LEDGER_DTYPE)
        return cls(
            torch.as_tensor(market.features, dtype=torch.float32, device=device),
            torch.as_tensor(market.field("open"), dtype=LEDGER_DTYPE, device=device),
            torch.as_tensor(market.field("close"), dtype=LEDGER_DTYPE, device=device),
            segments,
            cfg,
            lookback,
            min_order_size.to(device),
            **kwargs,
        )

    def _check_inputs(self, open: Tensor, close: Tensor, episode_length: int | None) -> None:
        if self._features.dim() != 3:
            raise ValueError(f"features must be (T, A, F), got shape {tuple(self._features.shape)}")
        T, A, _ = self._features.shape
        for name, prices in (("open", open), ("close", close)):
            if prices.shape != (T, A):
                raise ValueError(f"{name} has shape {tuple(prices.shape)}, expected (T={T}, A={A}) like features")
        if self._min_order_size.shape != (A,):
            raise ValueError(f"min_order_size has shape {tuple(self._min_order_size.shape)}, expected (A={A},)")
        if self._lookback < 1:
            raise ValueError(f"lookback must be >= 1, got {self._lookback}")
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
            self._check_segment(segment, open, close)

    def _check_segment(self, segment: Segment, open: Tensor, close: Tensor) -> None:
        n_bars = len(open)
        if not 0 <= segment.start < segment.stop <= n_bars:
            raise ValueError(f"{segment} is not a bar range inside [0, {n_bars})")
        if decision_steps(segment, self._lookback) < 1:
            raise ValueError(
                f"{segment} has {segment.stop - segment.start} bars, too few for lookback="
                f"{self._lookback}: one step needs lookback + 1 = {self._lookback + 1} bars"
            )
        bars = slice(segment.start, segment.stop)
        if not torch.isfinite(self._features[bars]).all():
            raise ValueError(f"{segment} has non-finite features (warm-up rows?); start it after them")
        prices = torch.stack([open[bars], close[bars]])
        if not (torch.isfinite(prices).all() and (prices > 0).all()):
            raise ValueError(f"{segment} has non-finite or non-positive open/close prices")

    # ------------------------------------------------------------------------- properties
    @property
    def num_envs(self) -> int:
        return self._num_envs

    @property
    def n_assets(self) -> int:
        return self._features.shape[1]

    @property
    def n_features(self) -> int:
        return self._features.shape[2]

    @property
    def lookback(self) -> int:
        return self._lookback

    @property
    def device(self) -> torch.device:
        return self._features.device

    @property
    def features(self) -> Tensor:
        """(T, A, F) float32 features that ``window`` gathers from."""
        return self._features

    @property
    def reward_scale(self) -> float:
        return self._cfg.reward_scale

    @property
    def min_order_size(self) -> Tensor:
        """(A,) float64 minimum order size per asset, in asset units."""
        return self._min_order_size

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
        """(N,) decision bars -> (N, L, A, F) features of bars bar-L+1..bar (a gather).

        ``out``, a contiguous (N, L, A, F) tensor of ``dtype``, receives the result: reusing one
        buffer across steps saves allocating (on CPU, page-faulting) N * L * A * F values per step.
        ``dtype=torch.bfloat16`` gathers from a bfloat16 copy of the features, made once: the same
        numbers as gathering in float32 and casting, with a quarter of the memory traffic.
        """
        shape = (bar.shape[0], self._lookback, self.n_assets, self.n_features)
        if out is not None and (out.shape != shape or out.dtype != dtype):
            raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}, expected (N, L, A, F) = {shape} and {dtype}")
        if dtype not in self._features_as:
            self._features_as[dtype] = self._features.to(dtype).flatten(1)  # (T, A * F)
        bars = (bar.unsqueeze(-1) + self._window_offsets).flatten()  # (N * L,)
        flat_out = None if out is None else out.view(-1, self.n_assets * self.n_features)
        flat = torch.index_select(self._features_as[dtype], 0, bars, out=flat_out)  # (N * L, A * F)
        return flat.view(shape)

    def reset(self, seed: int | None = None) -> Observation:
        """Start a fresh episode in every env, all cash; ``seed`` re-seeds the start sampler."""
        if seed is not None:
            self._generator.manual_seed(seed)
        first, last = self._sample_episodes()
        self._state = self._fresh_state(first, last)
        return Observation(first, self._all_cash.expand(self._num_envs, -1).clone())

    def step(self, action: Tensor) -> StepResult:
        """Fill ``action`` (B, A) at open[t+1], value at close[t+1]; auto-reset ended episodes."""
        state = self._require_state()
        if action.shape != (self._num_envs, self.n_assets):
            raise ValueError(f"action has shape {tuple(action.shape)}, expected (B={self._num_envs}, A={self.n_assets})")
        cfg = self._cfg
        bar = state.bar + 1  # the fill bar, and the next decision bar
        price_open, price_close = self._prices[bar].unbind(1)  # (B, A) each
        weights = target_weights(action.to(LEDGER_DTYPE), cfg.cash_reserve)
        fill = rebalance(
            state.cash, state.holdings, weights, price_open, self._min_order_size, cfg.fee, cfg.rebalance_band
        )
        value = fill.cash + (fill.holdings * price_close).sum(-1)  # (B,)
        log_return = torch.log(value / state.value)
        bench_value = (state.bench_holdings * price_close).sum(-1)
        if cfg.reward == "excess_log_return":
            log_return = log_return - torch.log(bench_value / state.bench_value)
        reward = (cfg.reward_scale * log_return).float()
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
        if not self._random_start:  # env b on segments[b]
            first, steps, _ = self._segment_table.unbind(1)
        else:
            # One uniform draw over all (segment, first bar) pairs, located by its cumulative count.
            u = torch.randint(
                self._total_starts, (self._num_envs,), generator=self._generator, device=self.device
            )
            row = self._segment_table[torch.searchsorted(self._start_ends, u, right=True)]  # (B, 3)
            first, steps, starts_before = row.unbind(1)
            first = first + u - starts_before
        return first, first + steps - 1

    def _fresh_state(self, first: Tensor, last: Tensor) -> _State:
        """Every env all cash at ``first``; the only constructor of episode state."""
        B, A = self._num_envs, self.n_assets
        cash = torch.full((B,), self._cfg.initial_cash, dtype=LEDGER_DTYPE, device=self.device)
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
