"""Trading environments: the batched torch env used for training and its gymnasium adapter."""

from cappuccino.env.portfolio import (
    EpisodeSampling,
    Observation,
    PortfolioEnv,
    StepResult,
    equal_weight_buy_and_hold,
)

__all__ = ["EpisodeSampling", "Observation", "PortfolioEnv", "StepResult", "equal_weight_buy_and_hold"]
