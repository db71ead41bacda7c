"""Market data: synthetic, CSV or Alpaca bars, cleaned into one ``MarketData``."""

from __future__ import annotations

from cappuccino.config import DataConfig, build
from cappuccino.data.cleaning import DataError, DataReport, clean_bars
from cappuccino.data.features import with_features
from cappuccino.data.market import OHLCV, MarketData
from cappuccino.data.source import BarSource

__all__ = ["OHLCV", "BarSource", "DataError", "DataReport", "MarketData", "clean_bars", "load_market"]


def load_market(cfg: DataConfig, zscore_window: int) -> tuple[MarketData, DataReport]:
    """The bars the ``data`` group describes, with their causal features, and the repairs made."""
    market, report = build(cfg).load()
    return with_features(market, zscore_window), report
