"""Time-ordered splits of the bar axis into train / validation / test segments.

A splitter is a small object with ``split()`` and ``get_n_splits()`` in the scikit-learn style;
it yields ``Split``s whose parts are tuples of contiguous ``Segment``s, so training sets with
gaps (combinatorial purged CV) are representable and no episode crosses a gap.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cappuccino.config import ConfigError, CPCVConfig, CVConfig, HoldoutConfig, WalkForwardConfig
from cappuccino.env.portfolio import Segment


@dataclass(frozen=True)
class Split:
    train: tuple[Segment, ...]
    validation: tuple[Segment, ...]
    test: tuple[Segment, ...]


class Splitter(Protocol):
    def get_n_splits(self, start: int | None = None, stop: int | None = None) -> int: ...

    def split(self, start: int, stop: int) -> Iterator[Split]: ...


class HoldoutSplitter:
    """One split by time: train, then validation, then test, with ``embargo_bars`` dropped
    between consecutive parts so that autocorrelated bars near a boundary don't leak."""

    def __init__(self, train_fraction: float, val_fraction: float, embargo_bars: int) -> None:
        self.train_fraction = train_fraction
        self.val_fraction = val_fraction
        self.embargo_bars = embargo_bars

    def get_n_splits(self, start: int | None = None, stop: int | None = None) -> int:
        """Always 1; ``start`` and ``stop`` are ignored (they exist so every splitter takes them)."""
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


def build_splitter(cfg: CVConfig, feature_memory: int | None = None) -> Splitter:
    """The configured splitter. CPCV's null ``embargo_bars`` becomes ``feature_memory`` (how many
    bars back a feature reaches, ``cappuccino.data.features.feature_memory``) minus the purge."""
    # cpcv and walk_forward import Split from this module, so they are imported on use.
    if cfg.name == "holdout":
        assert isinstance(cfg, HoldoutConfig)
        return HoldoutSplitter(cfg.train_fraction, cfg.val_fraction, cfg.embargo_bars)
    if cfg.name == "cpcv":
        from cappuccino.evaluation.cpcv import CombinatorialPurgedCV

        assert isinstance(cfg, CPCVConfig)
        embargo = cfg.embargo_bars
        if embargo is None:
            if feature_memory is None:
                raise ValueError("cv.embargo_bars is null: build_splitter needs feature_memory to derive it")
            embargo = max(0, feature_memory - cfg.purge_bars)
        return CombinatorialPurgedCV(cfg.n_groups, cfg.n_test_groups, cfg.purge_bars, embargo)
    if cfg.name == "walk_forward":
        from cappuccino.evaluation.walk_forward import WalkForwardSplitter

        assert isinstance(cfg, WalkForwardConfig)
        return WalkForwardSplitter(cfg.train_bars, cfg.test_bars, cfg.step_bars, cfg.embargo_bars)
    raise ValueError(f"cv={cfg.name!r} is not known; choose one of: holdout, cpcv, walk_forward")


def iter_splits(cfg: CVConfig, start: int, stop: int) -> Iterator[tuple[int, Split]]:
    """(index, split) for every split of the usable bars [start, stop), or only for split
    ``cv.split`` when it is set, so a launcher can run the splits of one configuration in
    separate processes. Holdout has a single split, index 0, and no ``split`` key.

    ``start`` is the first bar with features, which is also how far back features reach."""
    splits = list(build_splitter(cfg, feature_memory=start).split(start, stop))
    only = getattr(cfg, "split", None)
    if only is None:
        yield from enumerate(splits)
        return
    if only >= len(splits):
        raise ConfigError(
            f"cv.split: must be < {len(splits)}, the number of {cfg.name} splits of this data, got {only}"
        )
    yield only, splits[only]
