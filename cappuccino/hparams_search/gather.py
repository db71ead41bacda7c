"""Gather CV splits that ran as separate jobs (``cv.split=i``) into one configuration's score.

Automatic: ``python train.py -m cv=cpcv cv.split=range(15)`` (any launcher) opens one MLflow run
before the jobs start, nests every split's run under it, and when the jobs end scores each set of
runs that differ only in ``cv.split`` (``GatherSplits``, a Hydra callback in conf/config.yaml).
By hand, over run folders or MLflow run ids:

    python -m cappuccino.hparams_search.gather outputs/a outputs/b ... [--out gathered]
    python -m cappuccino.hparams_search.gather --run-ids ID ID ... [--tracking-uri URI]

Either way the folder gets ``metrics.json``, ``result.json`` and ``oos_returns.npy``, equal to what
one process running every split writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cappuccino.errors import UserError
from cappuccino.evaluation.gathering import (
    BACKTESTS_FILE,
    SplitScores,
    gather_splits,
    read_run_folder,
)
from cappuccino.evaluation.results import (
    OOS_RETURNS_FILE,
    RESULT_FILE,
    CVResult,
    save_result,
)
from cappuccino.hparams_search import STUDY_RUN_ENV
from cappuccino.progress import console
from cappuccino.reporting.console import objective_line, splits_table
from cappuccino.tracking import Tracker, build_tracker, overrides_tags, short_run_name

log = logging.getLogger(__name__)
GATHERED_DIR = "gathered"


def write_gathered(result: CVResult, returns: np.ndarray, out: Path) -> dict[str, float]:
    """``metrics.json``, ``result.json`` and ``oos_returns.npy`` in ``out``; the metrics."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = {**result.metrics(), "objective": result.objective}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    save_result(result, out / RESULT_FILE)
    np.save(out / OOS_RETURNS_FILE, returns)
    return metrics


def gather_folders(folders: Sequence[Path]) -> tuple[CVResult, np.ndarray]:
    runs: dict[str, SplitScores] = {}
    configs: dict[str, str] = {}
    for folder in folders:
        runs[str(folder)], configs[str(folder)] = read_run_folder(Path(folder))
    return gather_splits(runs, configs)


def download_runs(run_ids: Sequence[str], tracking_uri: str | None, into: Path) -> list[Path]:
    """Each run's ``split_backtests.npz`` and ``config.yaml`` artifacts, one folder per run."""
    from cappuccino.tracking.artifacts import run_artifacts

    for run_id in run_ids:
        run_artifacts(run_id, (BACKTESTS_FILE, "config.yaml"), tracking_uri, into / run_id)
    return [into / run_id for run_id in run_ids]


class GatherSplits(Callback):
    """When a multirun sweeps ``cv.split`` (and is no study), nest its jobs under one MLflow run
    and gather each configuration's splits at the end, into ``<sweep dir>/gathered[_<k>]``."""

    def __init__(self) -> None:
        self.tracker: Tracker | None = None
        self.active = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        overrides = list(config.hydra.overrides.task)
        self.active = any(o.split("=", 1)[0].lstrip("+") == "cv.split" for o in overrides) and not str(
            config.hydra.sweeper.get("_target_", "")
        ).endswith("StudySweeper")
        if not self.active:
            return
        from cappuccino.hparams_search.sweeper import base_config

        base = base_config(config)
        others = [o for o in overrides if not o.startswith("cv.split=")]
        self.tracker = build_tracker(base.logger, f"splits: {short_run_name(others)}", Path.cwd())
        self.tracker.set_tags(overrides_tags(others))
        if self.tracker.run_id is not None:
            os.environ[STUDY_RUN_ENV] = self.tracker.run_id  # each job's run nests under it

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.active or self.tracker is None:
            return
        os.environ.pop(STUDY_RUN_ENV, None)
        sweep_dir = Path(config.hydra.sweep.dir)
        folders = sorted(p.parent for p in sweep_dir.glob(f"*/{BACKTESTS_FILE}"))
        with self.tracker as tracker:
            for k, group in enumerate(_configurations(folders)):
                out = sweep_dir / (GATHERED_DIR if k == 0 else f"{GATHERED_DIR}_{k}")
                try:
                    result, returns = gather_folders(group)
                except ValueError as error:
                    log.warning(f"Not gathered ({', '.join(p.name for p in group)}): {error}")
                    continue
                metrics = write_gathered(result, returns, out)
                tracker.log_metrics({f"{out.name}/{key}" if k else key: value for key, value in metrics.items()})
                for file in out.iterdir():
                    tracker.log_artifact(file, out.name)
                console.print(splits_table(result, f"gathered from {len(group)} jobs"))
                console.print(f"{objective_line('cv/objective', result.objective)}\ngathered: {out}")


def _configurations(folders: Sequence[Path]) -> list[list[Path]]:
    """The folders grouped by their config less cv.split, in first-seen order."""
    groups: dict[str, list[Path]] = {}
    for folder in folders:
        config = OmegaConf.load(folder / "config.yaml")
        config.cv.pop("split", None)
        groups.setdefault(OmegaConf.to_yaml(config), []).append(folder)
    return list(groups.values())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Gather CV splits run separately (cv.split=i) into one score.")
    parser.add_argument("folders", nargs="*", type=Path, help="run folders of the splits (outputs/<date>/<time>)")
    parser.add_argument("--run-ids", nargs="*", default=[], help="MLflow run ids of the splits instead of folders")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI of --run-ids (default: MLflow's)")
    parser.add_argument("--out", type=Path, default=Path(GATHERED_DIR), help="folder for the gathered results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as downloads:
        try:
            folders = list(args.folders) + download_runs(args.run_ids, args.tracking_uri, Path(downloads))
            result, returns = gather_folders(folders)
        except (ValueError, FileNotFoundError, UserError) as error:
            parser.exit(2, f"error: {error}\n")
        write_gathered(result, returns, args.out)
    console.print(splits_table(result, f"gathered from {len(folders)} runs"))
    console.print(f"{objective_line('cv/objective', result.objective)}\ngathered: {args.out}")


if __name__ == "__main__":
    main()
