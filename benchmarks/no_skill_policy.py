"""What a policy with no skill scores on each split of the default run: the zero-skill line an
agent's excess Sharpe should be read against.

The policy always targets equal weight (an agent's action 0 on every asset), so it rebalances
through the rules' no-trade band where buy-and-hold, bought once, lets weights drift. Its excess
Sharpe over buy-and-hold is not 0: a split where the assets drift apart, or trend (the planted
signal is a positive autocorrelation), costs rebalancing. Same bars, fees and fill rules as the
agent's backtests.

    python benchmarks/no_skill_policy.py                       # signal 0 and the default 0.1
    python benchmarks/no_skill_policy.py --strengths 0.3 --override rules.fee=0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import Tensor

from cappuccino.config import build, register_configs, validate
from cappuccino.data import load_market
from cappuccino.data.tensors import MarketTensors
from cappuccino.evaluation.backtest import backtest, stitch
from cappuccino.evaluation.metrics import periods_per_year
from cappuccino.evaluation.splits import select_splits
from cappuccino.trading.rules import target_weights

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class EqualWeightPolicy:
    """Action 0 on every asset, every bar: equal target weights less the cash reserve."""

    def target_weights(self, window: Tensor, weights: Tensor, cash_reserve: float) -> Tensor:
        batch, _, n_assets, _ = window.shape  # (B, L, A, F)
        return target_weights(torch.zeros(batch, n_assets, dtype=torch.float64, device=window.device), cash_reserve)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--override", action="append", default=[], help="a Hydra override of train.py's config (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    register_configs()
    print("| signal | split | bars | no-skill excess Sharpe | its return | buy-and-hold return | turnover / year |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for strength in args.strengths:
        with initialize_config_dir(config_dir=str(CONF_DIR)):
            cfg = validate(compose("config", overrides=[*args.override, f"data.signal_strength={strength}"]))
        market, _ = load_market(cfg.data, cfg.window.zscore_window)
        tensors = MarketTensors.from_market(market, cfg.window.lookback, "cpu")
        for _, split in select_splits(build(cfg.cv), None, market.first_valid, market.n_bars):
            for name, segments in (("validation", split.validation), ("test", split.test)):
                if not segments:
                    continue
                run = stitch(backtest(EqualWeightPolicy(), tensors, segments, build(cfg.rules), cfg.env.initial_cash))
                m = run.metrics(periods_per_year(market.interval))
                bars = sum(s.stop - s.start for s in segments)
                print(f"| {strength:g} | {name} | {bars:,} | {m['excess_sharpe']:+.2f} | {m['total_return']:+.1%} | {m['benchmark_total_return']:+.1%} | {m['annual_turnover']:.1f} |")


if __name__ == "__main__":
    main()
