"""Experiments: comparisons of several training runs, one option of the ``experiment`` config group each.

``python train.py experiment=NAME`` runs one; ``run_experiment`` dispatches on ``experiment.name``
(the schema's name, see cappuccino.config.SCHEMAS["experiment"]).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from omegaconf import DictConfig

from cappuccino.config import TrainConfig
from cappuccino.experiments import transfer
from cappuccino.training import RunPaths

EXPERIMENTS: dict[str, Callable[[TrainConfig, DictConfig, RunPaths, Sequence[str], str | None], float]] = {
    "transfer": transfer.run,
}


def run_experiment(
    cfg: TrainConfig,
    config: DictConfig,
    paths: RunPaths,
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
) -> float:
    """Run ``cfg.experiment`` (``config`` is the same config, untyped) and return its result;
    ``parent_run_id`` nests its run under another (a sweep's study)."""
    assert cfg.experiment is not None
    return EXPERIMENTS[cfg.experiment.name](cfg, config, paths, overrides, parent_run_id)


__all__ = ["EXPERIMENTS", "run_experiment"]
