"""End-to-end PPO throughput (rollout + update, env samples per second): cappuccino vs SB3.

Both train the same task with the same algorithm settings and network:

- data: a numpy random walk of 7 assets with 14 standard-normal stand-in features (the
  throughput does not depend on what the features mean), lookback 20;
- network: separate actor and critic MLPs [256, 256] with tanh (SB3's
  ``net_arch=dict(pi=[256, 256], vf=[256, 256])``), orthogonal init, state-independent log-std;
- PPO: the same num_envs, n_steps, minibatch size, epochs, clipping (value clipping included),
  no target-KL early stop (so both run every epoch), truncation bootstrap in both.

cappuccino runs one batched ``PortfolioEnv`` with ``num_envs`` episodes stepped together in torch,
once in float32 (the default) and once with ``precision="bf16-mixed"`` (bfloat16 autocast
forwards, float32 parameters, optimiser state and losses; fast on CPUs with AMX / AVX512-BF16).
SB3 drives ``num_envs`` copies of the gymnasium adapter (``PortfolioGymEnv`` around a one-episode
``PortfolioEnv``) through ``DummyVecEnv``, the standard single-process setup (SubprocVecEnv would
spend cores the update needs on this 2-core reference machine). Both run on the CPU in this
process with the same torch thread count (``--threads``, default PyTorch's) and the same glibc
allocator settings: ``PPO.learn`` keeps freed memory mapped (``agents.memory.retained_freed_memory``), and SB3's
``learn`` calls run inside the same context, so neither side pays page faults the other does not.

Each side first runs one untimed update as a warm-up, then ``--updates`` timed ones; the three
runs alternate ``--repeats`` times. The table shows each contender's median run (by total time) and
the median and range of the speed-up, computed per repeat (SB3's time over the contender's in
the same repeat, so load that other processes put on the machine partly cancels).

    python benchmarks/ppo_throughput.py            # 64 envs x 128 steps, minibatch 1024, 4 epochs
    python benchmarks/ppo_throughput.py --quick    # 16 envs x 64 steps, minibatch 256, 2 epochs
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import OmegaConf
from stable_baselines3 import PPO as SB3PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv

from cappuccino.agents import PPO, PPOSettings
from cappuccino.agents.memory import retained_freed_memory
from cappuccino.config import DEFAULT_SYMBOLS, MLPEncoderConfig, PPOConfig
from cappuccino.data.tensors import MarketTensors, Segment
from cappuccino.env import EpisodeSampling, PortfolioEnv
from cappuccino.env.gym_adapter import PortfolioGymEnv
from cappuccino.models.loading import policy_from_config
from cappuccino.trading.rules import TradingRules

LOOKBACK, N_FEATURES, HIDDEN = 20, 14, [256, 256]
INIT_LOG_STD = PPOConfig.init_log_std  # the config's default starting exploration, for both sides
RULES_YAML = Path(__file__).resolve().parents[1] / "conf" / "rules" / "default.yaml"


class Stopwatch:
    """Sums the wall time spent in the methods it wraps (used to split rollout from update)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, obj: object, name: str) -> None:
        method = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(obj, name, timed)


@dataclass(frozen=True)
class Timing:
    total: float  # seconds for the timed updates, rollout + update
    rollout: float  # of which collecting the rollouts (truncation bootstrap included)


def random_walk(n_bars: int, symbols: tuple[str, ...], seed: int) -> MarketTensors:
    """Geometric random-walk prices (1 % hourly volatility); each bar opens at the previous close."""
    rng = np.random.default_rng(seed)
    n_assets = len(symbols)
    close = 100.0 * np.exp(np.cumsum(0.01 * rng.standard_normal((n_bars, n_assets)), axis=0))
    open_ = np.vstack([close[:1], close[:-1]])
    features = rng.standard_normal((n_bars, n_assets, N_FEATURES)).astype(np.float32)
    return MarketTensors(
        torch.from_numpy(features), torch.from_numpy(open_), torch.from_numpy(close), lookback=LOOKBACK, symbols=symbols
    )


def alpaca_rules() -> TradingRules:
    """The default rules with Alpaca's minimum order sizes, as conf/rules/default.yaml lists them."""
    return TradingRules(min_order_size=OmegaConf.to_container(OmegaConf.load(RULES_YAML).min_order_size))


def make_env(
    market: MarketTensors, rules: TradingRules, sampling: EpisodeSampling, num_envs: int, seed: int
) -> PortfolioEnv:
    segment = Segment(0, market.n_bars)
    return PortfolioEnv(market, [segment], rules=rules, sampling=sampling, num_envs=num_envs, seed=seed)


def time_ours(
    market: MarketTensors, rules: TradingRules, sampling: EpisodeSampling, cfg: PPOSettings, updates: int,
    precision: str,
) -> Timing:  # fmt: skip
    """Time ``updates`` PPO updates at ``precision`` (after one warm-up update)."""
    torch.manual_seed(0)
    env = make_env(market, rules, sampling, sampling.num_envs, seed=0)
    encoder = MLPEncoderConfig(hidden_sizes=HIDDEN, activation="tanh")
    policy = policy_from_config(encoder, INIT_LOG_STD, LOOKBACK, env.n_assets, N_FEATURES)
    batch = sampling.num_envs * cfg.n_steps
    PPO(policy, env, cfg, total_steps=batch, precision=precision).learn()
    ppo, rollout = PPO(policy, env, cfg, total_steps=batch * updates, precision=precision), Stopwatch()
    rollout.wrap(ppo, "_collect")
    start = time.perf_counter()
    ppo.learn()
    return Timing(time.perf_counter() - start, rollout.seconds)


def time_sb3(
    market: MarketTensors, rules: TradingRules, sampling: EpisodeSampling, cfg: PPOSettings, updates: int
) -> Timing:
    """Time ``updates`` SB3 PPO updates (after one warm-up update)."""
    seeds = iter(range(sampling.num_envs))
    venv = make_vec_env(
        lambda: PortfolioGymEnv(make_env(market, rules, sampling, 1, seed=next(seeds))),
        n_envs=sampling.num_envs,
        vec_env_cls=DummyVecEnv,
    )
    model = SB3PPO(
        "MlpPolicy",
        venv,
        learning_rate=cfg.lr,
        n_steps=cfg.n_steps,
        batch_size=cfg.minibatch_size,
        n_epochs=cfg.update_epochs,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_coef,
        clip_range_vf=cfg.clip_coef if cfg.clip_value_loss else None,
        normalize_advantage=cfg.norm_adv,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
        target_kl=cfg.target_kl,
        policy_kwargs=dict(
            net_arch=dict(pi=HIDDEN, vf=HIDDEN), activation_fn=torch.nn.Tanh, log_std_init=INIT_LOG_STD
        ),
        device="cpu",
        seed=0,
    )
    batch = sampling.num_envs * cfg.n_steps
    with retained_freed_memory():  # the allocator settings PPO.learn runs under
        model.learn(total_timesteps=batch)
    rollout = Stopwatch()
    rollout.wrap(model, "collect_rollouts")
    start = time.perf_counter()
    with retained_freed_memory():
        model.learn(total_timesteps=batch * updates, reset_num_timesteps=False)
    return Timing(time.perf_counter() - start, rollout.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--updates", type=int, default=None, help="timed PPO updates (default 3, quick 2)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats; medians are reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    num_envs, n_steps, minibatch, epochs = (16, 64, 256, 2) if args.quick else (64, 128, 1024, 4)
    updates = args.updates or (2 if args.quick else 3)
    rules, sampling = alpaca_rules(), EpisodeSampling(num_envs=num_envs)
    # SB3 has no LR annealing; its cost is nil anyway, but keep the two runs the same algorithm.
    cfg = PPOSettings(n_steps=n_steps, minibatch_size=minibatch, update_epochs=epochs, target_kl=None, anneal_lr=False)
    market = random_walk(n_bars=5000, symbols=tuple(DEFAULT_SYMBOLS), seed=0)
    samples = num_envs * n_steps * updates

    sb3_name = "SB3 PPO (DummyVecEnv of PortfolioGymEnv)"
    contenders: dict[str, Callable[[], Timing]] = {
        "cappuccino PPO (batched torch env), float32": lambda: time_ours(market, rules, sampling, cfg, updates, "32"),
        "cappuccino PPO, bf16-mixed": lambda: time_ours(market, rules, sampling, cfg, updates, "bf16-mixed"),
        sb3_name: lambda: time_sb3(market, rules, sampling, cfg, updates),
    }
    repeats = [{name: measure() for name, measure in contenders.items()} for _ in range(args.repeats)]
    print(
        f"PPO end-to-end throughput: {num_envs} envs x {n_steps} steps, minibatch {minibatch}, {epochs} epochs, "
        f"{updates} timed updates, median of {args.repeats} alternating repeats, lookback {LOOKBACK}, "
        f"{len(DEFAULT_SYMBOLS)} assets x {N_FEATURES} features, MLP {HIDDEN} tanh actor + critic, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads\n"
    )
    print(f"| implementation ({samples} samples) | rollout s | update s | total s | rollout samples/s "
          "| end-to-end samples/s | end-to-end speed-up (min-max) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in contenders:
        runs = sorted((r[name] for r in repeats), key=lambda t: t.total)
        t = runs[(len(runs) - 1) // 2]  # the median run (the lower one of an even count)
        speedups = [r[sb3_name].total / r[name].total for r in repeats]
        spread = f"{statistics.median(speedups):.1f}x ({min(speedups):.1f}-{max(speedups):.1f})"
        print(
            f"| {name} | {t.rollout:.2f} | {t.total - t.rollout:.2f} | {t.total:.2f} | {samples / t.rollout:,.0f} "
            f"| {samples / t.total:,.0f} | {spread} |"
        )


if __name__ == "__main__":
    main()
