"""Metrics against hand-computed values, annualisation and degenerate curves."""

from __future__ import annotations

import math
import warnings

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


# Gaps found by mutation testing (mutmut over cappuccino/evaluation/metrics.py).


def test_periods_per_year_accepts_the_shortest_interval_and_rejects_negative_ones() -> None:
    assert periods_per_year("1ns") == 365 * 86400 * 1e9
    with pytest.raises(ValueError, match=r"^interval must be a positive duration, got -1 days \+23:00:00$"):
        periods_per_year("-1h")


def test_fees_and_turnover_default_to_zero() -> None:
    m = performance_metrics(np.array([100.0, 101.0, 100.5]), periods_per_year=8760)
    assert (m["fees_paid"], m["turnover"]) == (0.0, 0.0)


def test_fewer_than_one_period_per_year_is_a_valid_annualisation() -> None:
    # Two-year bars: 0.5 periods a year, so two periods are one year of growth.
    m = performance_metrics(np.array([100.0, 110.0, 121.0]), periods_per_year=0.5)
    assert m["annual_return"] == pytest.approx(math.sqrt(1.21) ** 0.5 - 1)
    assert m["annual_volatility"] == 0.0  # both returns are 10 %


def test_equity_below_one_is_valid() -> None:
    """An equity curve normalised to V_0 = 1 that loses money: values under 1 are fine, only
    values <= 0 make returns undefined."""
    equity = np.array([1.0, 0.8, 0.5, 0.6])
    m = performance_metrics(equity, periods_per_year=3)
    assert m["total_return"] == pytest.approx(-0.4)
    assert m["max_drawdown"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("equity", "kwargs", "message"),
    [
        (np.array([100.0, -1.0, 50.0]), {}, "equity values must be finite and > 0 (returns are ratios of consecutive values)"),
        (np.array([100.0, np.inf, 50.0]), {}, "equity values must be finite and > 0 (returns are ratios of consecutive values)"),
        (np.array([100.0, 101.0, 102.0]), {"turnover": -1.0}, "turnover must be a finite number >= 0, got -1.0"),
        (np.array([100.0, 101.0, 102.0]), {"turnover": np.nan}, "turnover must be a finite number >= 0, got nan"),
        (np.array([100.0, 101.0, 102.0]), {"fees_paid": np.inf}, "fees_paid must be a finite number >= 0, got inf"),
        (np.array([100.0, 101.0, 102.0]), {"periods_per_year": -3.0}, "periods_per_year must be > 0, got -3.0"),
        (
            np.array([[100.0, 101.0, 102.0]]),
            {},
            r"equity must be a 1-D series V_0..V_N with N >= 2 periods (a volatility needs two returns), got shape (1, 3)",
        ),
    ],
)
def test_bad_input_messages_are_exact(equity: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as error:
        performance_metrics(equity, **{"periods_per_year": 8760, **kwargs})
    assert str(error.value) == message


def test_annual_return_overflows_to_inf_without_a_warning() -> None:
    """The docstring's promise: a short, steep curve extrapolates to inf, and quietly (a warning
    would be turned into an error by a strict test run or a `-W error` sweep)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = performance_metrics(np.array([1.0, 10.0, 100.0]), periods_per_year=105120)
    assert m["annual_return"] == math.inf
    assert m["total_return"] == pytest.approx(99.0)


def test_float32_equity_is_computed_in_float64() -> None:
    equity = (100.0 * np.exp(np.cumsum(np.random.default_rng(9).normal(1e-4, 1e-3, 200)))).astype(np.float32)
    low = performance_metrics(equity, periods_per_year=8760)
    exact = performance_metrics(equity.astype(np.float64), periods_per_year=8760)
    assert low == pytest.approx(exact, rel=1e-12, abs=0)


def test_integer_equity_gives_the_same_metrics_as_float_equity() -> None:
    assert performance_metrics([100, 110, 99, 120], 3) == performance_metrics(np.array([100.0, 110.0, 99.0, 120.0]), 3)
