"""Each ``data`` option builds its source class; load_market gives those bars with their features."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.errors import ConfigCompositionException

from cappuccino.config import CsvDataConfig, SyntheticDataConfig, build, validate
from cappuccino.data import BarSource, DataError, load_market
from cappuccino.data.alpaca_source import AlpacaSource
from cappuccino.data.csv_source import CsvSource
from cappuccino.data.features import FEATURE_NAMES, feature_memory, first_valid_bar, with_features
from cappuccino.data.synthetic import SyntheticSource, synthetic_market
from cappuccino.errors import ArgumentError, ConfigError

CONF_DATA = Path(__file__).resolve().parents[2] / "conf" / "data"

# Every option of the data group, the source it must build, and the overrides it needs to compose.
OPTIONS = {
    "synthetic": (SyntheticSource, []),
    "csv": (CsvSource, ["data.path=bars.csv"]),
    "alpaca_1h": (AlpacaSource, []),
    "alpaca_5m": (AlpacaSource, []),
}


def test_every_data_option_is_listed_here():
    """A new conf/data/*.yaml must be added to OPTIONS, so the test below checks what it builds."""
    assert sorted(path.stem for path in CONF_DATA.glob("*.yaml")) == sorted(OPTIONS)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_each_data_option_composes_and_builds_its_source(compose_config, option: str):
    source_class, extra = OPTIONS[option]
    cfg = validate(compose_config([f"data={option}", *extra]))
    source = build(cfg.data)
    assert type(source) is source_class and isinstance(source, BarSource)
    # every setting of the group reaches the source, none is dropped or renamed on the way
    settings = {f.name: getattr(cfg.data, f.name) for f in fields(cfg.data) if f.name != "_target_"}
    assert {name: getattr(source, name) for name in settings} == {**settings, "symbols": tuple(cfg.data.symbols)}


def test_alpaca_options_differ_in_bar_length_and_period(compose_config):
    hourly = build(validate(compose_config(["data=alpaca_1h"])).data)
    five_minute = build(validate(compose_config(["data=alpaca_5m"])).data)
    assert (hourly.interval, five_minute.interval) == ("1h", "5min")
    assert (five_minute.start, five_minute.end) == ("2024-07-01", "2024-12-31")


def test_default_config_builds_the_default_synthetic_source(compose_config):
    assert build(validate(compose_config()).data) == SyntheticSource()


def test_unknown_data_option_fails_naming_the_choices(compose_config):
    with pytest.raises(ConfigCompositionException, match=r"data/parquet(.|\n)*alpaca_1h(.|\n)*csv(.|\n)*synthetic"):
        compose_config(["data=parquet"])


@pytest.mark.parametrize(
    ("argument", "value", "override", "message"),
    [
        ("symbols", [], "[]", "needs at least one symbol"),
        ("symbols", ["BTC", "BTC"], "[BTC,BTC]", r"has duplicates: \['BTC', 'BTC'\]"),
        ("max_gap_bars", -1, "-1", "must be >= 0, got -1"),
        ("inconsistent_bars", "fix", "fix", "must be 'repair' or 'reject', got 'fix'"),
    ],
)
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_source_checks_the_shared_arguments(compose_config, option, argument, value, override, message):
    source_class, extra = OPTIONS[option]
    required = {"path": "bars.csv"} if source_class is CsvSource else {}
    with pytest.raises(ArgumentError, match=rf"^{argument}: {message}$") as error:
        source_class(**required, **{argument: value})
    assert error.value.argument == argument
    with pytest.raises(ConfigError, match=rf"^data\.{argument}: {message}$"):
        validate(compose_config([f"data={option}", *extra, f"data.{argument}={override}"]))


def test_synthetic_market_with_features():
    cfg = SyntheticDataConfig(n_bars=200, symbols=["BTC", "ETH"])
    market, report = load_market(cfg, zscore_window=50)
    bars = synthetic_market(SyntheticSource(n_bars=200, symbols=["BTC", "ETH"]))
    assert market.synthetic and market.n_bars == 200 and len(report) == 0
    np.testing.assert_array_equal(market.ohlcv, bars.ohlcv)
    assert market.feature_names == FEATURE_NAMES and market.first_valid == first_valid_bar(50) and market.feature_memory == feature_memory(50)
    np.testing.assert_array_equal(market.features, with_features(bars, 50).features)


def test_csv_market_with_features(tmp_path: Path):
    times = pd.date_range("2023-01-05", periods=120, freq="1h")
    close = 100.0 + np.arange(120.0)
    path = tmp_path / "bars.csv"
    frame = pd.DataFrame({"date": times.strftime("%Y-%m-%d %H:%M"), "symbol": "BTC/USD", "open": close - 1,
                          "high": close + 1, "low": close - 2, "close": close, "volume": 3.0})
    frame.to_csv(path, index=False)
    market, report = load_market(CsvDataConfig(path=str(path), symbols=["BTC"]), zscore_window=20)
    assert market.source == "csv" and not market.synthetic and len(report) == 0
    assert market.field("close")[:, 0].tolist() == close.tolist()
    assert market.features.shape == (120, 1, len(FEATURE_NAMES)) and market.first_valid == first_valid_bar(20)
    assert np.isfinite(market.features[market.first_valid :]).all()


def day_first_file(path: Path, n_bars: int = 120) -> np.ndarray:
    """One symbol's hourly bars with day-first times and no symbol column; returns the closes."""
    times = pd.date_range("2023-12-25", periods=n_bars, freq="1h")
    close = 100.0 + np.arange(float(n_bars))
    pd.DataFrame({"date": times.strftime("%d/%m/%Y %H:%M"), "open": close - 1, "high": close + 1,
                  "low": close - 2, "close": close, "volume": 3.0}).to_csv(path, index=False)
    return close


def test_csv_settings_reach_the_loader_through_the_config(compose_config, tmp_path: Path):
    """data.time_format and data.inconsistent_bars from the command line change what is loaded."""
    path = tmp_path / "btc.csv"
    close = day_first_file(path)
    base = ["data=csv", f"data.path='{path}'", "data.symbols=[BTC]"]
    cfg = validate(compose_config([*base, "data.time_format='%d/%m/%Y %H:%M'", "data.inconsistent_bars=reject"]))
    market, report = load_market(cfg.data, 50)
    assert market.timestamps[0] == pd.Timestamp("2023-12-25", tz="UTC") and len(report) == 0
    assert market.field("close")[:, 0].tolist() == close.tolist()
    with pytest.raises(DataError, match="data.time_format='%d/%m/%Y %H:%M'"):
        load_market(validate(compose_config(base)).data, 50)


@pytest.mark.parametrize("rule", ["repair", "reject"])
def test_inconsistent_bars_rule_reaches_the_loader_through_the_config(compose_config, tmp_path: Path, rule: str):
    path = tmp_path / "btc.csv"
    day_first_file(path)
    text = path.read_text().splitlines()
    text[5] = text[5].replace(",103.0,105.0,", ",103.0,102.5,")  # the 04:00 bar: high 102.5 below open 103
    path.write_text("\n".join(text) + "\n")
    cfg = validate(compose_config(["data=csv", f"data.path='{path}'", "data.symbols=[BTC]",
                                   "data.time_format='%d/%m/%Y %H:%M'", f"data.inconsistent_bars={rule}"]))
    if rule == "reject":
        with pytest.raises(DataError, match="BTC: 1 bars have high below .* at 2023-12-25 04:00"):
            load_market(cfg.data, 50)
    else:
        market, report = load_market(cfg.data, 50)
        assert market.field("high")[4, 0] == 104.0  # its close
        assert report.lines() == [
            "BTC: 1 bars had high below max(open, close) or low above min(open, close), at 2023-12-25 04:00; "
            "set high to the bar's highest and low to its lowest price (data.inconsistent_bars=repair)"
        ]
