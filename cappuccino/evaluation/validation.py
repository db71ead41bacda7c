"""Deterministic backtests of the validation segments during training (``trainer.eval_every``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cappuccino.data.tensors import MarketTensors, Segment
from cappuccino.evaluation.backtest import backtest, stitch
from cappuccino.models.loading import TrainedPolicy
from cappuccino.trading.rules import TradingRules

VALIDATION_CURVE = "validation_curve.json"  # the results so far, in the run folder


def validation_curve_file(split_name: str) -> str:
    """The curve's file name: ``VALIDATION_CURVE`` for the one split of a holdout run (``split_name``
    is ""), else one file per split (``validation_curve_split0.json``)."""
    return VALIDATION_CURVE if not split_name else VALIDATION_CURVE.replace(".json", f"_{split_name}.json")


@dataclass
class PeriodicValidation:
    """Only ``segments``, a split's validation part, are ever run: the test segments stay unseen
    until the agent is final. A validation draws no random numbers (deterministic actions, no
    random episode starts), so training runs exactly as it would without. Every result is
    appended to ``history`` and the whole curve rewritten to ``file`` as JSON, so an interrupted
    run keeps the curve so far.
    """

    every: int  # environment steps between validations
    policy: TrainedPolicy
    market: MarketTensors
    segments: tuple[Segment, ...]
    rules: TradingRules
    initial_cash: float
    periods_per_year: float
    file: Path
    history: list[dict[str, float]] = field(default_factory=list)

    def due(self, step: int, steps_per_update: int, last: bool) -> bool:
        """After the update that crosses a multiple of ``every``, and after the last update, so
        the curve ends at the trained agent."""
        return last or step // self.every > (step - steps_per_update) // self.every

    def __call__(self, step: int) -> dict[str, float]:
        """Validate the policy as it is after ``step`` environment steps; its metrics."""
        module = self.policy.module
        training = module.training
        module.eval()
        runs = backtest(self.policy, self.market, self.segments, self.rules, self.initial_cash)
        metrics = stitch(runs).metrics(self.periods_per_year)
        module.train(training)
        self.history.append({"step": step, **metrics})
        self.file.write_text(json.dumps(self.history, indent=2))
        return metrics
