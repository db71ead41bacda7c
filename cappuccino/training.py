"""The training job behind ``train.py``: data -> features -> env -> PPO -> evaluation -> tracking.

One agent per cross-validation split (holdout has one split), each on the split's training
segments with seed ``trainer.seed + split index``; then deterministic backtests of the split's
validation and test segments, scored into a typed result (``cappuccino.evaluation.results``)
that the tracker, ``metrics.json`` and ``result.json`` receive.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from cappuccino.agents.ppo import PPO
from cappuccino.config import CPCVConfig, HoldoutConfig, TrainConfig, build
from cappuccino.data import load_market
from cappuccino.data.market import MarketData
from cappuccino.data.synthetic import SyntheticSource, planted_signal
from cappuccino.data.tensors import MarketTensors, Segment
from cappuccino.env.portfolio import EpisodeSampling, PortfolioEnv
from cappuccino.errors import ConfigError
from cappuccino.evaluation.backtest import Backtest, stitch
from cappuccino.evaluation.gathering import BACKTESTS_FILE, SplitScores, save_split_scores
from cappuccino.evaluation.metrics import periods_per_year
from cappuccino.evaluation.references import mean_reference_metrics, oracle_gain, reference_backtests, reference_metrics
from cappuccino.evaluation.results import OOS_RETURNS_FILE, RESULT_FILE, Result, save_result
from cappuccino.evaluation.scoring import (
    SplitBacktests, evaluate, objective_definition, objective_key, oos_excess_returns, score_cv, score_holdout,
)  # fmt: skip
from cappuccino.evaluation.splits import Split, select_splits
from cappuccino.evaluation.validation import PeriodicValidation, validation_curve_file
from cappuccino.models.attention_probe import AttentionMap, save_attention_map, summarize_attention
from cappuccino.models.checkpoint import read_checkpoint
from cappuccino.models.ft_transformer import FTTransformerEncoder
from cappuccino.models.loading import PolicySchema, TrainedPolicy, load_pretrained, policy_from_config, save_policy
from cappuccino.models.policy import ActorCritic
from cappuccino.progress import print_line, progress_bar
from cappuccino.reporting.console import data_label, print_data_report, print_training_summary
from cappuccino.reporting.figures import attention_figure, equity_figure
from cappuccino.runtime import Interrupted, RunPaths, check_interrupt, deferred_interrupts, resolve_device, seed_everything
from cappuccino.tracking import TRIAL_TAG, Tracker, overrides_tags, short_run_name
from cappuccino.tracking.job import tracked_job
from cappuccino.tracking.resources import peak_rss_mb, peak_vram_mb
from cappuccino.trading.rules import TradingRules

ATTENTION_WINDOWS = 256  # windows probed for the attention statistics and heat-map

def train(
    cfg: TrainConfig,
    config_yaml: str,
    paths: RunPaths,
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
    trial: int | None = None,
    tags: Mapping[str, str] = {},
) -> float:
    """Train one agent per cv split, backtest each, and return the configured objective.

    ``parent_run_id`` nests the run under another tracked run (a sweep's study, an experiment);
    ``trial`` is the Optuna trial number of a sweep's job (run name ``trial N: ...``, tag
    ``optuna.trial``); ``tags`` go on the run too (an experiment's arm).
    """
    device = resolve_device(cfg.trainer.device)
    seed_everything(cfg.trainer.seed, cfg.trainer.torch_threads)
    if cfg.encoder.pretrained is not None:  # a wrong file fails before any data is loaded
        read_checkpoint(cfg.encoder.pretrained, "encoder", "encoder.pretrained")
    rules, sampling = build(cfg.rules), build(cfg.env)
    holdout = isinstance(cfg.cv, HoldoutConfig)  # one split, scored on its validation and test segments
    objective = objective_key(cfg.trainer.objective, holdout)

    market, report = load_market(cfg.data, cfg.window.zscore_window)
    print_data_report(report)
    splitter = build(cfg.cv)
    only = getattr(cfg.cv, "split", None)
    splits = select_splits(splitter, only, market.first_valid, market.n_bars, market.feature_memory)
    for _, split in splits:
        check_segments(split, cfg.window.lookback)
    tensors = MarketTensors.from_market(market, cfg.window.lookback, device)
    schema = PolicySchema.of(market, cfg.window.lookback, cfg.window.zscore_window, encoder_settings(config_yaml))
    job = SplitJob(
        cfg, config_yaml, market, tensors, schema, rules, sampling, device, paths.run_dir,
        figures_in_folder=trial is None or cfg.logger.name == "none",
    )  # fmt: skip

    run_name, tags = short_run_name(overrides), {**overrides_tags(overrides), **tags}
    if trial is not None:  # a sweep's trial: its overrides are in its tags and params
        run_name, tags = f"trial {trial}", {**tags, TRIAL_TAG: str(trial)}
    with tracked_job(cfg.logger, run_name, paths.project_dir, market, config_yaml, tags, parent_run_id) as tracker:
        tracker.log_params(parameter_counts(cfg, market))
        tracker.set_tags({"objective.key": objective, "objective.definition": objective_definition(objective, getattr(cfg.cv, "std_penalty", 0.0))})
        if isinstance(cfg.cv, CPCVConfig):  # a null embargo is derived from the features
            tracker.log_params({"cv.embargo_bars_used": splitter.embargo_for(market.feature_memory)})
        backtests: dict[int, SplitBacktests] = {}
        for index, split in splits:
            if holdout:
                backtests[index], steps = job.run(split, index, "", tracker)
                continue
            # A nested run per split: the UI compares splits side by side under the same metric names.
            with tracker.child(f"{run_name} · split {index}") as split_run:  # told apart across runs
                split_run.set_tags({"cv.split": str(index)})
                backtests[index], steps = job.run(split, index, f"split{index}", split_run)
                split_metrics = stitch(backtests[index]["test"]).metrics(periods_per_year(market.interval))
                split_run.log_metrics({f"test/{k}": v for k, v in split_metrics.items()}, step=steps)
        # The run's policy model holds every checkpoint (a CV run's: one per split, an ensemble),
        # so one run id finds and loads them all, each stored once.
        tracker.log_policy([job.checkpoint("" if holdout else f"split{i}") for i in backtests], rules.cash_reserve)
        register_as, registered = getattr(cfg.logger, "register_as", None), None
        if register_as is not None and trial is None and tracker.run_id is not None:  # a study registers its best trial
            registered = tracker.register_policy(tracker.run_id, register_as)
            if registered is not None:
                tracker.set_tags({"registered_model": registered})
        paths_of = splitter.paths() if only is None and isinstance(cfg.cv, CPCVConfig) else None  # a path needs every split
        ppy = periods_per_year(market.interval)
        tests = {i: b["test"] for i, b in backtests.items()}
        result: Result = (
            score_holdout(backtests[0], ppy) if holdout
            else score_cv(tests, ppy, cfg.cv.std_penalty, paths_of)  # type: ignore[attr-defined]
        )  # fmt: skip
        reference_tests = score_references(cfg, market, tensors, splits, rules)
        references = {index: reference_metrics(backtests, ppy) for index, backtests in reference_tests.items()}
        result = dataclasses.replace(result, references=mean_reference_metrics(list(references.values())))
        metrics = result.metrics()
        metrics["objective"] = metrics[objective]
        tracker.log_metrics(metrics, step=steps)  # at the last training step, where the val/ curves end
        tracker.log_metrics(resource_metrics(device), step=steps)  # the whole run's peaks, at its end
        write_outputs(paths.run_dir, config_yaml, metrics, result, tracker)
        if not holdout:
            write_split_scores(paths.run_dir, tests, references, reference_tests, paths_of, splitter, cfg, market, tracker)
    print_training_summary(result, objective, metrics["objective"], market, paths.run_dir, tracker.ui_command, tracker.run_url)
    if registered is not None:
        print_line(f"registered as {registered}: mlflow.pyfunc.load_model('models:/{register_as}/latest')")
    return metrics["objective"]


def score_references(
    cfg: TrainConfig, market: MarketData, tensors: MarketTensors, splits: Sequence[tuple[int, Split]], rules: TradingRules
) -> dict[int, dict[str, list[Backtest]]]:
    """Per split, the reference strategies' backtests of its test segments (``evaluation.references``);
    the oracle only where the market's generator is known (synthetic data)."""
    source = build(cfg.data)
    gain = oracle_gain(planted_signal(source), market, tensors.close.device) if isinstance(source, SyntheticSource) else None
    return {
        index: reference_backtests(
            tensors, split.test, rules, cfg.env.initial_cash, gain=gain, init_log_std=cfg.agent.init_log_std, seed=cfg.trainer.seed + index
        )
        for index, split in splits
    }


def encoder_settings(config_yaml: str) -> dict:
    """The encoder group as the run resolved it (what its weights depend on)."""
    return OmegaConf.to_container(OmegaConf.create(config_yaml).encoder)  # type: ignore[return-value]


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


class SplitJob:
    """Trains and scores a fresh agent on one split; everything but the split is shared.

    ``figures_in_folder``: save the figures in the run folder too, not only in the tracked run
    (a tracked sweep trial keeps them in MLflow alone: a study's folder would hold a second copy).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        config_yaml: str,
        market: MarketData,
        tensors: MarketTensors,
        schema: PolicySchema,
        rules: TradingRules,
        sampling: EpisodeSampling,
        device: torch.device,
        run_dir: Path,
        figures_in_folder: bool = True,
    ) -> None:
        self.cfg, self.config_yaml, self.market, self.tensors, self.schema = cfg, config_yaml, market, tensors, schema
        self.rules, self.sampling, self.device, self.run_dir = rules, sampling, device, run_dir
        self.figures_in_folder = figures_in_folder

    def checkpoint(self, name: str) -> Path:
        """Where split ``name``'s agent is saved ("": the one agent of a holdout run)."""
        return self.run_dir / (f"checkpoint_{name}.pt" if name else "checkpoint.pt")

    def run(self, split: Split, index: int, name: str, tracker: Tracker) -> tuple[SplitBacktests, int]:
        """Train on ``split.train`` with seed ``trainer.seed + index``, save ``checkpoint[_<name>].pt``,
        and backtest; its backtests and environment steps. ``tracker`` is the run it logs into."""
        cfg = self.cfg
        seed = cfg.trainer.seed + index
        torch.manual_seed(seed)
        rules = self.sampling.training_rules(self.rules)
        env = PortfolioEnv(self.tensors, split.train, rules=rules, sampling=self.sampling, seed=seed)
        module = self.build_policy().to(self.device)
        policy = TrainedPolicy(module, self.schema)
        ppo = PPO(module, env, build(cfg.agent), cfg.trainer.total_steps, cfg.trainer.precision)
        suffix = f"_{name}" if name else ""
        checkpoint = self.checkpoint(name)
        try:
            learn(ppo, tracker, self.device, cfg.trainer.progress, f"PPO {name}".strip(), self.periodic_validation(policy, split, name))
        except Interrupted:  # stopped between two updates: keep what was learnt, marked as such
            save_policy(checkpoint, module, self.config_yaml, self.schema, interrupted=True)
            tracker.log_artifact(checkpoint)
            raise
        save_policy(checkpoint, module, self.config_yaml, self.schema)
        module.eval()
        results = evaluate(policy, self.tensors, split, self.rules, self.sampling.initial_cash)
        for part, backtests in results.items():
            if backtests:
                self.save_equity_plot(stitch(backtests), part, suffix, tracker)
        if isinstance(module.actor_encoder, FTTransformerEncoder):
            self.log_attention(module.actor_encoder, split, name, tracker, ppo.total_steps)
        return results, ppo.total_steps

    def build_policy(self) -> ActorCritic:
        """The actor-critic, with pre-trained encoder weights loaded (and frozen) when configured."""
        cfg, market = self.cfg, self.market
        policy = policy_from_config(cfg.encoder, cfg.agent.init_log_std, cfg.window.lookback, market.n_assets, len(market.feature_names))
        pretrained, freeze = cfg.encoder.pretrained, cfg.encoder.freeze  # freeze needs pretrained (TrainConfig)
        if pretrained is not None:
            load_pretrained(policy, pretrained, self.schema, freeze)
        return policy

    def periodic_validation(self, policy: TrainedPolicy, split: Split, name: str) -> PeriodicValidation | None:
        """``trainer.eval_every``'s validation of ``policy``, or None when it is off. TrainConfig
        allows a positive value only with validation segments (``config.has_validation``)."""
        every = validation_every(self.cfg.trainer.eval_every, self.cfg.trainer.total_steps, bool(split.validation))
        if every == 0:
            return None
        ppy = periods_per_year(self.market.interval)
        return PeriodicValidation(
            every, policy, self.tensors, split.validation, self.rules, self.sampling.initial_cash, ppy, self.run_dir / validation_curve_file(name)
        )

    def save_equity_plot(self, result, part: str, suffix: str, tracker: Tracker) -> None:  # noqa: ANN001
        """``equity_<part>.png`` in the run, ``equity<suffix>_<part>.png`` in the run folder (``figures_in_folder``)."""
        market = self.market
        title = f"{suffix.lstrip('_') + ' ' if suffix else ''}{part}: agent vs equal-weight buy-and-hold ({data_label(market)}, {', '.join(market.symbols)})"
        figure = equity_figure(market.timestamps[result.bars], result.equity, result.benchmark, title)
        if self.figures_in_folder:
            figure.savefig(self.run_dir / f"equity{suffix}_{part}.png", dpi=110, bbox_inches="tight")
        tracker.log_figure(figure, f"equity_{part}.png")

    def log_attention(self, encoder: FTTransformerEncoder, split: Split, name: str, tracker: Tracker, step: int) -> None:
        """Attention statistics and the [CLS] heat-map of the trained actor encoder.

        The probe batch is up to ``ATTENTION_WINDOWS`` evenly spaced decision bars of the validation
        segments (the test ones when there are none), all with an all-cash portfolio, the state every
        backtest starts from. Metrics are ``attention/...`` and ``encoder/cls_norm``, the figure
        ``attention.png`` (``attention_<split>.png`` in the run folder), the map ``attention[_<split>].npz``.
        """
        part, segments = ("val", split.validation) if split.validation else ("test", split.test)
        tensors = self.tensors
        bars = probe_bars(tensors, segments, ATTENTION_WINDOWS)
        weights = torch.zeros(len(bars), tensors.n_assets + 1, device=tensors.device)
        weights[:, 0] = 1.0  # all cash
        stats, cls = summarize_attention(encoder, tensors.window(bars), weights)
        tracker.log_metrics(stats, step=step)  # the trained encoder's, at the last training step
        title = f"{name + ' ' if name else ''}{part}: [CLS] attention, mean over heads and {len(bars)} all-cash windows"
        figure = attention_figure(cls, title, tensors.lookback, self.market.symbols, encoder.bars_per_token)
        suffix = f"_{name}" if name else ""
        if self.figures_in_folder:
            figure.savefig(self.run_dir / f"attention{suffix}.png", dpi=110, bbox_inches="tight")
        tracker.log_figure(figure, "attention.png")
        # The map itself, so that a report can average it over seeds and splits.
        probe = self.run_dir / f"attention{suffix}.npz"
        save_attention_map(probe, AttentionMap(cls, tensors.lookback, self.market.symbols, encoder.bars_per_token, len(bars)))
        tracker.log_artifact(probe)


def validation_every(eval_every: int | None, total_steps: int, has_validation: bool) -> int:
    """Environment steps between validations; 0: none. ``None`` (the default) validates every
    tenth of the budget where there are validation segments, so val/ metrics are curves."""
    if eval_every is None:
        return max(total_steps // 10, 1) if has_validation else 0
    return eval_every


def probe_bars(tensors: MarketTensors, segments: Sequence[Segment], n: int) -> torch.Tensor:
    """Up to ``n`` evenly spaced decision bars of ``segments``."""
    bars = torch.cat([tensors.decision_bars(s) for s in segments]).cpu().numpy()
    picks = np.unique(np.linspace(0, len(bars) - 1, min(n, len(bars))).round().astype(int))
    return torch.as_tensor(bars[picks], device=tensors.device)


def parameter_counts(cfg: TrainConfig, market: MarketData) -> dict[str, int]:
    """Parameter counts of the configured policy: the same for every split, so logged once.

    ``encoder.critic_parameters`` counts only a separate critic encoder's: 0 when ``shared``.
    The policy is built on the meta device, which allocates nothing and draws no random numbers.
    """
    with torch.device("meta"):
        policy = policy_from_config(cfg.encoder, cfg.agent.init_log_std, cfg.window.lookback, market.n_assets, len(market.feature_names))

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())  # shared parameters count once

    return {
        "encoder.actor_parameters": count(policy.actor_encoder),
        "encoder.critic_parameters": 0 if policy.shared else count(policy.critic_encoder),
        "policy.parameters": count(policy),
    }


def learn(
    ppo: PPO, tracker: Tracker, device: torch.device, show_progress: bool, label: str, validation: PeriodicValidation | None
) -> None:
    """Run PPO with a progress bar labelled ``label``; log every update's statistics to the
    tracker and, when ``validation`` is due, its metrics as ``val/<metric>`` at the same step."""
    last_episode_reward = math.nan  # most rollouts end no episode: show the latest that did
    last_validation = ""
    with progress_bar(label, ppo.total_steps, show_progress) as advance:

        def on_update(stats: dict[str, float]) -> None:
            nonlocal last_episode_reward, last_validation
            step = int(stats["global_step"])
            # global_step and update repeat the step axis; the rest are the update's statistics.
            logged = {k: v for k, v in {**stats, **resource_metrics(device)}.items() if k not in ("global_step", "update")}
            tracker.log_metrics({f"train/{k}": v for k, v in logged.items()}, step=step)
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
            check_interrupt()  # a stop asked during the update ends the run here, between updates

        with deferred_interrupts():
            ppo.learn(on_update)


def resource_metrics(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": peak_rss_mb()}
    vram = peak_vram_mb(device)
    if vram is not None:
        out["peak_vram_mb"] = vram
    return out


def write_split_scores(
    run_dir: Path,
    tests: dict[int, list[Backtest]],
    references: dict[int, dict[str, dict[str, float]]],
    reference_tests: dict[int, dict[str, list[Backtest]]],
    paths_of: list[list[tuple[int, int]]] | None,
    splitter: object,
    cfg: TrainConfig,
    market: MarketData,
    tracker: Tracker,
) -> None:
    """What gathering fanned-out splits and the experiment report need (``split_backtests.npz``:
    the agent's and the references' test backtests, every CPCV path, even when this run ran one
    split), and the run's row of a study's overfitting statistics
    (``oos_returns.npy``, along ``paths_of``, the paths this run could stitch)."""
    every_path = splitter.paths() if isinstance(cfg.cv, CPCVConfig) else None  # type: ignore[attr-defined]
    n_splits = splitter.get_n_splits(market.first_valid, market.n_bars)  # type: ignore[attr-defined]
    scores = SplitScores(
        tests, every_path, n_splits, cfg.cv.std_penalty, periods_per_year(market.interval), market.content_hash, references, reference_tests  # type: ignore[attr-defined]
    )
    save_split_scores(run_dir / BACKTESTS_FILE, scores)
    np.save(run_dir / OOS_RETURNS_FILE, oos_excess_returns(tests, paths_of))
    for name in (BACKTESTS_FILE, OOS_RETURNS_FILE):
        tracker.log_artifact(run_dir / name)


def write_outputs(run_dir: Path, config_yaml: str, metrics: dict[str, float], result: Result, tracker: Tracker) -> None:
    """``config.yaml``, ``metrics.json`` and ``result.json`` in the run folder and the run."""
    files = {"config.yaml": config_yaml, "metrics.json": json.dumps(metrics, indent=2, sort_keys=True)}
    for name, text in files.items():
        (run_dir / name).write_text(text)
    save_result(result, run_dir / RESULT_FILE)
    for name in (*files, RESULT_FILE):
        tracker.log_artifact(run_dir / name)
