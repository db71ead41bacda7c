"""CSV loading: long files, one file per symbol, CryptoDataDownload exports, and useful errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cappuccino.data.cleaning import DataError
from cappuccino.data.csv_source import CsvSource, canonical_symbol, csv_market
from cappuccino.config import ConfigError, validate
from cappuccino.errors import ArgumentError

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


# ------------------------------------------------------------- real files as they are published
CDD_URL = "https://www.CryptoDataDownload.com"
CDD_UTC = "Timestamps are UTC timezone,https://www.CryptoDataDownload.com"  # their files today


@pytest.mark.parametrize("attribution", [CDD_URL, CDD_UTC])
@pytest.mark.parametrize("layout", ["long", "pattern"])
def test_cryptodatadownload_attribution_lines_are_skipped(tmp_path: Path, attribution: str, layout: str):
    """The header is found by its column names, whatever the attribution line above it says."""
    (tmp_path / "Bitstamp_BTCUSD_1h.csv").write_text(CDD_NEW.replace(CDD_URL, attribution, 1))
    path = tmp_path / ("Bitstamp_BTCUSD_1h.csv" if layout == "long" else "Bitstamp_{symbol}USD_1h.csv")
    market, _ = csv_market(CsvSource(path=str(path), symbols=["BTC"]))
    np.testing.assert_array_equal(market.field("close")[:, 0], [99.5, 100.5, 100.5, 102.5, 103.5])
    np.testing.assert_array_equal(market.field("volume")[:, 0], [4, 5, 0, 6, 7])


def test_lines_above_the_header_may_be_blank_or_several(tmp_path: Path):
    path = tmp_path / "bars.csv"
    path.write_text(f"{CDD_UTC}\n\nExported 2023-01-06, by hand\n" + CDD_NEW.split("\n", 1)[1])
    market, _ = csv_market(CsvSource(path=str(path), symbols=["BTC"]))
    assert market.n_bars == 5


def test_file_without_a_header_line_names_what_a_header_needs(tmp_path: Path):
    path = tmp_path / "bars.csv"
    path.write_text(f"{CDD_UTC}\nt,symbol,o,h,l,c,v\n2023-01-05 00:00,BTC,1,1,1,1,1\n")
    with pytest.raises(DataError, match=rf"{path}: found no header line .*first 10 lines.*time, timestamp.*'close'"):
        csv_market(CsvSource(path=str(path), symbols=["BTC"]))


def test_long_file_without_symbol_column_holds_the_one_configured_symbol(tmp_path: Path):
    path = tmp_path / "btc.csv"
    pd.DataFrame({"time": TIMES.strftime("%Y-%m-%d %H:%M"), "open": 1.0, "high": 3.0, "low": 1.0,
                  "close": [2.0, 2.5, 2.0, 2.5], "volume": 1.0}).to_csv(path, index=False)
    market, _ = csv_market(CsvSource(path=str(path), symbols=["BTC"]))
    assert market.symbols == ("BTC",)
    np.testing.assert_array_equal(market.field("close")[:, 0], [2.0, 2.5, 2.0, 2.5])
    with pytest.raises(DataError, match=r"has no 'symbol' column.*data.symbols holds 2 symbols"):
        csv_market(CsvSource(path=str(path), symbols=["BTC", "ETH"]))


def test_times_with_and_without_a_zone_in_one_file_are_ambiguous(tmp_path: Path):
    path = tmp_path / "bars.csv"
    path.write_text(
        "time,symbol,open,high,low,close,volume\n"
        "2023-01-01 00:00:00+00:00,BTC,1,1,1,1,1\n"
        "2023-01-01 01:00:00,BTC,1,1,1,1,1\n"
        "2023-01-01T02:00:00Z,BTC,1,1,1,1,1\n"
    )
    with pytest.raises(DataError, match=(
        rf"^{path}: column 'time' mixes times with a time zone \(e.g. '2023-01-01 00:00:00\+00:00'\) and without "
        r"one \(e.g. '2023-01-01 01:00:00'\)"
    )):
        csv_market(CsvSource(path=str(path), symbols=["BTC"]))


def test_empty_file_is_an_error_naming_path_and_setting(tmp_path: Path):
    path = tmp_path / "bars.csv"
    path.write_text("")
    with pytest.raises(DataError, match=rf"^data file {path} is empty; check data.path"):
        csv_market(CsvSource(path=str(path), symbols=["BTC"]))
    path.write_text("\n  \n")
    with pytest.raises(DataError, match="is empty"):
        csv_market(CsvSource(path=str(path), symbols=["BTC"]))


def test_directory_as_path_is_an_error_naming_path_and_setting(tmp_path: Path):
    with pytest.raises(DataError, match=rf"^{tmp_path} is a directory, not a CSV file; set data.path .*{tmp_path}/{{symbol}}.csv"):
        csv_market(CsvSource(path=str(tmp_path), symbols=["BTC"]))


DAY_FIRST = "date,symbol,open,high,low,close,volume\n30/12/2023 10:00,BTC,1,2,1,2,1\n31/12/2023 10:00,BTC,2,3,2,3,1\n"


def test_day_first_dates_name_the_setting_not_pandas_arguments(tmp_path: Path):
    path = tmp_path / "bars.csv"
    path.write_text(DAY_FIRST)
    with pytest.raises(DataError) as error:
        csv_market(CsvSource(path=str(path), symbols=["BTC"], interval="1D"))
    message = str(error.value)
    assert "cannot read column 'date' as times" in message and "'30/12/2023 10:00'" in message
    assert "ISO 8601" in message and "data.time_format='%d/%m/%Y %H:%M'" in message
    assert "You might want" not in message and "passing `format`" not in message and "\n" not in message


def test_time_format_reads_day_first_dates(tmp_path: Path):
    path = tmp_path / "bars.csv"
    path.write_text(DAY_FIRST)
    market, _ = csv_market(CsvSource(path=str(path), symbols=["BTC"], interval="1D", time_format="%d/%m/%Y %H:%M"))
    assert list(market.timestamps) == list(pd.to_datetime(["2023-12-30 10:00", "2023-12-31 10:00"], utc=True))


def test_times_that_miss_the_time_format_name_it(tmp_path: Path):
    path = tmp_path / "bars.csv"
    path.write_text(DAY_FIRST)
    with pytest.raises(DataError, match=r"do not match data.time_format='%Y-%m-%d %H:%M'"):
        csv_market(CsvSource(path=str(path), symbols=["BTC"], interval="1D", time_format="%Y-%m-%d %H:%M"))


@pytest.mark.parametrize("time_format", ["dd/mm/yyyy", "%d/%Q/%Y"])
def test_time_format_must_be_a_strftime_format(time_format: str):
    with pytest.raises(ArgumentError, match=r"^time_format: must be a strftime format such as '%d/%m/%Y %H:%M'"):
        CsvSource(path="bars.csv", time_format=time_format)


def test_bad_time_format_fails_at_validate_naming_the_key(compose_config):
    with pytest.raises(ConfigError, match=r"^data\.time_format: must be a strftime format"):
        validate(compose_config(["data=csv", "data.path=bars.csv", "data.time_format=dd/mm/yyyy"]))


def test_csv_source_passes_inconsistent_bars_to_cleaning(tmp_path: Path):
    path = tmp_path / "bars.csv"
    path.write_text(
        "time,symbol,open,high,low,close,volume\n"
        "2023-01-05 00:00,BTC,10,11,9,10,1\n"
        "2023-01-05 01:00,BTC,10,9,11,10,1\n"  # high below low
    )
    with pytest.raises(DataError, match=r"BTC: 1 bars .* at 2023-01-05 01:00.*data.inconsistent_bars=repair"):
        csv_market(CsvSource(path=str(path), symbols=["BTC"], inconsistent_bars="reject"))
    market, report = csv_market(CsvSource(path=str(path), symbols=["BTC"]))
    np.testing.assert_array_equal(market.ohlcv[1, 0, :4], [10, 11, 9, 10])
    assert len(report) == 1
