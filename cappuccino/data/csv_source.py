"""Bars from CSV files: one long-format file, one file per symbol, or CryptoDataDownload exports.

Layouts (``data.path``):

- a long-format file with a time column, a ``symbol`` column and open, high, low, close, volume;
- a pattern containing ``{symbol}``, e.g. ``data/Binance_{symbol}USDT_1h.csv``: one file per
  symbol, where a ``symbol`` column is optional;
- CryptoDataDownload exports in either layout: an attribution line before the header is skipped,
  rows may come newest first, hours may be written ``2019-10-17 09-AM``, and the volume is read
  from the base-asset column (``Volume BTC`` / ``volume_btc``), not the quote one.

Column names are matched case-insensitively with spaces read as underscores. The time column is
the first of time, timestamp, datetime, date, unix; text times without a zone are UTC, numbers
are Unix epochs (seconds, ms, us or ns, told apart by magnitude). Symbols in files are mapped to
their base asset: the part before "/", "-" or "_" ("BTC/USD", "BTC-USD" -> "BTC"), else the
name without a trailing quote currency ("BTCUSDT" -> "BTC").
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from dataclasses import dataclass

from cappuccino.data.cleaning import DataError, DataReport, clean_bars, format_delta, parse_interval
from cappuccino.data.market import MarketData
from cappuccino.data.source import BarSource

TIME_COLUMNS = ("time", "timestamp", "datetime", "date", "unix")
QUOTE_CURRENCIES = ("USDT", "USDC", "BUSD", "USD", "EUR", "GBP")  # longest first: USDT before USD
_HOUR_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2} \d{1,2}-[AP]M$")  # CryptoDataDownload: "2019-10-17 09-AM"


@dataclass(frozen=True, kw_only=True)
class CsvSource(BarSource):
    """``path``: a long-format file, or a pattern with "{symbol}" for one file per symbol."""

    path: str

    def load(self) -> tuple[MarketData, DataReport]:
        return csv_market(self)


def csv_market(cfg: CsvSource) -> tuple[MarketData, DataReport]:
    """Load ``cfg.symbols`` from ``cfg.path``, check the bar length against ``cfg.interval`` and clean."""
    interval = parse_interval(cfg.interval)
    if "{symbol}" in cfg.path:
        paths = {symbol: cfg.path.replace("{symbol}", symbol) for symbol in cfg.symbols}
        frames = {symbol: _symbol_file(path, symbol) for symbol, path in paths.items()}
    else:
        paths = dict.fromkeys(cfg.symbols, cfg.path)
        frames = _long_file(cfg.path, cfg.symbols)
    for symbol, frame in frames.items():
        _check_interval(paths[symbol], symbol, frame.index, interval)
    return clean_bars(frames, interval, cfg.max_gap_bars, source="csv")


def canonical_symbol(name: str) -> str:
    """The base asset of a pair name: "BTC/USD", "btc-usd", "BTCUSDT" and "BTC" all give "BTC"."""
    name = name.strip().upper()
    base = re.split(r"[/\-_]", name)[0]
    if base != name:
        return base
    for quote in QUOTE_CURRENCIES:
        if name.endswith(quote) and len(name) > len(quote):
            return name[: -len(quote)]
    return name


def _long_file(path: str, symbols: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    table = _read_table(path)
    if "symbol" not in table.columns:
        raise DataError(
            f"{path} has no 'symbol' column; add one, or give one file per symbol with a pattern such as "
            "data.path=data/{symbol}.csv"
        )
    names = pd.Series(table["symbol"].astype(str).unique())
    bases = names.map(canonical_symbol)
    clashing = {b: list(names[bases == b]) for b in symbols if (bases == b).sum() > 1}
    if clashing:
        raise DataError(f"{path}: several names map to the same symbol {clashing}; keep one market per symbol")
    table["symbol"] = table["symbol"].astype(str).map(dict(zip(names, bases)))
    missing = [s for s in symbols if s not in set(bases)]
    if missing:
        raise DataError(
            f"{path} has no bars for {missing} (it holds {sorted(set(bases))}); fix data.symbols or the file"
        )
    return {s: _bars(table[table["symbol"] == s], s, path) for s in symbols}


def _symbol_file(path: str, symbol: str) -> pd.DataFrame:
    table = _read_table(path)
    if "symbol" in table.columns:
        held = sorted({canonical_symbol(n) for n in table["symbol"].astype(str).unique()})
        if held != [symbol]:
            raise DataError(f"{path} should hold {symbol} bars but holds {held}; check data.path")
    return _bars(table, symbol, path)


def _read_table(path: str) -> pd.DataFrame:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"data file {file} not found; check data.path (and data.symbols for a {{symbol}} pattern)")
    with file.open() as handle:
        first_line = handle.readline()
    # CryptoDataDownload puts an attribution URL above the header.
    attribution = first_line.lower().startswith(("http", "www")) or "," not in first_line
    table = pd.read_csv(file, skiprows=1 if attribution else 0)
    table.columns = [re.sub(r"\s+", "_", str(c).strip().lower()) for c in table.columns]
    return table


def _bars(table: pd.DataFrame, symbol: str, path: str) -> pd.DataFrame:
    """(n, 5) float OHLCV of one symbol indexed by UTC bar time, in file order."""
    missing = [c for c in ("open", "high", "low", "close") if c not in table.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing}; it has {list(table.columns)}")
    bars = table[["open", "high", "low", "close"]].assign(volume=table[_volume_column(table, symbol, path)])
    try:
        bars = bars.astype(np.float64)
    except ValueError as err:
        raise DataError(f"{path}: {symbol} prices or volumes are not numbers ({err}); fix the file") from err
    bars.index = _times(table, path)
    return bars


def _volume_column(table: pd.DataFrame, symbol: str, path: str) -> str:
    """"volume", else the base-asset volume of CryptoDataDownload files ("Volume BTC", not "Volume USD")."""
    for column in ("volume", f"volume_{symbol.lower()}"):
        if column in table.columns:
            return column
    found = [c for c in table.columns if c.startswith("volume")]
    raise DataError(f"{path} has no volume column for {symbol}: expected 'volume' or 'Volume {symbol}', found {found}")


def _times(table: pd.DataFrame, path: str) -> pd.DatetimeIndex:
    column = next((c for c in TIME_COLUMNS if c in table.columns), None)
    if column is None:
        raise DataError(f"{path} has no time column; name one of {list(TIME_COLUMNS)}")
    values = table[column]
    try:
        if pd.api.types.is_numeric_dtype(values):
            unit = _epoch_unit(float(values.abs().max()))
            return pd.DatetimeIndex(pd.to_datetime(values, unit=unit, utc=True))
        text = values.astype(str).str.strip()
        hour_only = text.str.match(_HOUR_ONLY)
        times = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
        times[hour_only] = pd.to_datetime(text[hour_only], format="%Y-%m-%d %I-%p", utc=True)
        times[~hour_only] = pd.to_datetime(text[~hour_only], format="ISO8601", utc=True)
    except (ValueError, OverflowError) as err:
        raise DataError(
            f"{path}: cannot read column {column!r} as times (e.g. {values.iloc[0]!r}): {err}; "
            "use ISO 8601 times such as 2023-01-05 10:00:00"
        ) from err
    return pd.DatetimeIndex(times)


def _epoch_unit(largest: float) -> str:
    """Epoch unit by magnitude: seconds until the year ~5000, then ms, us, ns."""
    for unit, bound in (("s", 1e11), ("ms", 1e14), ("us", 1e17)):
        if largest < bound:
            return unit
    return "ns"


def _check_interval(path: str, symbol: str, index: pd.DatetimeIndex, interval: pd.Timedelta) -> None:
    """The typical (median) spacing of the file's bars must be data.interval."""
    stamps = np.unique(index.as_unit("ns").asi8)
    if stamps.size < 2:
        raise DataError(f"{path}: {symbol} has {stamps.size} bar(s); need a file with a series of bars")
    typical = pd.Timedelta(int(np.median(np.diff(stamps))))
    if typical != interval:
        raise DataError(
            f"{path}: {symbol} bars are {format_delta(typical)} apart, but data.interval={format_delta(interval)}; "
            f"set data.interval={format_delta(typical)} or resample the file to {format_delta(interval)} bars"
        )
