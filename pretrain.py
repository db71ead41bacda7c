"""Pre-train the encoder on the agent's windows: ``python pretrain.py [group=option ...] [key=value ...]``.

Writes best_encoder.pt for ``python train.py encoder.pretrained=PATH``; returns the best
validation loss, so Hydra's Optuna sweeper can minimise it.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cappuccino.config import register_configs
from cappuccino.pretrain import run
from cappuccino.runtime import RunPaths, exit_on_interrupt, one_line_errors
from cappuccino.secrets import exit_on_url_passwords

register_configs()


@hydra.main(config_path="conf", config_name="pretrain")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    paths = RunPaths(run_dir=Path(hydra_cfg.runtime.output_dir), project_dir=Path(hydra_cfg.runtime.cwd))
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    with exit_on_interrupt(multirun), one_line_errors(multirun):
        return run(cfg, paths, hydra_cfg.overrides.task, hydra_cfg.runtime.choices.encoder)


if __name__ == "__main__":
    exit_on_url_passwords(sys.argv[1:])  # before Hydra copies the arguments into .hydra/ and its logs
    main()
