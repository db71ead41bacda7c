"""Time-ordered splits of the bar axis into train / validation / test segments.

A splitter is a small object with ``split()`` and ``get_n_splits()`` in the scikit-learn style;
it yields ``Split``s whose parts are tuples of contiguous ``Segment``s, so training sets with
gaps (combinatorial purged CV) are representable and no episode crosses a gap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cappuccino.data.tensors import Segment
from cappuccino.errors import ConfigError, require


@dataclass(frozen=True)
class Split:
    train: tuple[Segment, ...]
    validation: tuple[Segment, ...]
    test: tuple[Segment, ...]


class Splitter(Protocol):
    def get_n_splits(self, start: int | None = None, stop: int | None = None) -> int: ...

    def split(self, start: int, stop: int, feature_memory: int = 0) -> Iterator[Split]: ...


class HoldoutSplitter:
    """One split by time: train, then validation, then test, with ``embargo_bars`` dropped
    between consecutive parts so that autocorrelated bars near a boundary don't leak."""

    def __init__(self, *, train_fraction: float = 0.7, val_fraction: float = 0.15, embargo_bars: int = 24) -> None:
        require(0 < train_fraction < 1, "train_fraction", f"must be in (0, 1), got {train_fraction}")
        require(0 < val_fraction < 1, "val_fraction", f"must be in (0, 1), got {val_fraction}")
        require(
            train_fraction + val_fraction < 1,
            "val_fraction",
            f"train_fraction + val_fraction must be < 1 to leave a test split, got {train_fraction} + {val_fraction}",
        )
        require(embargo_bars >= 0, "embargo_bars", f"must be >= 0, got {embargo_bars}")
        self.train_fraction = train_fraction
        self.val_fraction = val_fraction
        self.embargo_bars = embargo_bars

    def get_n_splits(self, start: int | None = None, stop: int | None = None) -> int:
        """Always 1; ``start`` and ``stop`` are ignored (they exist so every splitter takes them)."""
        return 1

    def split(self, start: int, stop: int, feature_memory: int = 0) -> Iterator[Split]:
        """Split the usable bars [start, stop) (``start`` is the first bar with valid features).
        Every part only has earlier parts in its past, so ``feature_memory`` needs no purge here."""
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


def select_splits(
    splitter: Splitter, only: int | None, start: int, stop: int, feature_memory: int = 0
) -> list[tuple[int, Split]]:
    """(index, split) for every split of the usable bars [start, stop), or only for split
    ``only`` (``cv.split``), so a launcher can run the splits of one configuration in separate
    processes. ``start`` is the first bar with features, which reach ``feature_memory`` bars back."""
    try:
        splits = list(splitter.split(start, stop, feature_memory=feature_memory))
    except ValueError as error:  # the data is too short for these cv settings (named in the message)
        raise ConfigError(str(error)) from None
    if only is None:
        return list(enumerate(splits))
    if only >= len(splits):
        raise ConfigError(f"cv.split: must be < {len(splits)}, the number of splits of this data, got {only}")
    return [(only, splits[only])]
