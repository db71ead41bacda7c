"""PBO (CSCV) against a direct per-split computation and its two limiting cases; PSR / DSR and the
expected maximum Sharpe against their formulas and a Monte-Carlo maximum."""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from statistics import NormalDist

import numpy as np
import pytest

from cappuccino.evaluation.overfitting import (
    minimum_track_record_length,
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


# Gaps found by mutation testing (mutmut over cappuccino/evaluation/overfitting.py).


def _reference_selected_sharpes(performance: np.ndarray, n_partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """Per split, the in-sample best trial's Sharpe (mean / std, ddof=1) in and out of sample, from
    np.mean / np.std on the rows themselves."""
    blocks = np.array_split(np.arange(len(performance)), n_partitions)
    is_best, oos_best = [], []
    for chosen in combinations(range(n_partitions), n_partitions // 2):
        is_rows = np.concatenate([blocks[i] for i in chosen])
        oos_rows = np.setdiff1d(np.arange(len(performance)), is_rows)
        is_sr = performance[is_rows].mean(axis=0) / performance[is_rows].std(axis=0, ddof=1)
        oos_sr = performance[oos_rows].mean(axis=0) / performance[oos_rows].std(axis=0, ddof=1)
        best = np.argmax(is_sr)
        is_best.append(is_sr[best])
        oos_best.append(oos_sr[best])
    return np.array(is_best), np.array(oos_best)


@pytest.mark.parametrize(("n_periods", "n_partitions"), [(40, 8), (37, 6), (9, 2)])
def test_pbo_reports_the_selected_trials_sharpes_with_ddof_1(n_periods: int, n_partitions: int) -> None:
    # Every trial's half has the same length, so ranks (and logits) do not see the ddof; these do.
    performance = np.random.default_rng(10).normal(0.001, 0.01, size=(n_periods, 5))
    result = probability_of_backtest_overfitting(performance, n_partitions)
    is_sharpe, oos_sharpe = _reference_selected_sharpes(performance, n_partitions)
    np.testing.assert_allclose(result.is_sharpe, is_sharpe, rtol=1e-9)
    np.testing.assert_allclose(result.oos_sharpe, oos_sharpe, rtol=1e-9)


@pytest.mark.parametrize("factor", [1e-12, 1e-6, 1e6])
def test_rescaling_one_trial_changes_no_sharpe_and_no_logit(factor: float) -> None:
    """Sharpe ratios are scale-free and the zero-std guard is relative to each trial's own
    returns: one trial reported in other units (or tiny excess returns) must not be read as flat."""
    performance = np.random.default_rng(11).normal(0.002, 0.01, size=(48, 5))
    base = probability_of_backtest_overfitting(performance, 4)
    scaled = performance.copy()
    scaled[:, 2] *= factor
    result = probability_of_backtest_overfitting(scaled, 4)
    np.testing.assert_allclose(result.logits, base.logits, rtol=1e-12)
    np.testing.assert_allclose(result.is_sharpe, base.is_sharpe, rtol=1e-9)
    np.testing.assert_allclose(result.oos_sharpe, base.oos_sharpe, rtol=1e-9)


def test_a_trial_on_a_large_offset_keeps_its_exact_sharpe() -> None:
    """Each trial is centred on its own mean before sums of squares are taken: a trial whose
    returns sit far from the others' (scores around 1000 next to returns around 0) keeps full
    precision."""
    rng = np.random.default_rng(12)
    performance = rng.normal(0.0, 0.01, size=(40, 4))
    performance[:, 0] = 1000.0 + rng.normal(0.0, 1e-3, size=40)  # Sharpe ~1e6: picked in every split
    result = probability_of_backtest_overfitting(performance, 4)
    is_sharpe, oos_sharpe = _reference_selected_sharpes(performance, 4)
    np.testing.assert_allclose(result.is_sharpe, is_sharpe, rtol=1e-9)
    np.testing.assert_allclose(result.oos_sharpe, oos_sharpe, rtol=1e-9)


def test_a_trial_that_never_trades_has_sharpe_zero_without_warnings() -> None:
    performance = np.random.default_rng(13).normal(0.0, 0.01, size=(32, 3))
    performance[:, 1] = 0.0  # a flat agent: zero excess return every period
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = probability_of_backtest_overfitting(performance, 4)
    np.testing.assert_allclose(result.logits, _reference_logits(performance, 4), rtol=1e-12)


def test_float32_returns_are_computed_in_float64() -> None:
    performance = np.random.default_rng(14).normal(0.001, 0.01, size=(40, 4)).astype(np.float32)
    low = probability_of_backtest_overfitting(performance, 4)
    exact = probability_of_backtest_overfitting(performance.astype(np.float64), 4)
    np.testing.assert_array_equal(low.logits, exact.logits)
    np.testing.assert_allclose(low.is_sharpe, exact.is_sharpe, rtol=1e-12)
    np.testing.assert_allclose(low.oos_sharpe, exact.oos_sharpe, rtol=1e-12)


def test_pbo_accepts_the_smallest_valid_inputs() -> None:
    """Two trials are enough to rank, and n_periods == n_partitions is fine when a half still
    holds two periods."""
    performance = np.array([[0.013, 0.021], [-0.011, 0.004], [0.022, 0.009], [0.002, -0.017]])
    result = probability_of_backtest_overfitting(performance, 4)
    np.testing.assert_allclose(result.logits, _reference_logits(performance, 4), rtol=1e-12)
    assert result.n_combinations == 6


def test_identical_trials_share_the_average_of_their_ranks() -> None:
    """Two copies of the best trial: whichever is picked in sample, out of sample the copies tie and
    share the average of ranks N - 1 and N (scipy's "average"), so omega = (N - 1/2) / (N + 1)."""
    rng = np.random.default_rng(15)
    performance = rng.normal(0.0, 0.01, size=(40, 4))
    performance[:, 1] = 0.004 + rng.normal(0.0, 0.001, size=40)  # the best trial everywhere
    performance[:, 3] = performance[:, 1]
    result = probability_of_backtest_overfitting(performance, 4)
    np.testing.assert_allclose(result.logits, math.log(3.5 / 1.5))  # omega = 3.5 / 5
    np.testing.assert_allclose(result.logits, _reference_logits(performance, 4), rtol=1e-12)


@pytest.mark.parametrize(
    ("performance", "n_partitions", "message"),
    [
        (np.full((32, 3), np.inf), 4, "performance contains NaN or inf; drop or fill those periods first"),
        (
            np.zeros((10, 3)),
            16,
            "performance has 10 periods (rows), fewer than n_partitions=16; lower n_partitions or pass more periods",
        ),
        (
            np.zeros((3, 3)),
            2,
            "with n_partitions=2 and 3 periods a half holds a single period, too few for a Sharpe ratio; "
            "pass at least 4 periods",
        ),
    ],
)
def test_pbo_error_messages_are_exact(performance: np.ndarray, n_partitions: int, message: str) -> None:
    with pytest.raises(ValueError) as error:
        probability_of_backtest_overfitting(performance, n_partitions)
    assert str(error.value) == message


def test_psr_accepts_two_observations() -> None:
    assert probabilistic_sharpe_ratio(0.1, 2, 0.0, 3.0) == pytest.approx(Z.cdf(0.1 / math.sqrt(1 + 0.01 / 2)), rel=1e-12)


def test_psr_with_positive_skew_narrows_the_standard_error() -> None:
    # 1 - 1.0 * 0.5 + (3 - 1) / 4 * 0.25 = 0.625 < 1: positive skew raises the PSR above the normal case.
    psr = probabilistic_sharpe_ratio(0.5, 10, 1.0, 3.0)
    assert psr == pytest.approx(Z.cdf(0.5 * 3 / math.sqrt(0.625)), rel=1e-12)
    assert psr > probabilistic_sharpe_ratio(0.5, 10, 0.0, 3.0)


@pytest.mark.parametrize("name", ["sharpe", "skewness", "kurtosis", "benchmark"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_psr_names_the_argument_that_is_not_finite(name: str, bad: float) -> None:
    arguments = {"sharpe": 0.1, "skewness": 0.0, "kurtosis": 3.0, "benchmark": 0.0, name: bad}
    with pytest.raises(ValueError) as error:
        probabilistic_sharpe_ratio(n_observations=100, **arguments)
    assert str(error.value) == f"{name} must be finite, got {bad}"


def test_psr_rejects_a_zero_variance_with_the_exact_message() -> None:
    # A two-point distribution sits on the bound kurtosis = 1 + skew^2: here 1 - 1 * 2 + 1/4 * 4 = 0.
    with pytest.raises(ValueError) as error:
        probabilistic_sharpe_ratio(2.0, 100, 1.0, 2.0)
    assert str(error.value) == (
        "1 - skewness * sharpe + (kurtosis - 1) / 4 * sharpe^2 = 0.0 is not positive; "
        "kurtosis must be the non-excess kurtosis (>= 1 + skewness^2), e.g. 3 for normal returns"
    )


def test_expected_maximum_matches_the_closed_form_on_known_numbers() -> None:
    """Two trials at -1 and +1: V = 2 (ddof=1), and Z^-1(1 - 1/2) = 0 leaves only the gamma term."""
    from scipy.stats import norm

    gamma = 0.5772156649015329
    assert expected_maximum_sharpe([-1.0, 1.0]) == pytest.approx(math.sqrt(2) * gamma * norm.ppf(1 - 1 / (2 * math.e)))
    trials = [0.1, 0.2, 0.3, 0.4]  # V = 1/60
    quantile = (1 - gamma) * norm.ppf(0.75) + gamma * norm.ppf(1 - 1 / (4 * math.e))
    assert expected_maximum_sharpe(trials) == pytest.approx(math.sqrt(1 / 60) * quantile, rel=1e-12)


def test_expected_maximum_rejects_bad_input_exactly() -> None:
    with pytest.raises(ValueError) as error:
        expected_maximum_sharpe([0.1, math.nan])
    assert str(error.value) == "trial_sharpes contains NaN or inf"
    with pytest.raises(ValueError, match=r"flat sequence, got shape \(2, 2\)"):
        expected_maximum_sharpe([[0.1, 0.2], [0.3, 0.4]])


def test_expected_maximum_of_float32_sharpes_is_computed_in_float64() -> None:
    trials = np.random.default_rng(16).normal(0.0, 0.02, size=50).astype(np.float32)
    assert expected_maximum_sharpe(trials) == pytest.approx(expected_maximum_sharpe(trials.astype(np.float64)), rel=1e-12)


def test_minimum_track_record_length_matches_the_formula_and_is_where_psr_reaches_the_confidence() -> None:
    sharpe, skew, kurt = 0.05, -0.5, 6.0  # per hour: about 4.7 annualised
    expected = 1 + (1 + 0.5 * 0.05 + 5 / 4 * 0.05**2) * (NormalDist().inv_cdf(0.95) / 0.05) ** 2
    length = minimum_track_record_length(sharpe, skew, kurt)
    assert length == pytest.approx(expected, rel=1e-12)
    assert probabilistic_sharpe_ratio(sharpe, math.ceil(length), skew, kurt) >= 0.95
    assert probabilistic_sharpe_ratio(sharpe, math.floor(length), skew, kurt) < 0.95
    assert minimum_track_record_length(sharpe, 0.0, 3.0) < length  # fat tails and negative skew need more bars
    assert minimum_track_record_length(sharpe, skew, kurt, confidence=0.99) > length
    assert minimum_track_record_length(0.01, skew, kurt, benchmark=0.02) == math.inf


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"confidence": 1.0}, "confidence"), ({"kurtosis": 0.0}, "non-excess kurtosis"), ({"sharpe": math.nan}, "sharpe must be finite")],
)
def test_minimum_track_record_length_rejects_bad_input(kwargs: dict, match: str) -> None:
    arguments = {"sharpe": 0.05, "skewness": 0.0, "kurtosis": 3.0} | kwargs
    with pytest.raises(ValueError, match=match):
        minimum_track_record_length(**arguments)
