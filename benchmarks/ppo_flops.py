"""How fast PPO could train each encoder on this machine at best: FLOPs per environment step
against the machine's dense matmul rate (a roofline's compute roof).

For every row (``benchmarks/ppo_encoders.py``'s ``ENCODER[:TOKENS][+KEY=VALUE...]``) the policy is
built from the shipped configs as ``train.py`` builds it, and ``torch.utils.flop_counter`` counts
the floating-point operations of

- the rollout: one ``act`` (actor and critic forward) per environment step;
- the update: ``agent.update_epochs`` passes of ``evaluate`` forward and backward per step (the
  upper end: a target-KL stop ends an update's epochs early).

Attention is counted through PyTorch's math kernel (the fused CPU kernel has no FLOP formula;
both compute the same products). Evaluation backtests, the env and data preparation are left
out, so the bound is optimistic. The machine's rate is a large float32 matmul's, the best case
for any kernel here: ``steps/s bound = matmul FLOP/s / FLOPs per step``. No real job reaches
it (elementwise ops and copies are memory-bound; BENCHMARKS.md's profile), so a target above
the bound cannot be met by tuning code, only by doing less work per step.

    python benchmarks/ppo_flops.py                                  # lookback 60, 2 threads
    python benchmarks/ppo_flops.py --encoders mlp ft_default ft_default:patch ft_small --lookback 20
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cappuccino.config import register_configs, validate
from cappuccino.models.loading import policy_from_config
from ppo_encoders import Row

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
N_ASSETS, N_FEATURES = 7, 14


@dataclass(frozen=True)
class StepCost:
    """FLOPs per environment step, split by phase."""

    rollout: float
    update: float

    @property
    def total(self) -> float:
        return self.rollout + self.update


def count_flops(fn) -> float:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def step_cost(row: Row, lookback: int, batch: int) -> StepCost:
    """FLOPs per environment step of ``row``'s PPO at ``lookback``, counted on ``batch`` samples."""
    overrides = [f"window.lookback={lookback}", *row.overrides()]
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = validate(compose("config", overrides=overrides))
    policy = policy_from_config(cfg.encoder, cfg.agent.init_log_std, lookback, N_ASSETS, N_FEATURES)
    window = torch.randn(batch, lookback, N_ASSETS, N_FEATURES)
    weights = torch.full((batch, N_ASSETS + 1), 1.0 / (N_ASSETS + 1))

    def rollout() -> None:
        with torch.no_grad():
            policy.act(window, weights)

    action = torch.zeros(batch, N_ASSETS)

    def update_pass() -> None:
        log_prob, entropy, value = policy.evaluate(window, weights, action)
        (log_prob.mean() + entropy.mean() + value.square().mean()).backward()

    return StepCost(count_flops(rollout) / batch, cfg.agent.update_epochs * count_flops(update_pass) / batch)


def matmul_rate(size: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of a float32 (size x size) @ (size x size) matmul: best of repeated timings."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: thread pool and kernel selection
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["mlp", "ft_default", "ft_default:patch", "ft_default:patch+encoder.patch_bars=10"])
    parser.add_argument("--lookback", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (pinned: the default collapses under load)")
    parser.add_argument("--batch", type=int, default=32, help="samples the FLOPs are counted on (per-sample cost is batch-free)")
    parser.add_argument("--target", type=float, default=250.0, help="steps/s target to compare the bound with")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    register_configs()

    rate = matmul_rate()
    print(f"float32 matmul, {args.threads} threads: {rate / 1e9:,.0f} GFLOP/s (the compute roof)")
    print(f"lookback {args.lookback}; FLOPs per environment step; bound = roof / FLOPs per step\n")
    print(f"| encoder | rollout MFLOP | update MFLOP | total MFLOP | bound steps/s | {args.target:g} steps/s needs |")
    print("|---|---:|---:|---:|---:|---:|")
    for text in args.encoders:
        row = Row.parse(text)
        cost = step_cost(row, args.lookback, args.batch)
        needed = args.target * cost.total / 1e9
        print(
            f"| {row.label} | {cost.rollout / 1e6:,.1f} | {cost.update / 1e6:,.1f} | {cost.total / 1e6:,.1f} "
            f"| {rate / cost.total:,.0f} | {needed:,.0f} GFLOP/s |"
        )


if __name__ == "__main__":
    main()
