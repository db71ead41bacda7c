"""A session on a real account (``broker=alpaca_paper``): each newly closed bar, traded once.

Per loop: the trailing bars (long enough for every member's features and window:
``feature_memory + lookback`` bars, with a margin) are read from Alpaca with the data group's
own source and cleaning (``data=alpaca_1h``), without a cache; bars still forming are left out.
If the newest closed bar is one the state file has not finished (a new bar, or one a killed
session left half done), each member's window is built with the training code's features over
those bars, and the trader steps; the guards judge the newest bar as Alpaca sent it, before any
repair. Otherwise the loop sleeps until the next bar closes (plus ``settle_seconds``). A failed
read or a broker error is recorded and retried at the next loop: the session never dies on one.
Every member's schema is checked against the first bars read, before anything is sent.

At start the broker is reconciled: account, positions and open orders are read, open orders
this trader did not place are recorded as external (and left alone), and if the broker cannot
be read the session refuses to trade.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cappuccino.data.alpaca_source import AlpacaSource, alpaca_bars, clean_alpaca_bars
from cappuccino.data.cleaning import DataError
from cappuccino.data.features import feature_memory, with_features
from cappuccino.data.market import OHLCV, MarketData
from cappuccino.errors import UserError
from cappuccino.runtime import check_interrupt
from cappuccino.secrets import mask_text
from cappuccino.trading.alpaca import AlpacaPaperBroker, BrokerError
from cappuccino.trading.members import Member
from cappuccino.trading.state import TradingState
from cappuccino.trading.trader import BarInput, Trader

log = logging.getLogger(__name__)
MARGIN_BARS = 50  # more trailing bars than the features strictly need: a gap repaired at the start costs nothing


class ReconciliationError(UserError):
    """The broker could not be read at start: nothing is traded."""


def reconcile(broker: AlpacaPaperBroker, state: TradingState, adopt_positions: bool) -> None:
    """Read the account and the open orders; record open orders this trader did not place. At a
    session's first start, positions already in the account are someone else's: refused unless
    ``adopt_positions`` (the trader would otherwise sell them to reach its targets)."""
    try:
        account = broker.account()
        open_orders = broker.open_orders()
    except BrokerError as error:
        raise ReconciliationError(f"reconciliation with the broker failed at start, so nothing was traded: {error}") from None
    if state.latest_time() is None and account.positions and not adopt_positions:
        held = ", ".join(f"{qty} {symbol}" for symbol, qty in account.positions.items())
        raise ReconciliationError(
            f"the account holds positions this trader did not open ({held}): close them, or set "
            "trade.adopt_positions=true to trade them as its own; nothing was traded"
        )
    known = {cid for (cid,) in state.db.execute("SELECT client_order_id FROM orders")}
    for order in open_orders:
        if order.client_order_id not in known:
            state.event(None, "external", f"open order {order.client_order_id} ({order.side} {order.qty} {order.symbol}) not placed by this trader: left alone")
    state.event(None, "reconciled", f"cash {account.cash}, positions {dict(account.positions)}, {len(open_orders)} open orders")


@dataclass(frozen=True)
class TrailingBars:
    """The trailing closed bars, cleaned, and the newest of them as Alpaca sent it."""

    market: MarketData
    newest: np.ndarray  # (A, 5) the newest bar before any repair: what the guards judge


def trailing_bars(source: AlpacaSource, now: pd.Timestamp, n_bars: int, interval: pd.Timedelta) -> TrailingBars:
    """The newest ``n_bars`` closed bars before ``now``, cleaned as the data group cleans them.

    A repair the data group allows in history (an inconsistent high/low widened) must not make a
    bad newest bar look tradable, so the newest bar is also kept as sent."""
    window = dataclasses.replace(source, start=(now - n_bars * interval).isoformat(), end=now.isoformat())
    table = alpaca_bars(window, cached=False)
    table = table[table["time"] + interval <= now]  # a bar still forming is not traded on
    market, report = clean_alpaca_bars(window, table)
    for line in report.lines(limit=5):
        log.info(f"data: {line}")
    newest = market.ohlcv[-1].copy()
    sent = table[table["time"] == market.timestamps[-1]].drop_duplicates("symbol", keep="last").set_index("symbol")
    for column, symbol in enumerate(market.symbols):
        if symbol in sent.index:  # a symbol without a trade in the newest bar keeps its flat fill
            newest[column] = sent.loc[symbol, list(OHLCV)].to_numpy(np.float64)
    return TrailingBars(market, newest)


def member_windows(members: list[Member], market: MarketData, check: bool) -> list[torch.Tensor]:
    """Each member's (1, L, A, F) window ending at the newest bar, from the training code's
    features; ``check``: first check every member's schema against these bars."""
    featured_by_window: dict[int, MarketData] = {}
    windows = []
    for member in members:
        schema = member.policy.schema
        if schema.zscore_window not in featured_by_window:
            featured_by_window[schema.zscore_window] = with_features(market, schema.zscore_window)
        featured = featured_by_window[schema.zscore_window]
        if check:
            schema.check(featured, schema.lookback, schema.zscore_window, name=member.name)
        windows.append(torch.as_tensor(featured.features[-schema.lookback :]).unsqueeze(0))
    return windows


def live_loop(
    trader: Trader, broker: AlpacaPaperBroker, source: AlpacaSource, max_bars: int | None, settle_seconds: float,
    beat: Callable[[pd.Timestamp], None], now: Callable[[], pd.Timestamp] = lambda: pd.Timestamp.now(tz="UTC"),
) -> None:  # fmt: skip
    """Trade each newly closed bar (and a bar a killed session left unfinished) until
    ``max_bars`` were traded or a stop is requested."""
    interval = pd.Timedelta(source.interval)
    members = trader.members
    n_bars = max(feature_memory(m.policy.schema.zscore_window) + m.policy.schema.lookback for m in members) + MARGIN_BARS
    traded, checked = 0, False
    while max_bars is None or traded < max_bars:
        check_interrupt()
        moment = now()
        try:
            bars = trailing_bars(source, moment, n_bars, interval)
        except DataError as error:
            trader.state.event(None, "data_error", mask_text(str(error)))
            log.warning(f"bars not read ({mask_text(str(error))}); trying again at the next bar")
            _sleep_until_next_bar(moment, interval, settle_seconds)
            continue
        newest = bars.market.timestamps[-1]
        latest, row = trader.state.latest_time(), trader.state.bar(newest.isoformat())
        if (row is not None and row.done) or (latest is not None and newest < pd.Timestamp(latest)):
            _sleep_until_next_bar(moment, interval, settle_seconds)
            continue
        windows = member_windows(members, bars.market, check=not checked)
        checked = True
        broker.observe(bars.market.ohlcv[-1, :, 3])
        trader.step(BarInput(int(newest.value // interval.value), newest, bars.newest, windows))
        beat(newest)
        traded += 1


def _sleep_until_next_bar(moment: pd.Timestamp, interval: pd.Timedelta, settle_seconds: float) -> None:
    """Until the next bar's close and ``settle_seconds``, in steps of a second: a stop request
    (SIGINT, SIGTERM) ends the wait at once."""
    deadline = time.monotonic() + max((moment.floor(interval) + interval - moment).total_seconds(), 0.0) + settle_seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        check_interrupt()
