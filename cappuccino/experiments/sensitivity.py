"""FT-Transformer sensitivity: the same agent at every point of a grid over d_token, n_blocks
and n_heads, with seeds, on the same splits and step budget.

``python train.py experiment=sensitivity_ft`` (conf/experiment/sensitivity_ft.yaml): each grid
point is an arm (``d_token=64 n_blocks=2 n_heads=4``) trained with every seed in
``experiment.seeds`` as runs nested under the experiment's run; the report
(``cappuccino.reporting.experiment_report``) compares them, and each size's main effect. Returns
the winning arm's IQM test excess Sharpe.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cappuccino.config import FTTransformerEncoderConfig, SensitivityExperimentConfig, TrainConfig
from cappuccino.errors import ConfigError
from cappuccino.experiments.arms import experiment_tracker, report, train_arm
from cappuccino.runtime import RunPaths


def run(
    *,
    cfg: TrainConfig,
    config: DictConfig,
    paths: RunPaths,
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
) -> float:
    """Run the experiment (module docstring); the winning arm's IQM test excess Sharpe."""
    experiment = cfg.experiment
    assert isinstance(experiment, SensitivityExperimentConfig)
    if not isinstance(cfg.encoder, FTTransformerEncoderConfig):
        raise ConfigError(f"encoder={cfg.encoder.name}: the sensitivity grid varies an FT-Transformer; choose one (encoder=ft_default)")
    plain: dict[str, Any] = OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
    grid = list(itertools.product(experiment.d_token, experiment.n_blocks, experiment.n_heads))
    with experiment_tracker(cfg, plain, paths, overrides, parent_run_id) as tracker:
        for seed in experiment.seeds:
            for d_token, n_blocks, n_heads in grid:
                arm = f"d_token={d_token} n_blocks={n_blocks} n_heads={n_heads}"
                sizes = {"d_token": d_token, "n_blocks": n_blocks, "n_heads": n_heads}
                encoder, encoder_plain = replace(cfg.encoder, **sizes), {**plain["encoder"], **sizes}
                named = [f"encoder.{key}={value}" for key, value in sizes.items()] + [f"trainer.seed={seed}"]
                folder = paths.job(f"d{d_token}_b{n_blocks}_h{n_heads}/seed{seed}")
                train_arm(cfg, plain, arm, seed, encoder, encoder_plain, folder, tracker.run_id, named, factors=[f"encoder.{key}" for key in sizes])
        return report(tracker, paths.run_dir)
