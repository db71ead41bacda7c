"""Walk-forward splits: train on a rolling window, skip an embargo, test on the bars after it.

Every split only ever tests on bars later than all of its training bars, as live trading
would; the windows keep their sizes (a rolling, not an expanding, training window) so every
split's agent sees the same amount of history.
"""

from __future__ import annotations

from collections.abc import Iterator

from cappuccino.data.tensors import Segment
from cappuccino.errors import require
from cappuccino.evaluation.splits import Split


class WalkForwardSplitter:
    """Split i trains on [start + i * step, + train_bars), drops ``embargo_bars``, then tests on the
    next ``test_bars``; splits continue while the test window fits before ``stop``."""

    def __init__(self, *, train_bars: int, test_bars: int, step_bars: int, embargo_bars: int = 0) -> None:
        for key, value in (("train_bars", train_bars), ("test_bars", test_bars), ("step_bars", step_bars)):
            require(value >= 1, key, f"must be >= 1, got {value}")
        require(embargo_bars >= 0, "embargo_bars", f"must be >= 0, got {embargo_bars}")
        self.train_bars = train_bars
        self.test_bars = test_bars
        self.step_bars = step_bars
        self.embargo_bars = embargo_bars

    @property
    def window_bars(self) -> int:
        """Bars one split spans: train, embargo and test."""
        return self.train_bars + self.embargo_bars + self.test_bars

    def get_n_splits(self, start: int | None = None, stop: int | None = None) -> int:
        """How many splits fit in [start, stop). Unlike scikit-learn's ``X``, the bar range is
        required here: the count depends on the length of the data."""
        if start is None or stop is None:
            raise ValueError("walk-forward needs the bar range to count its splits: call get_n_splits(start, stop)")
        return max(0, (stop - start - self.window_bars) // self.step_bars + 1)

    def split(self, start: int, stop: int, feature_memory: int = 0) -> Iterator[Split]:
        """Split the usable bars [start, stop) into time-ordered (train, test) windows. A test
        window only has training bars in its past, so ``feature_memory`` needs no purge here."""
        n_splits = self.get_n_splits(start, stop)
        if n_splits == 0:
            raise ValueError(
                f"{stop - start} usable bars cannot hold one walk-forward window of cv.train_bars + "
                f"cv.embargo_bars + cv.test_bars = {self.window_bars} bars: use more data or smaller windows"
            )
        for i in range(n_splits):
            train_start = start + i * self.step_bars
            test_start = train_start + self.train_bars + self.embargo_bars
            yield Split(
                train=(Segment(train_start, train_start + self.train_bars),),
                validation=(),
                test=(Segment(test_start, test_start + self.test_bars),),
            )
