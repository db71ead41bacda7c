"""Alpaca's paper account behind the ``Broker`` interface (``broker=alpaca_paper``), through alpaca-py.

What Alpaca crypto asks of an order, and where this module respects it:

- **Time in force**: crypto takes only ``gtc`` and ``ioc``; market orders go ``gtc``.
- **Quantities**: rounded down to the asset's ``min_trade_increment`` and dropped below its
  ``min_order_size``, both read from ``get_asset`` at start (they change; the configured rules
  are only a fallback), in ``Decimal``.
- **Symbols**: orders and bars say ``BTC/USD``, positions ``BTCUSD``; the data's ``BTC`` is mapped both ways.
- **Fees** are charged in the asset received, so a position is a little less than what was
  bought: sells are sized from the positions Alpaca reports (``Account``), never from past orders.
- **Idempotency**: a reused ``client_order_id`` is refused with HTTP 422 (code 40010001), also
  when alpaca-py's own retry re-sent an order that had been placed; that answer is looked up by
  client id, not treated as a failure. alpaca-py's silent retries are off (``_retry = 0``): every
  request here is retried with backoff and jitter on 429, 5xx, timeouts and dropped connections,
  and has a timeout (alpaca-py sets none).
- **Rate limit**: 200 requests a minute on Alpaca's free plan (more on paid ones); requests wait
  so that no more than ``requests_per_minute`` go out in any 60 s.

Keys come from the environment only (``ALPACA_API_KEY``, ``ALPACA_SECRET_KEY``) and appear in no
message. A live account needs ``live=True`` and ``CAPPUCCINO_LIVE_TRADING=yes`` in the environment.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import numpy as np
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetOrdersRequest, MarketOrderRequest

from cappuccino.data.alpaca_source import REQUEST_TIMEOUT, TimeoutAdapter
from cappuccino.errors import ConfigError, UserError
from cappuccino.secrets import Masker
from cappuccino.trading.broker import Account, OrderRecord, OrderRequest

log = logging.getLogger(__name__)
KEY_VARIABLES = ("ALPACA_API_KEY", "ALPACA_SECRET_KEY")
LIVE_CONFIRMATION = ("CAPPUCCINO_LIVE_TRADING", "yes")
MAX_ATTEMPTS, BACKOFF_SECONDS = 5, 0.5
DUPLICATE_CLIENT_ORDER_ID = 40010001
T = TypeVar("T")


class BrokerError(UserError):
    """The broker could not be reached or refused a request after the retries; keys masked.
    ``status``: the HTTP status (None: no answer); ``code``: Alpaca's error code, if any."""

    def __init__(self, message: str, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class AlpacaPaperBroker:
    """Alpaca's trading API for ``symbols`` quoted in ``quote`` (module docstring).

    ``url_override`` points alpaca-py at another server (tests: a local fake); ``fallback_rules``
    give (min order size, quantity increment) per symbol where ``get_asset`` has none;
    ``requests_per_minute``: the plan's rate limit, with a margin.
    """

    def __init__(
        self, *, symbols: tuple[str, ...], quote: str = "USD", live: bool = False, url_override: str | None = None,
        fallback_rules: dict[str, tuple[float, float]] | None = None, requests_per_minute: int = 190,
    ) -> None:  # fmt: skip
        keys = [os.environ.get(name, "") for name in KEY_VARIABLES]
        if not all(keys):
            raise ConfigError(f"broker=alpaca_paper needs the API keys in the environment: set {' and '.join(KEY_VARIABLES)}")
        if live and os.environ.get(LIVE_CONFIRMATION[0]) != LIVE_CONFIRMATION[1]:
            raise ConfigError(
                f"broker.live=true trades real money: set {LIVE_CONFIRMATION[0]}={LIVE_CONFIRMATION[1]} in the environment "
                "to confirm, or leave broker.live=false for the paper account"
            )
        self.mask = Masker(keys)
        self.symbols, self.quote = symbols, quote
        self.client = TradingClient(*keys, paper=not live, raw_data=True, url_override=url_override)
        adapter = TimeoutAdapter(REQUEST_TIMEOUT)
        for scheme in ("http://", "https://"):
            self.client._session.mount(scheme, adapter)  # alpaca-py exposes no timeout
        self.client._retry = 0  # its fixed-wait retries would re-send orders unseen; ours look them up
        if requests_per_minute < 1:
            raise ConfigError(f"broker.requests_per_minute must be >= 1, got {requests_per_minute}")
        self.requests_per_minute = requests_per_minute
        self.sent: collections.deque[float] = collections.deque()
        self.prices = np.full(len(symbols), np.nan)
        self.increments, self.min_sizes = self._asset_rules(fallback_rules or {})

    # ------------------------------------------------------------------------- Broker
    def account(self) -> Account:
        account = self._call(self.client.get_account)
        positions = self._call(self.client.get_all_positions)
        by_pair = {f"{s}{self.quote}": s for s in self.symbols}
        held = {by_pair[p["symbol"]]: Decimal(str(p["qty"])) for p in positions if p["symbol"] in by_pair}
        return Account(Decimal(str(account["cash"])), {s: q for s, q in held.items() if q > 0})

    def open_orders(self) -> list[OrderRecord]:
        orders = self._call(lambda: self.client.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN)))
        return [self._record(o) for o in orders]

    def find(self, client_order_id: str) -> OrderRecord | None:
        try:
            return self._record(self._call(lambda: self.client.get_order_by_client_id(client_order_id)))
        except BrokerError as error:
            if error.status == 404:
                return None
            raise

    def submit(self, order: OrderRequest) -> OrderRecord:
        request = MarketOrderRequest(
            symbol=f"{order.symbol}/{self.quote}", qty=float(order.qty), side=OrderSide(order.side),
            time_in_force=TimeInForce.GTC, client_order_id=order.client_order_id,
        )  # fmt: skip
        try:
            return self._record(self._call(lambda: self.client.submit_order(request)))
        except BrokerError as error:
            if error.code == DUPLICATE_CLIENT_ORDER_ID and (known := self.find(order.client_order_id)) is not None:
                return known  # placed before (a retry, a restart): the same order, not a second one
            raise

    def plan_prices(self) -> np.ndarray:
        """The newest closes the trader saw (``observe``): where a market order fills now."""
        return self.prices

    def observe(self, closes: np.ndarray) -> None:
        self.prices = np.asarray(closes, dtype=np.float64)

    def quantize(self, symbol: str, qty: float) -> Decimal:
        """Down to the asset's increment; 0 below its minimum order size."""
        step = self.increments[symbol]
        rounded = (Decimal(repr(qty)) // step) * step if step > 0 else Decimal(repr(qty))
        return rounded if rounded >= self.min_sizes[symbol] else Decimal(0)

    def close(self) -> None:
        self.client._session.close()

    # ------------------------------------------------------------------------ helpers
    def _asset_rules(self, fallback: dict[str, tuple[float, float]]) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
        increments, sizes = {}, {}
        for symbol in self.symbols:
            asset = self._call(lambda: self.client.get_asset(f"{symbol}/{self.quote}"))
            default_size, default_step = fallback.get(symbol, (0.0, 0.0))
            sizes[symbol] = Decimal(str(asset.get("min_order_size") or default_size))
            increments[symbol] = Decimal(str(asset.get("min_trade_increment") or default_step))
        return increments, sizes

    def _record(self, order: dict[str, Any]) -> OrderRecord:
        pair = str(order["symbol"]).replace("/", "")
        symbol = pair.removesuffix(self.quote)
        price = order.get("filled_avg_price")
        return OrderRecord(
            str(order["client_order_id"]), str(order["id"]), symbol, str(order["side"]), Decimal(str(order.get("qty") or 0)),
            Decimal(str(order.get("filled_qty") or 0)), None if price is None else Decimal(str(price)), str(order["status"]),
        )  # fmt: skip

    def _call(self, request: Callable[[], T]) -> T:
        """``request()`` under the rate limit, retried with backoff and jitter on 429, 5xx,
        timeouts and dropped connections; a ``BrokerError`` (masked) when it keeps failing."""
        for attempt in range(MAX_ATTEMPTS):
            self._wait_for_rate_limit()
            try:
                return request()
            except (requests.Timeout, requests.ConnectionError, APIError) as error:
                status = getattr(error, "status_code", None)
                retryable = not isinstance(error, APIError) or status == 429 or (status or 0) >= 500
                what = f"HTTP {status}: {getattr(error, 'message', error)}" if status else type(error).__name__
                if not retryable or attempt + 1 == MAX_ATTEMPTS:
                    code = _error_code(error)
                    message = self.mask(f"Alpaca request failed after {attempt + 1} attempt(s) ({what}{f', code {code}' if code else ''})")
                    raise BrokerError(message, status, code) from None
                time.sleep(BACKOFF_SECONDS * 2**attempt + random.uniform(0, BACKOFF_SECONDS))
        raise AssertionError("unreachable")

    def _wait_for_rate_limit(self) -> None:
        """Wait until fewer than ``requests_per_minute`` requests went out in the last 60 s."""
        while True:
            now = time.monotonic()
            while self.sent and now - self.sent[0] >= 60.0:
                self.sent.popleft()
            if len(self.sent) < self.requests_per_minute:
                break
            time.sleep(60.0 - (now - self.sent[0]))
        self.sent.append(time.monotonic())


def _error_code(error: Exception) -> int | None:
    """Alpaca's error code in an APIError's JSON body (e.g. 40010001: a reused client order id)."""
    try:
        return int(error.code) if isinstance(error, APIError) and error.code is not None else None
    except (ValueError, TypeError, AttributeError):
        return None
