"""Transfer experiment: does an encoder pre-trained on one bar interval help an agent on another?

``python train.py experiment=transfer_1h_5m`` (conf/experiment/transfer_1h_5m.yaml):

1. Pre-train the configured encoder with pretrain.py's job on ``experiment.source`` bars (e.g.
   hourly), with the agent's window and cv settings: only the source's training segment is read.
2. Train the configured agent on the configured data (e.g. 5-minute bars) twice per seed
   (``experiment.seeds``, or ``trainer.seed`` alone), with the same steps and settings:
   ``scratch`` from a random encoder, ``pretrained`` from step 1's ``best_encoder.pt``
   (``encoder.pretrained``). Same seed means the same heads, the same environment episodes and
   the same minibatches: only the encoder's starting weights differ.
3. Compare their validation curves, ``trainer.objective`` (a ``val/`` metric, higher is better)
   every ``trainer.eval_every`` environment steps: one figure, a JSON file, a table, with the
   sample efficiency (steps to reach the scratch arm's final value) and, with several seeds, its
   interval; with two or more seeds also the experiment report (``experiments.arms.report``).

Tracking: a parent run named after the command-line overrides holds the figure, the curves (as
``<arm>/val/<metric>`` histories and ``transfer_curves.json``) and a summary; the pre-training
run and the two training runs are nested under it, each the same run its job logs on its own.
Run folder: ``pretrain/``, ``scratch/``, ``pretrained/`` (each job's outputs; with several seeds
``<arm>/seed<N>/``) and the two ``transfer_curves`` files.
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

from cappuccino.config import AblationExperimentConfig, DataConfig, PretrainJobConfig, TrainConfig, TransferExperimentConfig
from cappuccino.errors import ConfigError
from cappuccino.evaluation.scoring import objective_key
from cappuccino.evaluation.validation import VALIDATION_CURVE
from cappuccino.evaluation.aggregate import aggregate
from cappuccino.experiments import arms
from cappuccino.experiments.arms import experiment_tracker, report
from cappuccino.pretrain import pretrain
from cappuccino.progress import console
from cappuccino.reporting.console import print_outputs, transfer_table
from cappuccino.reporting.figures import transfer_figure
from cappuccino.runtime import RunPaths
from cappuccino.tracking import Tracker

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
        seeds = experiment.seeds or [cfg.trainer.seed]
        curves: dict[str, list[Curve]] = {arm: [] for arm in ARMS}
        for seed in seeds:
            for arm in ARMS:
                named = (arm,) if len(seeds) == 1 else (arm, f"trainer.seed={seed}")
                folder = paths.job(arm if len(seeds) == 1 else f"{arm}/seed{seed}")
                curves[arm].append(train_arm(cfg, plain, encoder_file if arm == "pretrained" else None, seed, named, folder, tracker.run_id))
        summary = compare(curves, metric)
        title = (
            f"{cfg.encoder.name} on {cfg.data.interval} bars, encoder pre-trained on "
            f"{experiment.source.interval} bars (seeds {', '.join(map(str, seeds))})"
        )
        log_comparison(curves, summary, metric, title, encoder_file, paths.run_dir, tracker)
        if len(seeds) >= 2:  # the arms compared as every experiment's are
            report(tracker, paths.run_dir)
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
    check_source_symbols(cfg, experiment.source)
    return experiment


def check_source_symbols(cfg: TrainConfig, source: DataConfig) -> None:
    """Pre-training bars must have the agents' symbols in their order: the encoder has one
    embedding per asset."""
    if source.symbols != cfg.data.symbols:
        raise ConfigError(
            f"experiment.source.symbols: {source.symbols} differ from data.symbols {cfg.data.symbols}; "
            "the encoder has one embedding per asset, so both need the same symbols in the same order"
        )


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
    cfg: TrainConfig, plain: dict[str, Any], encoder_file: Path | None, seed: int, named: Sequence[str], paths: RunPaths,
    parent_run_id: str | None,
) -> Curve:  # fmt: skip
    """Train one arm (the experiment's config without ``experiment``, from ``encoder_file`` if
    given) with ``seed`` as a run named by ``named`` (``experiments.arms.train_arm``), nested under
    ``parent_run_id`` and tagged with its arm; its validation curve."""
    arm = "pretrained" if encoder_file is not None else "scratch"
    encoder, encoder_plain = cfg.encoder, plain["encoder"]
    if encoder_file is not None:
        encoder = replace(cfg.encoder, pretrained=str(encoder_file))
        encoder_plain = {**plain["encoder"], "pretrained": str(encoder_file)}
    arms.train_arm(cfg, plain, arm, seed, encoder, encoder_plain, paths, parent_run_id, named)
    return json.loads((paths.run_dir / VALIDATION_CURVE).read_text())


def compare(curves: dict[str, list[Curve]], metric: str) -> dict[str, dict[str, float]]:
    """Per arm, over seeds: the mean final and best ``metric`` (higher is better, as for
    trainer.objective), the median step of the best, and the sample efficiency: the first step
    at which the arm reached the scratch arm's final value with the same seed, its median over
    the seeds that reached it (NaN if none did), the share of seeds that did, and, when every
    seed did and there are two or more, a 95 % bootstrap interval of that median."""
    per_seed = [_compare_seed({arm: arm_curves[i] for arm, arm_curves in curves.items()}, metric) for i in range(len(curves["scratch"]))]
    summary = {}
    for arm in curves:
        values = {key: np.array([seed[arm][key] for seed in per_seed]) for key in per_seed[0][arm]}
        steps = values["steps_to_scratch_final"]
        reached = steps[np.isfinite(steps)]
        interval = aggregate(steps[None, :], "median") if len(steps) >= 2 and len(reached) == len(steps) else None
        summary[arm] = {
            "final": float(values["final"].mean()),
            "best": float(values["best"].mean()),
            "best_step": float(np.median(values["best_step"])),
            "steps_to_scratch_final": float(np.median(reached)) if len(reached) else math.nan,
            "steps_to_scratch_final_low": interval.low if interval else math.nan,
            "steps_to_scratch_final_high": interval.high if interval else math.nan,
            "reached_share": len(reached) / len(steps),
        }
    return summary


def _compare_seed(curves: dict[str, Curve], metric: str) -> dict[str, dict[str, float]]:
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
    curves: dict[str, list[Curve]],
    summary: dict[str, dict[str, float]],
    metric: str,
    title: str,
    encoder_file: Path,
    run_dir: Path,
    tracker: Tracker,
) -> None:
    """The curves (as metric histories of the mean over seeds, JSON and one figure) and the
    summary, on the parent run."""
    for arm, arm_curves in curves.items():
        for i, record in enumerate(arm_curves[0]):
            mean = float(np.mean([curve[i][metric] for curve in arm_curves]))
            tracker.log_metrics({f"{arm}/val/{metric}": mean}, step=int(record["step"]))
    tracker.log_metrics({f"{arm}/{key}": value for arm, values in summary.items() for key, value in values.items() if math.isfinite(value)})
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
