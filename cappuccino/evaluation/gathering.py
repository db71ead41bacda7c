"""Cross-validation splits run in separate processes (``cv.split=i``), gathered into the score
the same configuration gets with every split in one process.

Each cross-validated run writes ``split_backtests.npz``: its splits' test backtests and the
reference strategies' test backtests and metrics, the CPCV paths, the objective's std penalty, the total number of splits and the data's content hash.
``gather_splits`` checks that the runs are one configuration on the same bars (configs equal
but for ``cv.split``, every split exactly once) and scores them with ``score_cv``, so the
objective, per-path Sharpes and the overfitting statistics' inputs are the ones one process gets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from cappuccino.evaluation.backtest import Backtest
from cappuccino.evaluation.references import mean_reference_metrics
from cappuccino.evaluation.results import CVResult
from cappuccino.evaluation.scoring import oos_excess_returns, score_cv

BACKTESTS_FILE = "split_backtests.npz"
_FIELDS = ("bars", "equity", "benchmark")
_REFERENCE = "reference"  # key prefix of the reference strategies' backtests


@dataclass(frozen=True)
class SplitScores:
    """What a cross-validated run leaves for gathering (``BACKTESTS_FILE``)."""

    tests: dict[int, list[Backtest]]  # split index -> its test-group backtests in bar order
    paths: list[list[tuple[int, int]]] | None  # CPCV's backtest paths over all splits
    n_splits: int
    std_penalty: float
    periods_per_year: float
    data_hash: str
    # split index -> reference strategy -> its test metrics (``evaluation.references``)
    references: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    # split index -> reference strategy -> its test-group backtests in bar order (their equity curves)
    reference_tests: dict[int, dict[str, list[Backtest]]] = field(default_factory=dict)


def save_split_scores(path: Path, scores: SplitScores) -> None:
    arrays: dict[str, Any] = {}
    for i, tests in scores.tests.items():
        for j, test in enumerate(tests):
            arrays.update(_backtest_arrays(f"split{i}.test{j}.", test))
    for i, by_name in scores.reference_tests.items():
        for name, tests in by_name.items():
            for j, test in enumerate(tests):
                arrays.update(_backtest_arrays(f"{_REFERENCE}.{name}.split{i}.test{j}.", test))
    meta = {
        "paths": scores.paths,
        "n_splits": scores.n_splits,
        "std_penalty": scores.std_penalty,
        "periods_per_year": scores.periods_per_year,
        "data_hash": scores.data_hash,
        "references": {str(i): refs for i, refs in scores.references.items()},
    }
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


def load_split_scores(path: Path) -> SplitScores:
    with np.load(path) as archive:
        meta = json.loads(str(archive["meta"]))
        tests: dict[int, dict[int, Backtest]] = {}
        reference_tests: dict[int, dict[str, dict[int, Backtest]]] = {}
        for key in (k.removesuffix(".bars") for k in archive.files if k.endswith(".bars")):
            *owner, split, test = key.split(".")
            i, j, backtest = int(split.removeprefix("split")), int(test.removeprefix("test")), _read_backtest(archive, key + ".")
            if owner:  # reference.<name>
                reference_tests.setdefault(i, {}).setdefault(owner[1], {})[j] = backtest
            else:
                tests.setdefault(i, {})[j] = backtest
    paths = None if meta["paths"] is None else [[tuple(piece) for piece in path] for path in meta["paths"]]
    references = {int(i): refs for i, refs in meta.get("references", {}).items()}
    return SplitScores(
        _in_order(tests), paths, meta["n_splits"], meta["std_penalty"], meta["periods_per_year"], meta["data_hash"], references,
        {i: _in_order(by_name) for i, by_name in sorted(reference_tests.items())},
    )  # fmt: skip


def _backtest_arrays(prefix: str, test: Backtest) -> dict[str, np.ndarray]:
    return {**{prefix + name: getattr(test, name) for name in _FIELDS}, prefix + "costs": np.array([test.fees_paid, test.turnover])}


def _read_backtest(archive: Any, prefix: str) -> Backtest:
    fees, turnover = archive[prefix + "costs"]
    return Backtest(*(archive[prefix + name] for name in _FIELDS), float(fees), float(turnover))


def _in_order(pieces: Mapping[Any, dict[int, Backtest]]) -> dict[Any, list[Backtest]]:
    """{key: {test-group index: backtest}} -> {key: backtests in test-group order}, keys sorted."""
    return {key: [by_index[j] for j in sorted(by_index)] for key, by_index in sorted(pieces.items())}


def gather_splits(runs: Mapping[str, SplitScores], configs: Mapping[str, str]) -> tuple[CVResult, np.ndarray]:
    """The cross-validation result and the out-of-sample excess returns of runs (named by their
    folders or run ids) that together ran every split of one configuration once."""
    if not runs:
        raise ValueError("no runs to gather: give the folders (or MLflow run ids) of runs with cv.split set")
    _check_one_configuration(configs)
    first = next(iter(runs.values()))
    hashes = {name: scores.data_hash for name, scores in runs.items()}
    if len(set(hashes.values())) > 1:
        raise ValueError(f"the runs trained on different bars (data hashes {hashes}); gather runs of one dataset")
    tests: dict[int, list[Backtest]] = {}
    references: dict[int, dict[str, dict[str, float]]] = {}
    for name, scores in runs.items():
        for i, backtests in scores.tests.items():
            if i in tests:
                raise ValueError(f"split {i} was run twice (again in {name}); gather each split once")
            tests[i] = backtests
        references.update(scores.references)
    missing = sorted(set(range(first.n_splits)) - set(tests))
    if missing:
        raise ValueError(f"splits {missing} of {first.n_splits} are missing; run them (cv.split=<i>) and gather again")
    tests = dict(sorted(tests.items()))
    result = score_cv(tests, first.periods_per_year, first.std_penalty, first.paths)
    result = replace(result, references=mean_reference_metrics([references[i] for i in sorted(references)]))
    return result, oos_excess_returns(tests, first.paths)


def _check_one_configuration(configs: Mapping[str, str]) -> None:
    """Every run's config.yaml equal but for cv.split."""
    plain = {}
    for name, text in configs.items():
        config = OmegaConf.to_container(OmegaConf.create(text))
        config["cv"].pop("split", None)  # type: ignore[index, union-attr]
        plain[name] = config
    names = list(plain)
    for name in names[1:]:
        if plain[name] != plain[names[0]]:
            differing = sorted(_differences(plain[names[0]], plain[name]))
            raise ValueError(f"{name} and {names[0]} are not one configuration: they differ in {differing}")


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in set(a) | set(b) for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def read_run_folder(folder: Path) -> tuple[SplitScores, str]:
    """The split scores and config.yaml a run left in ``folder``."""
    folder = Path(folder)
    file = folder / BACKTESTS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{folder} holds no {BACKTESTS_FILE}: is it the folder of a cv=cpcv or walk_forward run?")
    return load_split_scores(file), (folder / "config.yaml").read_text()
