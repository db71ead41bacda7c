"""An experiment's arms: one agent per arm and seed, each a run nested under the experiment's
run and tagged with its arm, on the experiment's data, cv splits and step budget (only the
encoder differs between arms); the experiment's run itself; and the report on the arms."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cappuccino.config import EncoderConfig, TrainConfig
from cappuccino.progress import print_line
from cappuccino.reporting.experiment_report import ARM_TAG, FACTORS_TAG, write_report
from cappuccino.runtime import RunPaths
from cappuccino.tracking import Tracker, build_tracker, flatten_config, overrides_tags, short_run_name
from cappuccino.training import train


@contextmanager
def experiment_tracker(cfg: TrainConfig, plain: dict[str, Any], paths: RunPaths, overrides: Sequence[str], parent_run_id: str | None) -> Iterator[Tracker]:
    """The experiment's own run, named after its overrides and tagged ``experiment``, with the
    whole config as params; its jobs nest under it."""
    assert cfg.experiment is not None
    with build_tracker(cfg.logger, short_run_name(overrides), paths.project_dir, parent_run_id) as tracker:
        tracker.set_tags({"experiment": cfg.experiment.name, **overrides_tags(overrides)})
        tracker.log_params(flatten_config(plain))
        yield tracker


def train_arm(
    cfg: TrainConfig, plain: dict[str, Any], arm: str, seed: int, encoder: EncoderConfig, encoder_plain: dict[str, Any], paths: RunPaths,
    parent_run_id: str | None, overrides: Sequence[str] | None = None, factors: Sequence[str] = (),
) -> float:  # fmt: skip
    """Train ``arm`` (``encoder``, and ``encoder_plain`` as its config) with ``seed``; its objective.
    ``plain`` is the experiment's whole config, resolved, the source of the job's saved config;
    ``overrides`` name the run as command-line overrides would (default: the arm and
    ``trainer.seed``, shown ``mlp seed=0``); ``factors``: the params a grid varies (its report's main effects)."""
    typed = replace(cfg, experiment=None, encoder=encoder, trainer=replace(cfg.trainer, seed=seed))
    arm_plain = {k: v for k, v in plain.items() if k != "experiment"} | {"encoder": encoder_plain}
    arm_plain["trainer"] = {**plain["trainer"], "seed": seed}
    named = overrides if overrides is not None else (arm, f"trainer.seed={seed}")
    tags = {ARM_TAG: arm} | ({FACTORS_TAG: ",".join(factors)} if factors else {})
    return train(typed, OmegaConf.to_yaml(arm_plain), paths, named, parent_run_id, tags=tags)


def report(tracker: Tracker, run_dir: Path) -> float:
    """The experiment's report from its runs in MLflow, into ``run_dir/report`` and onto its run,
    its verdicts printed; the winning arm's IQM test excess Sharpe (NaN without MLflow)."""
    if tracker.run_id is None:
        print_line("logger=none: the report reads the runs from MLflow, so none was written (use logger=mlflow)")
        return float("nan")
    written = write_report(tracker.client, tracker.run_id, run_dir / "report")  # type: ignore[attr-defined]
    for line in written.verdicts:
        print_line(line)
    print_line(f"report: {run_dir / 'report' / 'report.md'} (python -m cappuccino.report {tracker.run_id} writes it again)")
    return written.best_iqm
