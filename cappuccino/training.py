"""The training job behind ``train.py``: data -> features -> env -> PPO -> evaluation -> tracking."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cappuccino.agents.ppo import PPO
from cappuccino.checkpoint import encoder_schema, save_checkpoint
from cappuccino.config import ConfigError, TrainConfig, validate
from cappuccino.data import load_market
from cappuccino.data.features import FEATURE_NAMES, compute_features
from cappuccino.data.market import MarketData
from cappuccino.env.portfolio import PortfolioEnv, Segment
from cappuccino.evaluation.backtest import Backtest, backtest
from cappuccino.evaluation.metrics import periods_per_year
from cappuccino.evaluation.splits import Split, build_splitter
from cappuccino.models.policy import ActorCritic
from cappuccino.tracking import Tracker, build_tracker, flatten_config, run_name_from_overrides
from cappuccino.tracking.plots import equity_figure
from cappuccino.tracking.resources import peak_rss_mb, peak_vram_mb

console = Console()

EVAL_SPLITS = ("val", "test")
METRIC_NAMES = (
    "total_return", "annual_return", "annual_volatility", "sharpe", "sortino", "max_drawdown",
    "calmar", "fees_paid", "turnover", "n_periods", "excess_sharpe",
    "benchmark_total_return", "benchmark_annual_return", "benchmark_annual_volatility",
    "benchmark_sharpe", "benchmark_sortino", "benchmark_max_drawdown", "benchmark_calmar",
)  # fmt: skip


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path  # Hydra's output folder of this run
    project_dir: Path  # where train.py was started: home of the embedded MLflow store


def run(cfg: DictConfig, paths: RunPaths, overrides: Sequence[str] = ()) -> float:
    """Validate ``cfg`` (before any work), train, evaluate, and return the configured objective."""
    return train(validate(cfg), OmegaConf.to_yaml(cfg, resolve=True), paths, overrides)


def train(cfg: TrainConfig, config_yaml: str, paths: RunPaths, overrides: Sequence[str] = ()) -> float:
    check_objective(cfg.trainer.objective)
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.trainer.seed, cfg.trainer.torch_threads)

    market = prepare_market(cfg)
    split = next(iter(build_splitter(cfg.cv).split(market.first_valid, market.n_bars)))
    check_segments(split, cfg.window.lookback, cfg.env.episode_length)
    tensors = market_tensors(market, device)

    env = PortfolioEnv.from_market(market, split.train, cfg.env, cfg.window.lookback, device, seed=cfg.trainer.seed)
    if cfg.agent.name != "ppo":
        raise ConfigError(f"agent={cfg.agent.name!r} is not known; choose one of: ppo")
    policy = build_policy(cfg, market, config_yaml).to(device)

    tracker = build_tracker(cfg.logger, run_name_from_overrides(overrides), paths.project_dir)
    try:
        tracker.set_tags({"data.source": market.source, "data.synthetic": str(market.synthetic), "data.hash": market.content_hash})
        tracker.log_params(flatten_config(OmegaConf.to_container(OmegaConf.create(config_yaml))))
        learn(PPO(policy, env, cfg.agent, cfg.trainer.total_steps, cfg.trainer.precision), tracker, device, cfg.trainer.progress)
        metrics = evaluate(policy, market, tensors, split, cfg, env.min_order_size, tracker, paths.run_dir)
        metrics["objective"] = metrics[cfg.trainer.objective]
        tracker.log_metrics(metrics)
        tracker.log_metrics(resource_metrics(device))
        checkpoint = save_checkpoint(paths.run_dir / "checkpoint.pt", policy, config_yaml, schema(cfg, market, config_yaml))
        config_file = paths.run_dir / "config.yaml"
        config_file.write_text(config_yaml)
        metrics_file = paths.run_dir / "metrics.json"
        metrics_file.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        for artifact in (checkpoint, config_file, metrics_file):
            tracker.log_artifact(artifact)
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close()
    print_summary(metrics, market, paths, tracker)
    return metrics["objective"]


def check_objective(objective: str) -> None:
    known = [f"{split}/{name}" for split in EVAL_SPLITS for name in METRIC_NAMES]
    if objective not in known:
        raise ConfigError(f"trainer.objective: {objective!r} is not a metric; choose one of {known}")


def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error naming ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r} but CUDA is not available: use {key}=cpu")
    return device


def seed_everything(seed: int, threads: int | None) -> None:
    """Same seed on CPU -> same numbers: seed every generator and use deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)


def prepare_market(cfg: TrainConfig) -> MarketData:
    market, report = load_market(cfg.data)
    for line in report.lines(limit=20):
        console.print(f"[yellow]data:[/] {line}")
    features, first_valid = compute_features(market.ohlcv, cfg.window.zscore_window)
    return market.with_features(features, FEATURE_NAMES, first_valid)


def check_segments(split: Split, lookback: int, episode_length: int) -> None:
    """Too few bars for the lookback and the splits is a config problem: say so before training."""
    for part in ("train", "validation", "test"):
        for segment in getattr(split, part):
            bars = segment.stop - segment.start
            if bars < lookback + 2:
                raise ConfigError(
                    f"the {part} segment has {bars} bars, too few for window.lookback={lookback} "
                    f"(needs at least {lookback + 2}): use more data (e.g. data.n_bars), a shorter "
                    f"lookback, or other cv fractions"
                )


def market_tensors(market: MarketData, device: torch.device) -> dict[str, torch.Tensor]:
    assert market.features is not None
    return {
        "features": torch.as_tensor(market.features, device=device),
        "open": torch.as_tensor(market.field("open"), dtype=torch.float32, device=device),
        "close": torch.as_tensor(market.field("close"), dtype=torch.float32, device=device),
    }


def learn(ppo: PPO, tracker: Tracker, device: torch.device, show_progress: bool) -> None:
    """Run PPO with a progress bar; log every update's statistics to the tracker."""
    with progress_bar(ppo.total_steps, show_progress) as advance:

        def on_update(stats: dict[str, float]) -> None:
            stats = {**stats, "peak_rss_mb": peak_rss_mb()}
            vram = peak_vram_mb(device)
            if vram is not None:
                stats["peak_vram_mb"] = vram
            tracker.log_metrics({f"train/{k}": v for k, v in stats.items()}, step=int(stats["global_step"]))
            advance(stats)

        ppo.learn(on_update)


@contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator:
    columns = (
        TextColumn("[bold]PPO"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, disable=not enabled, transient=False) as progress:
        task = progress.add_task("train", total=total, stats="")
        last_episode_reward = math.nan  # most rollouts end no episode: show the latest that did
        next_report = total // 10

        def advance(stats: dict[str, float]) -> None:
            nonlocal last_episode_reward
            if math.isfinite(stats["episode_reward"]):
                last_episode_reward = stats["episode_reward"]
            text = (
                f"{stats['steps_per_second']:,.0f} steps/s  episode reward {last_episode_reward:+.2f}  "
                f"pi {stats['policy_loss']:+.4f}  v {stats['value_loss']:.4f}  kl {stats['approx_kl']:.4f}"
            )
            done = min(int(stats["global_step"]), total)
            progress.update(task, completed=done, stats=text)
            # Without a terminal (nohup, CI, a cluster log) rich draws nothing until the end.
            nonlocal next_report
            if enabled and not console.is_terminal and done >= next_report:
                console.print(f"PPO {done:,}/{total:,} steps  {text}")
                next_report += total // 10

        yield advance


def evaluate(
    policy: ActorCritic,
    market: MarketData,
    tensors: dict[str, torch.Tensor],
    split: Split,
    cfg: TrainConfig,
    min_order_size: torch.Tensor,
    tracker: Tracker,
    run_dir: Path,
) -> dict[str, float]:
    """Deterministic backtests on validation and test; equity plots go to the run and MLflow."""
    policy.eval()

    def act(window: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return policy.act(window, weights, deterministic=True)[0]

    ppy = periods_per_year(market.interval)
    metrics: dict[str, float] = {}
    for name, segments in (("val", split.validation), ("test", split.test)):
        for segment in segments:
            result = backtest(act, tensors["features"], tensors["open"], tensors["close"], segment, cfg.env, cfg.window.lookback, min_order_size)
            metrics.update({f"{name}/{k}": v for k, v in result.metrics(ppy).items()})
            save_equity_plot(result, market, name, segment, tracker, run_dir)
    return metrics


def save_equity_plot(result: Backtest, market: MarketData, name: str, segment: Segment, tracker: Tracker, run_dir: Path) -> None:
    label = "synthetic data" if market.synthetic else market.source
    title = f"{name}: agent vs equal-weight buy-and-hold ({label}, {', '.join(market.symbols)})"
    figure = equity_figure(market.timestamps[result.bars], result.equity, result.benchmark, title)
    figure.savefig(run_dir / f"equity_{name}.png", dpi=110, bbox_inches="tight")
    tracker.log_figure(figure, f"equity_{name}.png")


def resource_metrics(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": peak_rss_mb()}
    vram = peak_vram_mb(device)
    if vram is not None:
        out["peak_vram_mb"] = vram
    return out


def build_policy(cfg: TrainConfig, market: MarketData, config_yaml: str) -> ActorCritic:
    """The actor-critic, with pre-trained encoder weights loaded (and frozen) when configured."""
    policy = ActorCritic(cfg.encoder, cfg.window.lookback, market.n_assets, len(market.feature_names), cfg.agent.init_log_std)
    pretrained, freeze = cfg.encoder.pretrained, cfg.encoder.freeze
    if pretrained is not None:
        schema = encoder_schema(encoder_config(config_yaml), market.symbols, market.feature_names, cfg.window.lookback)
        policy.load_pretrained_encoder(Path(pretrained).expanduser(), schema, freeze)
    return policy


def encoder_config(config_yaml: str) -> dict:
    return OmegaConf.to_container(OmegaConf.create(config_yaml).encoder)


def schema(cfg: TrainConfig, market: MarketData, config_yaml: str) -> dict:
    """What a policy checkpoint's weights depend on; loading checks it key by key."""
    encoder = encoder_schema(encoder_config(config_yaml), market.symbols, market.feature_names, cfg.window.lookback)
    return {**encoder, "interval": str(market.interval)}


def print_summary(metrics: dict[str, float], market: MarketData, paths: RunPaths, tracker: Tracker) -> None:
    table = Table(title=f"test split ({'synthetic data' if market.synthetic else market.source})")
    table.add_column("metric")
    table.add_column("agent", justify="right")
    table.add_column("buy & hold", justify="right")
    for name in ("total_return", "sharpe", "sortino", "max_drawdown", "calmar"):
        table.add_row(name, f"{metrics[f'test/{name}']:.4f}", f"{metrics[f'test/benchmark_{name}']:.4f}")
    table.add_row("turnover", f"{metrics['test/turnover']:.2f}", "")
    table.add_row("fees_paid", f"{metrics['test/fees_paid']:.2f}", "")
    console.print(table)
    console.print(f"objective = {metrics['objective']:.4f}")
    console.print(f"outputs: {paths.run_dir}")
    if tracker.ui_command:
        console.print(f"browse runs: {tracker.ui_command}")
