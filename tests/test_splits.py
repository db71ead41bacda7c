import pytest

from cappuccino.config import ConfigError, HoldoutConfig, build, validate
from cappuccino.data.tensors import Segment
from cappuccino.errors import ArgumentError
from cappuccino.evaluation.splits import HoldoutSplitter, select_splits


def test_holdout_is_time_ordered_with_embargo_gaps():
    (split,) = list(HoldoutSplitter(train_fraction=0.6, val_fraction=0.2, embargo_bars=10).split(100, 1120))
    (train,), (val,), (test,) = split.train, split.validation, split.test
    assert train.start == 100
    assert val.start - train.stop == 10
    assert test.start - val.stop == 10
    assert test.stop == 1120
    assert train.stop - train.start == 600 and val.stop - val.start == 200


def test_holdout_reports_one_split():
    assert HoldoutSplitter(train_fraction=0.7, val_fraction=0.15, embargo_bars=0).get_n_splits() == 1


def test_holdout_rejects_data_too_short_for_the_embargo():
    with pytest.raises(ValueError, match="embargo"):
        list(HoldoutSplitter(train_fraction=0.7, val_fraction=0.15, embargo_bars=60).split(0, 100))


def test_segments_are_disjoint():
    (split,) = list(HoldoutSplitter(train_fraction=0.7, val_fraction=0.15, embargo_bars=5).split(0, 1000))
    bars = [set(range(s.start, s.stop)) for s in (*split.train, *split.validation, *split.test)]
    assert not (bars[0] & bars[1]) and not (bars[1] & bars[2]) and not (bars[0] & bars[2])
    assert isinstance(split.train[0], Segment)


def test_default_cv_builds_the_configured_holdout(compose_config):
    cfg = validate(compose_config(["cv.train_fraction=0.6", "cv.val_fraction=0.2", "cv.embargo_bars=10"]))
    assert isinstance(cfg.cv, HoldoutConfig)
    expected = list(HoldoutSplitter(train_fraction=0.6, val_fraction=0.2, embargo_bars=10).split(100, 1120))
    assert select_splits(build(cfg.cv), None, 100, 1120) == [(0, expected[0])]


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("train_fraction", 0.0, r"must be in \(0, 1\), got 0.0"),
        ("train_fraction", 1.0, r"must be in \(0, 1\), got 1.0"),
        ("val_fraction", 0.0, r"must be in \(0, 1\), got 0.0"),
        ("train_fraction", 0.9, r"train_fraction \+ val_fraction must be < 1 to leave a test split, got 0.9 \+ 0.15"),
        ("embargo_bars", -1, "must be >= 0, got -1"),
    ],
)
def test_bad_arguments_are_rejected_naming_them(compose_config, argument, value, message):
    # the fractions must leave a test split: that check names val_fraction, whichever was changed
    named = "val_fraction" if "leave a test split" in message else argument
    with pytest.raises(ArgumentError, match=rf"^{named}: {message}$") as error:
        HoldoutSplitter(**{argument: value})
    assert error.value.argument == named
    with pytest.raises(ConfigError, match=rf"^cv\.{named}: {message}$"):
        validate(compose_config([f"cv.{argument}={value}"]))
