"""The 14 per-asset technical indicators, made stationary and normalised causally.

``raw_indicators`` turns bars into scale-free indicators; ``causal_zscore`` normalises each one
with statistics of its trailing window only; ``compute_features`` chains the two. Every value at
bar t depends on bars 0..t alone, so features can be computed once over the whole history with
no look-ahead.

Choices, following TA-Lib's definitions where they exist:

- Smoothing. EMA(n) uses alpha = 2 / (n + 1), Wilder's smoothing alpha = 1 / n. Both are seeded,
  as in TA-Lib, with the simple mean of their first n inputs, placed on the n-th input's bar.
  RSI and ATR therefore match TA-Lib; DX uses the same smoothing (TA-Lib seeds its +DM / -DM / TR
  sums with 13 values instead of 14, so its early DX values differ slightly).
- Prices are made relative: open / high / low are log(price / close) of the same bar, close is the
  log return of the bar, volume is the difference of log1p(volume) (defined for zero volume).
  MACD line, signal and histogram are divided by the close.
- Flat markets: ratios whose denominator is 0 take a neutral value instead of NaN: RSI 50,
  CCI / DI / DX / atr_regime 0, relative volume 1.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from cappuccino.data.cleaning import DataError
from cappuccino.data.market import MarketData

FEATURE_NAMES: tuple[str, ...] = (
    "open",
    "high",
    "low",
    "close",
    "volume",
    "macd",
    "macd_signal",
    "macd_hist",
    "rsi",
    "cci",
    "dx",
    "atr_regime",
    "breakout_volume",
    "trend_reacceleration",
)

# Bumped whenever a feature's definition changes: a checkpoint trained on other features is refused.
FEATURE_VERSION = 1

MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
PERIOD = 14  # RSI, CCI, DX, ADX and ATR
CCI_CONSTANT = 0.015
ATR_REGIME_WINDOW = 50
BREAKOUT_WINDOW = 20
# Index of the first bar at which every raw indicator is defined (the slowest one decides).
WARMUP_BARS = max(
    MACD_SLOW + MACD_SIGNAL - 2,  # signal EMA of a line that starts at bar MACD_SLOW - 1
    PERIOD + ATR_REGIME_WINDOW - 1,  # 50-bar mean of an ATR that starts at bar PERIOD
    2 * PERIOD + 1,  # second difference of an ADX that starts at bar 2 * PERIOD - 1
    BREAKOUT_WINDOW,  # previous 20 bars
)
# A recursive average never forgets a bar entirely: bar t - k keeps weight (1 - alpha)^k relative
# to the newest. Below this weight a bar counts as forgotten; a chain of averages forgets it once
# each stage has (the tails add up, so the chain's forgotten weight stays below stages * this).
REACH_TOLERANCE = 1e-6


def _forgotten_after(alpha: float) -> int:
    """Bars after which a recursive average with ``alpha`` weights a bar below REACH_TOLERANCE."""
    return math.ceil(math.log(REACH_TOLERANCE) / math.log(1.0 - alpha))


_WILDER_REACH = _forgotten_after(1.0 / PERIOD)
# How far back a raw indicator at bar t reads (the slowest decides), to REACH_TOLERANCE.
INDICATOR_REACH = max(
    2 * _WILDER_REACH + 3,  # trend re-acceleration: 2nd difference of ADX = Wilder(DX of Wilder DM / ATR)
    _forgotten_after(2.0 / (MACD_SLOW + 1)) + _forgotten_after(2.0 / (MACD_SIGNAL + 1)),  # MACD signal
    _WILDER_REACH + ATR_REGIME_WINDOW,  # 50-bar mean of an ATR whose true range reads the previous close
    BREAKOUT_WINDOW + 1,
)
STD_FLOOR = 1e-8  # z-score denominator floor: a constant feature maps to 0, not inf / NaN
CLIP = 10.0


def compute_features(ohlcv: np.ndarray, zscore_window: int) -> tuple[np.ndarray, int]:
    """Causally z-scored indicators of every asset.

    ohlcv: (T, A, 5) float64 bars in (open, high, low, close, volume) order.
    Returns features (T, A, 14) float32 in ``FEATURE_NAMES`` order, and ``first_valid``: the first
    bar at which every feature is finite. Earlier bars are warm-up, filled with NaN: the indicators
    need ``WARMUP_BARS`` bars, then the z-score a full window of ``zscore_window`` of them.
    """
    if zscore_window < 2:
        raise ValueError(f"zscore_window must be >= 2 bars, got {zscore_window}")
    first_valid = first_valid_bar(zscore_window)
    n_bars = np.shape(ohlcv)[0] if np.ndim(ohlcv) else 0
    if n_bars <= first_valid:
        raise DataError(
            f"ohlcv has {n_bars} bars but features need more than {first_valid} "
            f"({WARMUP_BARS} indicator warm-up + zscore_window={zscore_window} - 1): "
            "load a longer history (e.g. data.n_bars, or data.start / data.end) or lower window.zscore_window"
        )
    features = causal_zscore(raw_indicators(ohlcv), zscore_window).astype(np.float32)
    features[:first_valid] = np.nan  # faster indicators are defined earlier; keep one warm-up for all
    return features, first_valid


def with_features(market: MarketData, zscore_window: int) -> MarketData:
    """``market`` with its causal features attached (``compute_features``)."""
    features, first_valid = compute_features(market.ohlcv, zscore_window)
    return market.with_features(features, FEATURE_NAMES, first_valid, feature_memory(zscore_window))


def first_valid_bar(zscore_window: int) -> int:
    """The first bar with every feature defined: the indicators' warm-up, then a full z-score window."""
    return WARMUP_BARS + zscore_window - 1


def feature_memory(zscore_window: int) -> int:
    """How many bars back a feature reaches: the feature at bar t reads bars t - memory .. t, and
    earlier bars move it by less than REACH_TOLERANCE of their weight at their own bar (the
    z-score window over raw indicators that each reach INDICATOR_REACH bars back). Purging this
    many bars after a test group keeps its bars out of every training feature."""
    return INDICATOR_REACH + zscore_window - 1


def causal_zscore(x: np.ndarray, window: int) -> np.ndarray:
    """(x_t - mean) / std over bars t-window+1..t, clipped to [-CLIP, CLIP].

    x: (T, ...) float; statistics run along axis 0, independently for every other index. The std
    is the population std (ddof=0), floored at ``STD_FLOOR``. A window holding any NaN gives NaN.
    """
    flat = pd.DataFrame(x.reshape(len(x), -1))  # (T, A * F)
    rolling = flat.rolling(window, min_periods=window)
    mean = rolling.mean().to_numpy()
    std = rolling.std(ddof=0).to_numpy()
    z = (flat.to_numpy() - mean) / np.maximum(std, STD_FLOOR)
    return np.clip(z, -CLIP, CLIP).reshape(x.shape)


def raw_indicators(ohlcv: np.ndarray) -> np.ndarray:
    """The 14 indicators before normalisation: (T, A, 5) bars -> (T, A, 14) float64.

    Bars before an indicator's warm-up is complete are NaN; from ``WARMUP_BARS`` on all are finite.
    """
    ohlcv = _checked(ohlcv)
    open_, high, low, close, volume = np.moveaxis(ohlcv, -1, 0)  # each (T, A)
    prev_close = _shift(close, 1)
    true_range = np.maximum.reduce([high - low, np.abs(high - prev_close), np.abs(low - prev_close)])
    atr = _wilder(true_range, PERIOD)
    dx = _dx(high, low, atr)
    adx = _wilder(dx, PERIOD)
    macd, macd_signal = _macd(close)
    columns = {
        "open": np.log(open_ / close),
        "high": np.log(high / close),
        "low": np.log(low / close),
        "close": np.log(close / prev_close),
        "volume": np.log1p(volume) - _shift(np.log1p(volume), 1),
        "macd": macd / close,
        "macd_signal": macd_signal / close,
        "macd_hist": (macd - macd_signal) / close,
        "rsi": _rsi(close),
        "cci": _cci((high + low + close) / 3),
        "dx": dx,
        "atr_regime": _atr_regime(atr),
        "breakout_volume": _breakout_volume(high, low, close, volume),
        "trend_reacceleration": adx - 2 * _shift(adx, 1) + _shift(adx, 2),
    }
    return np.stack([columns[name] for name in FEATURE_NAMES], axis=-1)


# ------------------------------------------------------------------------------ indicators
def _macd(close: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    line = _ema(close, MACD_FAST) - _ema(close, MACD_SLOW)
    return line, _ema(line, MACD_SIGNAL)


def _rsi(close: np.ndarray) -> np.ndarray:
    change = close - _shift(close, 1)
    mean_gain = _wilder(np.maximum(change, 0.0), PERIOD)  # np.maximum keeps bar 0's NaN
    mean_loss = _wilder(np.maximum(-change, 0.0), PERIOD)
    return 100.0 * _ratio(mean_gain, mean_gain + mean_loss, fill=0.5)


def _cci(typical: np.ndarray) -> np.ndarray:
    windows = sliding_window_view(typical, PERIOD, axis=0)  # (T - PERIOD + 1, A, PERIOD)
    mean = windows.mean(axis=-1)
    mean_abs_dev = np.abs(windows - mean[..., None]).mean(axis=-1)
    cci = _ratio(typical[PERIOD - 1 :] - mean, CCI_CONSTANT * mean_abs_dev, fill=0.0)
    return np.concatenate([np.full((PERIOD - 1, typical.shape[1]), np.nan), cci])


def _dx(high: np.ndarray, low: np.ndarray, atr: np.ndarray) -> np.ndarray:
    up = high - _shift(high, 1)
    down = _shift(low, 1) - low
    plus_dm = np.where((up > down) & (up > 0), up, 0.0)
    minus_dm = np.where((down > up) & (down > 0), down, 0.0)
    plus_dm[0] = minus_dm[0] = np.nan  # bar 0 has no previous bar
    plus_di = 100.0 * _ratio(_wilder(plus_dm, PERIOD), atr, fill=0.0)
    minus_di = 100.0 * _ratio(_wilder(minus_dm, PERIOD), atr, fill=0.0)
    return 100.0 * _ratio(np.abs(plus_di - minus_di), plus_di + minus_di, fill=0.0)


def _atr_regime(atr: np.ndarray) -> np.ndarray:
    mean = _rolling(atr, ATR_REGIME_WINDOW).mean().to_numpy()
    return _ratio(atr - mean, mean, fill=0.0)


def _breakout_volume(high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray) -> np.ndarray:
    # The channel and the volume baseline exclude bar t: a window that includes it can never be
    # broken by the close (close <= high), which made the original feature identically 0.
    prior_high = _shift(_rolling(high, BREAKOUT_WINDOW).max().to_numpy(), 1)
    prior_low = _shift(_rolling(low, BREAKOUT_WINDOW).min().to_numpy(), 1)
    prior_volume = _shift(_rolling(volume, BREAKOUT_WINDOW).mean().to_numpy(), 1)
    direction = np.where(close > prior_high, 1.0, np.where(close < prior_low, -1.0, 0.0))
    direction[np.isnan(prior_high)] = np.nan
    return direction * _ratio(volume, prior_volume, fill=1.0)


# ------------------------------------------------------------------------------- helpers
def _checked(ohlcv: np.ndarray) -> np.ndarray:
    ohlcv = np.asarray(ohlcv, dtype=np.float64)
    if ohlcv.ndim != 3 or ohlcv.shape[-1] != 5:
        raise ValueError(
            f"ohlcv must have shape (T, A, 5) [open, high, low, close, volume], got {ohlcv.shape}"
        )
    if len(ohlcv) <= WARMUP_BARS:
        raise ValueError(f"ohlcv has {len(ohlcv)} bars; the indicators need more than {WARMUP_BARS}")
    if not np.isfinite(ohlcv).all():
        raise ValueError("ohlcv contains NaN or inf: fill or drop missing bars before computing features")
    if (ohlcv[..., :4] <= 0).any():
        raise ValueError("ohlcv prices (open, high, low, close) must be > 0")
    if (ohlcv[..., 4] < 0).any():
        raise ValueError("ohlcv volume must be >= 0")
    return ohlcv


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """x delayed by k bars along axis 0; the first k bars become NaN."""
    return np.concatenate([np.full((k, *x.shape[1:]), np.nan), x[:-k]])


def _rolling(x: np.ndarray, window: int) -> pd.api.typing.Rolling:
    return pd.DataFrame(x).rolling(window, min_periods=window)


def _ratio(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    """num / den, with ``fill`` where den == 0 (a flat market); NaN where num or den is NaN."""
    quotient = num / np.where(den == 0, 1.0, den)
    return np.where(den == 0, fill + 0.0 * num, quotient)  # 0.0 * num carries num's NaN


def _ema(x: np.ndarray, n: int) -> np.ndarray:
    return _smoothed(x, n, alpha=2.0 / (n + 1))


def _wilder(x: np.ndarray, n: int) -> np.ndarray:
    return _smoothed(x, n, alpha=1.0 / n)


def _smoothed(x: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """s_t = s_{t-1} + alpha * (x_t - s_{t-1}), seeded with the mean of x's first n defined bars.

    x: (T, A), NaN only on a leading block of bars shared by all assets (an earlier warm-up).
    The output is NaN up to the seed's bar.
    """
    start = int(np.isfinite(x).all(axis=1).argmax())
    seed_bar = start + n - 1
    seeded = np.full_like(x, np.nan)
    if seed_bar < len(x):
        seeded[seed_bar] = x[start : seed_bar + 1].mean(axis=0)
        seeded[seed_bar + 1 :] = x[seed_bar + 1 :]
    # adjust=False is the plain recursion; it starts from the first non-NaN value, the seed.
    return pd.DataFrame(seeded).ewm(alpha=alpha, adjust=False).mean().to_numpy()
