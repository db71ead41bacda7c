"""Combinatorial purged cross-validation (López de Prado, *Advances in Financial Machine
Learning*, ch. 12).

The usable bars are cut into ``n_groups`` contiguous groups; every split holds out
``n_test_groups`` of them, so there are C(N, k) splits, and the test groups recombine into
phi = k / N * C(N, k) = C(N - 1, k - 1) backtest paths, each of which covers the whole period once.

Choices, and where they differ from the book or from skfolio:

* Group sizes match ``skfolio.model_selection.CombinatorialPurgedCV``: the first N - 1 groups
  hold ``n // N`` bars each and the last one holds the rest, and purge and embargo remove the
  same bars (the tests compare the two index for index).
* A training set with gaps stays several ``Segment``s (its maximal contiguous runs) instead of
  one array with the groups joined, so no episode steps across a gap as if it were one bar.
* Every test group is its own test ``Segment``, adjacent ones too: each is evaluated on its
  own and stitched into paths (see ``paths``).
* ``purge_bars`` is removed from training before each test group and ``purge_bars +
  embargo_bars`` after it. The purge must be at least the observation lookback, so that
  training bars stay a full window away from test bars on either side (a test group can then be
  warmed up from the purged bars before it without touching training data). Training bars after
  a test group have it in their past: the features of the first ones (a trailing z-score over
  hundreds of bars) would read test bars, so purge + embargo must cover how far back features
  reach; the config's null embargo is exactly that. The splitter sees neither the lookback nor
  the features: ``cappuccino.config.check_purge`` checks both.
* ``val_fraction`` (not in the book) holds out the last bars of each split's training set (from
  its last training run back) as validation segments, ``purge_bars`` after the training bars
  before them: what periodic validation (learning curves) reads. No training bar follows them,
  and the test groups stay out of sample; the scores are still the test groups'.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import combinations

import numpy as np

from cappuccino.data.tensors import Segment
from cappuccino.errors import require
from cappuccino.evaluation.splits import Split


class CombinatorialPurgedCV:
    """C(n_groups, n_test_groups) splits of the bars; train segments exclude the test groups
    and the purge and embargo around each of them."""

    def __init__(
        self, *, n_groups: int = 6, n_test_groups: int = 2, purge_bars: int = 0, embargo_bars: int | None = 0, val_fraction: float = 0.0
    ) -> None:
        require(n_groups >= 2, "n_groups", f"must be >= 2, got {n_groups}")
        require(
            1 <= n_test_groups < n_groups,
            "n_test_groups",
            f"must be in [1, n_groups={n_groups}) to leave a training group, got {n_test_groups}",
        )
        require(purge_bars >= 0, "purge_bars", f"must be >= 0, got {purge_bars}")
        require(embargo_bars is None or embargo_bars >= 0, "embargo_bars", f"must be >= 0 or null, got {embargo_bars}")
        require(0.0 <= val_fraction < 1.0, "val_fraction", f"must be in [0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.n_groups = n_groups
        self.n_test_groups = n_test_groups
        self.purge_bars = purge_bars
        self.embargo_bars = embargo_bars

    def embargo_for(self, feature_memory: int) -> int:
        """The embargo used for features that reach ``feature_memory`` bars back: ``embargo_bars``,
        or if null just enough that purge + embargo covers that reach."""
        return max(0, feature_memory - self.purge_bars) if self.embargo_bars is None else self.embargo_bars

    def get_n_splits(self, start: int | None = None, stop: int | None = None) -> int:
        """C(N, k); ``start`` and ``stop`` are ignored (they exist so every splitter takes them)."""
        return math.comb(self.n_groups, self.n_test_groups)

    @property
    def n_paths(self) -> int:
        """phi = k / N * C(N, k): how many times each group is tested."""
        return math.comb(self.n_groups - 1, self.n_test_groups - 1)

    def test_groups(self) -> list[tuple[int, ...]]:
        """The group indices each split tests, in split order (lexicographic, as itertools)."""
        return list(combinations(range(self.n_groups), self.n_test_groups))

    def groups(self, start: int, stop: int, feature_memory: int = 0) -> list[Segment]:
        """The N contiguous groups of [start, stop): ``n // N`` bars each, the last one takes the rest."""
        size = (stop - start) // self.n_groups
        blocked = 2 * self.purge_bars + self.embargo_for(feature_memory)
        if size <= blocked:
            raise ValueError(
                f"{stop - start} bars make groups of {size} bars, which a training group between two test "
                f"groups loses entirely to 2 * cv.purge_bars + cv.embargo_bars = {blocked}: use more data, "
                f"fewer cv.n_groups, or a smaller purge or embargo"
            )
        bounds = [start + i * size for i in range(self.n_groups)] + [stop]
        return [Segment(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def split(self, start: int, stop: int, feature_memory: int = 0) -> Iterator[Split]:
        """Split the usable bars [start, stop); ``test`` holds the k test groups in bar order and
        ``validation`` the training set's held-out tail (empty unless ``val_fraction``; the
        objective is measured on the test groups). ``feature_memory``: how many bars back a
        feature reads, which a null embargo covers."""
        groups = self.groups(start, stop, feature_memory)
        bar = np.arange(start, stop)[:, None]  # (n, 1)
        after = self.purge_bars + self.embargo_for(feature_memory)
        for tested in self.test_groups():
            test = tuple(groups[g] for g in tested)
            starts = np.array([s.start for s in test])  # (k,)
            stops = np.array([s.stop for s in test])  # (k,)
            blocked = (bar >= starts - self.purge_bars) & (bar < stops + after)  # (n, k)
            train, validation = self._validation_tail(_runs(~blocked.any(axis=1), start))
            yield Split(train=train, validation=validation, test=test)

    def _validation_tail(self, train: tuple[Segment, ...]) -> tuple[tuple[Segment, ...], tuple[Segment, ...]]:
        """The last ``val_fraction`` of the training bars (from the last training runs back),
        with ``purge_bars`` dropped before them: (training runs, validation segments)."""
        if self.val_fraction == 0.0:
            return train, ()
        n_train = sum(s.stop - s.start for s in train)
        n_validation = max(1, round(self.val_fraction * n_train))
        runs, validation = _cut_tail(train, n_validation)
        runs, _ = _cut_tail(runs, self.purge_bars)
        if not runs:
            raise ValueError(
                f"cv.val_fraction={self.val_fraction} holds out {n_validation} of a split's {n_train} training bars, and "
                f"cv.purge_bars={self.purge_bars} before them leave none to train on: use a smaller cv.val_fraction or more data"
            )
        return runs, validation

    def paths(self) -> list[list[tuple[int, int]]]:
        """For each of the ``n_paths`` paths, its N pieces in group order: ``path[g] = (i, j)``
        means group g is ``split_i.test[j]``.

        The standard assignment: the splits that test group g, in split order, go to paths
        0, 1, ..., phi - 1, so path p takes the p-th test of every group.
        """
        tests_of_group: list[list[tuple[int, int]]] = [[] for _ in range(self.n_groups)]
        for i, tested in enumerate(self.test_groups()):
            for j, g in enumerate(tested):
                tests_of_group[g].append((i, j))
        return [list(path) for path in zip(*tests_of_group)]


def _runs(mask: np.ndarray, offset: int) -> tuple[Segment, ...]:
    """Maximal runs of True in ``mask`` (n,) as Segments, bar i of the mask being ``offset + i``."""
    edges = np.flatnonzero(np.diff(mask.astype(np.int8), prepend=0, append=0)).reshape(-1, 2)  # (runs, 2)
    return tuple(Segment(offset + int(a), offset + int(b)) for a, b in edges)


def _cut_tail(runs: tuple[Segment, ...], bars: int) -> tuple[tuple[Segment, ...], tuple[Segment, ...]]:
    """The last ``bars`` bars of ``runs`` cut off: (the runs left, the cut pieces in bar order)."""
    left, cut = list(runs), []
    while bars > 0 and left:
        last = left.pop()
        taken = min(bars, last.stop - last.start)
        cut.insert(0, Segment(last.stop - taken, last.stop))
        if taken < last.stop - last.start:
            left.append(Segment(last.start, last.stop - taken))
        bars -= taken
    return tuple(left), tuple(cut)
