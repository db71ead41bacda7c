"""Lines to read an agent's excess Sharpe against, on each split of the default run: no skill,
the planted edge as far as past prices reveal it, and the oracle.

- **no skill**: the ``equal_weight`` reference every run reports
  (``cappuccino.evaluation.references``): always equal target weights, rebalanced through the
  band. Its excess Sharpe is the split's luck, not 0.
- **filter**: the oracle's rule (``cappuccino.evaluation.references.OracleRule``) on expected
  gains estimated from past closes only. It knows the generator's parameters (signal strength,
  half-life, drift), not its state: the signal state is an exponential average of past
  standardised returns (``cappuccino.data.synthetic``), recovered with a trailing volatility
  estimate. What a learner that saw only the bars could reach, with the parameters known.
- **oracle**: the same rule on the generator's true expected gains.

Same bars, fees and fill rules as the agent's backtests.

    python benchmarks/reference_lines.py                       # signal 0, 0.1 (default), 0.3
    python benchmarks/reference_lines.py --strengths 0.1 --override rules.fee=0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

from cappuccino.config import build, register_configs, validate
from cappuccino.data import load_market
from cappuccino.data.market import MarketData
from cappuccino.data.synthetic import PlantedSignal, planted_signal
from cappuccino.data.tensors import LEDGER_DTYPE, MarketTensors
from cappuccino.evaluation.backtest import backtest, stitch
from cappuccino.evaluation.metrics import periods_per_year
from cappuccino.evaluation.references import EqualWeightPolicy, OracleRule, oracle_gain
from cappuccino.evaluation.splits import select_splits

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
VARIANCE_DECAY = 0.97  # trailing variance estimate: ~33 bars, near the generator's GARCH memory


def filtered_gain(market: MarketData, signal: PlantedSignal, strength: float) -> np.ndarray:
    """(T, A) expected gains over the signal's mean life from closes up to each bar.

    With ``u[t] = s z[t-1] + sqrt(1 - s^2) e[t]`` and ``z[t] = rho z[t-1] + sqrt(1 - rho^2) e[t]``,
    eliminating ``e`` gives ``z[t] = (rho - s sqrt(1 - rho^2) / sqrt(1 - s^2)) z[t-1]
    + sqrt((1 - rho^2) / (1 - s^2)) u[t]``: an exponential average of standardised returns.
    """
    log_return = np.diff(np.log(market.ohlcv[..., 3]), axis=0, prepend=np.nan)  # (T, A)
    rho, drift, life = signal.decay, signal.drift_per_bar, 1.0 / (1.0 - signal.decay)
    keep = rho - strength * np.sqrt(1 - rho**2) / np.sqrt(1 - strength**2)
    gain_of_return = np.sqrt((1 - rho**2) / (1 - strength**2))
    variance = np.var(log_return[1 : market.first_valid], axis=0)  # warm-up bars: never traded
    state = np.zeros(market.ohlcv.shape[1])
    gain = np.zeros_like(log_return)
    for t in range(1, len(log_return)):
        state = keep * state + gain_of_return * (log_return[t] - drift + 0.5 * variance) / np.sqrt(variance)
        variance = VARIANCE_DECAY * variance + (1 - VARIANCE_DECAY) * (log_return[t] - drift) ** 2
        gain[t] = np.sqrt(variance) * strength * state * life + np.expm1(drift * life)
    return gain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--override", action="append", default=[], help="a Hydra override of train.py's config (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    register_configs()
    print("| signal | split | bars | buy-and-hold return | no skill | filter | oracle | corr(filter, oracle gains) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for strength in args.strengths:
        with initialize_config_dir(config_dir=str(CONF_DIR)):
            cfg = validate(compose("config", overrides=[*args.override, f"data.signal_strength={strength}"]))
        market, _ = load_market(cfg.data, cfg.window.zscore_window)
        tensors = MarketTensors.from_market(market, cfg.window.lookback, "cpu")
        rules = build(cfg.rules)
        signal = planted_signal(build(cfg.data))
        true = oracle_gain(signal, market, "cpu")
        filtered = filtered_gain(market, signal, strength)
        observed = slice(market.first_valid, None)
        corr = np.mean([np.corrcoef(filtered[observed, a], true.numpy()[observed, a])[0, 1] for a in range(market.n_assets)]) if strength else float("nan")
        policies = {
            "no skill": EqualWeightPolicy,
            "filter": lambda: OracleRule(torch.as_tensor(filtered, dtype=LEDGER_DTYPE), 2.0 * rules.fee),
            "oracle": lambda: OracleRule(true, 2.0 * rules.fee),
        }
        for _, split in select_splits(build(cfg.cv), None, market.first_valid, market.n_bars):
            for name, segments in (("validation", split.validation), ("test", split.test)):
                if not segments:
                    continue
                scores = {label: stitch(backtest(make(), tensors, segments, rules, cfg.env.initial_cash)).metrics(periods_per_year(market.interval)) for label, make in policies.items()}
                bars = sum(s.stop - s.start for s in segments)
                cells = " | ".join(f"{scores[label]['excess_sharpe']:+.2f}" for label in policies)
                print(f"| {strength:g} | {name} | {bars:,} | {scores['no skill']['benchmark_total_return']:+.1%} | {cells} | {corr:.3f} |")


if __name__ == "__main__":
    main()
