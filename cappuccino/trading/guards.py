"""Risk guards between the ensemble's targets and the orders; each verdict is logged with its reason.

Per bar, in order:

1. **Data.** No order when the newest bar is stale (older than ``stale_after_bars`` intervals at
   decision time) or corrupt (NaN, zero or negative prices, high below low, open or close
   outside [low, high]).
2. **Drawdown kill switch.** When equity falls ``max_drawdown`` below its peak, the targets go
   to cash (flatten) and stay there: trading resumes only after a person restarts the trader
   with ``trade.resume_after_kill=true``, and then not before ``cooldown_bars`` bars after the kill.
3. **Daily loss limit.** When equity falls ``daily_loss_limit`` below its value at the first
   bar of the UTC day, no order is placed for the rest of that day.
4. **Maximum weight** per asset: targets above ``max_weight`` are cut to it.
5. **Maximum order notional** (``cap_order``): an order worth more is cut to it.

The kill, the peak and the day's start are kept in the state file, so they hold across restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cappuccino.errors import require


@dataclass(frozen=True, kw_only=True)
class RiskGuards:
    """The guards' limits (the ``trade.guards`` settings), checked once."""

    max_weight: float = 0.5
    max_order_notional: float = 50_000.0
    max_drawdown: float = 0.25
    daily_loss_limit: float = 0.10
    stale_after_bars: float = 2.0
    cooldown_bars: int = 24

    def __post_init__(self) -> None:
        require(0.0 < self.max_weight <= 1.0, "max_weight", f"must be in (0, 1], got {self.max_weight}")
        require(self.max_order_notional > 0, "max_order_notional", f"must be > 0, got {self.max_order_notional}")
        require(0.0 < self.max_drawdown < 1.0, "max_drawdown", f"must be in (0, 1), got {self.max_drawdown}")
        require(0.0 < self.daily_loss_limit < 1.0, "daily_loss_limit", f"must be in (0, 1), got {self.daily_loss_limit}")
        require(self.stale_after_bars > 0, "stale_after_bars", f"must be > 0, got {self.stale_after_bars}")
        require(self.cooldown_bars >= 0, "cooldown_bars", f"must be >= 0, got {self.cooldown_bars}")


@dataclass
class GuardState:
    """What the guards remember between bars (and restarts, through the state file)."""

    peak_equity: float = 0.0
    day: str = ""
    day_start_equity: float = 0.0
    stopped_day: str = ""  # the UTC day the daily loss limit fired on: no orders until it ends
    killed_at: int | None = None  # the bar the kill switch fired at
    resume_from: int | None = None  # a restart with the explicit flag: trading resumes at this bar

    def as_meta(self) -> dict[str, Any]:
        return {f"guards.{k}": v for k, v in vars(self).items()}

    @classmethod
    def from_meta(cls, read: Any) -> GuardState:
        return cls(**{k: read(f"guards.{k}", getattr(cls(), k)) for k in vars(cls())})


@dataclass(frozen=True)
class Verdict:
    targets: np.ndarray  # (A,) after the guards
    trade: bool  # False: place no order at this bar
    reasons: list[str]  # every guard that acted, and why


def bar_problems(ohlcv: np.ndarray, symbols: tuple[str, ...]) -> list[str]:
    """What is wrong with one bar's (A, 5) OHLCV, per symbol; empty when it may be traded on."""
    problems = []
    for symbol, (open_, high, low, close, volume) in zip(symbols, ohlcv):
        prices = np.array([open_, high, low, close])
        if not np.all(np.isfinite(prices)) or not np.isfinite(volume):
            problems.append(f"{symbol}: NaN or infinite value")
        elif np.any(prices <= 0):
            problems.append(f"{symbol}: zero or negative price")
        elif high < low or not (low <= open_ <= high and low <= close <= high):
            problems.append(f"{symbol}: inconsistent OHLC (high {high}, low {low}, open {open_}, close {close})")
    return problems


def judge(
    guards: RiskGuards,
    state: GuardState,
    *,
    bar: int,
    bar_time: pd.Timestamp,
    now: pd.Timestamp,
    interval: pd.Timedelta,
    ohlcv: np.ndarray,
    symbols: tuple[str, ...],
    equity: float,
    targets: np.ndarray,
) -> Verdict:
    """The guards' verdict at the close of ``bar`` (module docstring); updates ``state``."""
    problems = bar_problems(ohlcv, symbols)
    age = (now - bar_time) / interval
    if age > guards.stale_after_bars:
        problems.append(f"newest bar is {age:.1f} intervals old (trade.guards.stale_after_bars={guards.stale_after_bars:g})")
    if problems:
        return Verdict(targets, False, [f"data: {p}" for p in problems])

    reasons = []
    state.peak_equity = max(state.peak_equity, equity)
    drawdown = 1.0 - equity / state.peak_equity
    if state.killed_at is None and drawdown >= guards.max_drawdown:
        state.killed_at, state.resume_from = bar, None
        reasons.append(f"kill switch: drawdown {drawdown:.1%} >= {guards.max_drawdown:.0%}; flattening, then no trading until a restart with trade.resume_after_kill=true")
    if state.killed_at is not None:
        if state.resume_from is None or bar < state.resume_from:
            reasons.append("kill switch holds: flat" if state.resume_from is None else f"cool-down after the kill until bar {state.resume_from}")
            return Verdict(np.zeros_like(targets), True, reasons)
        reasons.append(f"kill switch cleared by the restart flag at bar {bar}")
        state.killed_at, state.resume_from, state.peak_equity = None, None, equity

    day = bar_time.strftime("%Y-%m-%d")
    if day != state.day:
        state.day, state.day_start_equity = day, equity
    day_loss = 1.0 - equity / state.day_start_equity
    if day_loss >= guards.daily_loss_limit and state.stopped_day != day:
        state.stopped_day = day
        reasons.append(f"daily loss limit: {day_loss:.1%} since the day's first bar >= {guards.daily_loss_limit:.0%}; no orders until {day} ends")
    if state.stopped_day == day:
        return Verdict(targets, False, reasons or [f"daily loss limit reached earlier on {day}: no orders"])

    if np.any(targets > guards.max_weight):
        reasons.append(f"max weight: targets above {guards.max_weight:.0%} cut to it")
        targets = np.minimum(targets, guards.max_weight)
    return Verdict(targets, True, reasons)


def request_resume(state: GuardState, next_bar: int, guards: RiskGuards) -> None:
    """The explicit restart flag: a kill recorded before this start clears after the cool-down."""
    if state.killed_at is not None:
        state.resume_from = max(next_bar, state.killed_at + guards.cooldown_bars)


def cap_order(qty: float, price: float, guards: RiskGuards) -> tuple[float, str | None]:
    """``qty`` cut so that ``qty * price`` is at most the maximum order notional, and why."""
    if qty * price <= guards.max_order_notional:
        return qty, None
    return guards.max_order_notional / price, f"max order notional: {qty * price:,.0f} cut to {guards.max_order_notional:,.0f}"
