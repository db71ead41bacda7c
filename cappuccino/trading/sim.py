"""The simulated exchange of ``python trade.py`` (``broker=sim``): a replay of held-out bars.

Orders decided at the close of bar t fill at the open of bar t + 1 with the configured fee, as
the environment fills them (``cappuccino.trading.rules``): the same sizing price, the same fee,
sells before buys. The exchange's account and orders live in a SQLite file of their own, as a
real broker's live on its servers, so a trader killed at any point and started again finds the
orders it had placed, filled once.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import numpy as np

from cappuccino.trading.broker import Account, OrderRecord, OrderRequest

SCHEMA = """
CREATE TABLE IF NOT EXISTS account (id INTEGER PRIMARY KEY CHECK (id = 0), cash REAL NOT NULL);
CREATE TABLE IF NOT EXISTS positions (symbol TEXT PRIMARY KEY, qty REAL NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    client_order_id TEXT PRIMARY KEY, symbol TEXT NOT NULL, side TEXT NOT NULL, qty TEXT NOT NULL,
    price REAL NOT NULL, bar INTEGER NOT NULL
);
"""


class SimBroker:
    """Fills at ``open[bar + 1]`` of the replayed bars, paying ``fee`` per side (module docstring).

    ``open_prices``: (T, A) float64 of the replayed market, columns in ``symbols`` order. The
    trader moves the exchange's clock with ``at_bar`` before deciding at a bar's close.
    """

    def __init__(self, *, open_prices: np.ndarray, symbols: tuple[str, ...], fee: float, initial_cash: float, exchange_file: Path) -> None:
        self.open_prices, self.symbols, self.fee = open_prices, symbols, fee
        self.bar = -1
        self.db = sqlite3.connect(exchange_file, isolation_level=None)
        self.db.executescript(SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO account (id, cash) VALUES (0, ?)", (initial_cash,))

    def at_bar(self, bar: int) -> None:
        """The exchange's clock: bar ``bar`` has closed; orders now fill at ``open[bar + 1]``."""
        self.bar = bar

    def plan_prices(self) -> np.ndarray:
        return self.open_prices[self.bar + 1]

    def account(self) -> Account:
        (cash,) = self.db.execute("SELECT cash FROM account").fetchone()
        positions = {s: Decimal(q) for s, q in self.db.execute("SELECT symbol, qty FROM positions") if q > 0}
        return Account(Decimal(cash), positions)

    def open_orders(self) -> list[OrderRecord]:
        return []  # market orders fill as they are placed

    def find(self, client_order_id: str) -> OrderRecord | None:
        row = self.db.execute("SELECT client_order_id, symbol, side, qty, price FROM orders WHERE client_order_id = ?", (client_order_id,)).fetchone()
        return None if row is None else _record(*row)

    def submit(self, order: OrderRequest) -> OrderRecord:
        """Fill ``order`` whole at the next open, in one transaction with its effect on the account."""
        if (known := self.find(order.client_order_id)) is not None:
            return known
        column = self.symbols.index(order.symbol)
        price = float(self.open_prices[self.bar + 1, column])
        qty = float(order.qty)
        with self.db:  # BEGIN ... COMMIT: the order, the cash and the position change together
            self.db.execute("BEGIN")
            (cash,) = self.db.execute("SELECT cash FROM account").fetchone()
            row = self.db.execute("SELECT qty FROM positions WHERE symbol = ?", (order.symbol,)).fetchone()
            held = row[0] if row else 0.0
            if order.side == "sell":
                cash, held = cash + (1.0 - self.fee) * qty * price, max(held - qty, 0.0)
            else:
                cash, held = max(cash - (1.0 + self.fee) * qty * price, 0.0), held + qty
            self.db.execute("UPDATE account SET cash = ?", (cash,))
            self.db.execute("INSERT OR REPLACE INTO positions (symbol, qty) VALUES (?, ?)", (order.symbol, held))
            self.db.execute(
                "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", (order.client_order_id, order.symbol, order.side, str(order.qty), price, self.bar)
            )
        return _record(order.client_order_id, order.symbol, order.side, str(order.qty), price)

    def close(self) -> None:
        self.db.close()


def _record(client_order_id: str, symbol: str, side: str, qty: str, price: float) -> OrderRecord:
    return OrderRecord(client_order_id, f"sim-{client_order_id}", symbol, side, Decimal(qty), Decimal(qty), Decimal(price), "filled")
