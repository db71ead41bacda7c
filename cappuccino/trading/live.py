"""A session on a real account (``broker=alpaca_paper``): each newly closed bar, traded once.

Per loop: the trailing bars (long enough for every member's features and window:
``feature_memory + lookback`` bars, with a margin) are read from Alpaca with the data group's
own source and cleaning (``data=alpaca_1h``), without a cache; bars still forming are left out;
if the newest closed bar is one the state file has not seen, each member's window is built with
the training code's features over those bars, and the trader steps. Otherwise the loop sleeps
until the next bar closes (plus ``settle_seconds``). A failed read or a broker error is recorded
and retried at the next loop: the session never dies on one.

At start the broker is reconciled: account, positions and open orders are read, open orders
this trader did not place are recorded as external (and left alone), and if the broker cannot
be read the session refuses to trade.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import pandas as pd
import torch

from cappuccino.data.alpaca_source import AlpacaSource, alpaca_market
from cappuccino.data.cleaning import DataError
from cappuccino.data.features import feature_memory, with_features
from cappuccino.data.market import MarketData
from cappuccino.errors import UserError
from cappuccino.runtime import check_interrupt
from cappuccino.secrets import mask_text
from cappuccino.trading.alpaca import AlpacaPaperBroker, BrokerError
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


def trailing_bars(source: AlpacaSource, now: pd.Timestamp, n_bars: int, interval: pd.Timedelta) -> MarketData:
    """The newest ``n_bars`` closed bars before ``now``, cleaned as the data group cleans them."""
    window = dataclasses.replace(source, start=(now - n_bars * interval).isoformat(), end=now.isoformat())
    market, report = alpaca_market(window, cached=False)
    for line in report.lines(limit=5):
        log.info(f"data: {line}")
    closed = market.timestamps + interval <= now
    if closed.all():
        return market
    keep = int(closed.sum())
    return dataclasses.replace(market, timestamps=market.timestamps[:keep], ohlcv=market.ohlcv[:keep], content_hash="")


def live_loop(
    trader: Trader, broker: AlpacaPaperBroker, source: AlpacaSource, max_bars: int | None, settle_seconds: float,
    beat: Callable[[pd.Timestamp], None], now: Callable[[], pd.Timestamp] = lambda: pd.Timestamp.now(tz="UTC"),
) -> None:  # fmt: skip
    """Trade each newly closed bar until ``max_bars`` were traded or a stop is requested."""
    interval = pd.Timedelta(source.interval)
    members = trader.members
    n_bars = max(feature_memory(m.policy.schema.zscore_window) + m.policy.schema.lookback for m in members) + MARGIN_BARS
    traded = 0
    while max_bars is None or traded < max_bars:
        check_interrupt()
        moment = now()
        try:
            market = trailing_bars(source, moment, n_bars, interval)
        except DataError as error:
            trader.state.event(None, "data_error", mask_text(str(error)))
            log.warning(f"bars not read ({mask_text(str(error))}); trying again at the next bar")
            _sleep_until_next_bar(moment, interval, settle_seconds)
            continue
        newest = market.timestamps[-1]
        latest = trader.state.latest_time()
        if latest is not None and newest <= pd.Timestamp(latest):
            _sleep_until_next_bar(moment, interval, settle_seconds)
            continue
        windows, featured_by_window = [], {}
        for member in members:
            schema = member.policy.schema
            if schema.zscore_window not in featured_by_window:
                featured_by_window[schema.zscore_window] = with_features(market, schema.zscore_window)
            featured = featured_by_window[schema.zscore_window]
            schema.check(featured, schema.lookback, schema.zscore_window, name=member.name)
            windows.append(torch.as_tensor(featured.features[-schema.lookback :]).unsqueeze(0))
        broker.observe(market.ohlcv[-1, :, 3])
        trader.step(BarInput(int(newest.value // interval.value), newest, market.ohlcv[-1], windows))
        beat(newest)
        traded += 1


def _sleep_until_next_bar(moment: pd.Timestamp, interval: pd.Timedelta, settle_seconds: float) -> None:
    """Until the next bar's close and ``settle_seconds``, in steps of a second: a stop request
    (SIGINT, SIGTERM) ends the wait at once."""
    deadline = time.monotonic() + max((moment.floor(interval) + interval - moment).total_seconds(), 0.0) + settle_seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))
        check_interrupt()
