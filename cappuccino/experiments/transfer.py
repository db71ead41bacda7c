"""Transfer experiment: does an encoder pre-trained on one bar interval help an agent on another?

``python train.py experiment=transfer_1h_5m`` (conf/experiment/transfer_1h_5m.yaml):

1. Pre-train the configured encoder with pretrain.py's job on ``experiment.source`` bars (e.g.
   hourly), with the agent's window and cv settings: only the source's training segment is read.
2. Train the configured agent on the configured data (e.g. 5-minute bars) twice, with the same
   seed, steps and settings: ``scratch`` from a random encoder, ``pretrained`` from step 1's
   ``best_encoder.pt`` (``encoder.pretrained``). Same seed means the same heads, the same
   environment episodes and the same minibatches: only the encoder's starting weights differ.
3. Compare their validation curves, ``trainer.objective`` (a ``val/`` metric, higher is better)
   every ``trainer.eval_every`` environment steps: one figure, a JSON file, a table.

Tracking: a parent run named after the command-line overrides holds the figure, the curves (as
``<arm>/val/<metric>`` histories and ``transfer_curves.json``) and a summary; the pre-training
run and the two training runs are nested under it, each the same run its job logs on its own.
Run folder: ``pretrain/``, ``scratch/``, ``pretrained/`` (each job's outputs) and the two
``transfer_curves`` files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cappuccino.config import AblationExperimentConfig, PretrainJobConfig, TrainConfig, TransferExperimentConfig
from cappuccino.errors import ConfigError
from cappuccino.evaluation.scoring import objective_key
from cappuccino.evaluation.validation import VALIDATION_CURVE
from cappuccino.experiments.arms import experiment_tracker
from cappuccino.pretrain import pretrain
from cappuccino.progress import console
from cappuccino.reporting.console import print_outputs, transfer_table
from cappuccino.reporting.figures import transfer_figure
from cappuccino.runtime import RunPaths
from cappuccino.tracking import Tracker
from cappuccino.training import train

ARMS = {"scratch": "from scratch", "pretrained": "pre-trained encoder"}  # run name: legend label
ENCODER_FILE = "best_encoder.pt"  # pretrain.py's best encoder by validation loss
CURVES_FILE = "transfer_curves.json"
FIGURE_FILE = "transfer_curves.png"

Curve = list[dict[str, float]]  # one record per validation: "step" and the val metrics


def run(
    *,
    cfg: TrainConfig,
    config: DictConfig,
    paths: RunPaths,
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
) -> float:
    """Run the experiment (module docstring); return the pre-trained arm's final validation objective.

    ``config`` is ``cfg`` untyped, the source of each job's saved and logged config. Every
    setting is checked before any work. ``parent_run_id`` nests the experiment's run (a sweep's study).
    """
    experiment = check(cfg)
    metric = validation_metric(cfg.trainer.objective)
    plain: dict[str, Any] = OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
    job, job_yaml = pretrain_job(cfg, experiment, plain)

    with experiment_tracker(cfg, plain, paths, overrides, parent_run_id) as tracker:
        pretrain_dir = paths.job("pretrain")
        pretrain(job, job_yaml, pretrain_dir, ("pretrain",), tracker.run_id)
        encoder_file = pretrain_dir.run_dir / ENCODER_FILE
        curves = {
            arm: train_arm(cfg, plain, encoder_file if arm == "pretrained" else None, paths.job(arm), tracker.run_id)
            for arm in ARMS
        }
        summary = compare(curves, metric)
        title = (
            f"{cfg.encoder.name} on {cfg.data.interval} bars, encoder pre-trained on "
            f"{experiment.source.interval} bars (seed {cfg.trainer.seed})"
        )
        log_comparison(curves, summary, metric, title, encoder_file, paths.run_dir, tracker)
    console.print(transfer_table(summary, metric, ARMS))
    print_outputs(paths.run_dir, tracker.ui_command, tracker.run_url)
    return summary["pretrained"]["final"]


def check(cfg: TrainConfig) -> TransferExperimentConfig:
    """What the experiment needs beyond a valid training config; raises ConfigError naming the key."""
    experiment = cfg.experiment
    assert isinstance(experiment, TransferExperimentConfig)
    if cfg.trainer.eval_every == 0:
        raise ConfigError(
            "trainer.eval_every: the transfer experiment compares validation curves; set it to the "
            "environment steps between validations, e.g. trainer.eval_every=8192"
        )
    if cfg.encoder.pretrained is not None:
        raise ConfigError(
            "encoder.pretrained: the transfer experiment pre-trains the encoder itself; leave it null "
            "(to fine-tune an encoder you have, run train.py without experiment=)"
        )
    if experiment.source.symbols != cfg.data.symbols:
        raise ConfigError(
            f"experiment.source.symbols: {experiment.source.symbols} differ from data.symbols {cfg.data.symbols}; "
            "the encoder has one embedding per asset, so both need the same symbols in the same order"
        )
    return experiment


def validation_metric(objective: str | None) -> str:
    """The metric of ``trainer.objective`` the curves compare: ``val/<metric>`` -> ``<metric>``."""
    key = objective_key(objective, holdout=True)
    if not key.startswith("val/"):
        raise ConfigError(
            f"trainer.objective: the transfer experiment compares validation curves, and {key!r} is "
            "a test metric; choose a val/ metric (default val/excess_sharpe)"
        )
    return key.removeprefix("val/")


def pretrain_job(
    cfg: TrainConfig, experiment: TransferExperimentConfig | AblationExperimentConfig, plain: dict[str, Any]
) -> tuple[PretrainJobConfig, str]:
    """pretrain.py's config for an experiment's pre-training, typed and as YAML: the source data
    and pre-training settings, the agent's window, encoder, cv and logger. Pre-training makes one encoder, so
    ``encoder.shared`` (how the arms use it) is off here."""
    encoder = replace(cfg.encoder, shared=False)
    job = PretrainJobConfig(
        data=experiment.source, window=cfg.window, encoder=encoder, cv=cfg.cv, logger=cfg.logger, pretrain=experiment.pretrain
    )
    source, settings = plain["experiment"]["source"], plain["experiment"]["pretrain"]
    parts = {"window": plain["window"], "encoder": {**plain["encoder"], "shared": False}, "cv": plain["cv"], "logger": plain["logger"]}
    return job, OmegaConf.to_yaml({"data": source, **parts, "pretrain": settings})


def train_arm(
    cfg: TrainConfig, plain: dict[str, Any], encoder_file: Path | None, paths: RunPaths, parent_run_id: str | None
) -> Curve:
    """Train one arm (the experiment's config without ``experiment``, from ``encoder_file`` if
    given) as a run nested under ``parent_run_id``; its validation curve."""
    arm = paths.run_dir.name
    typed, arm_plain = replace(cfg, experiment=None), {k: v for k, v in plain.items() if k != "experiment"}
    if encoder_file is not None:
        typed = replace(typed, encoder=replace(cfg.encoder, pretrained=str(encoder_file)))
        arm_plain["encoder"] = {**plain["encoder"], "pretrained": str(encoder_file)}
    # train() names its run after its overrides: here, the arm.
    train(typed, OmegaConf.to_yaml(arm_plain), paths, (arm,), parent_run_id)
    return json.loads((paths.run_dir / VALIDATION_CURVE).read_text())


def compare(curves: dict[str, Curve], metric: str) -> dict[str, dict[str, float]]:
    """Per arm: final and best ``metric`` (higher is better, as for trainer.objective), the step
    of the best, and the first step at which the arm reached the scratch arm's final value
    (NaN if it never did)."""
    target = curves["scratch"][-1][metric]
    summary = {}
    for arm, curve in curves.items():
        steps = np.array([record["step"] for record in curve])
        values = np.array([record[metric] for record in curve])
        reached = np.flatnonzero(values >= target)
        summary[arm] = {
            "final": float(values[-1]),
            "best": float(values.max()),
            "best_step": float(steps[values.argmax()]),
            "steps_to_scratch_final": float(steps[reached[0]]) if len(reached) else math.nan,
        }
    return summary


def log_comparison(
    curves: dict[str, Curve],
    summary: dict[str, dict[str, float]],
    metric: str,
    title: str,
    encoder_file: Path,
    run_dir: Path,
    tracker: Tracker,
) -> None:
    """The curves (as metric histories, JSON and one figure) and the summary, on the parent run."""
    for arm, curve in curves.items():
        for record in curve:
            tracker.log_metrics({f"{arm}/val/{metric}": record[metric]}, step=int(record["step"]))
    tracker.log_metrics({f"{arm}/{key}": value for arm, values in summary.items() for key, value in values.items()})
    tracker.log_metrics({"objective": summary["pretrained"]["final"]})
    tracker.set_tags({
        "objective.key": "pretrained/final",
        "objective.definition": f"val/{metric} of the arm started from the pre-trained encoder, at its last validation",
    })  # fmt: skip
    curves_file = run_dir / CURVES_FILE
    record = {"metric": f"val/{metric}", "encoder_file": str(encoder_file), "summary": summary, "curves": curves}
    curves_file.write_text(json.dumps(record, indent=2))
    tracker.log_artifact(curves_file)
    figure = transfer_figure(curves, metric, title, ARMS)
    figure.savefig(run_dir / FIGURE_FILE, dpi=110, bbox_inches="tight")
    tracker.log_figure(figure, FIGURE_FILE)
