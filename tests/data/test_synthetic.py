"""The synthetic market: reproducible, crypto-like statistics, and a planted signal of known strength."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from cappuccino.config import ConfigError, validate
from cappuccino.data import synthetic
from cappuccino.data.cleaning import DataReport, clean_bars
from cappuccino.data.source import DEFAULT_SYMBOLS
from cappuccino.data.synthetic import SyntheticSource, garch_variance, standardised_shocks, synthetic_market
from cappuccino.errors import ArgumentError


@pytest.fixture(scope="module")
def market():
    start = time.perf_counter()
    data = synthetic_market(SyntheticSource())  # two years of hourly bars, 7 assets
    print(f"\n17520 x 7 synthetic bars in {time.perf_counter() - start:.3f} s")
    return data


def log_returns(market) -> np.ndarray:
    return np.diff(np.log(market.field("close")), axis=0)  # (T - 1, A)


def lag1_autocorr(x: np.ndarray) -> float:
    """Mean over assets of corr(x[t], x[t-1])."""
    return float(np.mean([np.corrcoef(x[1:, a], x[:-1, a])[0, 1] for a in range(x.shape[1])]))


def test_layout_and_flags(market):
    assert market.symbols == tuple(DEFAULT_SYMBOLS)
    assert market.ohlcv.shape == (17520, 7, 5)
    assert market.source == "synthetic" and market.synthetic
    assert market.timestamps[0] == pd.Timestamp("2022-01-01", tz="UTC")
    assert (np.diff(market.timestamps) == pd.Timedelta("1h")).all()
    start = market.field("open")[0]
    assert start[market.symbols.index("BTC")] == 30_000 and start[market.symbols.index("ETH")] == 2_000


def test_same_seed_same_market_other_seed_differs(market):
    again = synthetic_market(SyntheticSource())
    np.testing.assert_array_equal(again.ohlcv, market.ohlcv)
    assert again.content_hash == market.content_hash
    other = synthetic_market(SyntheticSource(seed=8))
    assert not np.allclose(other.field("close"), market.field("close"))


def test_crypto_like_volatility_correlation_and_tails(market):
    r = log_returns(market)
    annual_vol = r.std(axis=0) * np.sqrt(365 * 24)
    assert ((annual_vol > 0.4) & (annual_vol < 1.2)).all(), annual_vol
    corr = np.corrcoef(r.T)[np.triu_indices(r.shape[1], k=1)]
    assert 0.45 < corr.mean() < 0.85, corr
    assert (pd.DataFrame(r).kurt() > 1).all()  # fat tails


def test_volatility_clusters(market):
    abs_r = np.abs(log_returns(market))
    assert lag1_autocorr(abs_r) > 0.05  # large moves follow large moves; ~0 without clustering


def test_ohlc_consistent_and_volume_tracks_moves(market):
    o, h, l, c, v = (market.field(f) for f in ("open", "high", "low", "close", "volume"))
    assert (l <= np.minimum(o, c)).all() and (np.maximum(o, c) <= h).all() and (l > 0).all()
    np.testing.assert_array_equal(o[1:], c[:-1])  # continuous trading: open is the previous close
    assert (v > 0).all()
    abs_move = np.abs(np.log(c / o))
    assert np.mean([np.corrcoef(abs_move[:, a], v[:, a])[0, 1] for a in range(7)]) > 0.2


@pytest.mark.parametrize("half_life", [0.0, 6.0])
def test_shocks_correlate_with_previous_signal_state_at_the_planted_strength(half_life: float):
    rng = np.random.default_rng(0)
    u, z = standardised_shocks(rng, 50_000, np.full(4, 0.8), strength=0.3, half_life=half_life)
    assert abs(u.std() - 1.0) < 0.02 and abs(z.std() - 1.0) < 0.02
    corr = np.mean([np.corrcoef(u[1:, a], z[:-1, a])[0, 1] for a in range(4)])
    assert abs(corr - 0.3) < 0.015


def test_zero_half_life_gives_lag1_autocorrelation_of_standardised_returns():
    u, _ = standardised_shocks(np.random.default_rng(1), 50_000, np.full(4, 0.8), strength=0.3, half_life=0.0)
    # u[t] = s e[t-1] + sqrt(1 - s^2) e[t], so corr(u[t], u[t-1]) = s sqrt(1 - s^2) = 0.286
    assert abs(lag1_autocorr(u) - 0.3 * np.sqrt(1 - 0.09)) < 0.015
    u0, _ = standardised_shocks(np.random.default_rng(1), 50_000, np.full(4, 0.8), strength=0.0, half_life=0.0)
    assert abs(lag1_autocorr(u0)) < 0.015


def test_planted_signal_shows_in_prices_and_vanishes_at_zero_strength():
    # Signs are unaffected by the volatility scaling, so their autocorrelation isolates the signal.
    signal = synthetic_market(SyntheticSource(signal_strength=0.3, signal_half_life=0))
    noise = synthetic_market(SyntheticSource(signal_strength=0.0))
    assert lag1_autocorr(np.sign(log_returns(signal))) > 0.15
    assert abs(lag1_autocorr(np.sign(log_returns(noise)))) < 0.02
    assert abs(lag1_autocorr(log_returns(noise))) < 0.02


def test_garch_variance_has_mean_one():
    u, _ = standardised_shocks(np.random.default_rng(2), 50_000, np.full(3, 0.8), strength=0.0, half_life=0.0)
    h = garch_variance(u)
    assert (h > 0).all() and abs(h.mean() - 1.0) < 0.05


def test_five_minute_bars():
    market = synthetic_market(SyntheticSource(interval="5min", n_bars=20_000, symbols=["BTC", "XYZ"]))
    assert market.interval == pd.Timedelta("5min")
    assert (np.diff(market.timestamps) == pd.Timedelta("5min")).all()
    annual_vol = log_returns(market).std(axis=0) * np.sqrt(365 * 24 * 12)
    assert ((annual_vol > 0.4) & (annual_vol < 1.2)).all(), annual_vol
    assert market.symbols == ("BTC", "XYZ") and (market.ohlcv[..., :4] > 0).all()


def test_load_gives_the_market_and_an_empty_report():
    source = SyntheticSource(n_bars=300, symbols=["BTC", "ETH"])
    market, report = source.load()
    assert isinstance(report, DataReport) and len(report) == 0
    assert market.symbols == ("BTC", "ETH") and market.n_bars == 300
    np.testing.assert_array_equal(market.ohlcv, synthetic_market(source).ohlcv)


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("n_bars", 10, "must be >= 100, got 10"),
        ("signal_strength", 1.0, r"must be in \[0, 1\), got 1.0"),
        ("signal_strength", -0.1, r"must be in \[0, 1\), got -0.1"),
        ("signal_half_life", -1.0, "must be >= 0, got -1.0"),
    ],
)
def test_out_of_range_arguments_are_rejected_naming_them(compose_config, argument: str, value, message: str):
    with pytest.raises(ArgumentError, match=rf"^{argument}: {message}$") as error:
        SyntheticSource(**{argument: value})
    assert error.value.argument == argument
    with pytest.raises(ConfigError, match=rf"^data\.{argument}: {message}$"):
        validate(compose_config([f"data.{argument}={value}"]))


def test_inconsistent_bars_rule_is_passed_to_cleaning(monkeypatch):
    """Synthetic bars are consistent by construction, so only the call shows the setting is passed on."""
    seen: list[str] = []

    def recording_clean_bars(*args, inconsistent_bars: str, **kwargs):
        seen.append(inconsistent_bars)
        return clean_bars(*args, inconsistent_bars=inconsistent_bars, **kwargs)

    monkeypatch.setattr(synthetic, "clean_bars", recording_clean_bars)
    SyntheticSource(n_bars=100, symbols=["BTC"], inconsistent_bars="reject").load()
    assert seen == ["reject"]
