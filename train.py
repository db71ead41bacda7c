"""Train a PPO portfolio agent: ``python train.py [group=option ...] [key=value ...]``.

Returns the configured objective (trainer.objective) so Hydra's Optuna sweeper can optimise it.
With ``experiment=NAME`` it runs that comparison instead (conf/experiment/) and returns its result.
"""

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from cappuccino.config import register_configs, validate
from cappuccino.hparams_search import trial_context
from cappuccino.runtime import RunPaths, exit_on_interrupt, one_line_errors
from cappuccino.secrets import exit_on_url_passwords
from cappuccino.training import train

register_configs()
# Hydra 1.4 builds conf/config.yaml's callbacks (our own GatherSplits) without an execution
# whitelist and warns about it on every run; the target is this project's, so say nothing.
warnings.filterwarnings("ignore", message=r"hydra\.utils\.instantiate\(\) resolved _target_='cappuccino\.", category=UserWarning)


def run(cfg: DictConfig, paths: RunPaths, overrides: Sequence[str] = ()) -> float:
    """Validate ``cfg`` before any work, then train, or run the configured experiment."""
    typed = validate(cfg)
    trial = trial_context()  # set by the study sweeper in a sweep's jobs
    if typed.experiment is not None:
        run_experiment = get_object(typed.experiment._target_)  # the experiment reads its own settings from cfg
        return run_experiment(cfg=typed, config=cfg, paths=paths, overrides=overrides, parent_run_id=trial.parent_run_id)
    return train(typed, OmegaConf.to_yaml(cfg, resolve=True), paths, overrides, trial.parent_run_id, trial.number)


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    paths = RunPaths(run_dir=Path(hydra_cfg.runtime.output_dir), project_dir=Path(hydra_cfg.runtime.cwd))
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    with exit_on_interrupt(multirun), one_line_errors(multirun):
        return run(cfg, paths, hydra_cfg.overrides.task)


if __name__ == "__main__":
    exit_on_url_passwords(sys.argv[1:])  # before Hydra copies the arguments into .hydra/ and its logs
    main()
