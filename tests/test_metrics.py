"""Metrics against hand-computed values, annualisation and degenerate curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cappuccino.evaluation.metrics import performance_metrics, periods_per_year


@pytest.mark.parametrize(
    ("interval", "expected"),
    [("1h", 8760.0), ("5min", 105120.0), (pd.Timedelta(days=1), 365.0)],
)
def test_periods_per_year_counts_bars_in_a_365_day_year(interval, expected: float) -> None:
    assert periods_per_year(interval) == expected


def test_metrics_match_hand_computed_values() -> None:
    # r = [0.1, -0.1, 21/99]; mean 7/99; deviations (2.9, -16.9, 14) / 99.
    equity = np.array([100.0, 110.0, 99.0, 120.0])
    m = performance_metrics(equity, periods_per_year=3, fees_paid=1.5, turnover=2.0)
    std = math.sqrt((2.9**2 + 16.9**2 + 14**2) / 2) / 99
    assert m["total_return"] == pytest.approx(0.2)
    assert m["annual_return"] == pytest.approx(0.2)  # N == periods_per_year: one year
    assert m["annual_volatility"] == pytest.approx(std * math.sqrt(3))
    assert m["sharpe"] == pytest.approx(7 / 99 / std * math.sqrt(3))
    assert m["sortino"] == pytest.approx(7 / 99 / math.sqrt(0.01 / 3) * math.sqrt(3))  # = 210 / 99
    assert m["max_drawdown"] == pytest.approx(0.1)  # 110 -> 99
    assert m["calmar"] == pytest.approx(2.0)
    assert (m["fees_paid"], m["turnover"], m["n_periods"]) == (1.5, 2.0, 3.0)


def test_annualisation_scales_with_the_bar_interval() -> None:
    equity = 100.0 * np.exp(np.cumsum(np.random.default_rng(0).normal(1e-4, 0.01, 500)))
    hourly = performance_metrics(equity, periods_per_year("1h"))
    five_min = performance_metrics(equity, periods_per_year("5min"))
    assert five_min["sharpe"] == pytest.approx(hourly["sharpe"] * math.sqrt(12))
    assert five_min["annual_volatility"] == pytest.approx(hourly["annual_volatility"] * math.sqrt(12))
    growth = equity[-1] / equity[0]
    assert hourly["annual_return"] == pytest.approx(growth ** (8760 / 499) - 1)
    assert hourly["total_return"] == five_min["total_return"]


def test_max_drawdown_is_the_deepest_fall_from_a_running_peak() -> None:
    m = performance_metrics(np.array([100.0, 120.0, 90.0, 130.0, 65.0, 70.0]), periods_per_year=8760)
    assert m["max_drawdown"] == pytest.approx(0.5)  # 130 -> 65, deeper than 120 -> 90


def test_constant_equity_gives_zeros_not_nan() -> None:
    m = performance_metrics(np.full(50, 1000.0), periods_per_year=8760)
    ratios = ("total_return", "annual_return", "annual_volatility", "sharpe", "sortino", "max_drawdown", "calmar")
    assert {key: m[key] for key in ratios} == dict.fromkeys(ratios, 0.0)


def test_a_curve_that_never_falls_has_zero_sortino_and_calmar() -> None:
    m = performance_metrics(np.array([100.0, 101.0, 103.0, 103.5]), periods_per_year=8760)
    assert m["max_drawdown"] == 0.0 and m["calmar"] == 0.0 and m["sortino"] == 0.0
    assert m["sharpe"] > 0


@pytest.mark.parametrize(("drift", "sign"), [(5e-4, 1.0), (-5e-4, -1.0)])
def test_sharpe_has_the_sign_of_the_drift(drift: float, sign: float) -> None:
    returns = np.random.default_rng(1).normal(drift, 0.005, 5000)
    m = performance_metrics(100.0 * np.cumprod(1 + np.concatenate([[0.0], returns])), periods_per_year=8760)
    assert np.sign(m["sharpe"]) == sign and np.sign(m["sortino"]) == sign
    assert np.sign(m["annual_return"]) == sign


@pytest.mark.parametrize(
    ("equity", "kwargs", "message"),
    [
        (np.array([100.0, 101.0]), {}, "N >= 2 periods"),
        (np.ones((3, 2)), {}, "1-D series"),
        (np.array([100.0, 0.0, 50.0]), {}, "finite and > 0"),
        (np.array([100.0, np.nan, 50.0]), {}, "finite and > 0"),
        (np.array([100.0, 101.0, 102.0]), {"periods_per_year": 0.0}, "periods_per_year must be > 0"),
        (np.array([100.0, 101.0, 102.0]), {"fees_paid": -1.0}, "fees_paid must be"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(equity: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        performance_metrics(equity, **{"periods_per_year": 8760, **kwargs})


def test_periods_per_year_rejects_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="positive duration"):
        periods_per_year("0h")
