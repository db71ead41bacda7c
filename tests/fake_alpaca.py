"""A fake Alpaca on 127.0.0.1 for the real alpaca-py clients (``url_override``): the trading API
the trader uses (account, assets, positions, orders by id and client id) and crypto bars.

Market orders fill whole at once at the newest revealed close; a buy's fee is taken in the asset
received, a sell's in cash, as Alpaca does. A reused client order id gets Alpaca's 422 (code
40010001). ``script`` queues faults for the next matching requests: an HTTP status (429, 500),
``"stall"`` (answer nothing for ``stall_seconds``), ``"place-then-500"`` (place the order,
answer 500, as a lost response would look), or ``"partial"`` (the order is answered half filled,
and is filled when next looked up). Every bar request reveals one more bar, or, with ``advance``,
only once the trader under test has finished the newest (a lockstep market that waits for a
killed trader); ``tamper`` corrupts the bars an answer carries.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd

FEE = Decimal("0.0025")


@dataclass
class FakeAlpaca:
    symbols: tuple[str, ...]
    closes: np.ndarray  # (T, A) the close of every bar the fake can reveal
    start: pd.Timestamp
    revealed: int  # bars visible to the first bar request
    cash: Decimal = Decimal(100_000)
    min_order_size: Decimal = Decimal("0.0001")
    increment: Decimal = Decimal("0.000001")
    stall_seconds: float = 3.0
    positions: dict[str, Decimal] = field(default_factory=dict)
    orders: dict[str, dict] = field(default_factory=dict)  # by client order id, in the order placed
    posts: list[dict] = field(default_factory=list)  # every order request received, retries included
    script: list[tuple[str, str, object]] = field(default_factory=list)  # (method, path prefix, fault)
    requests: list[str] = field(default_factory=list)
    headers: list[dict] = field(default_factory=list)
    advance: Callable[[pd.Timestamp], bool] | None = None  # reveal the next bar only when this says so
    tamper: Callable[[dict[str, list[dict]]], None] | None = None  # edits each bars answer in place

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.answer(self, "GET")

            def do_POST(self) -> None:
                fake.answer(self, "POST")

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------------ routing
    def answer(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(handler.path)
        body = json.loads(handler.rfile.read(int(handler.headers.get("Content-Length") or 0)) or b"{}") if method == "POST" else {}
        with self.lock:
            self.requests.append(f"{method} {url.path}")
            self.headers.append(dict(handler.headers))
            fault = next((f for f in self.script if f[0] == method and url.path.startswith(f[1])), None)
            if fault is not None:
                self.script.remove(fault)
        if fault is not None and fault[2] == "stall":
            time.sleep(self.stall_seconds)
            return
        with self.lock:
            if fault is not None and fault[2] not in ("place-then-500", "partial"):
                return self.send(handler, int(fault[2]), {"code": int(fault[2]), "message": "scripted"})
            status, payload = self.route(method, url.path, parse_qs(url.query), body)
        if fault is not None and fault[2] == "partial" and status == 200:
            payload = {**payload, "status": "partially_filled", "filled_qty": str(Decimal(payload["qty"]) / 2)}
        elif fault is not None and fault[2] == "place-then-500":  # the order is placed, its answer lost
            status, payload = 500, {"code": 50010000, "message": "internal server error"}
        self.send(handler, status, payload)

    def send(self, handler: BaseHTTPRequestHandler, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def route(self, method: str, path: str, query: dict, body: dict) -> tuple[int, object]:
        if path == "/v2/account":
            return 200, {"id": "fake", "account_number": "PA0", "status": "ACTIVE", "cash": str(self.cash), "currency": "USD"}
        if path.startswith("/v2/assets/"):
            symbol = path.removeprefix("/v2/assets/")
            return 200, {
                "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, symbol)), "class": "crypto", "exchange": "CRYPTO", "symbol": symbol, "status": "active",
                "tradable": True, "marginable": False, "shortable": False, "easy_to_borrow": False, "fractionable": True,
                "min_order_size": str(self.min_order_size), "min_trade_increment": str(self.increment),
            }  # fmt: skip
        if path == "/v2/positions":
            return 200, [{"symbol": f"{s}USD", "qty": str(q), "side": "long"} for s, q in self.positions.items() if q > 0]
        if path == "/v2/orders" and method == "POST":
            self.posts.append(body)
            return self.place(body)
        if path == "/v2/orders:by_client_order_id":
            order = self.orders.get(query["client_order_id"][0])
            return (200, order) if order else (404, {"code": 40410000, "message": "order not found"})
        if path == "/v2/orders":
            return 200, []
        if path == "/v1beta3/crypto/us/bars":
            return 200, self.bars(query["symbols"][0].split(","), query)
        return 404, {"code": 40410000, "message": f"no route {method} {path}"}

    def place(self, body: dict) -> tuple[int, object]:
        cid = body["client_order_id"]
        if cid in self.orders:
            return 422, {"code": 40010001, "message": "client_order_id must be unique"}
        if body.get("time_in_force") not in ("gtc", "ioc"):
            return 422, {"code": 42210000, "message": "invalid crypto time_in_force"}
        symbol = body["symbol"].split("/")[0]
        qty, price = Decimal(str(body["qty"])), Decimal(repr(float(self.closes[self.revealed - 1, self.symbols.index(symbol)])))
        if qty < self.min_order_size or qty % self.increment != 0:
            return 422, {"code": 40010000, "message": f"qty {qty} is below the minimum or not a multiple of the increment"}
        held = self.positions.get(symbol, Decimal(0))
        if body["side"] == "sell":
            if qty > held:
                return 403, {"code": 40310000, "message": f"insufficient balance for {symbol} (requested: {qty}, available: {held})"}
            self.positions[symbol], self.cash = held - qty, self.cash + qty * price * (1 - FEE)
        else:
            if qty * price > self.cash:
                return 403, {"code": 40310000, "message": "insufficient balance for USD"}
            self.positions[symbol], self.cash = held + qty * (1 - FEE), self.cash - qty * price
        now = pd.Timestamp.now(tz="UTC").isoformat()
        order = {
            "id": str(uuid.uuid4()), "client_order_id": cid, "created_at": now, "updated_at": now, "submitted_at": now,
            "filled_at": now, "symbol": body["symbol"], "qty": str(qty), "filled_qty": str(qty), "filled_avg_price": str(price),
            "side": body["side"], "type": "market", "order_class": "simple", "time_in_force": body["time_in_force"],
            "status": "filled", "extended_hours": False, "asset_class": "crypto",
        }  # fmt: skip
        self.orders[cid] = order
        return 200, order

    def bars(self, pairs: list[str], query: dict) -> dict:
        """The newest revealed bars, as many as the request's start..end spans (the fake's clock is
        its own: a window asks for its length, not its dates); one more bar is revealed first,
        when ``advance`` (given the newest bar's time) allows it."""
        if self.advance is None or self.advance(self.start + pd.Timedelta("1h") * (self.revealed - 1)):
            self.revealed = min(self.revealed + 1, len(self.closes))
        span = pd.Timestamp(query["end"][0]) - pd.Timestamp(query["start"][0]) if "start" in query and "end" in query else None
        first = max(self.revealed - int(np.ceil(span / pd.Timedelta("1h"))), 0) if span is not None else 0
        times = self.start + pd.Timedelta("1h") * np.arange(first, self.revealed)
        out = {}
        for pair in pairs:
            column = self.symbols.index(pair.split("/")[0])
            close = self.closes[first : self.revealed, column]
            out[pair] = [
                {"t": t.isoformat().replace("+00:00", "Z"), "o": c, "h": c * 1.002, "l": c * 0.998, "c": c, "v": 10.0, "n": 1, "vw": c}
                for t, c in zip(times, close.tolist())
            ]
        if self.tamper is not None:
            self.tamper(out)
        return {"bars": out, "next_page_token": None}
