"""Environment steps per second: batched ``PortfolioEnv`` vs a single-env numpy loop.

The reference applies the same rules (action mapping, fills at the next open with fees, minimum
order sizes, sells before buys, buys scaled to the cash) the way FinRL's ``CryptoEnv`` does: one
environment, a Python loop over assets for sells and for buys, and the state rebuilt with
``np.hstack`` each step: [cash, holdings] then one ``np.hstack`` per lookback bar, as FinRL's
``get_state`` does. A second row builds that state with a single ``np.hstack`` instead, the
fastest a one-environment numpy loop reasonably gets. Before timing, the reference and
``PortfolioEnv`` run the same start and actions and must agree on every portfolio value.

Both sides draw random actions and build the policy's input every step (``env.window(obs.bar)``
for ours). Steps/s counts environment transitions: B * steps / seconds.

    python benchmarks/env_throughput.py            # full run
    python benchmarks/env_throughput.py --quick    # a few seconds
    python benchmarks/env_throughput.py --device cuda
    python benchmarks/env_throughput.py --threads 1  # torch on one core, like the reference
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from cappuccino.config import DEFAULT_SYMBOLS
from cappuccino.data.tensors import MarketTensors, Segment
from cappuccino.env import EpisodeSampling, PortfolioEnv
from cappuccino.trading.rules import TradingRules

RULES_YAML = Path(__file__).resolve().parents[1] / "conf" / "rules" / "default.yaml"

N_BARS, LOOKBACK, N_FEATURES, EPISODE_LENGTH = 17_520, 60, 14, 720


def synthetic_market(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(T, A, F) float32 features and (T, A) open, close of a geometric random walk."""
    rng = np.random.default_rng(seed)
    n_assets = len(DEFAULT_SYMBOLS)
    start = np.array([150.0, 30.0, 40_000.0, 2_500.0, 15.0, 80.0, 6.0])  # min sizes matter
    close = start * np.exp(np.cumsum(rng.normal(0.0, 0.01, (N_BARS, n_assets)), axis=0))
    open_ = np.vstack([start, close[:-1]])
    features = rng.normal(size=(N_BARS, n_assets, N_FEATURES)).astype(np.float32)
    return features, open_, close


class ReferenceEnv:
    """One environment, numpy and Python loops, FinRL ``CryptoEnv`` style; same rules as ours."""

    def __init__(
        self, features, open_, close, rules: TradingRules, sampling: EpisodeSampling, min_size: np.ndarray, seed: int,
        finrl_state: bool = True,
    ) -> None:  # fmt: skip
        self.features, self.open, self.close, self.min_size = features, open_, close, min_size
        self.rules, self.sampling = rules, sampling
        self.finrl_state = finrl_state
        self.n_assets = open_.shape[1]
        self.rng = np.random.default_rng(seed)

    def reset(self, start: int | None = None) -> np.ndarray:
        last_start = len(self.open) - 2 - (EPISODE_LENGTH - 1)
        self.time = self.rng.integers(LOOKBACK - 1, last_start + 1) if start is None else start
        self.end = self.time + EPISODE_LENGTH - 1
        self.cash = self.sampling.initial_cash
        self.stocks = np.zeros(self.n_assets)
        self.total_asset = self.cash
        return self.get_state()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool]:
        rules, price = self.rules, self.open[self.time + 1]
        raw = (np.clip(action, -1.0, 1.0) + 1.0) / 2.0
        raw = raw / max(raw.sum(), 1.0)
        value_open = self.cash + (self.stocks * price).sum()
        target = raw * (1.0 - rules.cash_reserve) * value_open / price
        delta = target - self.stocks
        for i in range(self.n_assets):  # sells
            if delta[i] < 0 and -delta[i] >= self.min_size[i]:
                self.stocks[i] += delta[i]
                self.cash += -delta[i] * price[i] * (1.0 - rules.fee)
        cost = 0.0
        for i in range(self.n_assets):
            if delta[i] > 0 and delta[i] >= self.min_size[i]:
                cost += delta[i] * price[i] * (1.0 + rules.fee)
        scale = min(1.0, self.cash / cost) if cost > 0 else 1.0
        for i in range(self.n_assets):  # buys
            units = delta[i] * scale
            if delta[i] > 0 and delta[i] >= self.min_size[i] and units >= self.min_size[i]:
                self.stocks[i] += units
                self.cash -= units * price[i] * (1.0 + rules.fee)
        self.cash = max(self.cash, 0.0)
        self.time += 1
        next_total_asset = self.cash + (self.stocks * self.close[self.time]).sum()
        reward = self.sampling.reward_scale * np.log(next_total_asset / self.total_asset)
        self.total_asset = next_total_asset
        done = self.time > self.end
        state = self.reset() if done else self.get_state()
        return state, reward, done

    def get_state(self) -> np.ndarray:
        if not self.finrl_state:
            window = self.features[self.time - LOOKBACK + 1 : self.time + 1]
            return np.hstack((self.cash, self.stocks, window.ravel())).astype(np.float32)
        state = np.hstack((self.cash, self.stocks))
        for i in range(LOOKBACK):
            state = np.hstack((state, self.features[self.time - i].ravel())).astype(np.float32)
        return state


def market_tensors(features, open_, close, device: torch.device | str = "cpu") -> MarketTensors:
    return MarketTensors(
        torch.from_numpy(features).to(device), torch.from_numpy(open_).to(device), torch.from_numpy(close).to(device),
        lookback=LOOKBACK, symbols=tuple(DEFAULT_SYMBOLS),
    )  # fmt: skip


def check_same_rules(
    features, open_, close, rules: TradingRules, sampling: EpisodeSampling, min_size: np.ndarray
) -> None:
    """Same start and actions -> the same portfolio values, or the comparison means nothing."""
    start, n_steps = 5_000, 300
    actions = np.random.default_rng(1).uniform(-1.5, 1.5, (n_steps, len(min_size)))
    reference = ReferenceEnv(features, open_, close, rules, sampling, min_size, seed=0)
    reference.reset(start)
    ours = PortfolioEnv(
        market_tensors(features, open_, close), [Segment(start - LOOKBACK + 1, N_BARS)], rules=rules,
        sampling=sampling, num_envs=1, random_start=False, episode_length=None,
    )  # fmt: skip
    ours.reset()
    for action in actions:
        reference.step(action)
        value = ours.step(torch.from_numpy(action).unsqueeze(0)).value.item()
        if not np.isclose(value, reference.total_asset, rtol=1e-9):
            raise AssertionError(f"reference and PortfolioEnv disagree: {reference.total_asset} vs {value}")


def time_reference(
    features, open_, close, rules: TradingRules, sampling: EpisodeSampling, min_size: np.ndarray, n_steps: int,
    finrl_state: bool,
) -> float:  # fmt: skip
    env = ReferenceEnv(features, open_, close, rules, sampling, min_size, seed=0, finrl_state=finrl_state)
    rng = np.random.default_rng(0)
    env.reset()
    start = time.perf_counter()
    for _ in range(n_steps):
        env.step(rng.uniform(-1.0, 1.0, env.n_assets))
    return n_steps / (time.perf_counter() - start)


def time_batched(env: PortfolioEnv, n_steps: int, reuse_buffer: bool = False, warmup: int = 10) -> float:
    generator = torch.Generator(device=env.device).manual_seed(0)
    obs = env.reset()
    shape = (env.num_envs, env.lookback, env.n_assets, env.n_features)
    buffer = torch.empty(shape, device=env.device) if reuse_buffer else None

    def run(steps: int):
        nonlocal obs
        for _ in range(steps):
            env.window(obs.bar, out=buffer)  # the policy's input, gathered every step
            action = torch.rand(env.num_envs, env.n_assets, generator=generator, device=env.device) * 2 - 1
            obs = env.step(action).obs

    run(warmup)
    synchronize(env.device)
    start = time.perf_counter()
    run(n_steps)
    synchronize(env.device)
    return env.num_envs * n_steps / (time.perf_counter() - start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, a few seconds in all")
    parser.add_argument("--device", default="cpu", help="torch device of the batched env")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    features, open_, close = synthetic_market()
    # The reference loop knows no no-trade band; both sides use plain log-return rewards.
    # Alpaca's minimum order sizes, as conf/rules/default.yaml lists them.
    alpaca_min_order_size = OmegaConf.to_container(OmegaConf.load(RULES_YAML).min_order_size)
    rules = TradingRules(rebalance_band=0.0, min_order_size=alpaca_min_order_size)
    sampling = EpisodeSampling(episode_length=EPISODE_LENGTH, reward="log_return")
    min_size = np.array([alpaca_min_order_size[s] for s in DEFAULT_SYMBOLS])
    check_same_rules(features, open_, close, rules, sampling, min_size)

    scale = 0.1 if args.quick else 1.0
    n_reference = int(20_000 * scale)
    reference = time_reference(features, open_, close, rules, sampling, min_size, n_reference // 4, finrl_state=True)
    one_hstack = time_reference(features, open_, close, rules, sampling, min_size, n_reference, finrl_state=False)
    market = market_tensors(features, open_, close, device)
    rows = [("reference: FinRL-style numpy loop, B=1", reference), ("numpy loop, one np.hstack state, B=1", one_hstack)]
    settings = ((1, 3_000, False), (64, 2_000, False), (1024, 300, False), (1024, 300, True))
    for num_envs, n_steps, reuse_buffer in settings:
        env = PortfolioEnv(market, [Segment(0, N_BARS)], rules=rules, sampling=sampling, num_envs=num_envs)
        name = f"PortfolioEnv ({device.type}), B={num_envs}" + (", window(out=buffer)" if reuse_buffer else "")
        rows.append((name, time_batched(env, max(int(n_steps * scale), 20), reuse_buffer)))

    print(f"\n{N_BARS} bars, {len(DEFAULT_SYMBOLS)} assets, {N_FEATURES} features, lookback {LOOKBACK}, "
          f"torch threads {torch.get_num_threads()}\n")  # fmt: skip
    print("| setting | env steps/s | vs reference |")
    print("|---|---:|---:|")
    for name, steps_per_second in rows:
        print(f"| {name} | {steps_per_second:,.0f} | {steps_per_second / reference:.1f}x |")


if __name__ == "__main__":
    main()
