"""The probability of backtest overfitting is only honest when CSCV's in-sample and
out-of-sample halves are disjoint periods. These simulations score trials the way a study does
(CPCV test groups -> ``oos_excess_returns`` -> ``probability_of_backtest_overfitting``) and check
that trials without skill get PBO ~ 0.5, also when, as in CPCV, a trial's result on a test group
is the same in every split that tests it, and that a trial with real skill gets a low PBO."""

from __future__ import annotations

import numpy as np
import pytest

from cappuccino.evaluation.backtest import Backtest
from cappuccino.evaluation.cpcv import CombinatorialPurgedCV
from cappuccino.evaluation.overfitting import probability_of_backtest_overfitting
from cappuccino.evaluation.scoring import oos_excess_returns, score_cv

N_TRIALS, GROUP_BARS, BLOCKS, REPEATS = 20, 120, 8, 60
CV = CombinatorialPurgedCV(n_groups=6, n_test_groups=2)


def _backtest(excess: np.ndarray) -> Backtest:
    """A test group whose agent earns ``excess`` per bar over a flat benchmark."""
    equity = 100.0 * np.concatenate([[1.0], np.cumprod(1.0 + excess)])
    return Backtest(np.arange(len(equity)), equity, np.full(len(equity), 100.0), 0.0, 0.0)


def _trial_tests(rng: np.random.Generator, carry_over: bool, drift: float = 0.0) -> dict[int, list[Backtest]]:
    """One trial's CPCV test backtests. With ``carry_over`` its returns on a group are the same in
    every split that tests it (a CPCV property: the test bars and the market are the same);
    without, each split's agent draws its own."""
    groups = rng.normal(drift, 0.01, size=(CV.n_groups, GROUP_BARS))
    tests = {}
    for i, tested in enumerate(CV.test_groups()):
        tests[i] = [_backtest(groups[g] if carry_over else rng.normal(drift, 0.01, GROUP_BARS)) for g in tested]
    return tests


def _pbo(rng: np.random.Generator, carry_over: bool, skilled: bool = False) -> tuple[float, float]:
    """(PBO on disjoint blocks of bars, PBO on per-split scores as rows) for one simulated study."""
    studies = [_trial_tests(rng, carry_over, drift=0.003 if skilled and t == 0 else 0.0) for t in range(N_TRIALS)]
    returns = np.stack([oos_excess_returns(tests, CV.paths()) for tests in studies], axis=1)  # (bars, trials)
    per_split = np.stack([score_cv(tests, 8760.0, 0.0, CV.paths()).split_excess_sharpes() for tests in studies], axis=1)
    return probability_of_backtest_overfitting(returns, BLOCKS).pbo, probability_of_backtest_overfitting(per_split, 4).pbo


@pytest.mark.parametrize("carry_over", [False, True])
def test_trials_without_skill_give_pbo_near_one_half(carry_over):
    rng = np.random.default_rng(1 + carry_over)
    disjoint = np.mean([_pbo(rng, carry_over)[0] for _ in range(REPEATS)])
    assert 0.4 < disjoint < 0.6, disjoint


def test_per_split_scores_as_rows_read_far_too_low_under_carry_over():
    """Why the rows are bars: with CPCV's carry-over, splits sharing a test group put the same
    result in both CSCV halves, and no-skill trials look robust."""
    rng = np.random.default_rng(3)
    per_split = np.mean([_pbo(rng, carry_over=True)[1] for _ in range(REPEATS)])
    assert per_split < 0.3, per_split


def test_one_trial_with_skill_among_none_gives_a_low_pbo():
    rng = np.random.default_rng(4)
    assert np.mean([_pbo(rng, carry_over=True, skilled=True)[0] for _ in range(REPEATS // 3)]) < 0.1


def test_the_history_covers_every_test_bar_once_as_the_mean_over_paths():
    rng = np.random.default_rng(5)
    tests = _trial_tests(rng, carry_over=False)
    history = oos_excess_returns(tests, CV.paths())
    assert history.shape == (CV.n_groups * GROUP_BARS,)
    first_group = [tests[i][j] for path in CV.paths() for i, j in path[:1]]  # group 0 in every path
    expected = np.mean([np.diff(b.equity) / b.equity[:-1] for b in first_group], axis=0)
    assert np.allclose(history[:GROUP_BARS], expected, rtol=0, atol=1e-15)
