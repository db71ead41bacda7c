"""Aggregates across splits and seeds: the interquartile mean, stratified bootstrap intervals,
P(X > Y), paired differences and performance profiles, checked against hand computations, an
exact enumeration of the bootstrap, a brute-force loop, and a simulation of no-skill arms."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from cappuccino.evaluation.aggregate import (
    CLAIM_CONFIDENCE,
    aggregate,
    aggregate_over_periods,
    beats_buy_and_hold,
    comparison_claim,
    interquartile_mean,
    paired_difference,
    performance_profile,
    probability_of_improvement,
    win_share,
)


def brute_force_bootstrap(statistic, splits: list[np.ndarray], n_resamples: int, seed: int, confidence: float = 0.95) -> tuple[float, float]:
    """The stratified percentile bootstrap written as a loop: each split's runs redrawn on their own."""
    rng = np.random.default_rng(seed)
    values = [statistic([rng.choice(s, size=len(s), replace=True) for s in splits]) for _ in range(n_resamples)]
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def test_the_interquartile_mean_is_the_mean_of_the_middle_half():
    assert interquartile_mean(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert interquartile_mean(np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 1000.0]])) == pytest.approx(4.5)  # the outlier is cut


def test_the_interval_of_the_mean_matches_an_exact_enumeration_of_every_resample():
    scores = np.array([[0.0, 1.0, 5.0], [10.0, 12.0, 17.0]])
    resamples = [np.mean(a + b) for a in itertools.product(scores[0], repeat=3) for b in itertools.product(scores[1], repeat=3)]
    low, high = np.percentile(resamples, [2.5, 97.5])
    interval = aggregate(scores, "mean", n_resamples=50_000)
    assert interval.value == pytest.approx(np.mean(scores))
    assert interval.low == pytest.approx(low, abs=0.2) and interval.high == pytest.approx(high, abs=0.2)


@pytest.mark.parametrize("statistic", ["iqm", "median"])
def test_the_interval_matches_a_brute_force_stratified_bootstrap(statistic: str):
    rng = np.random.default_rng(7)
    scores = rng.normal(0, 1, (4, 6)) + np.arange(4)[:, None]
    of_all = {"iqm": lambda s: stats.trim_mean(np.concatenate(s), 0.25), "median": lambda s: np.median(np.concatenate(s))}[statistic]
    low, high = brute_force_bootstrap(of_all, list(scores), 20_000, seed=1)
    interval = aggregate(scores, statistic, n_resamples=20_000)
    assert interval.low == pytest.approx(low, abs=0.04) and interval.high == pytest.approx(high, abs=0.04)


def test_seeds_are_resampled_within_their_split_never_across():
    rng = np.random.default_rng(0)
    scores = np.array([[0.0], [100.0]]) + rng.normal(0, 1, (2, 8))  # two very different splits
    interval = aggregate(scores, "mean")
    assert interval.high - interval.low < 2.0  # a bootstrap mixing the splits would span tens


def test_the_same_seed_gives_the_same_interval():
    scores = np.random.default_rng(3).normal(size=(3, 5))
    assert aggregate(scores, seed=4) == aggregate(scores, seed=4)
    assert aggregate(scores, seed=4) != aggregate(scores, seed=5)


def test_probability_of_improvement_counts_pairs_per_split_with_ties_half():
    x = np.array([[1.0, 3.0], [5.0, 6.0]])
    y = np.array([[2.0, 2.0], [5.0, 0.0]])
    # split 0: 3 > 2 twice of 4 pairs; split 1: 5 = 5 (half), 5 > 0, 6 > 5, 6 > 0 of 4 pairs
    assert probability_of_improvement(x, y).value == pytest.approx((2 / 4 + 3.5 / 4) / 2)
    assert probability_of_improvement(y, x).value == pytest.approx(1 - (2 / 4 + 3.5 / 4) / 2)


def test_probability_of_improvement_matches_a_brute_force_bootstrap():
    rng = np.random.default_rng(11)
    x, y = rng.normal(0.5, 1, (3, 5)), rng.normal(0, 1, (3, 5))

    def improvement(samples: list[np.ndarray]) -> float:
        pairs = zip(samples[:3], samples[3:])
        return float(np.mean([np.mean(a[:, None] > b[None, :]) + 0.5 * np.mean(a[:, None] == b[None, :]) for a, b in pairs]))

    low, high = brute_force_bootstrap(improvement, [*x, *y], 20_000, seed=2)
    interval = probability_of_improvement(x, y, n_resamples=20_000)
    assert interval.value == pytest.approx(improvement([*x, *y]))
    assert interval.low == pytest.approx(low, abs=0.03) and interval.high == pytest.approx(high, abs=0.03)


def test_the_paired_difference_is_the_mean_of_x_minus_y_and_constant_differences_have_no_spread():
    rng = np.random.default_rng(5)
    y = rng.normal(size=(4, 5))
    interval = paired_difference(y + 0.3, y)
    assert (interval.value, interval.low, interval.high) == pytest.approx((0.3, 0.3, 0.3))
    noise = rng.normal(0, 0.1, y.shape)
    noisy = paired_difference(y + 0.3 + noise, y)
    assert noisy.value == pytest.approx(0.3 + noise.mean())
    assert noisy.low < noisy.value < noisy.high and noisy.high - noisy.low < 6 * noise.std() / np.sqrt(noise.size)


def test_win_share_counts_splits_by_their_mean_over_seeds():
    x = np.array([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]])  # means 1.5, 0, 5
    y = np.array([[2.0, 2.0], [1.0, -1.0], [9.0, 0.0]])  # means 2, 0, 4.5
    assert win_share(x, y) == pytest.approx((0 + 0.5 + 1) / 3)


def test_the_performance_profile_is_the_fraction_above_each_threshold_with_bands_around_it():
    scores = np.array([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]])
    profile = performance_profile(scores, np.array([-1.0, 2.5, 6.0, 8.0]))
    assert profile.fraction.tolist() == [1.0, 5 / 8, 1 / 8, 0.0]
    assert np.all(profile.low <= profile.fraction) and np.all(profile.fraction <= profile.high)
    assert profile.low[1] < profile.fraction[1] < profile.high[1]


def test_a_claim_is_made_only_when_the_interval_excludes_one_half():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(4, 5))
    better = probability_of_improvement(base + 10, base, confidence=CLAIM_CONFIDENCE)
    assert comparison_claim("ft", "mlp", better).startswith("ft beats mlp")
    assert comparison_claim("mlp", "ft", probability_of_improvement(base, base + 10, confidence=CLAIM_CONFIDENCE)).startswith("ft beats mlp")
    same = probability_of_improvement(base, rng.normal(size=(4, 5)), confidence=CLAIM_CONFIDENCE)
    assert comparison_claim("ft", "mlp", same).startswith("the data cannot tell ft and mlp apart")


@pytest.mark.parametrize(("n_splits", "n_seeds"), [(4, 5), (10, 3)])
def test_arms_without_skill_are_claimed_to_differ_no_more_often_than_the_stated_error_rate(n_splits: int, n_seeds: int):
    """Both arms from one distribution, with split effects and fat tails: the rule "claim when
    the interval of P(X > Y) excludes 0.5" must err at most 1 - CLAIM_CONFIDENCE x 2 = 5 % of the
    time (two-sided), within the simulation's own error."""
    rng = np.random.default_rng(n_splits)
    n_experiments = 400
    claims = 0
    for experiment in range(n_experiments):
        split = rng.normal(0, 3, (n_splits, 1))
        x, y = split + rng.standard_t(3, (n_splits, n_seeds)), split + rng.standard_t(3, (n_splits, n_seeds))
        improvement = probability_of_improvement(x, y, seed=experiment, n_resamples=1000, confidence=CLAIM_CONFIDENCE)
        claims += not comparison_claim("x", "y", improvement).startswith("the data cannot tell")
    stated = 0.05
    assert claims / n_experiments <= stated + 2 * np.sqrt(stated * (1 - stated) / n_experiments)


@pytest.mark.parametrize(
    ("scores", "match"),
    [
        (np.zeros((3, 1)), "1 seed per split: a stratified bootstrap needs at least 2"),
        (np.array([[0.0, np.nan]]), "NaN or inf"),
        (np.zeros(4), r"\(n_splits, n_seeds\) array"),
    ],
)
def test_bad_scores_are_refused_with_what_to_do(scores: np.ndarray, match: str):
    with pytest.raises(ValueError, match=match):
        aggregate(scores)


def test_arms_on_different_splits_are_not_compared():
    with pytest.raises(ValueError, match="same splits"):
        probability_of_improvement(np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="same splits and seeds"):
        paired_difference(np.zeros((3, 4)), np.zeros((3, 5)))


def test_the_interval_over_periods_is_t_times_the_two_level_bootstrap_error():
    rng = np.random.default_rng(2)
    scores = rng.normal(0, 1, (5, 1)) + rng.normal(0, 0.3, (5, 4))
    draws = np.random.default_rng(9)
    loop = []
    for _ in range(20_000):  # the two-level bootstrap as a loop: splits drawn, then seeds within each
        chosen = scores[draws.integers(5, size=5)]
        loop.append(stats.trim_mean(np.concatenate([row[draws.integers(4, size=4)] for row in chosen]), 0.25))
    half = stats.t.ppf(0.975, 4) * np.std(loop, ddof=1) * np.sqrt(5 / 4)
    interval = aggregate_over_periods(scores, n_resamples=20_000)
    assert interval.value == pytest.approx(stats.trim_mean(scores.ravel(), 0.25))
    assert interval.high - interval.value == pytest.approx(half, rel=0.03)
    assert interval.value - interval.low == pytest.approx(half, rel=0.03)
    assert interval.high - interval.low > aggregate(scores).high - aggregate(scores).low  # period luck counts


@pytest.mark.parametrize(("n_splits", "n_seeds"), [(4, 5), (10, 3)])
def test_no_skill_arms_beat_buy_and_hold_no_more_often_than_the_stated_error_rate(n_splits: int, n_seeds: int):
    """Excess Sharpe 0 in expectation, each split's market luck shared by its seeds: "beats
    buy-and-hold" is claimed at most 2.5 % of the time (one side of a 95 % interval), within the
    simulation's error; an edge of two periods' standard deviations is found most of the time."""
    rng = np.random.default_rng(n_splits)
    n_experiments, claims, found = 400, 0, 0
    for experiment in range(n_experiments):
        period, seeds = rng.normal(0, 1, (n_splits, 1)), rng.normal(0, 0.5, (n_splits, n_seeds))
        claims += beats_buy_and_hold(aggregate_over_periods(period + seeds, seed=experiment, n_resamples=500))
        found += beats_buy_and_hold(aggregate_over_periods(period + seeds + 2.0, seed=experiment, n_resamples=500))
    stated = 0.025
    assert claims / n_experiments <= stated + 2 * np.sqrt(stated * (1 - stated) / n_experiments)
    assert found / n_experiments > 0.5


# Gaps found by mutation testing (mutmut over cappuccino/evaluation/aggregate.py).


@pytest.mark.parametrize("compare", [probability_of_improvement, paired_difference, win_share])
def test_a_comparison_names_the_arm_whose_scores_are_bad(compare):
    good, bad = np.zeros((2, 3)), np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match=r"^x contains NaN or inf"):
        compare(bad, good)
    with pytest.raises(ValueError, match=r"^y contains NaN or inf"):
        compare(good, bad)
    with pytest.raises(ValueError, match=r"^scores contains NaN or inf"):
        aggregate(bad)


def test_unknown_statistics_empty_scores_and_one_period_are_refused_with_what_to_do():
    scores = np.zeros((3, 2))
    for aggregate_of in (aggregate, aggregate_over_periods):
        with pytest.raises(ValueError, match=r"^statistic must be one of \('iqm', 'median', 'mean'\), got 'mode'$"):
            aggregate_of(scores, "mode")
    with pytest.raises(ValueError, match=r"^one split: an interval over periods needs at least 2 \(more cv splits\)$"):
        aggregate_over_periods(np.zeros((1, 4)))
    assert aggregate_over_periods(np.array([[0.0, 1.0], [2.0, 3.0]])).low < 1.5  # two periods are enough
    with pytest.raises(ValueError, match=r"^scores must be an \(n_splits, n_seeds\) array, got shape \(0, 3\)$"):
        aggregate(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"^x has 3 splits and y 2: compare arms on the same splits$"):
        probability_of_improvement(np.zeros((3, 4)), np.zeros((2, 4)))


def test_every_interval_is_the_same_on_every_call_and_states_its_confidence():
    """A report is reproduced exactly from the same runs: by default every bootstrap uses seed 0."""
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(3, 12)), rng.normal(size=(3, 12))  # enough runs that two seeds' percentiles differ
    for interval_of in (
        lambda **k: aggregate(x, **k), lambda **k: aggregate_over_periods(x, **k),
        lambda **k: probability_of_improvement(x, y, **k), lambda **k: paired_difference(x, y, **k),
    ):  # fmt: skip
        assert interval_of() == interval_of() == interval_of(seed=0) != interval_of(seed=1)
        assert interval_of(confidence=0.9).confidence == 0.9
    taus = np.array([-1.0, 0.0, 1.0])
    first, again = performance_profile(x, taus), performance_profile(x, taus, seed=0)
    assert np.array_equal(first.low, again.low) and np.array_equal(first.high, again.high)


def test_seed_noise_widens_the_interval_over_periods_even_when_the_periods_agree():
    agreeing = np.tile([-1.0, 1.0], (5, 1))  # every period the same, the seeds far apart
    interval = aggregate_over_periods(agreeing, "mean")
    assert interval.value == 0.0 and interval.high - interval.low > 0.5


def test_an_interval_touching_the_line_makes_no_claim():
    from cappuccino.evaluation.aggregate import Interval

    assert not beats_buy_and_hold(Interval(0.5, 0.0, 1.0, 0.95)) and beats_buy_and_hold(Interval(0.5, 1e-9, 1.0, 0.95))
    assert comparison_claim("a", "b", Interval(0.7, 0.5, 0.9, 0.975)) == (
        "the data cannot tell a and b apart: P(a > b) = 0.70 [0.50, 0.90], which includes 0.5"
    )
    assert comparison_claim("a", "b", Interval(0.3, 0.1, 0.5, 0.975)).startswith("the data cannot tell a and b apart")
    assert comparison_claim("a", "b", Interval(0.3, 0.1, 0.49, 0.975)) == "b beats a: P(a > b) = 0.30 [0.10, 0.49]"


def test_a_profile_band_is_the_stratified_interval_of_the_share_above_tau_and_ties_are_not_above():
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(3, 6))
    taus = np.array([-0.5, 0.0, 0.7])
    profile = performance_profile(scores, taus, seed=3)
    assert profile.thresholds.tolist() == taus.tolist()
    for k, tau in enumerate(taus):
        share = aggregate((scores > tau).astype(float), "mean", seed=3)
        assert (profile.low[k], profile.high[k]) == pytest.approx((share.low, share.high))
    tied = performance_profile(np.ones((2, 3)), np.array([1.0]))
    assert (tied.fraction[0], tied.low[0], tied.high[0]) == (0.0, 0.0, 0.0)  # a score equal to tau is not above it
