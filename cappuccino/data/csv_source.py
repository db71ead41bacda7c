"""Bars from CSV files: one long-format file, one file per symbol, or CryptoDataDownload exports.

Layouts (``data.path``):

- a long-format file with a time column, a ``symbol`` column and open, high, low, close, volume;
  when ``data.symbols`` holds one symbol the ``symbol`` column may be left out (every row is it);
- a pattern containing ``{symbol}``, e.g. ``data/Binance_{symbol}USDT_1h.csv``: one file per
  symbol, where a ``symbol`` column is optional;
- CryptoDataDownload exports in either layout: rows may come newest first, hours may be written
  ``2019-10-17 09-AM``, and the volume is read from the base-asset column (``Volume BTC`` /
  ``volume_btc``), not the quote one.

The header is the first of the file's first 10 lines that names a time column and ``close``; the
lines above it are skipped, whatever they say (CryptoDataDownload's attribution was a bare URL and
is now ``Timestamps are UTC timezone,https://www.CryptoDataDownload.com``, a line with a comma).
Column names are matched case-insensitively with spaces read as underscores. The time column is
the first of time, timestamp, datetime, date, unix. Numbers are Unix epochs (seconds, ms, us or
ns, told apart by magnitude); text is ISO 8601, where a time without a zone is UTC, unless
``data.time_format`` gives its strftime format (day-first ``31/12/2023 10:00`` is
``%d/%m/%Y %H:%M``; no format is guessed, since 01/02 reads both ways). A column mixing times with
and without a zone fails: the zone of the others is unknown, and read as UTC they would be sorted
hours away from their neighbours. Symbols in files are mapped to their base asset: the part before
"/", "-" or "_" ("BTC/USD", "BTC-USD" -> "BTC"), else the name without a trailing quote currency
("BTCUSDT" -> "BTC").
"""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from cappuccino.data.cleaning import DataError, DataReport, clean_bars, format_delta, parse_interval
from cappuccino.data.market import MarketData
from cappuccino.data.source import BarSource
from cappuccino.errors import require

TIME_COLUMNS = ("time", "timestamp", "datetime", "date", "unix")
QUOTE_CURRENCIES = ("USDT", "USDC", "BUSD", "USD", "EUR", "GBP")  # longest first: USDT before USD
HEADER_LINES = 10  # the header is searched for among this many lines at the top of a file
_HOUR_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2} \d{1,2}-[AP]M$")  # CryptoDataDownload: "2019-10-17 09-AM"
_ZONE = r"\d:\d{2}(?::\d{2}(?:\.\d+)?)?\s*(?:[Zz]|UTC|GMT|[+-]\d{2}(?::?\d{2})?)$"  # a time ending in a zone
_FORMAT_HINT = "data.time_format='%d/%m/%Y %H:%M' for day-first times such as 31/12/2023 10:00"


@dataclass(frozen=True, kw_only=True)
class CsvSource(BarSource):
    """``path``: a long-format file, or a pattern with "{symbol}" for one file per symbol.
    ``time_format``: the strftime format of the text times (e.g. "%d/%m/%Y %H:%M"); None reads
    ISO 8601 text and Unix epochs."""

    path: str
    time_format: Optional[str] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self.time_format is None or _is_time_format(self.time_format), "time_format",
            f"must be a strftime format such as '%d/%m/%Y %H:%M' (for 31/12/2023 10:00), got {self.time_format!r}",
        )

    def load(self) -> tuple[MarketData, DataReport]:
        return csv_market(self)


def csv_market(cfg: CsvSource) -> tuple[MarketData, DataReport]:
    """Load ``cfg.symbols`` from ``cfg.path``, check the bar length against ``cfg.interval`` and clean."""
    interval = parse_interval(cfg.interval)
    if "{symbol}" in cfg.path:
        paths = {symbol: cfg.path.replace("{symbol}", symbol) for symbol in cfg.symbols}
        frames = {symbol: _symbol_file(path, symbol, cfg.time_format) for symbol, path in paths.items()}
    else:
        paths = dict.fromkeys(cfg.symbols, cfg.path)
        frames = _long_file(cfg.path, cfg.symbols, cfg.time_format)
    for symbol, frame in frames.items():
        _check_interval(paths[symbol], symbol, frame.index, interval)
    return clean_bars(frames, interval, cfg.max_gap_bars, source="csv", inconsistent_bars=cfg.inconsistent_bars)


def _is_time_format(time_format: str) -> bool:
    """A format pandas accepts, with at least one directive: checked when the source is built, so a
    typo fails at validate() rather than after the file is read."""
    try:
        pd.to_datetime(pd.Series(["0"]), format=time_format, errors="coerce")
    except ValueError:  # a bad directive, e.g. "%Q"
        return False
    return "%" in time_format


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


def _long_file(path: str, symbols: tuple[str, ...], time_format: Optional[str]) -> dict[str, pd.DataFrame]:
    table = _read_table(path)
    if "symbol" not in table.columns:
        if len(symbols) == 1:  # nothing to tell apart: every row is the one configured symbol's
            return {symbols[0]: _bars(table, symbols[0], path, time_format)}
        raise DataError(
            f"{path} has no 'symbol' column, but data.symbols holds {len(symbols)} symbols {list(symbols)}; add a "
            "symbol column, set data.symbols to the file's one symbol, or give one file per symbol with a pattern "
            "such as data.path=data/{symbol}.csv"
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
    return {s: _bars(table[table["symbol"] == s], s, path, time_format) for s in symbols}


def _symbol_file(path: str, symbol: str, time_format: Optional[str]) -> pd.DataFrame:
    table = _read_table(path)
    if "symbol" in table.columns:
        held = sorted({canonical_symbol(n) for n in table["symbol"].astype(str).unique()})
        if held != [symbol]:
            raise DataError(f"{path} should hold {symbol} bars but holds {held}; check data.path")
    return _bars(table, symbol, path, time_format)


def _read_table(path: str) -> pd.DataFrame:
    """The rows below the file's header line, with normalised column names."""
    file = _data_file(path)
    header = _header_line(file)
    try:
        table = pd.read_csv(file, skiprows=header)
    except pd.errors.ParserError as err:
        raise DataError(f"{file}: cannot read the rows below its header (line {header + 1}) as CSV: {err}") from err
    table.columns = [_column_name(c) for c in table.columns]
    return table


def _data_file(path: str) -> Path:
    """``path`` as a file that exists; a directory or a missing file is an error naming data.path."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise DataError(
            f"{file} is a directory, not a CSV file; set data.path to a file in it, or to a pattern with one "
            f"file per symbol such as data.path={file}/{{symbol}}.csv"
        )
    if not file.is_file():
        raise DataError(f"data file {file} not found; check data.path (and data.symbols for a {{symbol}} pattern)")
    return file


def _header_line(file: Path) -> int:
    """The 0-based line of the header: the first of the first lines that names a time column and 'close'.

    Found by the names it must hold rather than by what the lines above it look like, since
    attribution lines change (CryptoDataDownload's gained a comma and a sentence).
    """
    with file.open(encoding="utf-8-sig", errors="replace") as handle:
        lines = [line.strip() for line in itertools.islice(handle, HEADER_LINES)]
    if not any(lines) and len(lines) < HEADER_LINES:
        raise DataError(f"data file {file} is empty; check data.path")
    for number, line in enumerate(lines):
        names = {_column_name(name) for name in next(csv.reader([line]), [])}
        if "close" in names and names & set(TIME_COLUMNS):
            return number
    first = next(line for line in lines if line) if any(lines) else ""
    raise DataError(
        f"{file}: found no header line among its first {HEADER_LINES} lines; the header must name a time column "
        f"(one of {', '.join(TIME_COLUMNS)}) and 'close', besides open, high, low and volume (in any case). The first "
        f"line is {first[:200]!r}; name the columns so, or check data.path"
    )


def _column_name(name: object) -> str:
    """Column names as matched: lower case, spaces as underscores ("Volume BTC" -> "volume_btc")."""
    return re.sub(r"\s+", "_", str(name).strip().lower())


def _bars(table: pd.DataFrame, symbol: str, path: str, time_format: Optional[str]) -> pd.DataFrame:
    """(n, 5) float OHLCV of one symbol indexed by UTC bar time, in file order."""
    missing = [c for c in ("open", "high", "low", "close") if c not in table.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing}; it has {list(table.columns)}")
    bars = table[["open", "high", "low", "close"]].assign(volume=table[_volume_column(table, symbol, path)])
    try:
        bars = bars.astype(np.float64)
    except ValueError as err:
        raise DataError(f"{path}: {symbol} prices or volumes are not numbers ({err}); fix the file") from err
    bars.index = _times(table, path, time_format)
    return bars


def _volume_column(table: pd.DataFrame, symbol: str, path: str) -> str:
    """"volume", else the base-asset volume of CryptoDataDownload files ("Volume BTC", not "Volume USD")."""
    for column in ("volume", f"volume_{symbol.lower()}"):
        if column in table.columns:
            return column
    found = [c for c in table.columns if c.startswith("volume")]
    raise DataError(f"{path} has no volume column for {symbol}: expected 'volume' or 'Volume {symbol}', found {found}")


def _times(table: pd.DataFrame, path: str, time_format: Optional[str]) -> pd.DatetimeIndex:
    """Bar times in UTC: Unix epochs from a numeric column, else text as ISO 8601 (or as
    CryptoDataDownload's "2019-10-17 09-AM"), or as ``time_format`` when it is set."""
    column = next(c for c in TIME_COLUMNS if c in table.columns)  # the header line names one
    values = table[column]
    if time_format is None and pd.api.types.is_numeric_dtype(values):
        times = pd.to_datetime(values, unit=_epoch_unit(float(values.abs().max())), utc=True, errors="coerce")
    else:
        text = values.astype(str).str.strip()
        _check_one_zone_form(text[values.notna()], path, column)
        times = _text_times(text, time_format)
    _check_all_read(values, times, path, column, time_format)
    return pd.DatetimeIndex(times)


def _text_times(text: pd.Series, time_format: Optional[str]) -> pd.Series:
    """Text as UTC times (no zone: UTC); what cannot be read becomes NaT, for the caller to report."""
    if time_format is not None:
        return pd.to_datetime(text, format=time_format, utc=True, errors="coerce")
    hour_only = text.str.match(_HOUR_ONLY)
    times = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    times[hour_only] = pd.to_datetime(text[hour_only], format="%Y-%m-%d %I-%p", utc=True, errors="coerce")
    times[~hour_only] = pd.to_datetime(text[~hour_only], format="ISO8601", utc=True, errors="coerce")
    return times


def _check_one_zone_form(text: pd.Series, path: str, column: str) -> None:
    """Times with and without a zone in one column are ambiguous: which zone the bare ones are in
    is a guess, and read as UTC they are sorted hours away from their neighbours."""
    zoned = text.str.contains(_ZONE, regex=True)
    if zoned.any() and not zoned.all():
        raise DataError(
            f"{path}: column {column!r} mixes times with a time zone (e.g. {text[zoned].iloc[0]!r}) and without one "
            f"(e.g. {text[~zoned].iloc[0]!r}), so the zone of the latter is ambiguous; write every time in one form, "
            "e.g. all in UTC with +00:00, or all in UTC without a zone"
        )


def _check_all_read(
    values: pd.Series, times: pd.Series, path: str, column: str, time_format: Optional[str]
) -> None:
    """Every bar needs a time: the first value that could not be read is quoted with the fix."""
    unread = times.isna().to_numpy()
    if not unread.any():
        return
    example = values[unread].iloc[0]
    shown = "an empty cell" if pd.isna(example) else repr(str(example).strip())
    problem, fix = _time_fix(values, time_format)
    raise DataError(
        f"{path}: cannot read column {column!r} as times: {int(unread.sum())} of {len(values)} values {problem}, "
        f"e.g. {shown}; {fix}"
    )


def _time_fix(values: pd.Series, time_format: Optional[str]) -> tuple[str, str]:
    """What is wrong with unreadable times and what to do, by how they were read (no pandas advice:
    its ``format=`` arguments are not settings a user can reach)."""
    if time_format is not None:
        return (
            f"do not match data.time_format={time_format!r}",
            f"set data.time_format to their strftime format ({_FORMAT_HINT}), or to null for ISO 8601 times",
        )
    if pd.api.types.is_numeric_dtype(values):
        return "are not Unix epochs", "give every row a Unix epoch (seconds, ms, us or ns), or write ISO 8601 times"
    return "are not ISO 8601", (
        "write them in ISO 8601 (e.g. 2023-12-31 10:00:00, optionally with a zone such as +00:00), or set "
        f"data.time_format to their strftime format, e.g. {_FORMAT_HINT}"
    )


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
