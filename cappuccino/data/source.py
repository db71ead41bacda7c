"""What every data source shares: the symbols, the bar length, the gap rule and the rule for
impossible bars, checked once."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from cappuccino.data.cleaning import INCONSISTENT_BARS, DataError, DataReport, parse_interval, to_utc
from cappuccino.data.market import MarketData
from cappuccino.errors import ArgumentError, require

DEFAULT_SYMBOLS = ("AAVE", "AVAX", "BTC", "ETH", "LINK", "LTC", "UNI")


@dataclass(frozen=True, kw_only=True)
class BarSource(abc.ABC):
    """Bars of ``symbols`` at ``interval`` (a pandas offset alias: "1h", "5min"); runs of up to
    ``max_gap_bars`` missing bars are forward-filled, longer ones fail. ``inconsistent_bars``:
    what to do with bars whose high/low do not contain open and close, "repair" (widen them to
    the bar's extreme prices, reported) or "reject" (fail); see ``cappuccino.data.cleaning``."""

    symbols: tuple[str, ...] = field(default=DEFAULT_SYMBOLS)
    interval: str = "1h"
    max_gap_bars: int = 3
    inconsistent_bars: str = "repair"

    def __post_init__(self) -> None:
        object.__setattr__(self, "symbols", tuple(self.symbols))
        require(len(self.symbols) > 0, "symbols", "needs at least one symbol")
        require(len(set(self.symbols)) == len(self.symbols), "symbols", f"has duplicates: {list(self.symbols)}")
        require(self.max_gap_bars >= 0, "max_gap_bars", f"must be >= 0, got {self.max_gap_bars}")
        require(
            self.inconsistent_bars in INCONSISTENT_BARS, "inconsistent_bars",
            f"must be 'repair' or 'reject', got {self.inconsistent_bars!r}",
        )
        try:
            parse_interval(self.interval)
        except DataError as error:
            raise ArgumentError("interval", f"{self.interval!r} is not a fixed-length pandas offset alias; use e.g. 1h, 5min or 1D") from error

    def _check_time(self, argument: str) -> None:
        """A date/time argument must parse (a date without a time is its midnight UTC)."""
        value = getattr(self, argument)
        try:
            to_utc(value)
        except ValueError:
            raise ArgumentError(argument, f"cannot read {value!r} as a date or time; use e.g. 2024-01-31 or 2024-01-31T12:00") from None

    @abc.abstractmethod
    def load(self) -> tuple[MarketData, DataReport]:
        """The cleaned bars and the repairs made to them."""
