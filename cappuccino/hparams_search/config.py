"""Config of ``hydra/sweeper=study``: hydra-optuna-sweeper's fields plus the heartbeat."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf


@dataclass
class StudySweeperConf(OptunaSweeperConf):
    """``n_trials`` is the study's total, counted over every run of the command and every worker.

    A running trial records a heartbeat every ``heartbeat_interval`` seconds; one silent for
    ``grace_period`` seconds (its process was killed) is failed and queued to run again.
    ``pbo_blocks`` is CSCV's S: the even number of disjoint blocks of time the trials'
    out-of-sample returns are cut into for the probability of backtest overfitting (Bailey et
    al. suggest 16; FinRL_Crypto uses 14). Only the ``keep_checkpoints`` best complete trials keep
    their checkpoints and policy models, in their folders and MLflow runs: a 20-trial x 15-split
    study would otherwise hold several GB of agents nobody deploys.
    """

    _target_: str = "cappuccino.hparams_search.sweeper.StudySweeper"
    heartbeat_interval: int = 10
    grace_period: int = 30
    pbo_blocks: int = 16
    keep_checkpoints: int = 3


def register_sweeper_config() -> None:
    ConfigStore.instance().store(group="hydra/sweeper", name="study", node=StudySweeperConf, provider="cappuccino")
