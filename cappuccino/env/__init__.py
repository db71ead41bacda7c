"""Trading environments: the batched torch env used for training and its gymnasium adapter."""

from cappuccino.env.portfolio import (
    Observation,
    PortfolioEnv,
    Segment,
    StepResult,
    decision_steps,
    equal_weight_buy_and_hold,
    rebalance,
    target_weights,
)

__all__ = [
    "Observation",
    "PortfolioEnv",
    "Segment",
    "StepResult",
    "decision_steps",
    "equal_weight_buy_and_hold",
    "rebalance",
    "target_weights",
]
