import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cappuccino.config import ConfigError, CPCVConfig, build, check_purge, feature_reach, validate
from cappuccino.data.features import compute_features, feature_memory, first_valid_bar
from cappuccino.data.tensors import Segment
from cappuccino.errors import ArgumentError
from cappuccino.evaluation.cpcv import CombinatorialPurgedCV
from cappuccino.evaluation.splits import Split, select_splits

from .config_reads import record_reads, unread_leaves


def bars(segments: tuple[Segment, ...]) -> np.ndarray:
    return np.concatenate([np.arange(s.start, s.stop) for s in segments]) if segments else np.array([], dtype=int)


@st.composite
def cpcv_cases(draw: st.DrawFn) -> tuple[CombinatorialPurgedCV, int, int]:
    n_groups = draw(st.integers(2, 8))
    n_test_groups = draw(st.integers(1, n_groups - 1))
    purge, embargo = draw(st.integers(0, 8)), draw(st.integers(0, 8))
    min_bars = (2 * purge + embargo + 1) * n_groups
    n_bars = draw(st.integers(min_bars, min_bars + 150))
    start = draw(st.integers(0, 50))
    cv = CombinatorialPurgedCV(n_groups=n_groups, n_test_groups=n_test_groups, purge_bars=purge, embargo_bars=embargo)
    return cv, start, start + n_bars


@pytest.mark.parametrize(
    ("n_bars", "n_groups", "n_test_groups", "purge", "embargo"),
    [(120, 6, 2, 3, 2), (1003, 6, 2, 10, 5), (997, 7, 3, 0, 0), (250, 5, 4, 2, 7), (64, 3, 2, 1, 0), (500, 8, 2, 0, 9)],
)
def test_train_and_test_bars_match_skfolio(n_bars, n_groups, n_test_groups, purge, embargo):
    import skfolio.model_selection as skfolio
    reference = skfolio.CombinatorialPurgedCV(n_groups, n_test_groups, purged_size=purge, embargo_size=embargo)
    ours = CombinatorialPurgedCV(n_groups=n_groups, n_test_groups=n_test_groups, purge_bars=purge, embargo_bars=embargo)
    start = 37  # bars before ``start`` (feature warm-up) are not part of any group
    expected = list(reference.split(np.zeros((n_bars, 1))))
    got = list(ours.split(start, start + n_bars))
    assert len(got) == len(expected) == ours.get_n_splits() == reference.get_n_splits()
    for split, (train, tests) in zip(got, expected):
        np.testing.assert_array_equal(bars(split.train) - start, train)
        assert len(split.test) == len(tests)
        for segment, test in zip(split.test, tests):
            np.testing.assert_array_equal(bars((segment,)) - start, test)


@pytest.mark.parametrize(("n_groups", "n_test_groups"), [(6, 2), (7, 3), (5, 4), (3, 2)])
def test_paths_match_skfolio_path_ids(n_groups, n_test_groups):
    import skfolio.model_selection as skfolio  # a dev dependency: CI fails, not skips, without it
    reference = skfolio.CombinatorialPurgedCV(n_groups, n_test_groups)
    ours = CombinatorialPurgedCV(n_groups=n_groups, n_test_groups=n_test_groups)
    path_ids = np.full((ours.get_n_splits(), n_test_groups), -1)
    for p, path in enumerate(ours.paths()):
        for i, j in path:
            path_ids[i, j] = p
    assert ours.n_paths == reference.n_test_paths
    np.testing.assert_array_equal(path_ids, reference.get_path_ids())


def in_purge_or_embargo(bar: np.ndarray, split: Split, cv: CombinatorialPurgedCV) -> np.ndarray:
    """(n,) whether each bar lies within the purge before, or the purge + embargo after, a test group."""
    until = np.array([s.start for s in split.test]) - bar[:, None]  # (n, k) bars until each test group
    since = bar[:, None] - np.array([s.stop - 1 for s in split.test])  # (n, k) bars since each test group
    before = (until > 0) & (until <= cv.purge_bars)
    after = (since > 0) & (since <= cv.purge_bars + cv.embargo_bars)
    return (before | after).any(axis=1)


@settings(max_examples=150, deadline=None)
@given(cpcv_cases())
def test_training_excludes_test_groups_purge_and_embargo_and_nothing_else(case):
    cv, start, stop = case
    for split in cv.split(start, stop):
        train, test = bars(split.train), bars(split.test)
        assert not np.isin(train, test).any()
        assert not in_purge_or_embargo(train, split, cv).any()
        dropped = np.setdiff1d(np.arange(start, stop), np.concatenate([train, test]))
        assert in_purge_or_embargo(dropped, split, cv).all(), "a bar outside every purge and embargo was dropped"


@settings(max_examples=150, deadline=None)
@given(cpcv_cases())
def test_training_segments_are_maximal_contiguous_runs(case):
    cv, start, stop = case
    for split in cv.split(start, stop):
        assert split.train, "every split keeps some training bars"
        assert all(s.start < s.stop for s in split.train)
        assert all(a.stop < b.start for a, b in zip(split.train, split.train[1:])), "runs must be separated by a gap"
        assert split.validation == ()


@settings(max_examples=150, deadline=None)
@given(cpcv_cases())
def test_groups_tile_the_bars_and_each_split_tests_k_of_them(case):
    cv, start, stop = case
    groups = cv.groups(start, stop)
    assert len(groups) == cv.n_groups
    assert groups[0].start == start and groups[-1].stop == stop
    assert all(a.stop == b.start for a, b in zip(groups, groups[1:]))
    splits = list(cv.split(start, stop))
    assert len(splits) == cv.get_n_splits() == math.comb(cv.n_groups, cv.n_test_groups)
    assert {split.test for split in splits} == {tuple(groups[g] for g in tested) for tested in cv.test_groups()}


@settings(max_examples=100, deadline=None)
@given(cpcv_cases())
def test_every_path_covers_every_group_once_and_uses_every_test_once(case):
    cv, start, stop = case
    groups = cv.groups(start, stop)
    splits = list(cv.split(start, stop))
    paths = cv.paths()
    assert len(paths) == cv.n_paths == cv.n_test_groups * cv.get_n_splits() // cv.n_groups
    for path in paths:
        assert [splits[i].test[j] for i, j in path] == groups
    pieces = [piece for path in paths for piece in path]
    assert sorted(pieces) == [(i, j) for i in range(len(splits)) for j in range(cv.n_test_groups)]


def test_groups_follow_skfolio_sizes_when_bars_do_not_divide_evenly():
    groups = CombinatorialPurgedCV(n_groups=4, n_test_groups=2).groups(10, 33)  # 23 bars: 5, 5, 5 and the rest, 8
    assert [s.stop - s.start for s in groups] == [5, 5, 5, 8]


def test_groups_too_small_for_purge_and_embargo_are_rejected():
    with pytest.raises(ValueError, match=r"cv\.purge_bars"):
        list(CombinatorialPurgedCV(n_groups=6, n_test_groups=2, purge_bars=10, embargo_bars=5).split(0, 150))


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("n_groups", 1, "must be >= 2, got 1"),
        ("n_test_groups", 6, r"must be in \[1, n_groups=6\) to leave a training group, got 6"),
        ("n_test_groups", 0, r"must be in \[1, n_groups=6\) to leave a training group, got 0"),
        ("purge_bars", -1, "must be >= 0, got -1"),
        ("embargo_bars", -1, "must be >= 0 or null, got -1"),
        ("val_fraction", 1.0, r"must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_arguments_are_rejected_naming_them(compose_config, argument, value, message):
    with pytest.raises(ArgumentError, match=rf"^{argument}: {message}$") as error:
        CombinatorialPurgedCV(**{argument: value})
    assert error.value.argument == argument
    # the config names the key; purge and embargo fail the cross-group check (check_purge) first
    with pytest.raises(ConfigError, match=rf"^cv\.{argument}: "):
        validate(compose_config(["cv=cpcv", f"cv.{argument}={value}"]))


def test_a_null_embargo_is_derived_from_the_features_memory():
    cv = CombinatorialPurgedCV(n_groups=6, n_test_groups=2, purge_bars=60, embargo_bars=None)
    assert cv.embargo_for(876) == 816 and cv.embargo_for(40) == 0
    explicit = CombinatorialPurgedCV(n_groups=6, n_test_groups=2, purge_bars=60, embargo_bars=816)
    assert list(cv.split(562, 9000, feature_memory=876)) == list(explicit.split(562, 9000))
    assert CombinatorialPurgedCV(purge_bars=60, embargo_bars=7).embargo_for(876) == 7


@pytest.mark.parametrize("zscore_window", [20, 50, 100, 500, 2000])
def test_config_feature_reach_is_the_features_memory(zscore_window):
    """check_purge (cappuccino.config, which imports no data code) must know how far features reach."""
    assert feature_reach(zscore_window) == feature_memory(zscore_window)


def test_cv_split_runs_only_the_chosen_split(compose_config):
    overrides = ["cv=cpcv", "cv.split=3", "cv.purge_bars=8", "cv.embargo_bars=410", "window.lookback=8", "window.zscore_window=40"]
    cfg = validate(compose_config(overrides))
    assert isinstance(cfg.cv, CPCVConfig)
    every = list(CombinatorialPurgedCV(n_groups=6, n_test_groups=2, purge_bars=8, embargo_bars=410).split(100, 3000))
    assert select_splits(build(cfg.cv), cfg.cv.split, 100, 3000) == [(3, every[3])]


def test_all_splits_are_run_by_default_and_every_cv_leaf_is_read(compose_config):
    cfg = validate(compose_config(["cv=cpcv", "window.lookback=20"]))
    with record_reads() as reads:
        indexed = select_splits(build(cfg.cv), cfg.cv.split, 0, 10_000)
        check_purge(cfg.cv, cfg.window)
    assert [i for i, _ in indexed] == list(range(15))
    assert unread_leaves(cfg.cv, reads) == ["std_penalty"]  # read when scoring: tests/test_train_cv.py


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("cv.split=15", "cv.split"),
        ("cv.split=-1", "cv.split"),
    ],
)
def test_config_rejects_out_of_range_splits_naming_the_key(compose_config, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config(["cv=cpcv", override]))


def test_purge_shorter_than_the_lookback_is_rejected_before_work_naming_the_key(compose_config):
    with pytest.raises(ConfigError, match=r"cv\.purge_bars.*window\.lookback=20"):
        validate(compose_config(["cv=cpcv", "cv.purge_bars=10", "window.lookback=20"]))
    cfg = validate(compose_config(["cv=cpcv", "cv.purge_bars=10", "window.lookback=10"]))
    check_purge(cfg.cv, cfg.window)  # a purge equal to the lookback is enough


def test_no_training_bar_after_a_test_group_has_features_that_read_it(compose_config):
    """A test group is in the past of the training bars after it: their trailing z-scores must not
    reach back into it. The default (null) embargo is just enough; a shorter one is rejected."""
    cfg = validate(compose_config(["cv=cpcv", "window.zscore_window=100"]))
    memory = feature_memory(100)
    gaps = []  # first bar a training segment's features read, minus the end of the test group before it
    for _, split in select_splits(build(cfg.cv), cfg.cv.split, first_valid_bar(100), 6000, memory):
        for test in split.test:
            # the feature at a segment's first bar reads bars start - memory .. start
            gaps += [s.start - memory - test.stop for s in split.train if s.start >= test.stop]
    assert gaps and min(gaps) == 0  # never into a test group, and no bar more is dropped than needed

    with pytest.raises(ConfigError, match=rf"cv\.embargo_bars.*>= {memory}.*cv\.embargo_bars={memory - 60}"):
        validate(compose_config(["cv=cpcv", "window.zscore_window=100", "cv.embargo_bars=24"]))


def test_a_spike_at_the_end_of_a_test_group_moves_no_training_feature_after_the_embargo(compose_config):
    """The real leak check, not the splitter's arithmetic: perturb the last bar of each test group
    (high +30%, volume x50) and recompute every feature; the training bars after purge + embargo
    must not move (default CPCV: purge 60, null embargo, z-score window 500)."""
    from cappuccino.data import load_market

    cfg = validate(compose_config(["cv=cpcv", "data.n_bars=8000"]))
    market, _ = load_market(cfg.data, cfg.window.zscore_window)
    (_, split), *_ = select_splits(build(cfg.cv), None, market.first_valid, market.n_bars, market.feature_memory)
    checked = 0
    for test in split.test:
        after = [s for s in split.train if s.start >= test.stop]
        if not after:
            continue
        spiked = market.ohlcv.copy()
        spiked[test.stop - 1, :, 1] *= 1.3  # high
        spiked[test.stop - 1, :, 4] *= 50.0  # volume
        moved, _ = compute_features(spiked, cfg.window.zscore_window)
        change = np.abs(moved - market.features)  # (T, A, F)
        for segment in after:
            assert change[segment.start : segment.stop].max() <= 1e-6, (test, segment)
            checked += 1
        # the spike does move features inside the embargo: the check has teeth
        assert change[test.stop : after[0].start].max() > 1e-3
    assert checked >= 1


# Gaps found by mutation testing (mutmut over cappuccino/evaluation/cpcv.py).


def test_purge_and_embargo_on_a_hand_worked_example():
    """60 bars in 3 groups of 20, one test group, purge 2, embargo 3: 2 bars go before a test
    group and 2 + 3 after it; every other bar trains."""
    cv = CombinatorialPurgedCV(n_groups=3, n_test_groups=1, purge_bars=2, embargo_bars=3)
    splits = list(cv.split(100, 160))
    assert [s.test for s in splits] == [(Segment(100, 120),), (Segment(120, 140),), (Segment(140, 160),)]
    assert [s.train for s in splits] == [
        (Segment(125, 160),),  # [120, 125) lost after group 0
        (Segment(100, 118), Segment(145, 160)),  # [118, 120) before, [140, 145) after group 1
        (Segment(100, 138),),  # [138, 140) before group 2
    ]


def test_the_defaults_are_six_groups_two_tested_and_no_purge_or_embargo():
    cv = CombinatorialPurgedCV()
    assert (cv.n_groups, cv.n_test_groups, cv.purge_bars, cv.embargo_bars) == (6, 2, 0, 0)
    assert cv.get_n_splits() == 15 and cv.n_paths == 5
    # no purge, no embargo: each split trains on exactly the bars it does not test
    for split in cv.split(0, 60):
        assert bars(split.train).size + bars(split.test).size == 60


def test_groups_just_large_enough_for_purge_and_embargo_are_accepted_one_bar_less_is_not():
    cv = CombinatorialPurgedCV(n_groups=3, n_test_groups=1, purge_bars=2, embargo_bars=3)  # blocks 2 * 2 + 3 = 7
    assert [s.stop - s.start for s in cv.groups(10, 10 + 3 * 8)] == [8, 8, 8]
    assert all(split.train for split in cv.split(10, 10 + 3 * 8))  # the middle group keeps one bar
    with pytest.raises(ValueError) as error:
        cv.groups(10, 10 + 3 * 7 + 2)
    assert str(error.value) == (
        "23 bars make groups of 7 bars, which a training group between two test groups loses entirely to "
        "2 * cv.purge_bars + cv.embargo_bars = 7: use more data, fewer cv.n_groups, or a smaller purge or embargo"
    )


def test_a_null_embargo_reads_feature_memory_in_groups_and_split():
    cv = CombinatorialPurgedCV(n_groups=2, n_test_groups=1, purge_bars=0, embargo_bars=None)
    # no feature memory by default: a null embargo is 0 and one-bar groups are enough
    assert cv.groups(0, 2) == [Segment(0, 1), Segment(1, 2)]
    assert [s.train for s in cv.split(0, 2)] == [(Segment(1, 2),), (Segment(0, 1),)]
    # a feature memory longer than a group makes the null embargo swallow it: split must say so
    with pytest.raises(ValueError, match=r"cv\.embargo_bars = 10:"):
        list(cv.split(0, 20, feature_memory=10))
    assert [s.train for s in cv.split(0, 24, feature_memory=10)] == [(Segment(22, 24),), (Segment(0, 12),)]


def test_val_fraction_holds_out_the_last_training_bars_a_purge_after_the_rest():
    """The hand-worked example above with 20 % of its training bars held out for validation."""
    cv = CombinatorialPurgedCV(n_groups=3, n_test_groups=1, purge_bars=2, embargo_bars=3, val_fraction=0.2)
    splits = list(cv.split(100, 160))
    assert [s.test for s in splits] == [(Segment(100, 120),), (Segment(120, 140),), (Segment(140, 160),)]
    assert [(s.train, s.validation) for s in splits] == [
        ((Segment(125, 151),), (Segment(153, 160),)),  # 35 training bars: 7 held out, 2 purged before them
        ((Segment(100, 118), Segment(145, 151)), (Segment(153, 160),)),  # 33: 7 (round(6.6)) off the last run
        ((Segment(100, 128),), (Segment(130, 138),)),  # 38: 8
    ]


@settings(max_examples=60, deadline=None)
@given(cpcv_cases(), st.floats(0.01, 0.3))
def test_validation_bars_are_training_bars_that_no_training_bar_follows(case, fraction):
    cv, start, stop = case
    plain = CombinatorialPurgedCV(n_groups=cv.n_groups, n_test_groups=cv.n_test_groups, purge_bars=cv.purge_bars, embargo_bars=cv.embargo_bars)
    held = CombinatorialPurgedCV(**{**vars(plain), "val_fraction": fraction})
    try:
        splits = list(held.split(start, stop))
    except ValueError as error:  # nothing left to train on: said, not cut silently
        assert "cv.val_fraction" in str(error) or "cv.embargo_bars" in str(error)
        return
    for before, after in zip(plain.split(start, stop), splits):
        assert after.test == before.test
        validation, train = bars(after.validation), bars(after.train)
        assert set(validation) | set(train) <= set(bars(before.train))  # carved out of the training bars
        assert validation.size == max(1, round(fraction * bars(before.train).size))
        assert train.max() < validation.min() - cv.purge_bars  # a purge between, and no training bar after
        assert bars(before.train)[-validation.size :].tolist() == validation.tolist()  # the last training bars


def test_cpcv_validation_gives_learning_curves_and_leaves_the_test_scores_to_the_test_groups(compose_config):
    cfg = validate(compose_config(["cv=cpcv", "cv.val_fraction=0.1", "trainer.eval_every=512"]))
    assert cfg.cv.val_fraction == 0.1 and build(cfg.cv).val_fraction == 0.1
    with pytest.raises(ConfigError, match=r"^trainer\.eval_every: .*cv=cpcv with cv\.val_fraction > 0"):
        validate(compose_config(["cv=cpcv", "trainer.eval_every=512"]))


def test_a_validation_tail_longer_than_the_last_training_run_reaches_into_the_run_before():
    cv = CombinatorialPurgedCV(n_groups=3, n_test_groups=1, purge_bars=2, embargo_bars=3, val_fraction=0.5)
    split = list(cv.split(100, 160))[1]  # trains on [100, 118) and [145, 160): 33 bars, 16 held out
    assert split.validation == (Segment(117, 118), Segment(145, 160))
    assert split.train == (Segment(100, 115),)  # purge_bars before the validation bars
    with pytest.raises(ValueError, match=r"^cv\.val_fraction=0\.95 holds out 33 of a split's 35 training bars"):
        list(CombinatorialPurgedCV(n_groups=3, n_test_groups=1, purge_bars=2, embargo_bars=3, val_fraction=0.95).split(100, 160))
