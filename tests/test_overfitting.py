"""PBO (CSCV) against a direct per-split computation and its two limiting cases; PSR / DSR and the
expected maximum Sharpe against their formulas and a Monte-Carlo maximum."""

from __future__ import annotations

import math
from itertools import combinations
from statistics import NormalDist

import numpy as np
import pytest

from cappuccino.evaluation.overfitting import (
    deflated_sharpe_ratio,
    expected_maximum_sharpe,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
)

Z = NormalDist()


def _reference_logits(performance: np.ndarray, n_partitions: int) -> np.ndarray:
    """CSCV written out split by split, ranks from scipy."""
    from scipy.stats import rankdata
    blocks = np.array_split(np.arange(len(performance)), n_partitions)

    def sharpe(rows: np.ndarray) -> np.ndarray:
        x = performance[rows]
        std = x.std(axis=0, ddof=1)
        return np.where(std > 0, x.mean(axis=0) / np.where(std > 0, std, 1.0), 0.0)

    logits = []
    for chosen in combinations(range(n_partitions), n_partitions // 2):
        is_rows = np.concatenate([blocks[i] for i in chosen])
        oos_rows = np.setdiff1d(np.arange(len(performance)), is_rows)
        best = np.argmax(sharpe(is_rows))
        omega = rankdata(sharpe(oos_rows))[best] / (performance.shape[1] + 1)
        logits.append(math.log(omega / (1 - omega)))
    return np.array(logits)


@pytest.mark.parametrize(("n_periods", "n_partitions"), [(40, 8), (37, 6), (9, 2)])
def test_pbo_matches_a_direct_per_split_computation(n_periods: int, n_partitions: int) -> None:
    performance = np.random.default_rng(0).normal(0.001, 0.01, size=(n_periods, 7))
    result = probability_of_backtest_overfitting(performance, n_partitions)
    expected = _reference_logits(performance, n_partitions)
    np.testing.assert_allclose(result.logits, expected, rtol=1e-9)
    assert result.pbo == pytest.approx(np.mean(expected <= 0))


@pytest.mark.parametrize("n_partitions", [2, 6, 16])
def test_pbo_runs_every_half_split_and_returns_finite_logits(n_partitions: int) -> None:
    performance = np.random.default_rng(1).normal(size=(64, 5))
    result = probability_of_backtest_overfitting(performance, n_partitions)
    assert result.n_combinations == math.comb(n_partitions, n_partitions // 2)
    assert result.logits.shape == result.is_sharpe.shape == result.oos_sharpe.shape == (result.n_combinations,)
    assert np.all(np.isfinite(result.logits))


def test_pbo_is_zero_when_one_trial_is_better_in_every_period() -> None:
    performance = np.random.default_rng(2).normal(0.0, 0.01, size=(320, 20))
    performance[:, 3] = 0.005 + np.random.default_rng(3).normal(0.0, 0.001, size=320)
    result = probability_of_backtest_overfitting(performance)
    assert result.pbo == 0.0
    np.testing.assert_allclose(result.logits, math.log(20))  # rank N of N every time


def test_pbo_is_about_one_half_for_trials_without_skill() -> None:
    # One noise panel's PBO swings widely (its splits share data), so average 50 seeded panels.
    results = [
        probability_of_backtest_overfitting(np.random.default_rng(seed).normal(0.0, 0.01, size=(400, 20)), 8)
        for seed in range(50)
    ]
    assert np.mean([r.pbo for r in results]) == pytest.approx(0.5, abs=0.1)
    # Selection on noise: the picked trial's edge does not survive out of sample.
    is_sharpe = np.mean([r.is_sharpe.mean() for r in results])
    oos_sharpe = np.mean([r.oos_sharpe.mean() for r in results])
    assert abs(oos_sharpe) < is_sharpe / 5


def test_pbo_gives_constant_trials_sharpe_zero() -> None:
    performance = np.random.default_rng(5).normal(0.0, 0.01, size=(48, 4))
    performance[:, 0] = 0.1  # zero std up to rounding: Sharpe 0, not 1e16
    result = probability_of_backtest_overfitting(performance, 4)
    np.testing.assert_allclose(result.logits, _reference_logits(np.where(performance == 0.1, 0.0, performance), 4))


@pytest.mark.parametrize(
    ("performance", "n_partitions", "match"),
    [
        (np.zeros(32), 4, "performance must be a 2-D"),
        (np.zeros((32, 1)), 4, "at least 2 trials"),
        (np.full((32, 3), np.nan), 4, "performance contains NaN"),
        (np.zeros((32, 3)), 5, "n_partitions must be an even"),
        (np.zeros((32, 3)), 0, "n_partitions must be an even"),
        (np.zeros((10, 3)), 16, "fewer than n_partitions=16"),
        (np.zeros((3, 3)), 2, "n_partitions=2 and 3 periods"),
    ],
)
def test_pbo_rejects_bad_input(performance: np.ndarray, n_partitions: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        probability_of_backtest_overfitting(performance, n_partitions)


def test_psr_matches_the_formula_on_known_numbers() -> None:
    # Normal returns (skew 0, kurtosis 3) still carry the SR^2 / 2 term of the Sharpe's variance.
    normal = Z.cdf(0.1 * math.sqrt(249) / math.sqrt(1 + 0.01 / 2))
    assert probabilistic_sharpe_ratio(0.1, 250, 0.0, 3.0) == pytest.approx(normal, rel=1e-12)
    # Negative skew and fat tails widen the Sharpe's standard error and lower the PSR.
    denominator = math.sqrt(1 + 0.5 * 0.1 + (6.0 - 1) / 4 * 0.01)
    fat = probabilistic_sharpe_ratio(0.1, 250, -0.5, 6.0, benchmark=0.02)
    assert fat == pytest.approx(Z.cdf(0.08 * math.sqrt(249) / denominator))
    assert fat < probabilistic_sharpe_ratio(0.1, 250, 0.0, 3.0, benchmark=0.02)


def test_dsr_is_psr_against_the_expected_maximum() -> None:
    trials = [0.02, -0.01, 0.05, 0.0, 0.03]
    expected = probabilistic_sharpe_ratio(0.05, 500, -0.2, 4.0, benchmark=expected_maximum_sharpe(trials))
    assert deflated_sharpe_ratio(0.05, 500, -0.2, 4.0, trials) == expected


def test_dsr_falls_as_the_trials_spread_out() -> None:
    base = np.random.default_rng(6).normal(size=30)
    dsr = [deflated_sharpe_ratio(0.08, 1000, 0.0, 3.0, base * scale) for scale in (0.005, 0.01, 0.02, 0.04)]
    assert all(a > b for a, b in zip(dsr, dsr[1:], strict=False))
    assert dsr[0] > 0.95 and dsr[-1] < 0.5


def _with_std(n: int, std: float, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=n)
    return (x - x.mean()) / x.std(ddof=1) * std


def test_expected_maximum_grows_with_the_number_of_trials() -> None:
    maxima = [expected_maximum_sharpe(_with_std(n, 0.02, seed=n)) for n in (2, 5, 20, 100, 1000)]
    assert all(a < b for a, b in zip(maxima, maxima[1:], strict=False))


@pytest.mark.parametrize("n_trials", [10, 100, 1000])
def test_expected_maximum_matches_a_monte_carlo_maximum(n_trials: int) -> None:
    std = 0.03
    draws = np.random.default_rng(7).normal(0.0, std, size=(2000, n_trials))
    monte_carlo = draws.max(axis=1).mean()
    # The paper's closed form is an approximation: ~2.5% high at N = 10, closer as N grows.
    assert expected_maximum_sharpe(_with_std(n_trials, std, seed=8)) == pytest.approx(monte_carlo, rel=0.04)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: probabilistic_sharpe_ratio(0.1, 1, 0.0, 3.0), "n_observations must be >= 2"),
        (lambda: probabilistic_sharpe_ratio(math.nan, 100, 0.0, 3.0), "sharpe must be finite"),
        (lambda: probabilistic_sharpe_ratio(2.0, 100, 0.0, -3.0), "non-excess kurtosis"),
        (lambda: expected_maximum_sharpe([0.1]), "at least 2 Sharpe ratios"),
        (lambda: expected_maximum_sharpe([0.1, math.inf]), "trial_sharpes contains NaN"),
    ],
)
def test_sharpe_statistics_reject_bad_input(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
