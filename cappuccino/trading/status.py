"""``python -m cappuccino.trading.status <run folder>/trading.db [--plot equity.png]``: a trading
session's positions, last decisions and guards, read from its state file alone (the broker is
never contacted; the file may be read while the trader runs); ``--plot`` draws its equity so far
against equal-weight buy-and-hold bought at the first bar's close."""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

from rich.table import Table

from cappuccino.progress import console


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("state_file", type=Path, help="trading.db in the session's run folder")
    parser.add_argument("--last", type=int, default=5, help="decisions to show")
    parser.add_argument("--plot", type=Path, default=None, help="write the equity curve so far to this PNG")
    args = parser.parse_args(argv)
    if not args.state_file.is_file():
        raise SystemExit(f"error: {args.state_file} does not exist (the state file is trading.db in the session's run folder)")
    db = sqlite3.connect(f"file:{args.state_file}?mode=ro", uri=True)
    meta = {key: json.loads(value) for key, value in db.execute("SELECT key, value FROM meta")}
    last = db.execute("SELECT bar_time, equity, cash, positions FROM bars WHERE done = 1 ORDER BY bar DESC LIMIT 1").fetchone()
    if last is None:
        console.print("no bar traded yet")
        return
    bar_time, equity, cash, positions = last
    console.print(f"last bar {bar_time}: equity {equity:,.2f}, cash {cash:,.2f}, fees paid {meta.get('fees_paid', 0.0):,.2f}")
    held = Table(title="positions (asset units)")
    held.add_column("symbol")
    held.add_column("quantity", justify="right")
    for symbol, qty in json.loads(positions).items():
        held.add_row(symbol, f"{qty:.8g}")
    console.print(held)
    guards = Table(title="guards")
    guards.add_column("state")
    guards.add_column("value", justify="right")
    for key in sorted(k for k in meta if k.startswith("guards.")):
        guards.add_row(key.removeprefix("guards."), str(meta[key]))
    console.print(guards)
    decisions = Table(title=f"last {args.last} decisions")
    for column in ("bar", "targets", "guards", "orders"):
        decisions.add_column(column)
    rows = db.execute("SELECT bar_time, targets, guards FROM bars ORDER BY bar DESC LIMIT ?", (args.last,)).fetchall()
    for row_time, targets, reasons in rows:
        orders = db.execute("SELECT side, symbol, qty, status FROM orders WHERE bar_time = ?", (row_time,)).fetchall()
        shown = ", ".join(f"{side} {float(qty):.6g} {symbol} ({status})" for side, symbol, qty, status in orders) or "-"
        decisions.add_row(row_time, " ".join(f"{t:.3f}" for t in json.loads(targets)) or "-", "; ".join(json.loads(reasons)) or "-", shown)
    console.print(decisions)
    if args.plot is not None:
        plot_equity(db, args.plot)
        console.print(f"equity curve: {args.plot}")


def plot_equity(db: sqlite3.Connection, path: Path) -> None:
    """The session's equity at each bar's close against equal-weight buy-and-hold on its closes."""
    import numpy as np
    import pandas as pd

    from cappuccino.reporting.figures import close_figure, equity_figure

    rows = db.execute("SELECT bar_time, equity, closes FROM bars WHERE done = 1 ORDER BY bar").fetchall()
    if len(rows) < 2:
        raise SystemExit("error: fewer than two bars traded: no curve to draw yet")
    times = pd.DatetimeIndex([pd.Timestamp(t) for t, _, _ in rows])
    equity = np.array([e for _, e, _ in rows])
    closes = np.array([json.loads(c) for _, _, c in rows])
    benchmark = equity[0] * (closes / closes[0]).mean(1)  # equal weight at the first close, held
    figure = equity_figure(times, equity, benchmark, "trading session so far: agent vs equal-weight buy-and-hold")
    figure.savefig(path, dpi=110, bbox_inches="tight")
    close_figure(figure)


if __name__ == "__main__":
    main()
