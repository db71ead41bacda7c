"""Time-ordered splits of the bar axis into train / validation / test segments.

A splitter is a small object with ``split()`` and ``get_n_splits()`` in the scikit-learn style;
it yields ``Split``s whose parts are tuples of contiguous ``Segment``s, so training sets with
gaps (combinatorial purged CV) are representable and no episode crosses a gap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cappuccino.config import CVConfig, HoldoutConfig
from cappuccino.env.portfolio import Segment


@dataclass(frozen=True)
class Split:
    train: tuple[Segment, ...]
    validation: tuple[Segment, ...]
    test: tuple[Segment, ...]


class HoldoutSplitter:
    """One split by time: train, then validation, then test, with ``embargo_bars`` dropped
    between consecutive parts so that autocorrelated bars near a boundary don't leak."""

    def __init__(self, train_fraction: float, val_fraction: float, embargo_bars: int) -> None:
        self.train_fraction = train_fraction
        self.val_fraction = val_fraction
        self.embargo_bars = embargo_bars

    def get_n_splits(self) -> int:
        return 1

    def split(self, start: int, stop: int) -> Iterator[Split]:
        """Split the usable bars [start, stop) (``start`` is the first bar with valid features)."""
        usable = stop - start - 2 * self.embargo_bars
        if usable <= 0:
            raise ValueError(
                f"{stop - start} usable bars cannot hold two embargo gaps of cv.embargo_bars="
                f"{self.embargo_bars}: use more data or a smaller embargo"
            )
        train_stop = start + int(usable * self.train_fraction)
        val_start = train_stop + self.embargo_bars
        val_stop = val_start + int(usable * self.val_fraction)
        test_start = val_stop + self.embargo_bars
        yield Split(
            train=(Segment(start, train_stop),),
            validation=(Segment(val_start, val_stop),),
            test=(Segment(test_start, stop),),
        )


def build_splitter(cfg: CVConfig) -> HoldoutSplitter:
    if cfg.name == "holdout":
        assert isinstance(cfg, HoldoutConfig)
        return HoldoutSplitter(cfg.train_fraction, cfg.val_fraction, cfg.embargo_bars)
    raise ValueError(f"cv={cfg.name!r} is not known; choose one of: holdout")
