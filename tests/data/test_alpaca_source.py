"""Alpaca bars through alpaca-py against a local fake of the market-data API (never the internet)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pytest

from cappuccino.config import ConfigError, validate
from cappuccino.data.alpaca_source import AlpacaSource, alpaca_market, alpaca_timeframe
from cappuccino.data.cleaning import DataError
from cappuccino.errors import ArgumentError

BARS_PATH = "/v1beta3/crypto/us/bars"  # alpaca-py: base_url + "/" + api_version + "/crypto/{feed}/bars"
TIMES = pd.date_range("2023-01-05", periods=6, freq="1h", tz="UTC")


def raw_bar(t: pd.Timestamp, close: float) -> dict:
    stamp = t.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"t": stamp, "o": close - 1, "h": close + 2, "l": close - 2, "c": close, "v": 1.5, "n": 10, "vw": close}


BTC = [raw_bar(t, 30_000.0 + i) for i, t in enumerate(TIMES)]
ETH = [raw_bar(t, 2_000.0 + i) for i, t in enumerate(TIMES)]
# Pages cut across symbols the way the API does (a page holds up to `limit` bars in total).
PAGES = {
    None: {"bars": {"BTC/USD": BTC[:4]}, "next_page_token": "p1"},
    "p1": {"bars": {"BTC/USD": BTC[4:], "ETH/USD": ETH[:2]}, "next_page_token": "p2"},
    "p2": {"bars": {"ETH/USD": ETH[2:]}, "next_page_token": None},
}


class FakeAlpaca:
    """Serves ``pages`` keyed by page_token on 127.0.0.1 and records each request's query."""

    def __init__(self, pages: dict):
        self.queries: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                fake.queries.append(query)
                page = pages.get(query.get("page_token")) if url.path == BARS_PATH else None
                body = json.dumps(page or {"message": f"not found: {self.path}"}).encode()
                self.send_response(200 if page else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def serve(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a configured proxy must not see local requests
    servers: list[FakeAlpaca] = []

    def start(pages: dict) -> FakeAlpaca:
        servers.append(FakeAlpaca(pages))
        return servers[-1]

    yield start
    for fake in servers:
        fake.server.shutdown()
        fake.server.server_close()


def config(url: str, cache_dir: Path, **overrides) -> AlpacaSource:
    fields = dict(symbols=["ETH", "BTC"], start="2023-01-05", end="2023-01-05T06:00", cache_dir=str(cache_dir))
    return AlpacaSource(url_override=url, **{**fields, **overrides})


def test_fetches_every_page_with_utc_times_and_exact_values(serve, tmp_path: Path):
    fake = serve(PAGES)
    market, report = alpaca_market(config(fake.url, tmp_path / "cache"))
    assert [q.get("page_token") for q in fake.queries] == [None, "p1", "p2"]
    first = fake.queries[0]
    assert first["symbols"] == "ETH/USD,BTC/USD" and first["timeframe"] == "1Hour"
    assert pd.Timestamp(first["start"]) == TIMES[0] and pd.Timestamp(first["end"]) == TIMES[0] + pd.Timedelta("6h")

    assert market.symbols == ("ETH", "BTC") and market.source == "alpaca" and not market.synthetic
    assert (market.timestamps == TIMES).all() and str(market.timestamps.tz) == "UTC"
    np.testing.assert_array_equal(market.field("close")[:, 1], 30_000.0 + np.arange(6))
    np.testing.assert_array_equal(market.ohlcv[0, 0], [1_999.0, 2_002.0, 1_998.0, 2_000.0, 1.5])
    assert len(report) == 0


def test_second_call_reads_the_cache_without_requests(serve, tmp_path: Path):
    fake = serve(PAGES)
    cfg = config(fake.url, tmp_path / "cache")
    first, _ = alpaca_market(cfg)
    assert len(fake.queries) == 3 and len(list((tmp_path / "cache").glob("*.parquet"))) == 1
    again, _ = alpaca_market(cfg)
    assert len(fake.queries) == 3
    np.testing.assert_array_equal(again.ohlcv, first.ohlcv)
    assert (again.timestamps == first.timestamps).all() and again.content_hash == first.content_hash
    alpaca_market(config(fake.url, tmp_path / "cache", end="2023-01-05T05:00"))  # another request: a new key
    assert len(fake.queries) == 6


def test_symbol_without_bars_is_an_error_naming_it(serve, tmp_path: Path):
    fake = serve({None: {"bars": {"BTC/USD": BTC}, "next_page_token": None}})
    with pytest.raises(DataError, match=r"no bars for \['ETH/USD'\]"):
        alpaca_market(config(fake.url, tmp_path / "cache"))
    assert not list((tmp_path / "cache").glob("*"))  # nothing cached on failure


def test_http_and_connection_errors_become_data_errors(serve, tmp_path: Path):
    fake = serve({})  # every request answers 404
    with pytest.raises(DataError, match="the Alpaca data request to"):
        alpaca_market(config(fake.url, tmp_path / "cache"))
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(DataError, match="check the network"):
        alpaca_market(config(closed_url, tmp_path / "cache"))


@pytest.mark.parametrize("interval, value", [("1h", "1Hour"), ("5min", "5Min"), ("4h", "4Hour"), ("1D", "1Day")])
def test_timeframes(interval: str, value: str):
    assert alpaca_timeframe(pd.Timedelta(interval)).value == value


@pytest.mark.parametrize("interval", ["90min", "2D", "30s"])
def test_unsupported_timeframe_is_an_error(interval: str):
    with pytest.raises(DataError, match="Alpaca has no"):
        alpaca_timeframe(pd.Timedelta(interval))


def test_load_is_alpaca_market(serve, tmp_path: Path):
    fake = serve(PAGES)
    source = config(fake.url, tmp_path / "cache")
    market, report = source.load()
    again, _ = alpaca_market(source)  # from the cache the first call wrote
    assert len(fake.queries) == 3 and len(report) == 0
    np.testing.assert_array_equal(market.ohlcv, again.ohlcv)


@pytest.mark.parametrize(
    ("start", "end"),
    [("2024-01-01", "2023-01-01"), ("2023-01-05", "2023-01-05"), ("2023-01-05T06:00", "2023-01-05T05:00")],
)
def test_start_not_before_end_is_rejected_naming_both(compose_config, start: str, end: str):
    message = rf"must be before end \({start} >= {end}\)"
    with pytest.raises(ArgumentError, match=rf"^start: {message}$") as error:
        AlpacaSource(start=start, end=end)
    assert error.value.argument == "start"
    with pytest.raises(ConfigError, match=rf"^data\.start: {message}$"):
        validate(compose_config(["data=alpaca_1h", f"data.start='{start}'", f"data.end='{end}'"]))


@pytest.mark.parametrize("rule", ["repair", "reject"])
def test_inconsistent_bars_rule_applies_to_alpaca_bars(serve, tmp_path: Path, rule: str):
    bad = [dict(bar) for bar in BTC]
    bad[2]["h"] = bad[2]["c"] - 0.5  # high below close
    fake = serve({None: {"bars": {"BTC/USD": bad}, "next_page_token": None}})
    source = config(fake.url, tmp_path / "cache", symbols=["BTC"], inconsistent_bars=rule)
    if rule == "reject":
        with pytest.raises(DataError, match=r"BTC: 1 bars have high below .* at 2023-01-05 02:00"):
            alpaca_market(source)
    else:
        market, report = alpaca_market(source)
        assert market.field("high")[2, 0] == bad[2]["c"] and len(report) == 1


class ScriptedAlpaca:
    """A local server that answers each request by the next entry of ``script``: an HTTP status to
    fail with, "stall" to accept the connection and never answer, or "bars" to serve one page."""

    def __init__(self, script: list):
        self.script, self.requests = list(script), 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests += 1
                action = fake.script.pop(0) if fake.script else "bars"
                if action == "stall":
                    time.sleep(5)  # longer than the test's read timeout; the server thread then ends
                    return
                page = {"bars": {"BTC/USD": BTC}, "next_page_token": None} if action == "bars" else {"message": "busy"}
                body = json.dumps(page).encode()
                self.send_response(200 if action == "bars" else action)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture
def quick_retries(monkeypatch):
    """The real retry loop with short waits, so a test takes seconds."""
    from cappuccino.data import alpaca_source

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(alpaca_source, "REQUEST_TIMEOUT", (1.0, 0.5))
    monkeypatch.setattr(alpaca_source, "DEADLINE_SECONDS", 6.0)
    monkeypatch.setattr(alpaca_source, "BACKOFF_SECONDS", 0.05)


def _source(url: str, tmp_path) -> AlpacaSource:
    return AlpacaSource(symbols=("BTC",), start="2023-01-05", end="2023-01-06", cache_dir=str(tmp_path), url_override=url)


def test_rate_limits_and_server_errors_are_retried_with_backoff(tmp_path, quick_retries):
    server = ScriptedAlpaca([429, 503, 500, "bars"])
    market, _ = _source(server.url, tmp_path).load()
    assert server.requests == 4 and market.n_bars == len(TIMES)
    server.server.shutdown()


def test_a_server_that_never_answers_fails_naming_the_host_and_the_setting(tmp_path, quick_retries):
    server = ScriptedAlpaca(["stall"] * 10)
    with pytest.raises(DataError, match=rf"127\.0\.0\.1:{server.server.server_port} failed after \d attempt.*data\.url_override"):
        _source(server.url, tmp_path).load()
    assert 1 < server.requests <= 4  # each stalled request timed out (0.5 s here) and was retried, boundedly
    server.server.shutdown()


def test_retries_stop_at_the_deadline(tmp_path, quick_retries, monkeypatch):
    from cappuccino.data import alpaca_source

    monkeypatch.setattr(alpaca_source, "DEADLINE_SECONDS", 1.2)  # room for two 0.5 s timeouts, not four
    server = ScriptedAlpaca(["stall"] * 10)
    with pytest.raises(DataError, match="data.url_override"):
        _source(server.url, tmp_path).load()
    assert 1 <= server.requests < 4
    server.server.shutdown()


def test_retries_are_bounded_and_client_errors_are_not_retried(tmp_path, quick_retries):
    busy = ScriptedAlpaca([429] * 10)
    with pytest.raises(DataError, match="HTTP 429"):
        _source(busy.url, tmp_path).load()
    assert busy.requests == 4
    refused = ScriptedAlpaca([403])
    with pytest.raises(DataError, match="after 1 attempt.*HTTP 403"):
        _source(refused.url, tmp_path).load()
    assert refused.requests == 1


def test_the_alpaca_client_internals_the_timeout_relies_on_exist():
    from alpaca.data.historical import CryptoHistoricalDataClient
    from requests import Session

    client = CryptoHistoricalDataClient(raw_data=True)
    assert isinstance(client._session, Session) and isinstance(client._retry, int)
