"""Turn per-symbol bar tables into one validated, aligned ``MarketData``.

Shared by the CSV and Alpaca sources (and run on synthetic bars as a self-check). Repairs that
cannot change what a strategy would have seen (sorting, dropping exact duplicate rows, short
flat fills, missing volume) are made and listed in a ``DataReport``; anything else raises
``DataError`` naming the symbol, the timestamp and the fix, because guessing prices would put
invented numbers into backtests.

Bars whose high is below max(open, close) or whose low is above min(open, close) (high < low
among them) cannot have traded; the ATR, DX and true range would be computed from them. The
``inconsistent_bars`` rule decides: "repair" widens high and low to the bar's extreme prices
(open and close are the trades a backtest fills at, so they are kept) and reports it, "reject"
fails. Negative volume fails; zero volume is a real bar in which nothing traded and is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from cappuccino.data.market import OHLCV, MarketData
from cappuccino.errors import UserError
from cappuccino.errors import require

PRICES = list(OHLCV[:4])
INCONSISTENT_BARS = ("repair", "reject")  # what to do with bars whose high/low do not contain open/close
_EXAMPLES = 3  # timestamps quoted in an error message


class DataError(UserError):
    """Market data that cannot be used as given; the message names what is wrong and the fix."""


@dataclass
class DataReport:
    """The repairs and drops made while loading, one human-readable line each."""

    entries: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.entries.append(line)

    def lines(self, limit: int | None = None) -> list[str]:
        """All entries, or the first ``limit`` and a line counting the rest (for logs)."""
        if limit is None or len(self.entries) <= limit:
            return list(self.entries)
        return self.entries[:limit] + [f"... and {len(self.entries) - limit} more repairs"]

    def __len__(self) -> int:
        return len(self.entries)

    def __str__(self) -> str:
        return "\n".join(self.lines(limit=20)) if self.entries else "no repairs needed"


# ---------------------------------------------------------------------------- parsing
def parse_interval(interval: str) -> pd.Timedelta:
    """The bar length of a fixed-size pandas offset alias ("1h", "5min", "1D")."""
    try:
        delta = pd.Timedelta(to_offset(interval))
    except (ValueError, TypeError) as err:
        raise DataError(
            f"data.interval={interval!r} is not a fixed-length pandas offset alias; use e.g. '1h', '5min' or '1D'"
        ) from err
    if delta <= pd.Timedelta(0):
        raise DataError(f"data.interval={interval!r} must be positive")
    return delta


def to_utc(timestamp: str) -> pd.Timestamp:
    """A config date/time as a UTC timestamp; a naive value is taken to be UTC already."""
    stamp = pd.Timestamp(timestamp)
    return stamp.tz_localize("UTC") if stamp.tz is None else stamp.tz_convert("UTC")


def format_delta(delta: pd.Timedelta) -> str:
    """A bar length as the offset alias a user would type, e.g. "1h", "5min", "1D"."""
    seconds = int(delta.total_seconds())
    for unit, size in (("D", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return str(delta)


def _fmt(stamps: pd.DatetimeIndex | pd.Timestamp) -> str:
    if isinstance(stamps, pd.Timestamp):
        return stamps.strftime("%Y-%m-%d %H:%M")
    shown = ", ".join(s.strftime("%Y-%m-%d %H:%M") for s in stamps[:_EXAMPLES])
    return shown + (f" (and {len(stamps) - _EXAMPLES} more)" if len(stamps) > _EXAMPLES else "")


# --------------------------------------------------------------------------- cleaning
def clean_bars(
    frames: dict[str, pd.DataFrame],
    interval: pd.Timedelta,
    max_gap_bars: int,
    source: str,
    *,
    inconsistent_bars: str,
    synthetic: bool = False,
) -> tuple[MarketData, DataReport]:
    """Validate, repair and align bars of several symbols.

    frames: symbol -> table with a tz-aware DatetimeIndex (bar open time) and columns
    open, high, low, close, volume; symbols keep the dict's order.

    Per symbol: rows out of time order are sorted; duplicate timestamps are dropped when the rows
    are identical and fail otherwise; missing or non-positive prices fail; negative volume fails,
    zero volume is kept (a bar without trades); bars whose high/low do not contain open and close
    are repaired or rejected as ``inconsistent_bars`` says ("repair" or "reject", required so that
    every source passes on its configured rule); missing volume becomes 0; bar spacing must be a
    multiple of ``interval``; runs of up to ``max_gap_bars`` missing bars are filled flat at the
    previous close with zero volume (no trade happened), longer runs fail. Across symbols only the
    timestamps all of them share are kept.
    """
    require(
        inconsistent_bars in INCONSISTENT_BARS, "inconsistent_bars",
        f"must be 'repair' or 'reject', got {inconsistent_bars!r}",
    )
    if not frames:
        raise DataError("no symbols to load; set data.symbols")
    report = DataReport()
    cleaned = {s: _clean_symbol(s, f, interval, max_gap_bars, inconsistent_bars, report) for s, f in frames.items()}
    timestamps = _shared_timestamps(cleaned, report)
    ohlcv = np.stack([f.loc[timestamps, list(OHLCV)].to_numpy(np.float64) for f in cleaned.values()], axis=1)
    market = MarketData(
        timestamps=timestamps,
        symbols=tuple(cleaned),
        ohlcv=ohlcv,  # (T, A, 5)
        interval=interval,
        source=source,
        synthetic=synthetic,
    )
    return market, report


def _clean_symbol(
    symbol: str, frame: pd.DataFrame, interval: pd.Timedelta, max_gap_bars: int, inconsistent_bars: str,
    report: DataReport,
) -> pd.DataFrame:
    missing = [c for c in OHLCV if c not in frame.columns]
    if missing:
        raise DataError(f"{symbol}: bars lack columns {missing}; expected {list(OHLCV)}")
    if not isinstance(frame.index, pd.DatetimeIndex) or frame.index.tz is None:
        raise DataError(f"{symbol}: bars need a tz-aware DatetimeIndex; convert the times to UTC first")
    if frame.empty:
        raise DataError(f"{symbol}: no bars; check the source and the date range")
    frame = frame.loc[:, list(OHLCV)].astype(np.float64)
    frame.index = frame.index.tz_convert("UTC").as_unit("ns")  # asi8 and the content hash count ns
    frame = _sort(symbol, frame, report)
    frame = _drop_identical_duplicates(symbol, frame, report)
    _check_values(symbol, frame)
    frame = _consistent_ohlc(symbol, frame, inconsistent_bars, report)
    frame = _fill_missing_volume(symbol, frame, report)
    _check_spacing(symbol, frame.index, interval)
    return _fill_gaps(symbol, frame, interval, max_gap_bars, report)


def _sort(symbol: str, frame: pd.DataFrame, report: DataReport) -> pd.DataFrame:
    if frame.index.is_monotonic_increasing:
        return frame
    if frame.index.is_monotonic_decreasing:
        report.add(f"{symbol}: bars were given newest first; reversed to oldest first")
    else:
        n_back = int((np.diff(frame.index.asi8) < 0).sum())
        report.add(f"{symbol}: {n_back} bars were out of time order; sorted by time")
    return frame.sort_index(kind="stable")


def _drop_identical_duplicates(symbol: str, frame: pd.DataFrame, report: DataReport) -> pd.DataFrame:
    if not frame.index.has_duplicates:
        return frame
    identical = frame.reset_index().duplicated().to_numpy()  # same time and same values as an earlier row
    kept = frame[~identical]
    if kept.index.has_duplicates:
        clashes = kept.index[kept.index.duplicated()].unique()
        raise DataError(
            f"{symbol}: {len(clashes)} timestamps appear more than once with different values, at "
            f"{_fmt(clashes)}; keep one bar per timestamp in the source"
        )
    report.add(
        f"{symbol}: dropped {int(identical.sum())} duplicate rows identical to another, "
        f"at {_fmt(frame.index[identical].unique())}"
    )
    return kept


def _check_values(symbol: str, frame: pd.DataFrame) -> None:
    bad_price = ~(frame[PRICES] > 0).all(axis=1)  # NaN compares False, so it counts as bad
    if bad_price.any():
        raise DataError(
            f"{symbol}: {int(bad_price.sum())} bars have missing or non-positive prices, at "
            f"{_fmt(frame.index[bad_price.to_numpy()])}; repair or remove them in the source, or choose a "
            "date range without them"
        )
    negative = frame["volume"] < 0
    if negative.any():
        raise DataError(
            f"{symbol}: {int(negative.sum())} bars have negative volume, at "
            f"{_fmt(frame.index[negative.to_numpy()])}; repair them in the source"
        )


def _consistent_ohlc(symbol: str, frame: pd.DataFrame, rule: str, report: DataReport) -> pd.DataFrame:
    """Bars whose high/low do not contain open and close: repaired to the bar's extremes, or rejected.

    Such a bar cannot have traded, and indicators built on the range (ATR, DX, true range) would
    read it as real; high < low is one case (it puts high below open or close, or low above).
    """
    prices = frame[PRICES]
    bad = ((prices["high"] < prices[["open", "close"]].max(axis=1))
           | (prices["low"] > prices[["open", "close"]].min(axis=1))).to_numpy()
    if not bad.any():
        return frame
    where = _fmt(frame.index[bad])
    if rule == "reject":
        raise DataError(
            f"{symbol}: {int(bad.sum())} bars have high below max(open, close) or low above min(open, close), at "
            f"{where}; repair them in the source, or set data.inconsistent_bars=repair to widen high and low to "
            "each bar's highest and lowest price"
        )
    report.add(
        f"{symbol}: {int(bad.sum())} bars had high below max(open, close) or low above min(open, close), at "
        f"{where}; set high to the bar's highest and low to its lowest price (data.inconsistent_bars=repair)"
    )
    return frame.assign(high=prices.max(axis=1), low=prices.min(axis=1))


def _fill_missing_volume(symbol: str, frame: pd.DataFrame, report: DataReport) -> pd.DataFrame:
    missing = frame["volume"].isna()
    if not missing.any():
        return frame
    report.add(f"{symbol}: set {int(missing.sum())} missing volumes to 0, at {_fmt(frame.index[missing.to_numpy()])}")
    return frame.assign(volume=frame["volume"].fillna(0.0))


def _check_spacing(symbol: str, index: pd.DatetimeIndex, interval: pd.Timedelta) -> None:
    steps = np.diff(index.asi8)  # ns between consecutive bars
    off_grid = steps % interval.value != 0
    if off_grid.any():
        where = index[1:][off_grid]
        step = pd.Timedelta(int(steps[off_grid][0]))
        raise DataError(
            f"{symbol}: the bar at {_fmt(where[0])} comes {step} after the previous one, not a multiple of "
            f"data.interval={format_delta(interval)} ({len(where)} such bars); resample the source to "
            f"{format_delta(interval)} bars or set data.interval to its bar length"
        )


def _fill_gaps(
    symbol: str, frame: pd.DataFrame, interval: pd.Timedelta, max_gap_bars: int, report: DataReport
) -> pd.DataFrame:
    missing = np.diff(frame.index.asi8) // interval.value - 1  # bars missing after each bar
    gaps = np.flatnonzero(missing > 0)
    if gaps.size == 0:
        return frame
    too_long = gaps[missing[gaps] > max_gap_bars]
    if too_long.size:
        first, longest = too_long[0], int(missing[too_long].max())
        raise DataError(
            f"{symbol}: {missing[first]} bars are missing after {_fmt(frame.index[first])} (next bar at "
            f"{_fmt(frame.index[first + 1])}), more than data.max_gap_bars={max_gap_bars}; "
            f"{too_long.size} gaps are that long, the longest {longest} bars. Set data.max_gap_bars={longest} "
            "to fill them flat, or choose a date range without them"
        )
    for gap in gaps:
        report.add(
            f"{symbol}: forward-filled {missing[gap]} missing bar{'s' if missing[gap] > 1 else ''} "
            f"at {_fmt(frame.index[gap] + interval)}"
        )
    full = frame.reindex(pd.date_range(frame.index[0], frame.index[-1], freq=interval))
    close = full["close"].ffill()
    return full.assign(
        open=full["open"].fillna(close),
        high=full["high"].fillna(close),
        low=full["low"].fillna(close),
        close=close,
        volume=full["volume"].fillna(0.0),
    )


def _shared_timestamps(frames: dict[str, pd.DataFrame], report: DataReport) -> pd.DatetimeIndex:
    shared = reduce(pd.DatetimeIndex.intersection, (f.index for f in frames.values()))
    if shared.empty:
        spans = "; ".join(f"{s}: {_fmt(f.index[0])} .. {_fmt(f.index[-1])}" for s, f in frames.items())
        raise DataError(
            f"the symbols share no timestamps ({spans}); choose symbols and a date range that overlap, "
            "with bars on the same time grid"
        )
    for symbol, frame in frames.items():
        dropped = len(frame) - len(shared)
        if dropped:
            report.add(
                f"{symbol}: dropped {dropped} bars not shared by all symbols "
                f"(kept {_fmt(shared[0])} .. {_fmt(shared[-1])})"
            )
    return shared
