"""load_market dispatches on data.source."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cappuccino.config import CsvDataConfig, SyntheticDataConfig
from cappuccino.data import DataError, load_market
from cappuccino.data.synthetic import synthetic_market


def test_synthetic_source():
    cfg = SyntheticDataConfig(n_bars=200, symbols=["BTC", "ETH"])
    market, report = load_market(cfg)
    assert market.synthetic and market.n_bars == 200 and len(report) == 0
    np.testing.assert_array_equal(market.ohlcv, synthetic_market(cfg).ohlcv)


def test_csv_source(tmp_path: Path):
    path = tmp_path / "bars.csv"
    path.write_text(
        "date,symbol,open,high,low,close,volume\n"
        "2023-01-05 00:00,BTC/USD,1,2,1,2,3\n2023-01-05 01:00,BTC/USD,2,3,2,3,3\n2023-01-05 02:00,BTC/USD,3,4,3,4,3\n"
    )
    market, _ = load_market(CsvDataConfig(path=str(path), symbols=["BTC"]))
    assert market.source == "csv" and market.field("close")[:, 0].tolist() == [2.0, 3.0, 4.0]


def test_unknown_or_mismatched_source_is_an_error():
    with pytest.raises(DataError, match=r"source='parquet' is unknown; use one of \['alpaca', 'csv', 'synthetic'\]"):
        load_market(replace(SyntheticDataConfig(), source="parquet"))
    with pytest.raises(DataError, match="needs a CsvDataConfig"):
        load_market(replace(SyntheticDataConfig(), source="csv"))
