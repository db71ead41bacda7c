"""Train a PPO portfolio agent: ``python train.py [group=option ...] [key=value ...]``.

Returns the configured objective (trainer.objective) so Hydra's Optuna sweeper can optimise it.
With ``experiment=transfer_1h_5m`` it runs that comparison (cappuccino/experiments/transfer.py)
and returns the pre-trained agent's final validation objective.
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cappuccino.config import register_configs
from cappuccino.training import RunPaths, run

register_configs()


@hydra.main(config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    paths = RunPaths(run_dir=Path(hydra_cfg.runtime.output_dir), project_dir=Path(hydra_cfg.runtime.cwd))
    return run(cfg, paths, hydra_cfg.overrides.task)


if __name__ == "__main__":
    main()
