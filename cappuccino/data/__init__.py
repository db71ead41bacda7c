"""Market data: synthetic, CSV or Alpaca bars, cleaned into one ``MarketData``."""

from __future__ import annotations

from cappuccino.config import AlpacaDataConfig, CsvDataConfig, DataConfig, SyntheticDataConfig
from cappuccino.data.alpaca_source import alpaca_market
from cappuccino.data.cleaning import DataError, DataReport, clean_bars
from cappuccino.data.csv_source import csv_market
from cappuccino.data.market import OHLCV, MarketData
from cappuccino.data.synthetic import synthetic_market

__all__ = [
    "OHLCV",
    "DataError",
    "DataReport",
    "MarketData",
    "alpaca_market",
    "clean_bars",
    "csv_market",
    "load_market",
    "synthetic_market",
]

_SCHEMAS: dict[str, type[DataConfig]] = {
    "synthetic": SyntheticDataConfig,
    "csv": CsvDataConfig,
    "alpaca": AlpacaDataConfig,
}


def load_market(cfg: DataConfig) -> tuple[MarketData, DataReport]:
    """The bars ``cfg`` describes and the repairs made to them (synthetic data needs none)."""
    schema = _SCHEMAS.get(cfg.source)
    if schema is None:
        raise DataError(f"data.source={cfg.source!r} is unknown; use one of {sorted(_SCHEMAS)}")
    if not isinstance(cfg, schema):
        raise DataError(f"data.source={cfg.source!r} needs a {schema.__name__}, got {type(cfg).__name__}")
    if isinstance(cfg, SyntheticDataConfig):
        return synthetic_market(cfg), DataReport()
    if isinstance(cfg, CsvDataConfig):
        return csv_market(cfg)
    return alpaca_market(cfg)
