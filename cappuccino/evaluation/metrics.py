"""Performance metrics of one equity curve.

Annualisation assumes markets that trade around the clock (crypto): a year is 365 days of bars.
Sharpe is the standard mean(r) / std(r) * sqrt(periods per year) of simple per-bar returns with a
risk-free rate of 0. (The original system scaled it by sqrt(8760 / N), N the number of bars, which
makes the figure depend on the length of the test period; ours does not.)
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def periods_per_year(interval: pd.Timedelta | str) -> float:
    """Bars per 365-day year: 8760 for "1h", 105120 for "5min"."""
    interval = pd.Timedelta(interval)
    if interval <= pd.Timedelta(0):
        raise ValueError(f"interval must be a positive duration, got {interval}")
    return pd.Timedelta(days=365) / interval


def performance_metrics(
    equity: np.ndarray,
    periods_per_year: float,
    fees_paid: float = 0.0,
    turnover: float = 0.0,
) -> dict[str, float]:
    """Return, risk and risk-adjusted return of the portfolio values V_0..V_N.

    equity: (N + 1,) portfolio values; V_0 is the value before the first period. Per-period
    returns are simple: r_t = V_t / V_{t-1} - 1, t = 1..N. ``fees_paid`` and ``turnover`` are
    passed through so that one dict holds everything an evaluation logs.

    Keys:
      total_return       V_N / V_0 - 1
      annual_return      CAGR, (V_N / V_0) ** (periods_per_year / N) - 1. On a short, strongly
                         trending series it can overflow to inf: that is the honest extrapolation.
      annual_volatility  std(r, ddof=1) * sqrt(periods_per_year)
      sharpe             mean(r) / std(r, ddof=1) * sqrt(periods_per_year); 0.0 when std is 0
      sortino            mean(r) / sqrt(mean(min(r, 0) ** 2)) * sqrt(periods_per_year), the
                         downside deviation taken over all N periods; 0.0 when no period lost
      max_drawdown       max_t 1 - V_t / max_{s<=t} V_s, a fraction in [0, 1)
      calmar             annual_return / max_drawdown; 0.0 when there was no drawdown
      fees_paid, turnover, n_periods (N)
    The 0.0 conventions keep constant or never-losing curves free of NaN and inf, so they can be
    averaged and logged; read sharpe/sortino/calmar together with annual_volatility/max_drawdown.
    """
    values = _checked_equity(equity)
    if not periods_per_year > 0:
        raise ValueError(f"periods_per_year must be > 0, got {periods_per_year}")
    for name, amount in (("fees_paid", fees_paid), ("turnover", turnover)):
        if not (np.isfinite(amount) and amount >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {amount}")

    returns = values[1:] / values[:-1] - 1.0  # (N,)
    n_periods = len(returns)
    scale = np.sqrt(periods_per_year)
    growth = values[-1] / values[0]
    with np.errstate(over="ignore"):
        annual_return = float(np.expm1(np.log(growth) * periods_per_year / n_periods))
    std = returns.std(ddof=1)
    downside = np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2))
    max_drawdown = float(np.max(1.0 - values / np.maximum.accumulate(values)))
    return {
        "total_return": float(growth - 1.0),
        "annual_return": annual_return,
        "annual_volatility": float(std * scale),
        "sharpe": float(returns.mean() / std * scale) if std > 0 else 0.0,
        "sortino": float(returns.mean() / downside * scale) if downside > 0 else 0.0,
        "max_drawdown": max_drawdown,
        "calmar": annual_return / max_drawdown if max_drawdown > 0 else 0.0,
        "fees_paid": float(fees_paid),
        "turnover": float(turnover),
        "n_periods": float(n_periods),
    }


def _checked_equity(equity: np.ndarray) -> np.ndarray:
    values = np.asarray(equity, dtype=np.float64)
    if values.ndim != 1 or len(values) < 3:
        raise ValueError(
            f"equity must be a 1-D series V_0..V_N with N >= 2 periods (a volatility needs two "
            f"returns), got shape {values.shape}"
        )
    if not np.isfinite(values).all() or (values <= 0).any():
        raise ValueError("equity values must be finite and > 0 (returns are ratios of consecutive values)")
    return values
