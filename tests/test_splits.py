import pytest

from cappuccino.env.portfolio import Segment
from cappuccino.evaluation.splits import HoldoutSplitter


def test_holdout_is_time_ordered_with_embargo_gaps():
    (split,) = list(HoldoutSplitter(0.6, 0.2, embargo_bars=10).split(100, 1120))
    (train,), (val,), (test,) = split.train, split.validation, split.test
    assert train.start == 100
    assert val.start - train.stop == 10
    assert test.start - val.stop == 10
    assert test.stop == 1120
    assert train.stop - train.start == 600 and val.stop - val.start == 200


def test_holdout_reports_one_split():
    assert HoldoutSplitter(0.7, 0.15, 0).get_n_splits() == 1


def test_holdout_rejects_data_too_short_for_the_embargo():
    with pytest.raises(ValueError, match="embargo"):
        list(HoldoutSplitter(0.7, 0.15, embargo_bars=60).split(0, 100))


def test_segments_are_disjoint():
    (split,) = list(HoldoutSplitter(0.7, 0.15, 5).split(0, 1000))
    bars = [set(range(s.start, s.stop)) for s in (*split.train, *split.validation, *split.test)]
    assert not (bars[0] & bars[1]) and not (bars[1] & bars[2]) and not (bars[0] & bars[2])
    assert isinstance(split.train[0], Segment)
