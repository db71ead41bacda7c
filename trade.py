"""Trade trained policies bar by bar: ``python trade.py [group=option ...] [key=value ...]``.

The default broker replays the held-out test split (conf/broker/sim.yaml) through the same
decision path a real account uses; returns the session's annualised Sharpe ratio.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cappuccino.config import register_configs
from cappuccino.runtime import RunPaths, exit_on_interrupt, one_line_errors
from cappuccino.secrets import exit_on_url_passwords
from cappuccino.trading.session import run

register_configs()


@hydra.main(config_path="conf", config_name="trade")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    paths = RunPaths(run_dir=Path(hydra_cfg.runtime.output_dir), project_dir=Path(hydra_cfg.runtime.cwd))
    with exit_on_interrupt(False), one_line_errors(False):
        return run(cfg, paths)


if __name__ == "__main__":
    exit_on_url_passwords(sys.argv[1:])  # before Hydra copies the arguments into .hydra/ and its logs
    main()
