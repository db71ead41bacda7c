"""The training job behind ``train.py``: data -> features -> env -> PPO -> evaluation -> tracking."""

from __future__ import annotations

import copy
import json
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.table import Table

from cappuccino.agents.ppo import PPO
from cappuccino.checkpoint import encoder_schema, save_checkpoint
from cappuccino.config import ConfigError, TrainConfig, validate
from cappuccino.data import load_market
from cappuccino.data.features import FEATURE_NAMES, compute_features
from cappuccino.data.market import MarketData
from cappuccino.env.portfolio import PortfolioEnv, Segment
from cappuccino.evaluation.backtest import Backtest, backtest, stitch
from cappuccino.evaluation.cpcv import CombinatorialPurgedCV
from cappuccino.evaluation.objective import CV_METRICS, cv_metrics
from cappuccino.evaluation.metrics import periods_per_year
from cappuccino.evaluation.splits import Split, Splitter, build_splitter, iter_splits
from cappuccino.hparams_search import STUDY_RUN_ENV, TRIAL_ENV
from cappuccino.models.attention_probe import summarize_attention
from cappuccino.models.ft_transformer import FTTransformerEncoder
from cappuccino.models.policy import ActorCritic
from cappuccino.progress import console, progress_bar
from cappuccino.tracking import Tracker, build_tracker, flatten_config, run_name_from_overrides
from cappuccino.tracking.plots import attention_figure, equity_figure
from cappuccino.tracking.resources import peak_rss_mb, peak_vram_mb


EVAL_SPLITS = ("val", "test")
METRIC_NAMES = (
    "total_return", "annual_return", "annual_volatility", "sharpe", "sortino", "max_drawdown",
    "calmar", "fees_paid", "turnover", "n_periods", "excess_sharpe",
    "benchmark_total_return", "benchmark_annual_return", "benchmark_annual_volatility",
    "benchmark_sharpe", "benchmark_sortino", "benchmark_max_drawdown", "benchmark_calmar",
)  # fmt: skip
ATTENTION_WINDOWS = 256  # windows probed for the attention statistics and heat-map
VALIDATION_CURVE = "validation_curve.json"  # trainer.eval_every's results, in the run folder


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path  # Hydra's output folder of this run
    project_dir: Path  # where train.py was started: home of the embedded MLflow store


def run(cfg: DictConfig, paths: RunPaths, overrides: Sequence[str] = ()) -> float:
    """Validate ``cfg`` (before any work), train, evaluate, and return the configured objective;
    with an ``experiment``, run that comparison instead and return what it returns."""
    typed = validate(cfg)
    parent_run_id = os.environ.get(STUDY_RUN_ENV) or None  # set per job by the study sweeper (hparams_search)
    if typed.experiment is not None:
        from cappuccino.experiments import run_experiment  # experiments build on this module

        return run_experiment(typed, cfg, paths, overrides, parent_run_id)
    trial = os.environ.get(TRIAL_ENV)
    return train(
        typed, OmegaConf.to_yaml(cfg, resolve=True), paths, overrides, parent_run_id, int(trial) if trial else None
    )


def train(
    cfg: TrainConfig,
    config_yaml: str,
    paths: RunPaths,
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
    trial: int | None = None,
) -> float:
    """Train one agent per cv split, backtest each, and return the configured objective.

    ``parent_run_id`` nests the run under another tracked run (a sweep's study, an experiment);
    ``trial`` is the Optuna trial number of a sweep's job (run name ``trial N: ...``, tag
    ``optuna.trial``).
    """
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.trainer.seed, cfg.trainer.torch_threads)
    if cfg.agent.name != "ppo":
        raise ConfigError(f"agent={cfg.agent.name!r} is not known; choose one of: ppo")

    market = prepare_market(cfg)
    splitter = build_splitter(cfg.cv, feature_memory=market.first_valid)
    splits = list(iter_splits(cfg.cv, market.first_valid, market.n_bars))
    holdout = len(splits) == 1 and bool(splits[0][1].validation)
    objective = objective_key(cfg.trainer.objective, holdout)
    for _, split in splits:
        check_segments(split, cfg.window.lookback)
    tensors = market_tensors(market, device)

    run_name = run_name_from_overrides(overrides)
    if trial is not None:
        run_name = f"trial {trial}: {run_name}"
    tracker = build_tracker(cfg.logger, run_name, paths.project_dir, parent_run_id)
    try:
        tracker.set_tags({"data.source": market.source, "data.synthetic": str(market.synthetic), "data.hash": market.content_hash})
        if trial is not None:
            tracker.set_tags({"optuna.trial": str(trial)})
        tracker.log_params(flatten_config(OmegaConf.to_container(OmegaConf.create(config_yaml))))
        tracker.log_params(parameter_counts(cfg, market))
        if isinstance(splitter, CombinatorialPurgedCV):  # a null embargo is derived from the features
            tracker.log_params({"cv.embargo_bars_used": splitter.embargo_bars})
        backtests = {}
        for index, split in splits:
            if holdout:
                backtests[index], steps = train_split(cfg, config_yaml, market, tensors, split, index, "", device, tracker, paths.run_dir)
                tracker.log_artifact(paths.run_dir / "checkpoint.pt")
                continue
            # A nested run per split: the UI compares splits side by side under the same metric names.
            with tracker.child(f"split{index}") as split_run:
                split_run.set_tags({"cv.split": str(index)})
                backtests[index], steps = train_split(cfg, config_yaml, market, tensors, split, index, f"split{index}", device, split_run, paths.run_dir)
                split_metrics = stitch(backtests[index]["test"]).metrics(periods_per_year(market.interval))
                split_run.log_metrics({f"test/{k}": v for k, v in split_metrics.items()}, step=steps)
            # Every split's checkpoint in the run itself: one run id finds the whole ensemble.
            tracker.log_artifact(paths.run_dir / f"checkpoint_split{index}.pt")
        metrics = score(cfg, market, splitter, backtests, holdout)
        metrics["objective"] = metrics[objective]
        tracker.log_metrics(metrics, step=steps)  # at the last training step, where the val/ curves end
        tracker.log_metrics(resource_metrics(device))
        config_file = paths.run_dir / "config.yaml"
        config_file.write_text(config_yaml)
        metrics_file = paths.run_dir / "metrics.json"
        metrics_file.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        for artifact in (config_file, metrics_file):
            tracker.log_artifact(artifact)
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close()
    print_summary(metrics, market, paths, tracker, holdout)
    return metrics["objective"]


def train_split(
    cfg: TrainConfig,
    config_yaml: str,
    market: MarketData,
    tensors: dict[str, torch.Tensor],
    split: Split,
    index: int,
    name: str,
    device: torch.device,
    tracker: Tracker,
    run_dir: Path,
) -> tuple[dict[str, list[Backtest]], int]:
    """A fresh agent on this split's training segments; its backtests and environment steps.
    The checkpoint is saved to ``run_dir`` as ``checkpoint[_<name>].pt``; ``tracker`` is the run
    this split logs into."""
    seed = cfg.trainer.seed + index
    torch.manual_seed(seed)
    env = PortfolioEnv.from_market(market, split.train, cfg.env, cfg.window.lookback, device, seed=seed)
    policy = build_policy(cfg, market, config_yaml).to(device)
    ppo = PPO(policy, env, cfg.agent, cfg.trainer.total_steps, cfg.trainer.precision)
    learn(ppo, tracker, device, cfg.trainer.progress, f"PPO {name}".strip(), periodic_validation(cfg, policy, tensors, split, market, env.min_order_size, run_dir))
    suffix = f"_{name}" if name else ""
    save_checkpoint(run_dir / f"checkpoint{suffix}.pt", policy, config_yaml, schema(cfg, market, config_yaml))
    results = evaluate(policy, tensors, split, cfg, env.min_order_size)
    for part, backtests in results.items():
        if backtests:
            save_equity_plot(stitch(backtests), market, part, suffix, tracker, run_dir)
    if isinstance(policy.actor_encoder, FTTransformerEncoder):
        log_attention(policy.actor_encoder, env, split, market, cfg.window.lookback, name, tracker, run_dir)
    return results, ppo.total_steps


def parameter_counts(cfg: TrainConfig, market: MarketData) -> dict[str, int]:
    """Parameter counts of the configured policy: the same for every split, so logged once.

    ``encoder.critic_parameters`` counts only a separate critic encoder's: 0 when ``shared``.
    The policy is built on the meta device, which allocates nothing and draws no random numbers.
    """
    with torch.device("meta"):
        policy = ActorCritic(cfg.encoder, cfg.window.lookback, market.n_assets, len(market.feature_names))

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())  # shared parameters count once

    return {
        "encoder.actor_parameters": count(policy.actor_encoder),
        "encoder.critic_parameters": 0 if policy.shared else count(policy.critic_encoder),
        "policy.parameters": count(policy),
    }


def log_attention(
    encoder: FTTransformerEncoder,
    env: PortfolioEnv,
    split: Split,
    market: MarketData,
    lookback: int,
    name: str,
    tracker: Tracker,
    run_dir: Path,
) -> None:
    """Attention statistics and the [CLS] heat-map of the trained actor encoder.

    The probe batch is up to ``ATTENTION_WINDOWS`` evenly spaced decision bars of the validation
    segments (the test ones when there are none), all with an all-cash portfolio, the state every
    backtest starts from. Metrics are ``attention/...`` and ``encoder/cls_norm``, the figure
    ``attention.png`` (``attention_<split>.png`` in ``run_dir``).
    """
    part, segments = ("val", split.validation) if split.validation else ("test", split.test)
    bars = probe_bars(segments, lookback, ATTENTION_WINDOWS).to(env.device)
    weights = torch.zeros(len(bars), market.n_assets + 1, device=env.device)
    weights[:, 0] = 1.0  # all cash
    stats, cls = summarize_attention(encoder, env.window(bars), weights)
    tracker.log_metrics(stats)
    title = f"{name + ' ' if name else ''}{part}: [CLS] attention, mean over heads and {len(bars)} all-cash windows"
    figure = attention_figure(cls, title, lookback, market.symbols)
    figure.savefig(run_dir / f"attention{'_' + name if name else ''}.png", dpi=110, bbox_inches="tight")
    tracker.log_figure(figure, "attention.png")


def probe_bars(segments: Sequence[Segment], lookback: int, n: int) -> torch.Tensor:
    """Up to ``n`` evenly spaced decision bars (t in [start + L - 1, stop - 2]) of ``segments``."""
    bars = np.concatenate([np.arange(s.start + lookback - 1, s.stop - 1) for s in segments])
    picks = np.unique(np.linspace(0, len(bars) - 1, min(n, len(bars))).round().astype(int))
    return torch.as_tensor(bars[picks])


def score(
    cfg: TrainConfig,
    market: MarketData,
    splitter: Splitter,
    backtests: dict[int, dict[str, list[Backtest]]],
    holdout: bool,
) -> dict[str, float]:
    """Holdout: validation and test metrics. Several splits: per-split test metrics and the
    cross-split objective (with CPCV's backtest paths when every split ran)."""
    ppy = periods_per_year(market.interval)
    if holdout:
        (results,) = backtests.values()
        return {f"{part}/{k}": v for part, runs in results.items() for k, v in stitch(runs).metrics(ppy).items()}
    every_split_ran = getattr(cfg.cv, "split", None) is None  # a path needs a test of every group
    paths = splitter.paths() if every_split_ran and isinstance(splitter, CombinatorialPurgedCV) else None
    tests = {i: results["test"] for i, results in backtests.items()}
    return cv_metrics(tests, ppy, cfg.cv.std_penalty, paths)


def objective_key(objective: str | None, holdout: bool) -> str:
    """The metric returned to Hydra; fails before any work when the cv scheme cannot give it."""
    if holdout:
        known = [f"{part}/{name}" for part in EVAL_SPLITS for name in METRIC_NAMES]
    else:
        known = [f"cv/{name}" for name in CV_METRICS]
    chosen = objective or known[known.index("val/excess_sharpe" if holdout else "cv/objective")]
    if chosen not in known:
        raise ConfigError(f"trainer.objective: {chosen!r} is not a metric of this cv scheme; choose one of {known}")
    return chosen


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


def check_segments(split: Split, lookback: int) -> None:
    """Too few bars for the lookback and the splits is a config problem: say so before training."""
    for part in ("train", "validation", "test"):
        for segment in getattr(split, part):
            bars = segment.stop - segment.start
            if bars < lookback + 2:
                raise ConfigError(
                    f"the {part} segment has {bars} bars, too few for window.lookback={lookback} "
                    f"(needs at least {lookback + 2}): use more data (e.g. data.n_bars), a shorter "
                    f"lookback, or other cv settings (fractions, cv.n_groups, cv.purge_bars)"
                )


def market_tensors(market: MarketData, device: torch.device) -> dict[str, torch.Tensor]:
    assert market.features is not None
    return {
        "features": torch.as_tensor(market.features, device=device),
        "open": torch.as_tensor(market.field("open"), dtype=torch.float32, device=device),
        "close": torch.as_tensor(market.field("close"), dtype=torch.float32, device=device),
    }


def learn(
    ppo: PPO,
    tracker: Tracker,
    device: torch.device,
    show_progress: bool,
    label: str = "PPO",
    validation: PeriodicValidation | None = None,
) -> None:
    """Run PPO with a progress bar labelled ``label``; log every update's statistics to the
    tracker and, when ``validation`` is due, its metrics as ``val/<metric>`` at the same step."""
    last_episode_reward = math.nan  # most rollouts end no episode: show the latest that did
    last_validation = ""
    with progress_bar(label, ppo.total_steps, show_progress) as advance:

        def on_update(stats: dict[str, float]) -> None:
            nonlocal last_episode_reward, last_validation
            step = int(stats["global_step"])
            stats = {**stats, "peak_rss_mb": peak_rss_mb()}
            vram = peak_vram_mb(device)
            if vram is not None:
                stats["peak_vram_mb"] = vram
            tracker.log_metrics({f"train/{k}": v for k, v in stats.items()}, step=step)
            if validation is not None and validation.due(step, ppo.batch_size, int(stats["update"]) == ppo.num_updates):
                metrics = validation(step)
                tracker.log_metrics({f"val/{k}": v for k, v in metrics.items()}, step=step)
                last_validation = f"  val excess Sharpe {metrics['excess_sharpe']:+.2f}"
            if math.isfinite(stats["episode_reward"]):
                last_episode_reward = stats["episode_reward"]
            text = (
                f"{stats['steps_per_second']:,.0f} steps/s  episode reward {last_episode_reward:+.2f}  "
                f"pi {stats['policy_loss']:+.4f}  v {stats['value_loss']:.4f}  kl {stats['approx_kl']:.4f}"
                f"{last_validation}"
            )
            advance(step, text)

        ppo.learn(on_update)


@dataclass
class PeriodicValidation:
    """Deterministic backtests of the validation segments during training (``trainer.eval_every``).

    Only ``segments``, a split's validation part, are ever run: the test segments stay unseen
    until the agent is final. A validation draws no random numbers (deterministic actions, no
    random episode starts), so training runs exactly as it would without. Every result is
    appended to ``history`` and the whole curve rewritten to ``file`` as JSON, so an interrupted
    run keeps the curve so far.
    """

    every: int  # environment steps between validations
    policy: ActorCritic
    tensors: dict[str, torch.Tensor]
    segments: tuple[Segment, ...]
    cfg: TrainConfig
    min_order_size: torch.Tensor
    periods_per_year: float
    file: Path
    history: list[dict[str, float]] = field(default_factory=list)

    def due(self, step: int, steps_per_update: int, last: bool) -> bool:
        """After the update that crosses a multiple of ``every``, and after the last update, so
        the curve ends at the trained agent."""
        return last or step // self.every > (step - steps_per_update) // self.every

    def __call__(self, step: int) -> dict[str, float]:
        """Validate the policy as it is after ``step`` environment steps; its metrics."""
        training = self.policy.training
        split = Split(train=(), validation=self.segments, test=())  # nothing else to backtest
        metrics = stitch(evaluate(self.policy, self.tensors, split, self.cfg, self.min_order_size)["val"]).metrics(
            self.periods_per_year
        )
        self.policy.train(training)
        self.history.append({"step": step, **metrics})
        self.file.write_text(json.dumps(self.history, indent=2))
        return metrics


def periodic_validation(
    cfg: TrainConfig,
    policy: ActorCritic,
    tensors: dict[str, torch.Tensor],
    split: Split,
    market: MarketData,
    min_order_size: torch.Tensor,
    run_dir: Path,
) -> PeriodicValidation | None:
    """``trainer.eval_every``'s validation of ``policy`` on ``split``, or None when it is 0.

    TrainConfig allows it with cv=holdout only, whose one split always has validation segments.
    """
    if cfg.trainer.eval_every == 0:
        return None
    ppy = periods_per_year(market.interval)
    return PeriodicValidation(
        cfg.trainer.eval_every, policy, tensors, split.validation, cfg, min_order_size, ppy, run_dir / VALIDATION_CURVE
    )


def evaluate(
    policy: ActorCritic, tensors: dict[str, torch.Tensor], split: Split, cfg: TrainConfig, min_order_size: torch.Tensor
) -> dict[str, list[Backtest]]:
    """Deterministic backtests of every validation and test segment, each on its own."""
    policy.eval()

    def act(window: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return policy.act(window, weights, deterministic=True)[0]

    return {
        part: [
            backtest(act, tensors["features"], tensors["open"], tensors["close"], segment, cfg.env, cfg.window.lookback, min_order_size)
            for segment in segments
        ]
        for part, segments in (("val", split.validation), ("test", split.test))
    }


def save_equity_plot(result: Backtest, market: MarketData, part: str, suffix: str, tracker: Tracker, run_dir: Path) -> None:
    """``equity_<part>.png`` in the run, ``equity<suffix>_<part>.png`` in ``run_dir``."""
    label = "synthetic data" if market.synthetic else market.source
    title = f"{suffix.lstrip('_') + ' ' if suffix else ''}{part}: agent vs equal-weight buy-and-hold ({label}, {', '.join(market.symbols)})"
    figure = equity_figure(market.timestamps[result.bars], result.equity, result.benchmark, title)
    figure.savefig(run_dir / f"equity{suffix}_{part}.png", dpi=110, bbox_inches="tight")
    tracker.log_figure(figure, f"equity_{part}.png")


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


def print_summary(metrics: dict[str, float], market: MarketData, paths: RunPaths, tracker: Tracker, holdout: bool) -> None:
    data = "synthetic data" if market.synthetic else market.source
    console.print(holdout_table(metrics, data) if holdout else splits_table(metrics, data))
    console.print(f"objective = {metrics['objective']:.4f}")
    console.print(f"outputs: {paths.run_dir}")
    if tracker.ui_command:
        console.print(f"browse runs: {tracker.ui_command}")


def holdout_table(metrics: dict[str, float], data: str) -> Table:
    table = Table(title=f"test split ({data})")
    for column in ("metric", "agent", "buy & hold"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name in ("total_return", "sharpe", "sortino", "max_drawdown", "calmar"):
        table.add_row(name, f"{metrics[f'test/{name}']:.4f}", f"{metrics[f'test/benchmark_{name}']:.4f}")
    table.add_row("turnover", f"{metrics['test/turnover']:.2f}", "")
    table.add_row("fees_paid", f"{metrics['test/fees_paid']:.2f}", "")
    return table


def splits_table(metrics: dict[str, float], data: str) -> Table:
    table = Table(title=f"test groups per split ({data})")
    for column in ("split", "agent Sharpe", "buy & hold Sharpe", "total return", "turnover"):
        table.add_column(column, justify="left" if column == "split" else "right")
    splits = sorted({key.split("/")[0] for key in metrics if key.startswith("split")}, key=lambda s: int(s[5:]))
    for split in splits:
        m = {k.split("/", 2)[2]: v for k, v in metrics.items() if k.startswith(f"{split}/test/")}
        table.add_row(split, f"{m['sharpe']:.3f}", f"{m['benchmark_sharpe']:.3f}", f"{m['total_return']:.4f}", f"{m['turnover']:.2f}")
    table.add_row("mean", f"{metrics['cv/sharpe_mean']:.3f}", f"{metrics['cv/benchmark_sharpe_mean']:.3f}", "", "")
    if "cv/path_sharpe_mean" in metrics:
        table.add_row("paths (mean, min)", f"{metrics['cv/path_sharpe_mean']:.3f}, {metrics['cv/path_sharpe_min']:.3f}", "", "", "")
    return table


def base_config(config: DictConfig) -> TrainConfig:
    """The typed config of a sweep before its trials' overrides (``config`` holds ``hydra``):
    a sweep whose every trial would fail on a bad config fails here, before any work."""
    task = copy.deepcopy(config)  # keeps the structured type that validate builds on
    with open_dict(task):
        del task["hydra"]
    return validate(task)
