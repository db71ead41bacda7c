"""CSV loading: long files, one file per symbol, CryptoDataDownload exports, and useful errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cappuccino.data.cleaning import DataError
from cappuccino.data.csv_source import CsvSource, canonical_symbol, csv_market

TIMES = pd.date_range("2023-01-05", periods=4, freq="1h", tz="UTC")


def long_file(path: Path, names: list[str], freq: str = "1h") -> Path:
    """Long-format file: one block of 4 bars per file symbol name; close = 100 * (k + 1) + hour."""
    times = pd.date_range("2023-01-05", periods=4, freq=freq, tz="UTC")
    rows = [
        {"time": t.isoformat(), "symbol": name, "open": c, "high": c + 1, "low": c - 1, "close": c, "volume": 2.0}
        for k, name in enumerate(names)
        for t, c in zip(times, 100.0 * (k + 1) + np.arange(4))
    ]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_long_file_maps_pair_names_and_keeps_only_requested_symbols(tmp_path: Path):
    path = long_file(tmp_path / "bars.csv", ["BTC/USD", "ETHUSDT", "LTC-USD"])
    market, report = csv_market(CsvSource(path=str(path), symbols=["LTC", "BTC"]))
    assert market.symbols == ("LTC", "BTC")
    assert market.source == "csv" and not market.synthetic
    assert (market.timestamps == TIMES).all()
    expected_close = np.stack([300.0 + np.arange(4), 100.0 + np.arange(4)], axis=1)  # (T, A)
    np.testing.assert_array_equal(market.field("close"), expected_close)
    np.testing.assert_array_equal(market.field("high")[:, 1], [101.0, 102.0, 103.0, 104.0])
    assert len(report) == 0


def test_times_with_offsets_are_converted_to_utc(tmp_path: Path):
    path = tmp_path / "bars.csv"
    path.write_text(
        "Timestamp,Symbol,Open,High,Low,Close,Volume\n"
        "2023-01-05T02:00:00+02:00,BTC,1,2,1,2,3\n"
        "2023-01-05T03:00:00+02:00,BTC,2,3,2,3,3\n"
    )
    market, _ = csv_market(CsvSource(path=str(path), symbols=["BTC"]))
    assert list(market.timestamps) == list(TIMES[:2])


def test_missing_symbol_is_an_error_naming_it(tmp_path: Path):
    path = long_file(tmp_path / "bars.csv", ["BTC/USD"])
    with pytest.raises(DataError, match=r"no bars for \['ETH'\] \(it holds \['BTC'\]\)"):
        csv_market(CsvSource(path=str(path), symbols=["BTC", "ETH"]))


def test_two_markets_of_one_symbol_are_an_error(tmp_path: Path):
    path = long_file(tmp_path / "bars.csv", ["BTC/USD", "BTCUSDT"])
    with pytest.raises(DataError, match="several names map to the same symbol"):
        csv_market(CsvSource(path=str(path), symbols=["BTC"]))


def test_interval_mismatch_names_both_and_the_fix(tmp_path: Path):
    path = long_file(tmp_path / "bars.csv", ["BTC"], freq="5min")
    with pytest.raises(DataError, match=r"BTC bars are 5min apart, but data.interval=1h; set data.interval=5min"):
        csv_market(CsvSource(path=str(path), symbols=["BTC"]))


def test_one_file_per_symbol(tmp_path: Path):
    for k, symbol in enumerate(["BTC", "ETH"]):
        close = 10.0 * (k + 1) + np.arange(4)
        frame = pd.DataFrame({"date": TIMES.strftime("%Y-%m-%d %H:%M:%S"), "open": close, "high": close,
                              "low": close, "close": close, "volume": 1.0})
        frame.to_csv(tmp_path / f"{symbol}_1h.csv", index=False)
    market, _ = csv_market(CsvSource(path=str(tmp_path / "{symbol}_1h.csv"), symbols=["ETH", "BTC"]))
    assert market.symbols == ("ETH", "BTC")
    np.testing.assert_array_equal(market.field("close")[0], [20.0, 10.0])
    with pytest.raises(DataError, match="LTC_1h.csv not found"):
        csv_market(CsvSource(path=str(tmp_path / "{symbol}_1h.csv"), symbols=["LTC"]))


CDD_NEW = """https://www.CryptoDataDownload.com
unix,date,symbol,open,high,low,close,Volume BTC,Volume USD
1672891200,2023-01-05 04:00:00,BTC/USD,103,104,102,103.5,7,700
1672887600,2023-01-05 03:00:00,BTC/USD,102,103,101,102.5,6,600
1672880400,2023-01-05 01:00:00,BTC/USD,100,101,99,100.5,5,500
1672876800,2023-01-05 00:00:00,BTC/USD,99,100,98,99.5,4,400
"""

CDD_OLD = """https://www.CryptoDataDownload.com
date,symbol,open,high,low,close,volume_eth,volume_usd
2023-01-05 04-AM,ETHUSD,13,14,12,13.5,70,7000
2023-01-05 03-AM,ETHUSD,12,13,11,12.5,60,6000
2023-01-05 02-AM,ETHUSD,11,12,10,11.5,50,5000
2023-01-05 01-AM,ETHUSD,10,11,9,10.5,40,4000
2023-01-05 12-AM,ETHUSD,9,10,8,9.5,30,3000
"""


def test_cryptodatadownload_files(tmp_path: Path):
    (tmp_path / "Bitstamp_BTCUSD_1h.csv").write_text(CDD_NEW)
    (tmp_path / "Bitstamp_ETHUSD_1h.csv").write_text(CDD_OLD)
    cfg = CsvSource(path=str(tmp_path / "Bitstamp_{symbol}USD_1h.csv"), symbols=["BTC", "ETH"])
    market, report = csv_market(cfg)
    assert (market.timestamps == pd.date_range("2023-01-05", periods=5, freq="1h", tz="UTC")).all()
    # base-asset volume, oldest first; BTC's missing 02:00 bar is filled flat at the 01:00 close
    np.testing.assert_array_equal(market.field("volume"), [[4, 30], [5, 40], [0, 50], [6, 60], [7, 70]])
    np.testing.assert_array_equal(market.field("close")[:, 0], [99.5, 100.5, 100.5, 102.5, 103.5])
    np.testing.assert_array_equal(market.field("open")[:, 1], [9, 10, 11, 12, 13])
    assert report.lines() == [
        "BTC: bars were given newest first; reversed to oldest first",
        "BTC: forward-filled 1 missing bar at 2023-01-05 02:00",
        "ETH: bars were given newest first; reversed to oldest first",
    ]


def test_file_holding_another_symbol_is_an_error(tmp_path: Path):
    (tmp_path / "BTC.csv").write_text(CDD_OLD)
    with pytest.raises(DataError, match=r"should hold BTC bars but holds \['ETH'\]"):
        csv_market(CsvSource(path=str(tmp_path / "{symbol}.csv"), symbols=["BTC"]))


@pytest.mark.parametrize("scale", [1, 1000])  # epoch seconds and milliseconds
def test_unix_epoch_times(tmp_path: Path, scale: int):
    path = tmp_path / "bars.csv"
    epochs = TIMES.as_unit("s").asi8 * scale
    pd.DataFrame({"unix": epochs, "symbol": "BTC", "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0,
                  "volume": 1.0}).to_csv(path, index=False)
    market, _ = csv_market(CsvSource(path=str(path), symbols=["BTC"]))
    assert (market.timestamps == TIMES).all()


def test_unreadable_times_are_an_error(tmp_path: Path):
    path = tmp_path / "bars.csv"
    path.write_text("time,symbol,open,high,low,close,volume\nyesterday,BTC,1,1,1,1,1\ntoday,BTC,1,1,1,1,1\n")
    with pytest.raises(DataError, match="cannot read column 'time' as times"):
        csv_market(CsvSource(path=str(path), symbols=["BTC"]))


@pytest.mark.parametrize(
    "name, base",
    [("BTC/USD", "BTC"), ("btc-usd", "BTC"), ("BTCUSDT", "BTC"), ("ETHUSD", "ETH"), ("UNI", "UNI"), ("USD", "USD")],
)
def test_canonical_symbol(name: str, base: str):
    assert canonical_symbol(name) == base
