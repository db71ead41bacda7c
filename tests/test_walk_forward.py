import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cappuccino.config import ConfigError, WalkForwardConfig, build, validate
from cappuccino.data.tensors import Segment
from cappuccino.errors import ArgumentError
from cappuccino.evaluation.splits import Split, select_splits
from cappuccino.evaluation.walk_forward import WalkForwardSplitter

from .config_reads import record_reads, unread_leaves


@st.composite
def walk_forward_cases(draw: st.DrawFn) -> tuple[WalkForwardSplitter, int, int]:
    splitter = WalkForwardSplitter(
        train_bars=draw(st.integers(1, 60)),
        test_bars=draw(st.integers(1, 30)),
        step_bars=draw(st.integers(1, 40)),
        embargo_bars=draw(st.integers(0, 10)),
    )
    start = draw(st.integers(0, 50))
    return splitter, start, start + splitter.window_bars + draw(st.integers(0, 300))


def test_windows_roll_forward_by_the_step():
    splits = list(WalkForwardSplitter(train_bars=100, test_bars=20, step_bars=20, embargo_bars=5).split(10, 200))
    assert splits == [
        Split(train=(Segment(10, 110),), validation=(), test=(Segment(115, 135),)),
        Split(train=(Segment(30, 130),), validation=(), test=(Segment(135, 155),)),
        Split(train=(Segment(50, 150),), validation=(), test=(Segment(155, 175),)),
        Split(train=(Segment(70, 170),), validation=(), test=(Segment(175, 195),)),
    ]


@settings(max_examples=200, deadline=None)
@given(walk_forward_cases())
def test_every_split_tests_after_its_training_window_and_the_embargo(case):
    splitter, start, stop = case
    splits = list(splitter.split(start, stop))
    for ((train,), (test,)) in ((s.train, s.test) for s in splits):
        assert start <= train.start and test.stop <= stop
        assert train.stop - train.start == splitter.train_bars and test.stop - test.start == splitter.test_bars
        assert test.start - train.stop == splitter.embargo_bars
    assert [s.train[0].start - start for s in splits] == [i * splitter.step_bars for i in range(len(splits))]


@settings(max_examples=200, deadline=None)
@given(walk_forward_cases())
def test_split_count_is_every_window_that_fits(case):
    splitter, start, stop = case
    splits = list(splitter.split(start, stop))
    assert len(splits) == splitter.get_n_splits(start, stop) >= 1
    assert splits[-1].test[0].stop + splitter.step_bars > stop, "one more step would still have fitted"


def test_counting_splits_needs_the_bar_range():
    with pytest.raises(ValueError, match="get_n_splits"):
        WalkForwardSplitter(train_bars=100, test_bars=20, step_bars=20).get_n_splits()


def test_data_shorter_than_one_window_is_rejected_naming_the_keys():
    with pytest.raises(ValueError, match=r"cv\.train_bars \+ cv\.embargo_bars \+ cv\.test_bars = 125"):
        list(WalkForwardSplitter(train_bars=100, test_bars=20, step_bars=20, embargo_bars=5).split(0, 124))


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("train_bars", 0, "must be >= 1, got 0"),
        ("test_bars", 0, "must be >= 1, got 0"),
        ("step_bars", 0, "must be >= 1, got 0"),
        ("embargo_bars", -1, "must be >= 0, got -1"),
    ],
)
def test_bad_arguments_are_rejected_naming_them(compose_config, argument, value, message):
    arguments = {"train_bars": 100, "test_bars": 20, "step_bars": 20, "embargo_bars": 0, argument: value}
    with pytest.raises(ArgumentError, match=rf"^{argument}: {message}$") as error:
        WalkForwardSplitter(**arguments)
    assert error.value.argument == argument
    with pytest.raises(ConfigError, match=rf"^cv\.{argument}: {message}$"):
        validate(compose_config(["cv=walk_forward", f"cv.{argument}={value}"]))


def test_cv_split_selects_one_split_and_every_cv_leaf_is_read(compose_config):
    cfg = validate(compose_config(["cv=walk_forward", "cv.split=2"]))
    assert isinstance(cfg.cv, WalkForwardConfig)
    with record_reads() as reads:
        ((index, split),) = select_splits(build(cfg.cv), cfg.cv.split, 500, 17_520)
    assert index == 2
    expected = WalkForwardSplitter(train_bars=4320, test_bars=1440, step_bars=1440, embargo_bars=24)
    assert split == list(expected.split(500, 17_520))[2]
    assert unread_leaves(cfg.cv, reads) == ["std_penalty"]  # read when scoring: tests/test_train_cv.py


def test_cv_split_beyond_the_data_is_rejected_naming_the_key(compose_config):
    cfg = validate(compose_config(["cv=walk_forward", "cv.split=8"]))  # 17020 bars hold 8 splits: 0..7
    with pytest.raises(ConfigError, match=r"cv\.split: must be < 8"):
        select_splits(build(cfg.cv), cfg.cv.split, 500, 17_520)


@pytest.mark.parametrize(
    ("override", "key"),
    [("cv.split=-2", "cv.split"), ("cv.std_penalty=-0.1", "cv.std_penalty")],
)
def test_config_rejects_out_of_range_settings_naming_the_key(compose_config, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config(["cv=walk_forward", override]))
