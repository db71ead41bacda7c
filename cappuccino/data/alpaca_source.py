"""Historical crypto bars from Alpaca's market-data API, cached as Parquet.

Crypto bars need no API keys. alpaca-py's ``get_crypto_bars`` follows ``next_page_token`` until
the API stops returning one (``RESTClient._get_marketdata``), so one call returns every page.
The client runs with ``raw_data=True``: the JSON bars go straight into a DataFrame instead of one
pydantic object per bar (millions for 5-minute data).

The raw bars are cached under ``data.cache_dir`` in a file named by a hash of what was asked for
(symbols, quote, timeframe, start, end), so a repeated run reads the file and makes no request.
Cleaning runs after the cache, so changing ``data.max_gap_bars`` or ``data.inconsistent_bars`` needs
no new download.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import pandas as pd
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.historical import CryptoHistoricalDataClient
from alpaca.data.requests import CryptoBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from requests.adapters import HTTPAdapter

from cappuccino.data.cleaning import DataError, DataReport, clean_bars, format_delta, parse_interval, to_utc
from cappuccino.data.market import MarketData
from cappuccino.data.source import BarSource
from cappuccino.errors import require

REQUEST_TIMEOUT = (5.0, 10.0)  # seconds to connect, and between bytes of the answer
DEADLINE_SECONDS = 28.0  # a server that never answers fails well within 30 s
MAX_ATTEMPTS = 4
BACKOFF_SECONDS = 0.5  # waits 0.5, 1, 2 s, each plus up to 0.5 s of jitter

_BAR_FIELDS = {"t": "time", "o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"}


@dataclass(frozen=True, kw_only=True)
class AlpacaSource(BarSource):
    """Bars of ``symbols`` quoted in ``quote`` from ``start`` to ``end`` (UTC), cached under
    ``cache_dir``; ``url_override`` points the client at another server (tests: a local one)."""

    quote: str = "USD"
    start: str = "2023-01-01"
    end: str = "2024-12-31"
    cache_dir: str = "~/.cache/cappuccino/alpaca"
    url_override: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_time("start")
        self._check_time("end")
        require(to_utc(self.start) < to_utc(self.end), "start", f"must be before end ({self.start} >= {self.end})")

    def load(self) -> tuple[MarketData, DataReport]:
        return alpaca_market(self)


def alpaca_market(cfg: AlpacaSource, cached: bool = True) -> tuple[MarketData, DataReport]:
    """Bars of ``cfg.symbols`` quoted in ``cfg.quote`` from ``cfg.start`` to ``cfg.end`` (UTC), cleaned.

    A date without a time means its midnight UTC, so ``end: 2024-12-31`` stops at that day's first bar.
    ``cached=False`` always downloads and writes no cache file.
    """
    return clean_alpaca_bars(cfg, alpaca_bars(cfg, cached))


def alpaca_bars(cfg: AlpacaSource, cached: bool = True) -> pd.DataFrame:
    """The bars as Alpaca sent them: a long table (symbol, time, open, high, low, close, volume)."""
    timeframe = alpaca_timeframe(parse_interval(cfg.interval))
    start, end = to_utc(cfg.start), to_utc(cfg.end)
    cache = Path(cfg.cache_dir).expanduser() / f"bars-{_cache_key(cfg, timeframe, start, end)}.parquet"
    if cached and cache.is_file():
        return pd.read_parquet(cache)
    table = _download(cfg, timeframe, start, end)
    if cached:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_suffix(".partial")
        table.to_parquet(partial, index=False)
        partial.replace(cache)  # atomic: an interrupted run never leaves a truncated cache file
    return table


def clean_alpaca_bars(cfg: AlpacaSource, table: pd.DataFrame) -> tuple[MarketData, DataReport]:
    """``alpaca_bars``' table validated, repaired and aligned as the data group says."""
    frames = {s: group.set_index("time").drop(columns="symbol") for s, group in table.groupby("symbol", sort=False)}
    missing = [s for s in cfg.symbols if s not in frames]
    if missing:
        raise DataError(f"Alpaca returned no bars for {missing} between {cfg.start} and {cfg.end}; check data.symbols and the date range")
    frames = {s: frames[s] for s in cfg.symbols}  # config order
    return clean_bars(frames, parse_interval(cfg.interval), cfg.max_gap_bars, source="alpaca", inconsistent_bars=cfg.inconsistent_bars)


def alpaca_timeframe(interval: pd.Timedelta) -> TimeFrame:
    """The Alpaca bar size of a bar length: 1-59 minutes, 1-23 hours, or one day."""
    minutes = interval / pd.Timedelta("1min")
    if minutes == int(minutes) and 1 <= minutes < 60:
        return TimeFrame(int(minutes), TimeFrameUnit.Minute)
    if minutes % 60 == 0 and 1 <= minutes // 60 < 24:
        return TimeFrame(int(minutes // 60), TimeFrameUnit.Hour)
    if interval == pd.Timedelta("1D"):
        return TimeFrame.Day
    raise DataError(
        f"Alpaca has no {format_delta(interval)} bars; set data.interval to 1-59 minutes (e.g. 5min), "
        "1-23 hours (e.g. 1h) or 1D"
    )


def _cache_key(cfg: AlpacaSource, timeframe: TimeFrame, start: pd.Timestamp, end: pd.Timestamp) -> str:
    request = [sorted(cfg.symbols), cfg.quote, timeframe.value, start.isoformat(), end.isoformat()]
    return hashlib.sha256(json.dumps(request).encode()).hexdigest()[:16]


class TimeoutAdapter(HTTPAdapter):
    """Every request of the session gets ``timeout``: requests waits forever by default."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self.timeout = timeout

    def send(self, request, **kwargs):  # noqa: ANN001, ANN201 - requests' signature
        kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


def _client(cfg: AlpacaSource) -> CryptoHistoricalDataClient:
    """alpaca-py's client with a timeout on every request and without its own retries (a fixed
    wait, 429 and 504 only): ``_fetch`` retries with backoff and jitter within a deadline."""
    client = CryptoHistoricalDataClient(url_override=cfg.url_override, raw_data=True)
    adapter = TimeoutAdapter(REQUEST_TIMEOUT)
    for scheme in ("http://", "https://"):
        client._session.mount(scheme, adapter)  # alpaca-py exposes no timeout; tests pin these two attributes
    client._retry = 0
    return client


def _fetch(cfg: AlpacaSource, fetch: Callable[[], dict]) -> dict:
    """``fetch()``, retried on rate limits, server errors, timeouts and dropped connections with
    exponential backoff and jitter, at most ``MAX_ATTEMPTS`` times and within ``DEADLINE_SECONDS``."""
    host = urlparse(cfg.url_override or "https://data.alpaca.markets").netloc
    deadline, attempt = time.monotonic() + DEADLINE_SECONDS, 0
    while True:
        try:
            return fetch()
        except (requests.Timeout, requests.ConnectionError, APIError) as err:
            status = getattr(err, "status_code", None)
            retryable = not isinstance(err, APIError) or status == 429 or (status or 0) >= 500
            wait = BACKOFF_SECONDS * 2**attempt + random.uniform(0, BACKOFF_SECONDS)
            if retryable and attempt + 1 < MAX_ATTEMPTS and time.monotonic() + wait + REQUEST_TIMEOUT[1] < deadline:
                time.sleep(wait)
                attempt += 1
                continue
            what = f"HTTP {status}" if status else type(err).__name__
            raise DataError(
                f"the Alpaca data request to {host} failed after {attempt + 1} attempt(s) ({what}: {err}); check the "
                "network, data.url_override, the symbols, or use data=csv with downloaded files"
            ) from None


def _download(cfg: AlpacaSource, timeframe: TimeFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Long table (symbol, time, open, high, low, close, volume) of every page of bars."""
    pairs = {f"{symbol}/{cfg.quote}": symbol for symbol in cfg.symbols}
    client = _client(cfg)
    request = CryptoBarsRequest(
        symbol_or_symbols=list(pairs), timeframe=timeframe, start=start.to_pydatetime(), end=end.to_pydatetime()
    )
    raw = _fetch(cfg, lambda: client.get_crypto_bars(request))  # {pair: [{"t": ..., ...}, ...]}, all pages
    missing = [pair for pair in pairs if not raw.get(pair)]
    if missing:
        raise DataError(
            f"Alpaca returned no bars for {missing} between {start} and {end}; check that they trade on "
            "Alpaca (data.symbols, data.quote) and the date range (data.start, data.end)"
        )
    tables = [pd.DataFrame(raw[pair]).assign(symbol=symbol) for pair, symbol in pairs.items()]
    table = pd.concat(tables, ignore_index=True).rename(columns=_BAR_FIELDS)
    table["time"] = pd.to_datetime(table["time"], format="ISO8601", utc=True)
    return table[["symbol", *_BAR_FIELDS.values()]]
