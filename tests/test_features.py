"""Indicators against loop references, causality, normalisation and degenerate markets."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cappuccino.data.cleaning import DataError
from cappuccino.data.features import (
    CLIP,
    FEATURE_NAMES,
    INDICATOR_REACH,
    REACH_TOLERANCE,
    WARMUP_BARS,
    _forgotten_after,
    causal_zscore,
    compute_features,
    feature_memory,
    first_valid_bar,
    raw_indicators,
    with_features,
)
from cappuccino.data.market import MarketData


def random_walk_ohlcv(n_bars: int, n_assets: int, seed: int) -> np.ndarray:
    """(T, A, 5) bars of a geometric random walk; open is the previous close."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, (n_bars, n_assets)), axis=0))
    open_ = np.vstack([np.full((1, n_assets), 100.0), close[:-1]])
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.004, close.shape)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.004, close.shape)))
    volume = rng.lognormal(10.0, 0.5, close.shape)
    return np.stack([open_, high, low, close, volume], axis=-1)


# ------------------------------------------------------------ loop references, one asset
def ref_smooth(x: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Recursive smoothing seeded with the mean of the first n defined values."""
    out = np.full(len(x), np.nan)
    start = next(i for i, value in enumerate(x) if not math.isnan(value))
    seed_bar = start + n - 1
    if seed_bar >= len(x):
        return out
    level = sum(x[start : seed_bar + 1]) / n
    out[seed_bar] = level
    for t in range(seed_bar + 1, len(x)):
        level = level + alpha * (x[t] - level)
        out[t] = level
    return out


def ref_ema(x: np.ndarray, n: int) -> np.ndarray:
    return ref_smooth(x, n, 2.0 / (n + 1))


def ref_wilder(x: np.ndarray, n: int) -> np.ndarray:
    return ref_smooth(x, n, 1.0 / n)


def ref_indicators(bars: np.ndarray) -> dict[str, np.ndarray]:
    """Textbook definitions, bar by bar, for one asset's (T, 5) bars."""
    o, h, l, c, v = (bars[:, i] for i in range(5))
    T = len(c)
    nan = np.full(T, np.nan)

    close_ret, volume_diff, gain, loss = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    true_range, plus_dm, minus_dm = nan.copy(), nan.copy(), nan.copy()
    for t in range(1, T):
        close_ret[t] = math.log(c[t] / c[t - 1])
        volume_diff[t] = math.log(1 + v[t]) - math.log(1 + v[t - 1])
        gain[t], loss[t] = max(c[t] - c[t - 1], 0.0), max(c[t - 1] - c[t], 0.0)
        true_range[t] = max(h[t] - l[t], abs(h[t] - c[t - 1]), abs(l[t] - c[t - 1]))
        up, down = h[t] - h[t - 1], l[t - 1] - l[t]
        plus_dm[t] = up if up > down and up > 0 else 0.0
        minus_dm[t] = down if down > up and down > 0 else 0.0

    macd = ref_ema(c, 12) - ref_ema(c, 26)
    signal = ref_ema(macd, 9)

    avg_gain, avg_loss = ref_wilder(gain, 14), ref_wilder(loss, 14)
    rsi = nan.copy()
    for t in range(T):
        if not math.isnan(avg_gain[t]):
            total = avg_gain[t] + avg_loss[t]
            rsi[t] = 50.0 if total == 0 else 100.0 * avg_gain[t] / total

    typical = (h + l + c) / 3
    cci = nan.copy()
    for t in range(13, T):
        window = typical[t - 13 : t + 1]
        mean = sum(window) / 14
        mad = sum(abs(x - mean) for x in window) / 14
        cci[t] = 0.0 if mad == 0 else (typical[t] - mean) / (0.015 * mad)

    atr, plus_sm, minus_sm = ref_wilder(true_range, 14), ref_wilder(plus_dm, 14), ref_wilder(minus_dm, 14)
    dx = nan.copy()
    for t in range(T):
        if not math.isnan(atr[t]):
            plus_di = 0.0 if atr[t] == 0 else 100 * plus_sm[t] / atr[t]
            minus_di = 0.0 if atr[t] == 0 else 100 * minus_sm[t] / atr[t]
            total = plus_di + minus_di
            dx[t] = 0.0 if total == 0 else 100 * abs(plus_di - minus_di) / total
    adx = ref_wilder(dx, 14)

    atr_regime = nan.copy()
    for t in range(14 + 49, T):
        mean = sum(atr[t - 49 : t + 1]) / 50
        atr_regime[t] = 0.0 if mean == 0 else (atr[t] - mean) / mean

    breakout, reacceleration = nan.copy(), nan.copy()
    for t in range(20, T):
        direction = 1.0 if c[t] > max(h[t - 20 : t]) else -1.0 if c[t] < min(l[t - 20 : t]) else 0.0
        mean_volume = sum(v[t - 20 : t]) / 20
        breakout[t] = direction * (1.0 if mean_volume == 0 else v[t] / mean_volume)
    for t in range(2, T):
        reacceleration[t] = adx[t] - 2 * adx[t - 1] + adx[t - 2]

    return {
        "open": np.log(o / c),
        "high": np.log(h / c),
        "low": np.log(l / c),
        "close": close_ret,
        "volume": volume_diff,
        "macd": macd / c,
        "macd_signal": signal / c,
        "macd_hist": (macd - signal) / c,
        "rsi": rsi,
        "cci": cci,
        "dx": dx,
        "atr_regime": atr_regime,
        "breakout_volume": breakout,
        "trend_reacceleration": reacceleration,
    }


def ref_zscore(x: np.ndarray, window: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    for t in range(window - 1, len(x)):
        past = x[t - window + 1 : t + 1]
        out[t] = np.clip((x[t] - past.mean()) / max(past.std(), 1e-8), -CLIP, CLIP)
    return out


# ------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def bars() -> np.ndarray:
    return random_walk_ohlcv(n_bars=240, n_assets=3, seed=1)


@pytest.fixture
def raw(bars: np.ndarray) -> np.ndarray:
    # Function scope on purpose: a module-scoped fixture runs inside the first test that asks for
    # it, so mutmut links raw_indicators to that test only and never runs the reference tests
    # against its mutants. Computing it costs a few milliseconds.
    return raw_indicators(bars)


def test_feature_names_are_the_14_indicators_in_order() -> None:
    assert FEATURE_NAMES == (
        "open", "high", "low", "close", "volume", "macd", "macd_signal", "macd_hist",
        "rsi", "cci", "dx", "atr_regime", "breakout_volume", "trend_reacceleration",
    )  # fmt: skip


def test_shapes_dtype_and_first_valid(bars: np.ndarray) -> None:
    features, first_valid = compute_features(bars, zscore_window=30)
    assert features.shape == (240, 3, len(FEATURE_NAMES))
    assert features.dtype == np.float32
    assert first_valid == WARMUP_BARS + 30 - 1
    all_finite = np.isfinite(features).all(axis=(1, 2))
    assert np.isnan(features[:first_valid]).all()
    assert all_finite[first_valid:].all()


def test_raw_indicators_are_defined_from_warmup_on(raw: np.ndarray) -> None:
    assert np.isfinite(raw[WARMUP_BARS:]).all()
    assert not np.isfinite(raw[WARMUP_BARS - 1]).all()  # the slowest indicator decides


@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_raw_indicator_matches_loop_reference(bars: np.ndarray, raw: np.ndarray, name: str) -> None:
    column = FEATURE_NAMES.index(name)
    for asset in range(bars.shape[1]):
        expected = ref_indicators(bars[:, asset])[name]
        np.testing.assert_allclose(raw[:, asset, column], expected, rtol=1e-9, atol=1e-9, err_msg=name)


def test_rsi_is_100_on_rising_and_0_on_falling_prices() -> None:
    close = np.stack([np.linspace(100, 200, 80), np.linspace(200, 100, 80)], axis=1)  # (T, 2)
    bars = np.stack([close, close * 1.01, close * 0.99, close, np.ones_like(close)], axis=-1)
    rsi = raw_indicators(bars)[WARMUP_BARS:, :, FEATURE_NAMES.index("rsi")]
    np.testing.assert_allclose(rsi[:, 0], 100.0)
    np.testing.assert_allclose(rsi[:, 1], 0.0)


def test_breakout_volume_takes_all_three_signs_on_a_random_walk(raw: np.ndarray) -> None:
    breakout = raw[WARMUP_BARS:, :, FEATURE_NAMES.index("breakout_volume")]
    assert (breakout > 0).any() and (breakout < 0).any() and (breakout == 0).any()


@settings(max_examples=20, deadline=None)
@given(t=st.integers(min_value=0, max_value=158), seed=st.integers(min_value=0, max_value=2**16))
def test_features_at_or_before_t_ignore_every_later_bar(t: int, seed: int) -> None:
    bars = random_walk_ohlcv(n_bars=160, n_assets=2, seed=0)
    changed = bars.copy()
    changed[t + 1 :] *= np.random.default_rng(seed).uniform(0.5, 2.0, changed[t + 1 :].shape)

    before, first_valid = compute_features(bars, zscore_window=20)
    after, _ = compute_features(changed, zscore_window=20)
    assert np.array_equal(raw_indicators(bars)[: t + 1], raw_indicators(changed)[: t + 1], equal_nan=True)
    assert np.array_equal(before[: t + 1], after[: t + 1], equal_nan=True)
    if t + 1 > first_valid:
        assert not np.array_equal(before[t + 1 :], after[t + 1 :], equal_nan=True)  # the change reached


def test_causal_zscore_uses_the_trailing_window() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 2.0, (120, 2, 3))
    x[:7] = np.nan  # an indicator warm-up
    z = causal_zscore(x, window=25)
    for asset in range(2):
        for feature in range(3):
            np.testing.assert_allclose(z[:, asset, feature], ref_zscore(x[:, asset, feature], 25), atol=1e-12)
    assert np.isnan(z[: 7 + 25 - 1]).all() and np.isfinite(z[7 + 25 - 1 :]).all()


def test_causal_zscore_clips_outliers() -> None:
    x = np.random.default_rng(4).normal(0.0, 1.0, (200, 1, 2))
    x[-1, 0, 0], x[-1, 0, 1] = 1e3, -1e3  # ~sqrt(199) = 14 stds from the window mean
    assert causal_zscore(x, window=200)[-1, 0].tolist() == [CLIP, -CLIP]


def test_causal_zscore_maps_a_constant_feature_to_zero() -> None:
    x = np.full((50, 1, 1), 3.7)
    assert np.array_equal(causal_zscore(x, window=20)[19:], np.zeros((31, 1, 1)))


@pytest.mark.parametrize("volume", [0.0, 5.0])
def test_constant_market_gives_finite_features(volume: float) -> None:
    bars = np.full((150, 2, 5), 100.0)
    bars[..., 4] = volume
    features, first_valid = compute_features(bars, zscore_window=20)
    assert np.isfinite(features[first_valid:]).all()
    raw = raw_indicators(bars)[WARMUP_BARS:]
    assert (raw[..., FEATURE_NAMES.index("rsi")] == 50.0).all()  # neutral, not 0/0


def test_same_input_gives_identical_features(bars: np.ndarray) -> None:
    first, _ = compute_features(bars, zscore_window=30)
    second, _ = compute_features(bars.copy(), zscore_window=30)
    assert np.array_equal(first, second, equal_nan=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b[..., :4], r"shape \(T, A, 5\)"),
        (lambda b: b[:80], "bars but features need more than"),
        (lambda b: np.where(np.arange(5) == 3, -b, b), "must be > 0"),
        (lambda b: np.where(np.arange(5) == 4, -b, b), "volume must be >= 0"),
        (lambda b: np.where(np.arange(5) == 0, np.nan, b), "NaN or inf"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(bars: np.ndarray, change, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_features(change(bars), zscore_window=30)


def test_with_features_attaches_compute_features_to_the_market(bars: np.ndarray) -> None:
    timestamps = pd.date_range("2023-01-05", periods=len(bars), freq="1h", tz="UTC")
    market = MarketData(timestamps, ("A", "B", "C"), bars, pd.Timedelta("1h"), source="test")
    featured = with_features(market, zscore_window=30)
    features, first_valid = compute_features(bars, zscore_window=30)
    assert np.array_equal(featured.features, features, equal_nan=True)
    assert featured.feature_names == FEATURE_NAMES
    assert featured.first_valid == first_valid == first_valid_bar(30)
    assert featured.feature_memory == feature_memory(30) > first_valid
    assert featured.ohlcv is market.ohlcv and market.features is None  # the bars are shared, not changed


# ------------------------------------------------- gaps closed after mutation testing (mutmut)
def test_warm_up_and_memory_are_the_hand_computed_bar_counts() -> None:
    # Warm-up: the 50-bar mean of an ATR that starts at bar 14 is first defined at bar 63.
    assert WARMUP_BARS == 63
    assert [first_valid_bar(w) for w in (2, 30, 500)] == [64, 92, 562]
    # A Wilder(14) average forgets a bar after ceil(log 1e-6 / log(13/14)) = 187 bars; the
    # re-acceleration chains two of them plus a second difference: 2 * 187 + 3 = 377 bars.
    assert INDICATOR_REACH == 377
    assert [feature_memory(w) for w in (2, 20, 500)] == [378, 396, 876]


@pytest.mark.parametrize(("alpha", "bars"), [(1 / 14, 187), (2 / 27, 180), (2 / 10, 62)])
def test_forgotten_after_is_the_first_lag_weighted_below_the_tolerance(alpha: float, bars: int) -> None:
    assert _forgotten_after(alpha) == bars
    assert (1 - alpha) ** bars <= REACH_TOLERANCE < (1 - alpha) ** (bars - 1)


@pytest.mark.parametrize("column", FEATURE_NAMES)
def test_every_feature_column_is_causal_and_live(column: str) -> None:
    """Changing bars after k leaves rows <= k of this column unchanged, raw and z-scored, and
    does change the column later (so the check is not vacuous)."""
    c = FEATURE_NAMES.index(column)
    bars = random_walk_ohlcv(n_bars=200, n_assets=2, seed=11)
    base_raw, (base, first_valid) = raw_indicators(bars), compute_features(bars, zscore_window=20)
    for k in (first_valid - 1, 120, 180):
        changed = bars.copy()
        changed[k + 1 :] *= np.random.default_rng(k).uniform(0.7, 1.4, changed[k + 1 :].shape)
        raw, (features, _) = raw_indicators(changed), compute_features(changed, zscore_window=20)
        assert np.array_equal(raw[: k + 1, :, c], base_raw[: k + 1, :, c], equal_nan=True), (column, k)
        assert np.array_equal(features[: k + 1, :, c], base[: k + 1, :, c], equal_nan=True), (column, k)
        assert not np.array_equal(raw[k + 1 :, :, c], base_raw[k + 1 :, :, c], equal_nan=True), (column, k)
        assert not np.array_equal(features[k + 1 :, :, c], base[k + 1 :, :, c], equal_nan=True), (column, k)


def test_causal_zscore_known_answer_population_std() -> None:
    # Window (1, 2, 3): mean 2, population std sqrt(2/3), so z = 1 / sqrt(2/3) = sqrt(1.5);
    # the sample std (ddof=1) would give exactly 1.
    z = causal_zscore(np.array([5.0, 1.0, 2.0, 3.0]).reshape(4, 1, 1), window=3)[:, 0, 0]
    assert np.isnan(z[:2]).all()
    assert z[2] == pytest.approx(-2.0 / math.sqrt(26.0), rel=1e-12)  # (5, 1, 2): mean 8/3, std sqrt(26)/3
    assert z[3] == pytest.approx(math.sqrt(1.5), rel=1e-12)


def test_zscore_window_of_two_is_the_smallest_accepted() -> None:
    bars = random_walk_ohlcv(n_bars=70, n_assets=1, seed=2)
    features, first_valid = compute_features(bars, zscore_window=2)
    assert first_valid == 64 and np.isfinite(features[64:]).all() and np.isnan(features[:64]).all()
    with pytest.raises(ValueError, match=r"^zscore_window must be >= 2 bars, got 1$"):
        compute_features(bars, zscore_window=1)


def test_history_must_be_longer_than_the_first_valid_bar() -> None:
    bars = random_walk_ohlcv(n_bars=93, n_assets=1, seed=3)
    features, first_valid = compute_features(bars, zscore_window=30)  # 93 bars: exactly one valid row
    assert first_valid == 92 and np.isfinite(features[92]).all() and np.isnan(features[:92]).all()
    message = (
        "ohlcv has 92 bars but features need more than 92 (63 indicator warm-up + zscore_window=30 - 1): "
        "load a longer history (e.g. data.n_bars, or data.start / data.end) or lower window.zscore_window"
    )
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        compute_features(bars[:92], zscore_window=30)
    with pytest.raises(DataError, match=r"^ohlcv has 0 bars but"):
        compute_features(np.float64(1.0), zscore_window=30)  # not even an array of bars


def test_raw_indicators_need_more_than_the_warm_up_and_say_so_in_full() -> None:
    bars = random_walk_ohlcv(n_bars=64, n_assets=2, seed=4)
    assert np.isfinite(raw_indicators(bars)[63]).all()
    cases = [
        (bars[:63], "ohlcv has 63 bars; the indicators need more than 63"),
        (
            np.where(np.arange(5) == 1, np.inf, bars),
            "ohlcv contains NaN or inf: fill or drop missing bars before computing features",
        ),
        (np.where(np.arange(5) == 2, 0.0, bars), "ohlcv prices (open, high, low, close) must be > 0"),
        (np.where(np.arange(5) == 4, -1.0, bars), "ohlcv volume must be >= 0"),
        (bars[..., :4], "ohlcv must have shape (T, A, 5) [open, high, low, close, volume], got (64, 2, 4)"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            raw_indicators(bad)


def test_indicators_are_scale_free_so_prices_below_one_work() -> None:
    bars = random_walk_ohlcv(n_bars=150, n_assets=2, seed=5)
    cheap = bars.copy()
    cheap[..., :4] *= 1e-3  # a token at 0.1: every price below 1
    np.testing.assert_allclose(raw_indicators(cheap), raw_indicators(bars), rtol=1e-8, atol=1e-10)


def test_integer_bars_give_the_same_indicators_as_float_bars() -> None:
    bars = np.round(random_walk_ohlcv(n_bars=120, n_assets=2, seed=6) * [10, 10, 10, 10, 1]).astype(np.int64)
    assert np.array_equal(raw_indicators(bars), raw_indicators(bars.astype(np.float64)), equal_nan=True)


@pytest.mark.parametrize("volume", [0.0, 5.0])
def test_flat_markets_raise_no_numpy_warnings(volume: float) -> None:
    bars = np.full((150, 2, 5), 100.0)
    bars[..., 4] = volume
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0 / 0 would warn "invalid value" or "divide by zero"
        compute_features(bars, zscore_window=20)


def test_breakout_after_a_zero_volume_baseline_has_relative_volume_one() -> None:
    # Flat at 100 with no volume, then bar 40 closes at 110 (asset 0) or 90 (asset 1) on volume 7:
    # a breakout whose 20-bar volume baseline is 0, so its relative volume is the neutral 1.
    bars = np.full((80, 2, 5), 100.0)
    bars[..., 4] = 0.0
    bars[40:, 0, :4] = 110.0
    bars[40:, 1, :4] = 90.0
    bars[40, 0, 1], bars[40, 1, 2] = 111.0, 89.0  # the breakout bar's high and low
    bars[40, :, 0] = 100.0  # opened at the old level
    bars[40, :, 4] = 7.0
    breakout = raw_indicators(bars)[:, :, FEATURE_NAMES.index("breakout_volume")]
    assert breakout[40].tolist() == [1.0, -1.0]
    assert (breakout[20:40] == 0.0).all() and np.isnan(breakout[:20]).all()


def test_flat_market_indicators_take_their_neutral_values() -> None:
    # Every ratio's denominator is 0: RSI 50, CCI / DX / atr_regime 0, no breakout.
    bars = np.full((120, 2, 5), 100.0)
    bars[..., 4] = 3.0
    raw = raw_indicators(bars)[WARMUP_BARS:]
    expected = dict.fromkeys(FEATURE_NAMES, 0.0) | {"rsi": 50.0}
    for name, value in expected.items():
        assert (raw[..., FEATURE_NAMES.index(name)] == value).all(), name


def test_equal_expansion_both_ways_is_no_directional_movement() -> None:
    # Each bar's high is 1 above the previous high and its low 1 below the previous low:
    # +DM == -DM, so (as in TA-Lib) neither counts and DX stays 0 although the range grows.
    T = 100
    high, low = 210.0 + np.arange(T), 200.0 - np.arange(T) * 1.0
    close = (high + low) / 2
    bars = np.stack([close, high, low, close, np.ones(T)], -1)[:, None, :]
    dx = raw_indicators(bars)[:, 0, FEATURE_NAMES.index("dx")]
    assert np.isnan(dx[:14]).all() and (dx[14:] == 0.0).all()
