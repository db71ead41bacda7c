"""clean_bars: each repair is made and reported, each unrepairable problem fails with a useful message."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cappuccino.data.cleaning import DataError, DataReport, clean_bars, parse_interval
from cappuccino.errors import ArgumentError

HOUR = pd.Timedelta("1h")


def bars(hours: list[int], close: list[float] | None = None, volume: list[float] | None = None) -> pd.DataFrame:
    """Bars at 2023-01-05 00:00 UTC + ``hours``; open = close - 1, high/low one either side."""
    close = np.asarray(close if close is not None else [100.0 + h for h in hours], dtype=float)
    volume = volume if volume is not None else [5.0] * len(hours)
    index = pd.Timestamp("2023-01-05", tz="UTC") + pd.to_timedelta(hours, unit="h")
    return pd.DataFrame(
        {"open": close - 1, "high": close + 1, "low": close - 2, "close": close, "volume": volume},
        index=pd.DatetimeIndex(index),
    )


def clean(frames: dict[str, pd.DataFrame], max_gap_bars: int = 3, inconsistent_bars: str = "repair"):
    return clean_bars(frames, HOUR, max_gap_bars, source="test", inconsistent_bars=inconsistent_bars)


def test_clean_input_passes_through_unchanged():
    market, report = clean({"BTC": bars([0, 1, 2]), "ETH": bars([0, 1, 2], close=[10.0, 11.0, 12.0])})
    assert market.symbols == ("BTC", "ETH")
    assert market.ohlcv.shape == (3, 2, 5)
    np.testing.assert_array_equal(market.field("close")[:, 1], [10.0, 11.0, 12.0])
    assert str(market.timestamps.tz) == "UTC" and market.interval == HOUR and market.source == "test"
    assert len(report) == 0 and str(report) == "no repairs needed"


def test_newest_first_is_sorted_and_reported():
    market, report = clean({"BTC": bars([2, 1, 0])})
    np.testing.assert_array_equal(market.field("close")[:, 0], [100.0, 101.0, 102.0])
    assert report.lines() == ["BTC: bars were given newest first; reversed to oldest first"]


def test_shuffled_bars_are_sorted_and_reported():
    market, report = clean({"BTC": bars([0, 2, 1, 3])})
    assert market.timestamps.is_monotonic_increasing
    np.testing.assert_array_equal(market.field("close")[:, 0], [100.0, 101.0, 102.0, 103.0])
    assert "BTC: 1 bars were out of time order" in str(report)


def test_identical_duplicate_rows_are_dropped_and_reported():
    market, report = clean({"BTC": bars([0, 1, 1, 2])})
    assert market.n_bars == 3
    assert report.lines() == ["BTC: dropped 1 duplicate rows identical to another, at 2023-01-05 01:00"]


def test_conflicting_duplicates_fail_naming_symbol_and_time():
    with pytest.raises(DataError, match=r"ETH: 1 timestamps appear more than once .* 2023-01-05 01:00"):
        clean({"BTC": bars([0, 1, 2]), "ETH": bars([0, 1, 1, 2], close=[1.0, 2.0, 3.0, 4.0])})


def test_short_gap_is_filled_flat_at_previous_close_with_zero_volume():
    market, report = clean({"BTC": bars([0, 1, 4, 5], close=[10.0, 11.0, 14.0, 15.0])}, max_gap_bars=2)
    assert market.n_bars == 6
    filled = market.ohlcv[2:4, 0]  # (2, 5) bars at 02:00 and 03:00
    np.testing.assert_array_equal(filled, [[11.0, 11.0, 11.0, 11.0, 0.0]] * 2)
    np.testing.assert_array_equal(market.field("close")[:, 0], [10.0, 11.0, 11.0, 11.0, 14.0, 15.0])
    assert report.lines() == ["BTC: forward-filled 2 missing bars at 2023-01-05 02:00"]


def test_long_gap_fails_naming_where_and_the_setting():
    with pytest.raises(DataError, match=r"BTC: 3 bars are missing after 2023-01-05 01:00.*data.max_gap_bars=3"):
        clean({"BTC": bars([0, 1, 5, 6])}, max_gap_bars=2)


@pytest.mark.parametrize("bad", [np.nan, 0.0, -5.0])
def test_missing_or_non_positive_price_fails_naming_symbol_and_time(bad: float):
    with pytest.raises(DataError, match=r"LINK: 1 bars have missing or non-positive prices, at 2023-01-05 01:00"):
        clean({"LINK": bars([0, 1, 2], close=[5.0, bad, 6.0])})


def impossible_bars() -> pd.DataFrame:
    """Bars at 00:00 .. 04:00 (open 99..103, close 100..104); 01:00, 02:00 and 03:00 are impossible."""
    frame = bars([0, 1, 2, 3, 4])
    frame.iloc[1, frame.columns.get_loc("high")] = 100.5  # below close 101
    frame.iloc[2, frame.columns.get_loc("low")] = 101.5  # above open 101
    frame.iloc[3, [frame.columns.get_loc("high"), frame.columns.get_loc("low")]] = [102.5, 103.5]  # high < low
    return frame


def test_inconsistent_bars_are_repaired_to_their_extreme_prices_and_reported():
    market, report = clean({"BTC": impossible_bars(), "ETH": bars([0, 1, 2, 3, 4])})
    ohlc = market.ohlcv[:, 0, :4]  # (T, 4): open, high, low, close
    np.testing.assert_array_equal(ohlc[1:4], [[100, 101, 99, 101], [101, 103, 101, 102], [102, 103.5, 102, 103]])
    np.testing.assert_array_equal(market.ohlcv[:, 1], bars([0, 1, 2, 3, 4]).to_numpy())  # consistent: untouched
    assert (ohlc[:, 1] >= ohlc.max(axis=1)).all() and (ohlc[:, 2] <= ohlc.min(axis=1)).all()
    assert report.lines() == [
        "BTC: 3 bars had high below max(open, close) or low above min(open, close), at 2023-01-05 01:00, "
        "2023-01-05 02:00, 2023-01-05 03:00; set high to the bar's highest and low to its lowest price "
        "(data.inconsistent_bars=repair)"
    ]


def test_inconsistent_bars_fail_under_reject_naming_symbol_count_times_and_setting():
    with pytest.raises(DataError, match=(
        r"^BTC: 3 bars have high below max\(open, close\) or low above min\(open, close\), at 2023-01-05 01:00, "
        r"2023-01-05 02:00, 2023-01-05 03:00; .*data.inconsistent_bars=repair"
    )):
        clean({"BTC": impossible_bars()}, inconsistent_bars="reject")


def test_unknown_inconsistent_bars_rule_is_an_argument_error():
    with pytest.raises(ArgumentError, match=r"^inconsistent_bars: must be 'repair' or 'reject', got 'fix'$"):
        clean({"BTC": bars([0, 1])}, inconsistent_bars="fix")


def test_zero_volume_is_a_bar_without_trades_and_stays():
    market, report = clean({"BTC": bars([0, 1, 2], volume=[1.0, 0.0, 3.0])}, inconsistent_bars="reject")
    np.testing.assert_array_equal(market.field("volume")[:, 0], [1.0, 0.0, 3.0])
    assert len(report) == 0


def test_missing_volume_becomes_zero_and_is_reported():
    market, report = clean({"BTC": bars([0, 1, 2], volume=[1.0, np.nan, 3.0])})
    np.testing.assert_array_equal(market.field("volume")[:, 0], [1.0, 0.0, 3.0])
    assert report.lines() == ["BTC: set 1 missing volumes to 0, at 2023-01-05 01:00"]


def test_misaligned_symbols_keep_shared_bars_and_report_drops_per_symbol():
    market, report = clean({"BTC": bars([0, 1, 2, 3, 4]), "ETH": bars([2, 3, 4, 5])})
    assert list(market.timestamps.hour) == [2, 3, 4]
    np.testing.assert_array_equal(market.field("close")[:, 0], [102.0, 103.0, 104.0])
    assert report.lines() == [
        "BTC: dropped 2 bars not shared by all symbols (kept 2023-01-05 02:00 .. 2023-01-05 04:00)",
        "ETH: dropped 1 bars not shared by all symbols (kept 2023-01-05 02:00 .. 2023-01-05 04:00)",
    ]


def test_symbols_without_shared_bars_fail():
    with pytest.raises(DataError, match="share no timestamps"):
        clean({"BTC": bars([0, 1]), "ETH": bars([5, 6])})


def test_irregular_spacing_fails():
    frame = bars([0, 1, 2])
    frame.index = frame.index + pd.to_timedelta([0, 0, 30], unit="min")  # last bar at 02:30
    with pytest.raises(DataError, match=r"BTC: the bar at 2023-01-05 02:30 .* not a multiple of data.interval=1h"):
        clean({"BTC": frame})


def test_naive_times_are_rejected():
    frame = bars([0, 1])
    frame.index = frame.index.tz_localize(None)
    with pytest.raises(DataError, match="tz-aware"):
        clean({"BTC": frame})


def test_other_time_zones_are_converted_to_utc():
    frame = bars([0, 1])
    frame.index = frame.index.tz_convert("America/New_York")
    market, _ = clean({"BTC": frame})
    assert str(market.timestamps.tz) == "UTC" and market.timestamps[0] == pd.Timestamp("2023-01-05", tz="UTC")


def test_report_lines_can_be_shortened_for_logs():
    report = DataReport([f"repair {i}" for i in range(5)])
    assert report.lines(limit=2) == ["repair 0", "repair 1", "... and 3 more repairs"]
    assert report.lines() == [f"repair {i}" for i in range(5)]


def test_parse_interval():
    assert parse_interval("5min") == pd.Timedelta(minutes=5)
    with pytest.raises(DataError, match="data.interval='1M'"):
        parse_interval("1M")
