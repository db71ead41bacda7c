"""The trader's state file (``trading.db`` in the run folder): every decision, vote, order and
guard, written in transactions so that a crash never leaves a half-written bar.

A bar goes through two transactions. ``record_decision`` writes the members' votes, the
ensemble's targets, the guards' verdicts and the planned orders (status ``planned``) together;
``finish_bar`` writes the account after the orders, the equity and the bar's end. A trader
killed between the two finds the bar's planned orders on restart, and looks each up at the
broker by its client id before placing it, so no order is ever placed twice.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from cappuccino.trading.broker import OrderRecord, OrderRequest

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bars (
    bar_time TEXT PRIMARY KEY, bar INTEGER NOT NULL, votes TEXT NOT NULL, targets TEXT NOT NULL,
    guards TEXT NOT NULL, equity REAL, cash REAL, positions TEXT, closes TEXT, fees REAL, turnover REAL,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS orders (
    client_order_id TEXT PRIMARY KEY, bar_time TEXT NOT NULL, symbol TEXT NOT NULL, side TEXT NOT NULL,
    qty TEXT NOT NULL, status TEXT NOT NULL, broker_order_id TEXT, filled_qty TEXT, filled_avg_price TEXT, error TEXT
);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, bar_time TEXT, kind TEXT NOT NULL, detail TEXT NOT NULL);
"""


@dataclass(frozen=True)
class BarRow:
    bar_time: str
    bar: int
    equity: float | None
    done: bool


class TradingState:
    """The SQLite state of one trading session (module docstring); reopened on restart."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")  # a reader (the status command) never blocks the trader
        self.db.executescript(SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------------------ meta
    def get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def put(self, db: sqlite3.Connection, **values: Any) -> None:
        db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in values.items()])

    # ------------------------------------------------------------------------------ bars
    def bar(self, bar_time: str) -> BarRow | None:
        row = self.db.execute("SELECT bar_time, bar, equity, done FROM bars WHERE bar_time = ?", (bar_time,)).fetchone()
        return None if row is None else BarRow(row[0], row[1], row[2], bool(row[3]))

    def latest_time(self) -> str | None:
        """The newest bar decided at (finished or not)."""
        (latest,) = self.db.execute("SELECT max(bar_time) FROM bars").fetchone()
        return latest

    def record_decision(
        self, bar_time: str, bar: int, votes: dict[str, list[float]], targets: list[float], guards: list[str], orders: list[OrderRequest],
        **meta: Any,
    ) -> None:
        """The bar's votes, targets, guard verdicts, planned orders and ``meta`` (the guards'
        memory), in one transaction."""
        with self.transaction() as db:
            self.put(db, **meta)
            db.execute(
                "INSERT INTO bars (bar_time, bar, votes, targets, guards) VALUES (?, ?, ?, ?, ?)",
                (bar_time, bar, json.dumps(votes), json.dumps(targets), json.dumps(guards)),
            )
            db.executemany(
                "INSERT INTO orders (client_order_id, bar_time, symbol, side, qty, status) VALUES (?, ?, ?, ?, ?, 'planned')",
                [(o.client_order_id, bar_time, o.symbol, o.side, str(o.qty)) for o in orders],
            )

    def planned_orders(self, bar_time: str) -> list[tuple[OrderRequest, str]]:
        """The bar's orders with their recorded status, in the order they were planned."""
        rows = self.db.execute(
            "SELECT client_order_id, symbol, side, qty, status FROM orders WHERE bar_time = ? ORDER BY rowid", (bar_time,)
        ).fetchall()
        return [(OrderRequest(cid, symbol, side, Decimal(qty)), status) for cid, symbol, side, qty, status in rows]

    def unsettled_orders(self, statuses: frozenset[str]) -> list[str]:
        """Client ids of placed orders whose last recorded status is one of ``statuses`` (open ones)."""
        marks = ",".join("?" * len(statuses))
        return [cid for (cid,) in self.db.execute(f"SELECT client_order_id FROM orders WHERE status IN ({marks}) ORDER BY rowid", tuple(statuses))]

    def filled_notional(self, client_order_id: str) -> float:
        """Filled quantity times average price of an order, as last recorded (0 if none)."""
        row = self.db.execute("SELECT filled_qty, filled_avg_price FROM orders WHERE client_order_id = ?", (client_order_id,)).fetchone()
        return 0.0 if row is None or row[0] is None or row[1] is None else float(row[0]) * float(row[1])

    def record_order(self, record: OrderRecord | None, client_order_id: str, error: str | None = None) -> None:
        """What the broker said of a planned order (None and an ``error``: it was not placed)."""
        with self.transaction() as db:
            if record is None:
                db.execute("UPDATE orders SET status = 'failed', error = ? WHERE client_order_id = ?", (error, client_order_id))
            else:
                price = None if record.filled_avg_price is None else str(record.filled_avg_price)
                db.execute(
                    "UPDATE orders SET status = ?, broker_order_id = ?, filled_qty = ?, filled_avg_price = ?, error = NULL WHERE client_order_id = ?",
                    (record.status, record.broker_order_id, str(record.filled_qty), price, client_order_id),
                )

    def finish_bar(
        self, bar_time: str, equity: float, cash: float, positions: dict[str, float], closes: list[float], fees: float, turnover: float, **meta: Any
    ) -> None:
        """The account at the bar's close (before its orders fill), its prices, the fees and
        turnover of its orders, and ``meta``, in one transaction: the bar is done."""
        with self.transaction() as db:
            db.execute(
                "UPDATE bars SET equity = ?, cash = ?, positions = ?, closes = ?, fees = ?, turnover = ?, done = 1 WHERE bar_time = ?",
                (equity, cash, json.dumps(positions), json.dumps(closes), fees, turnover, bar_time),
            )
            self.put(db, **meta)

    def event(self, bar_time: str | None, kind: str, detail: str) -> None:
        """A guard firing, a broker error, an external order: kept with the bar it happened at."""
        with self.transaction() as db:
            db.execute("INSERT INTO events (bar_time, kind, detail) VALUES (?, ?, ?)", (bar_time, kind, detail))

    def equity_curve(self) -> list[tuple[str, int, float, float, float]]:
        """(bar_time, bar, equity, fees, turnover) of every finished bar, in time order."""
        return self.db.execute("SELECT bar_time, bar, equity, fees, turnover FROM bars WHERE done = 1 ORDER BY bar").fetchall()

    def closes(self) -> list[list[float]]:
        """Each finished bar's close prices, in time order."""
        return [json.loads(c) for (c,) in self.db.execute("SELECT closes FROM bars WHERE done = 1 ORDER BY bar")]

    def close(self) -> None:
        self.db.close()
