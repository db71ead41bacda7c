"""What the trader needs from a broker, whichever it is: the simulator or Alpaca's paper account.

Quantities travel as ``Decimal`` strings of asset units (Alpaca's own representation), so no
float rounding ever changes an order between the plan, the state file and the broker. Every
order carries a ``client_order_id`` derived from what it is (``client_order_id``): submitting
the same decision twice, after a crash or a retried request, names the same order, which the
broker refuses to place twice and the trader looks up instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import numpy as np
import pandas as pd

CLIENT_ORDER_ID_LENGTH = 48  # Alpaca's limit: what client_order_id stays within
OPEN_STATUSES = frozenset({"new", "accepted", "pending_new", "partially_filled", "accepted_for_bidding", "held"})


@dataclass(frozen=True)
class OrderRequest:
    """A market order the trader wants placed."""

    client_order_id: str
    symbol: str  # "BTC", as in the data; a broker maps it to its own spelling
    side: str  # "buy" or "sell"
    qty: Decimal  # asset units, > 0, already rounded to the symbol's increment


@dataclass(frozen=True)
class OrderRecord:
    """An order as the broker reports it."""

    client_order_id: str
    broker_order_id: str
    symbol: str
    side: str
    qty: Decimal
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    status: str  # Alpaca's order statuses: new, partially_filled, filled, canceled, rejected, ...

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True)
class Account:
    """Cash (quote currency) and positions (asset units) as the broker holds them."""

    cash: Decimal
    positions: dict[str, Decimal]  # by data symbol ("BTC"); symbols without a position are absent

    def holdings(self, symbols: tuple[str, ...]) -> np.ndarray:
        """(A,) float64 asset units in ``symbols`` order."""
        return np.array([float(self.positions.get(s, 0)) for s in symbols], dtype=np.float64)


class Broker(Protocol):
    """One interface for the simulator and a real account (``cappuccino.trading.sim``,
    ``cappuccino.trading.alpaca``)."""

    def account(self) -> Account: ...

    def open_orders(self) -> list[OrderRecord]: ...

    def find(self, client_order_id: str) -> OrderRecord | None:
        """The order with this client id, or None when the broker has none."""

    def submit(self, order: OrderRequest) -> OrderRecord:
        """Place ``order``; an id the broker already knows gives that order, never a second one."""

    def plan_prices(self) -> np.ndarray:
        """(A,) float64 prices the next orders are sized at (where a market order would fill now)."""


def client_order_id(strategy: str, bar_time: pd.Timestamp, symbol: str, side: str) -> str:
    """A deterministic id, at most 48 characters: the same (strategy, bar, symbol, side) always
    gives the same id, so a restart or a retried request can never place the order twice."""
    key = f"{strategy}|{pd.Timestamp(bar_time).isoformat()}|{symbol}|{side}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stamp = pd.Timestamp(bar_time).strftime("%Y%m%dT%H%M")
    readable = f"{strategy[:8]}-{stamp}-{symbol[:6]}-{side[0]}"  # at most 31 characters
    return f"{readable}-{digest}"
