"""Decision latency of trade.py: from a bar's close to its orders ready, for an ensemble.

Times ``Trader.step`` (observe the portfolio, every member's forward pass on its window, the
vote, the guards, the order plan, the state file's transactions, and the simulated exchange's
fills) on the default synthetic market, for ensembles of untrained members (latency does not
depend on the weights) built from the shipped encoder configs at ``--lookback``, side by side
in one run. Reports the median and 95th percentile over ``--bars`` bars, after warm-up bars.

    python benchmarks/decision_latency.py                          # 10 x ft_default and 10 x mlp, lookback 60, 2 threads
    python benchmarks/decision_latency.py --members 5 --encoders ft_small --tokens patch
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cappuccino.config import build, register_configs, validate  # noqa: E402
from cappuccino.data import load_market  # noqa: E402
from cappuccino.data.features import feature_memory, with_features  # noqa: E402
from cappuccino.data.tensors import MarketTensors  # noqa: E402
from cappuccino.models.loading import PolicySchema, TrainedPolicy, policy_from_config  # noqa: E402
from cappuccino.tracking import NullTracker  # noqa: E402
from cappuccino.trading.guards import RiskGuards  # noqa: E402
from cappuccino.trading.live import MARGIN_BARS  # noqa: E402
from cappuccino.trading.members import Member  # noqa: E402
from cappuccino.trading.sim import SimBroker  # noqa: E402
from cappuccino.trading.state import TradingState  # noqa: E402
from cappuccino.trading.trader import BarInput, Trader, exact_quantity  # noqa: E402


def latency(encoder: str, tokens: str | None, members: int, lookback: int, bars: int, warmup: int) -> list[float]:
    """Milliseconds per ``Trader.step`` over ``bars`` bars of an ensemble of ``members``."""
    overrides = [f"encoder={encoder}", f"window.lookback={lookback}", "logger=none"]
    overrides += [f"encoder.tokens={tokens}"] if tokens else []
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        cfg = validate(compose("config", overrides=overrides))
    market, _ = load_market(cfg.data, cfg.window.zscore_window)
    tensors = MarketTensors.from_market(market, lookback, "cpu")
    schema = PolicySchema.of(market, lookback, cfg.window.zscore_window, {})
    ensemble = []
    for index in range(members):
        torch.manual_seed(index)
        module = policy_from_config(cfg.encoder, cfg.agent.init_log_std, lookback, market.n_assets, len(market.feature_names)).eval()
        ensemble.append(Member(f"{encoder}-{index}", TrainedPolicy(module, schema), None))
    rules = build(cfg.rules)
    times = []
    with tempfile.TemporaryDirectory() as scratch:
        broker = SimBroker(open_prices=market.field("open"), symbols=market.symbols, fee=rules.fee, initial_cash=1e5, exchange_file=Path(scratch) / "x.db")
        state = TradingState(Path(scratch) / "trading.db")
        trader = Trader(
            members=ensemble, vote="mean", rules=rules, guards=RiskGuards(max_weight=1.0, max_drawdown=0.99, daily_loss_limit=0.99),
            broker=broker, state=state, tracker=NullTracker(), symbols=market.symbols, interval=market.interval, strategy_id="bench",
            quantize=exact_quantity, clock=lambda t: t + market.interval,
        )  # fmt: skip
        first = market.n_bars - bars - warmup - 2
        with torch.inference_mode():
            for bar in range(first, first + warmup + bars):
                broker.at_bar(bar)
                windows = [tensors.window(torch.tensor([bar])) for _ in ensemble]
                start = time.perf_counter()  # the bar has closed: its windows are read, then decided on
                trader.step(BarInput(bar, market.timestamps[bar], market.ohlcv[bar], windows))
                if bar >= first + warmup:
                    times.append((time.perf_counter() - start) * 1e3)
        state.close()
        broker.close()
    return times


def feature_latency(lookback: int, repeats: int = 20) -> list[float]:
    """Milliseconds to compute the features of a live trader's trailing bars (the training code
    over ``feature_memory + lookback + MARGIN_BARS`` bars of 7 assets), once per bar in live trading."""
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        cfg = validate(compose("config", overrides=[f"window.lookback={lookback}", "logger=none"]))
    market, _ = load_market(cfg.data, cfg.window.zscore_window)
    n = feature_memory(cfg.window.zscore_window) + lookback + MARGIN_BARS
    trailing = dataclasses.replace(market, timestamps=market.timestamps[-n:], ohlcv=market.ohlcv[-n:], features=None, feature_names=(), content_hash="")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with_features(trailing, cfg.window.zscore_window)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["ft_default", "mlp"])
    parser.add_argument("--tokens", default=None, help="encoder.tokens for the FT encoders (asset_time or patch)")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--lookback", type=int, default=60)
    parser.add_argument("--bars", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, pinned (defaults collapse under contention)")
    args = parser.parse_args()
    register_configs()
    torch.set_num_threads(args.threads)
    print("| ensemble | lookback | median ms | p95 ms |\n|---|---:|---:|---:|")
    for encoder in args.encoders:
        tokens = args.tokens if encoder.startswith("ft") else None
        times = sorted(latency(encoder, tokens, args.members, args.lookback, args.bars, args.warmup))
        label = f"{args.members} x {encoder}{f' ({tokens})' if tokens else ''}"
        print(f"| {label} | {args.lookback} | {statistics.median(times):.1f} | {times[int(0.95 * (len(times) - 1))]:.1f} |", flush=True)
    times = sorted(feature_latency(args.lookback))
    print(f"| features of the live trailing bars (once per bar, any ensemble) | {args.lookback} | {statistics.median(times):.1f} | {times[int(0.95 * (len(times) - 1))]:.1f} |")


if __name__ == "__main__":
    main()
