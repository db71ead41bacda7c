"""Encoder ablation: MLP against FT-Transformer, from scratch and pre-trained, on the same splits.

``python train.py experiment=ablation_encoder`` (conf/experiment/ablation_encoder.yaml):

1. If an arm needs it, pre-train the configured FT-Transformer once with pretrain.py's job on
   ``experiment.source`` bars: another market (by default a synthetic one with its own seed),
   read only up to its holdout's training end, so no test bar of the agents' data is ever seen.
2. For each seed in ``experiment.seeds`` and each arm in ``experiment.arms``, train the
   configured agent with the configured cv scheme (the same splits for every arm), step budget
   and settings, only the encoder changed:

   - ``mlp``: ``experiment.baseline``;
   - ``ft_scratch``: the configured encoder from random weights;
   - ``ft_frozen``: the same, from the pre-trained weights, frozen;
   - ``ft_finetuned``: the same, from the pre-trained weights, trained further.

   Each is a run nested under the experiment's run, tagged ``experiment.arm``.
3. Report (``cappuccino.reporting.experiment_report``): per arm the interquartile mean and
   median across splits x seeds with stratified bootstrap intervals, paired comparisons with
   P(X > Y), performance profiles and learning curves, against buy-and-hold and the oracle; the
   files go to the run folder's ``report/`` and to the experiment's run.

The experiment returns the winning arm's IQM of test excess Sharpe (what the report ranks by).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cappuccino.config import AblationExperimentConfig, EncoderConfig, FTTransformerEncoderConfig, HoldoutConfig, TrainConfig
from cappuccino.errors import ConfigError
from cappuccino.experiments.arms import experiment_tracker, report, train_arm
from cappuccino.experiments.transfer import ENCODER_FILE, check_source_symbols, pretrain_job
from cappuccino.pretrain import pretrain
from cappuccino.runtime import RunPaths

PRETRAINED_ARMS = ("ft_frozen", "ft_finetuned")


def run(
    *,
    cfg: TrainConfig,
    config: DictConfig,
    paths: RunPaths,
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
) -> float:
    """Run the experiment (module docstring); the winning arm's IQM test excess Sharpe."""
    experiment = check(cfg)
    plain: dict[str, Any] = OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
    with experiment_tracker(cfg, plain, paths, overrides, parent_run_id) as tracker:
        encoder_file = None
        if set(experiment.arms) & set(PRETRAINED_ARMS):
            source_cfg = replace(cfg, cv=HoldoutConfig())  # the source's own holdout: its training part only
            job, job_yaml = pretrain_job(source_cfg, experiment, {**plain, "cv": OmegaConf.to_container(OmegaConf.structured(HoldoutConfig()))})
            pretrain_dir = paths.job("pretrain")
            pretrain(job, job_yaml, pretrain_dir, ("pretrain",), tracker.run_id)
            encoder_file = pretrain_dir.run_dir / ENCODER_FILE
        for seed in experiment.seeds:
            for arm in experiment.arms:
                encoder, encoder_plain = arm_encoder(cfg, plain, arm, encoder_file)
                train_arm(cfg, plain, arm, seed, encoder, encoder_plain, paths.job(f"{arm}/seed{seed}"), tracker.run_id)
        return report(tracker, paths.run_dir)


def check(cfg: TrainConfig) -> AblationExperimentConfig:
    """What the experiment needs beyond a valid training config; raises ConfigError naming the key."""
    experiment = cfg.experiment
    assert isinstance(experiment, AblationExperimentConfig)
    if not isinstance(cfg.encoder, FTTransformerEncoderConfig):
        raise ConfigError(f"encoder={cfg.encoder.name}: the ablation's FT arms train the configured encoder; choose an FT-Transformer (encoder=ft_default)")
    if cfg.encoder.pretrained is not None or cfg.encoder.freeze:
        raise ConfigError("encoder.pretrained / encoder.freeze: the ablation pre-trains and freezes per arm itself; leave them null / false")
    check_source_symbols(cfg, experiment.source)
    return experiment


def arm_encoder(cfg: TrainConfig, plain: dict[str, Any], arm: str, encoder_file: Path | None) -> tuple[EncoderConfig, dict[str, Any]]:
    """The encoder an arm trains with, typed and as config."""
    experiment = cfg.experiment
    assert isinstance(experiment, AblationExperimentConfig)
    if arm == "mlp":
        return experiment.baseline, plain["experiment"]["baseline"]
    if arm in PRETRAINED_ARMS:
        assert encoder_file is not None
        frozen = arm == "ft_frozen"
        return replace(cfg.encoder, pretrained=str(encoder_file), freeze=frozen), {**plain["encoder"], "pretrained": str(encoder_file), "freeze": frozen}
    return cfg.encoder, plain["encoder"]
