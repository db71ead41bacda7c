"""Structured configuration: one dataclass per config group, registered in Hydra's ConfigStore.

The YAML files under ``conf/`` pull these schemas in through their defaults lists, so a misspelt
key or a wrong type fails when Hydra composes the config, and ``validate`` (which builds the
dataclasses, running each ``__post_init__``) rejects out-of-range values before any work starts.
Every error names the offending key.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, Optional, get_args, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

DEFAULT_SYMBOLS = ["AAVE", "AVAX", "BTC", "ETH", "LINK", "LTC", "UNI"]

# Alpaca's minimum crypto order quantities, keyed by symbol (never by position).
ALPACA_MIN_ORDER_SIZE = {
    "AAVE": 0.005,
    "AVAX": 0.03,
    "BTC": 0.00001,
    "ETH": 0.0003,
    "LINK": 0.1,
    "LTC": 0.01,
    "UNI": 0.15,
}


# Training precisions, named as in PyTorch Lightning; see cappuccino.agents.ppo.PPO.
PRECISIONS = ("32", "bf16-mixed")

_READS: set[tuple[int, str]] | None = None


class Node:
    """Base of every config dataclass: while ``record_reads`` is active, remembers which fields
    the code reads, so a test can prove that no setting is silently ignored."""

    def __getattribute__(self, name: str) -> Any:
        if _READS is not None and not name.startswith("_"):
            _READS.add((id(self), name))
        return object.__getattribute__(self, name)


@contextmanager
def record_reads() -> Iterator[set[tuple[int, str]]]:
    """Collect (id(config node), field name) for every config field read inside the block."""
    global _READS
    _READS = set()
    try:
        yield _READS
    finally:
        _READS = None


def unread_leaves(cfg: Node, reads: set[tuple[int, str]], prefix: str = "") -> list[str]:
    """Dotted keys of ``cfg`` whose values were never read during ``record_reads``.

    An optional group left null (``experiment: null``) holds no setting, so it is no leaf.
    """
    unread = []
    hints = get_type_hints(type(cfg))
    for f in fields(cfg):  # type: ignore[arg-type]
        value = object.__getattribute__(cfg, f.name)
        key = f"{prefix}{f.name}"
        if isinstance(value, Node):
            unread += unread_leaves(value, reads, key + ".")
        elif value is None and any(isinstance(t, type) and issubclass(t, Node) for t in get_args(hints[f.name])):
            continue
        elif (id(cfg), f.name) not in reads:
            unread.append(key)
    return unread


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent; the message names the key."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


# ----------------------------------------------------------------------------------- data
@dataclass
class DataConfig(Node):
    source: str = MISSING
    symbols: list[str] = field(default_factory=lambda: list(DEFAULT_SYMBOLS))
    interval: str = "1h"  # pandas offset alias of one bar: "1h", "5min", ...
    max_gap_bars: int = 3  # missing bars forward-filled up to this run length, else fail

    def __post_init__(self) -> None:
        _require(len(self.symbols) > 0, "data.symbols", "needs at least one symbol")
        _require(
            len(set(self.symbols)) == len(self.symbols), "data.symbols", f"has duplicates: {self.symbols}"
        )
        _require(self.max_gap_bars >= 0, "data.max_gap_bars", f"must be >= 0, got {self.max_gap_bars}")


@dataclass
class SyntheticDataConfig(DataConfig):
    source: str = "synthetic"
    seed: int = 7
    start: str = "2022-01-01"
    n_bars: int = 17520  # two years of hourly bars
    # Correlation between each bar's standardised return and an exponential average of past
    # shocks (half-life ``signal_half_life`` bars): 0 is a pure random walk.
    signal_strength: float = 0.1
    signal_half_life: float = 6.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.n_bars >= 100, "data.n_bars", f"must be >= 100, got {self.n_bars}")
        _require(
            0.0 <= self.signal_strength < 1.0,
            "data.signal_strength",
            f"must be in [0, 1), got {self.signal_strength}",
        )
        _require(self.signal_half_life >= 0, "data.signal_half_life", "must be >= 0")


@dataclass
class CsvDataConfig(DataConfig):
    source: str = "csv"
    # A long-format file (time, symbol, open, high, low, close, volume), or a pattern with
    # "{symbol}" for one file per symbol (CryptoDataDownload files are recognised).
    path: str = MISSING


@dataclass
class AlpacaDataConfig(DataConfig):
    source: str = "alpaca"
    quote: str = "USD"
    start: str = "2023-01-01"
    end: str = "2024-12-31"
    cache_dir: str = "~/.cache/cappuccino/alpaca"
    url_override: Optional[str] = None  # tests point the client at a local server

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.start < self.end, "data.start", f"must be before data.end ({self.start} >= {self.end})")


# --------------------------------------------------------------------------------- window
@dataclass
class WindowConfig(Node):
    lookback: int = 20  # bars of features the agent sees at each step
    zscore_window: int = 500  # trailing bars of the causal per-feature z-score

    def __post_init__(self) -> None:
        _require(1 <= self.lookback <= 512, "window.lookback", f"must be in [1, 512], got {self.lookback}")
        _require(self.zscore_window >= 20, "window.zscore_window", f"must be >= 20, got {self.zscore_window}")


# ------------------------------------------------------------------------------------ env
@dataclass
class EnvConfig(Node):
    num_envs: int = 64
    episode_length: int = 720  # decision steps per training episode
    initial_cash: float = 100_000.0
    fee: float = 0.0025  # per side, as a fraction of traded notional
    cash_reserve: float = 0.02  # share of portfolio value never invested
    rebalance_band: float = 0.02  # skip orders worth less than this share of portfolio value
    # "excess_log_return" (over equal-weight buy-and-hold) removes the market's common moves from
    # the reward and matches the objective; "log_return" is the plain portfolio log return.
    reward: str = "excess_log_return"
    reward_scale: float = 100.0
    min_order_size: dict[str, float] = field(default_factory=lambda: dict(ALPACA_MIN_ORDER_SIZE))

    def __post_init__(self) -> None:
        _require(self.num_envs >= 1, "env.num_envs", f"must be >= 1, got {self.num_envs}")
        _require(self.episode_length >= 2, "env.episode_length", f"must be >= 2, got {self.episode_length}")
        _require(self.initial_cash > 0, "env.initial_cash", "must be > 0")
        _require(0.0 <= self.fee < 0.1, "env.fee", f"must be in [0, 0.1), got {self.fee}")
        _require(0.0 <= self.cash_reserve < 1.0, "env.cash_reserve", f"must be in [0, 1), got {self.cash_reserve}")
        _require(
            0.0 <= self.rebalance_band < 1.0, "env.rebalance_band", f"must be in [0, 1), got {self.rebalance_band}"
        )
        _require(
            self.reward in ("log_return", "excess_log_return"),
            "env.reward",
            f"must be 'log_return' or 'excess_log_return', got {self.reward!r}",
        )
        _require(self.reward_scale > 0, "env.reward_scale", "must be > 0")
        for symbol, size in self.min_order_size.items():
            _require(size >= 0, f"env.min_order_size.{symbol}", f"must be >= 0, got {size}")


# ---------------------------------------------------------------------------------- agent
@dataclass
class PPOConfig(Node):
    name: str = "ppo"
    lr: float = 3e-4
    anneal_lr: bool = True
    n_steps: int = 128  # rollout length per environment
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 4
    minibatch_size: int = 1024
    clip_coef: float = 0.2
    clip_value_loss: bool = True
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    target_kl: Optional[float] = 0.03  # stop the epoch loop once the approximate KL exceeds this
    norm_adv: bool = True
    init_log_std: float = -0.5

    def __post_init__(self) -> None:
        _require(self.lr > 0, "agent.lr", f"must be > 0, got {self.lr}")
        _require(self.n_steps >= 1, "agent.n_steps", "must be >= 1")
        _require(0.0 < self.gamma <= 1.0, "agent.gamma", f"must be in (0, 1], got {self.gamma}")
        _require(0.0 <= self.gae_lambda <= 1.0, "agent.gae_lambda", f"must be in [0, 1], got {self.gae_lambda}")
        _require(self.update_epochs >= 1, "agent.update_epochs", "must be >= 1")
        _require(self.minibatch_size >= 1, "agent.minibatch_size", "must be >= 1")
        _require(self.clip_coef > 0, "agent.clip_coef", "must be > 0")
        _require(self.vf_coef >= 0, "agent.vf_coef", "must be >= 0")
        _require(self.ent_coef >= 0, "agent.ent_coef", "must be >= 0")
        _require(self.max_grad_norm > 0, "agent.max_grad_norm", "must be > 0")
        _require(self.target_kl is None or self.target_kl > 0, "agent.target_kl", "must be > 0 or null")


# -------------------------------------------------------------------------------- encoder
@dataclass
class EncoderConfig(Node):
    name: str = MISSING
    shared: bool = False  # one encoder for actor and critic, or one each
    pretrained: Optional[str] = None  # encoder weights from pretrain.py (best_encoder.pt)
    freeze: bool = False  # keep the pre-trained weights fixed during PPO

    def __post_init__(self) -> None:
        _require(
            not self.freeze or self.pretrained is not None,
            "encoder.freeze",
            "freezing needs pre-trained weights: set encoder.pretrained=PATH (from pretrain.py)",
        )


@dataclass
class MLPEncoderConfig(EncoderConfig):
    name: str = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "tanh"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(len(self.hidden_sizes) >= 1, "encoder.hidden_sizes", "needs at least one layer")
        _require(all(h >= 1 for h in self.hidden_sizes), "encoder.hidden_sizes", "sizes must be >= 1")
        _require(
            self.activation in ("tanh", "relu", "gelu"),
            "encoder.activation",
            f"must be tanh, relu or gelu, got {self.activation!r}",
        )


@dataclass
class FTTransformerEncoderConfig(EncoderConfig):
    """See cappuccino.models.ft_transformer for the architecture and the token layouts."""

    name: str = "ft_transformer"
    tokens: str = "asset_time"  # "feature" (one token per scalar), "asset_time" or "time"
    d_token: int = 64
    n_blocks: int = 2
    n_heads: int = 4
    ffn_factor: float = 4 / 3  # FFN hidden size = int(d_token * ffn_factor); 4/3 is the paper's for ReGLU
    activation: str = "reglu"  # or "gelu"
    # Dropouts default to 0: PPO acts in eval mode and updates in train mode, so dropout adds
    # noise to the importance ratio; attention dropout also disables the fused CPU kernel.
    attention_dropout: float = 0.0
    ffn_dropout: float = 0.0
    residual_dropout: float = 0.0
    out_dim: int = 128  # size of the feature vector fed to the actor and critic heads

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            self.tokens in ("feature", "asset_time", "time"),
            "encoder.tokens",
            f"must be feature, asset_time or time, got {self.tokens!r}",
        )
        _require(self.d_token >= 1, "encoder.d_token", f"must be >= 1, got {self.d_token}")
        _require(self.n_blocks >= 1, "encoder.n_blocks", f"must be >= 1, got {self.n_blocks}")
        _require(self.n_heads >= 1, "encoder.n_heads", f"must be >= 1, got {self.n_heads}")
        _require(
            self.d_token % self.n_heads == 0,
            "encoder.d_token",
            f"must be a multiple of encoder.n_heads={self.n_heads}, got {self.d_token}",
        )
        _require(
            int(self.d_token * self.ffn_factor) >= 1,
            "encoder.ffn_factor",
            f"must give an FFN hidden size int(d_token * ffn_factor) >= 1, got {self.ffn_factor}",
        )
        _require(
            self.activation in ("reglu", "gelu"),
            "encoder.activation",
            f"must be reglu or gelu, got {self.activation!r}",
        )
        for key in ("attention_dropout", "ffn_dropout", "residual_dropout"):
            value = getattr(self, key)
            _require(0.0 <= value < 1.0, f"encoder.{key}", f"must be in [0, 1), got {value}")
        _require(self.out_dim >= 1, "encoder.out_dim", f"must be >= 1, got {self.out_dim}")


# ------------------------------------------------------------------------------------- cv
@dataclass
class CVConfig(Node):
    name: str = MISSING


@dataclass
class HoldoutConfig(CVConfig):
    name: str = "holdout"
    train_fraction: float = 0.7
    val_fraction: float = 0.15  # the test split is what remains
    embargo_bars: int = 24  # bars dropped between consecutive splits

    def __post_init__(self) -> None:
        _require(0 < self.train_fraction < 1, "cv.train_fraction", "must be in (0, 1)")
        _require(0 < self.val_fraction < 1, "cv.val_fraction", "must be in (0, 1)")
        _require(
            self.train_fraction + self.val_fraction < 1,
            "cv.val_fraction",
            "train_fraction + val_fraction must be < 1 to leave a test split",
        )
        _require(self.embargo_bars >= 0, "cv.embargo_bars", "must be >= 0")


def _require_split(split: Optional[int], n_splits: Optional[int] = None) -> None:
    _require(split is None or split >= 0, "cv.split", f"must be >= 0 or null (all splits), got {split}")
    if n_splits is not None and split is not None:
        _require(split < n_splits, "cv.split", f"must be < {n_splits}, the number of splits, got {split}")


@dataclass
class CPCVConfig(CVConfig):
    """Combinatorial purged cross-validation; see cappuccino.evaluation.cpcv."""

    name: str = "cpcv"
    n_groups: int = 6  # contiguous groups of bars
    n_test_groups: int = 2  # groups held out per split: C(n_groups, n_test_groups) splits
    purge_bars: int = 60  # dropped from training before and after each test group; >= window.lookback
    # Further bars dropped from training after each test group. null: just enough that no training
    # bar's features read a test bar (the z-score window plus the indicators' warm-up, minus the
    # purge); a set value must be at least that.
    embargo_bars: Optional[int] = None
    split: Optional[int] = None  # run only this split (to fan the splits out over processes); null: all
    std_penalty: float = 0.1  # objective = mean(agent - benchmark Sharpe) - std_penalty * std(agent Sharpe)

    def __post_init__(self) -> None:
        _require(self.std_penalty >= 0, "cv.std_penalty", f"must be >= 0, got {self.std_penalty}")
        _require(self.n_groups >= 2, "cv.n_groups", f"must be >= 2, got {self.n_groups}")
        _require(
            1 <= self.n_test_groups < self.n_groups,
            "cv.n_test_groups",
            f"must be in [1, cv.n_groups={self.n_groups}) to leave a training group, got {self.n_test_groups}",
        )
        _require(self.purge_bars >= 0, "cv.purge_bars", f"must be >= 0, got {self.purge_bars}")
        _require(
            self.embargo_bars is None or self.embargo_bars >= 0, "cv.embargo_bars", f"must be >= 0 or null, got {self.embargo_bars}"
        )
        _require_split(self.split, math.comb(self.n_groups, self.n_test_groups))


@dataclass
class WalkForwardConfig(CVConfig):
    """Rolling train window, embargo, test window, advanced by ``step_bars``; see
    cappuccino.evaluation.walk_forward. The split count depends on the data length, so the
    upper bound of ``split`` is checked once the data is loaded."""

    name: str = "walk_forward"
    train_bars: int = 4320  # 180 days of hourly bars
    test_bars: int = 1440  # 60 days
    step_bars: int = 1440  # = test_bars: consecutive test windows tile the period
    embargo_bars: int = 24  # bars dropped between each train and test window
    split: Optional[int] = None  # run only this split (to fan the splits out over processes); null: all
    std_penalty: float = 0.1  # objective = mean(agent - benchmark Sharpe) - std_penalty * std(agent Sharpe)

    def __post_init__(self) -> None:
        _require(self.std_penalty >= 0, "cv.std_penalty", f"must be >= 0, got {self.std_penalty}")
        for key in ("train_bars", "test_bars", "step_bars"):
            value = getattr(self, key)
            _require(value >= 1, f"cv.{key}", f"must be >= 1, got {value}")
        _require(self.embargo_bars >= 0, "cv.embargo_bars", f"must be >= 0, got {self.embargo_bars}")
        _require_split(self.split)


def check_purge(cfg: CVConfig, window: WindowConfig) -> None:
    """CPCV's purge must keep training bars a full observation window away from every test group,
    and purge + embargo must keep every training bar's features from reading a test bar (a test
    group is in the past of the training bars after it); raises ConfigError naming the key
    otherwise. Other cv schemes only train on bars before their tests."""
    if not isinstance(cfg, CPCVConfig):
        return
    _require(
        cfg.purge_bars >= window.lookback,
        "cv.purge_bars",
        f"must be >= window.lookback={window.lookback} so no training window reaches a test group, got {cfg.purge_bars}",
    )
    from cappuccino.data.features import feature_memory  # numpy and pandas: only when checking CPCV

    memory = feature_memory(window.zscore_window)
    _require(
        cfg.embargo_bars is None or cfg.purge_bars + cfg.embargo_bars >= memory,
        "cv.embargo_bars",
        f"features reach {memory} bars back (window.zscore_window={window.zscore_window} plus the "
        f"indicators' warm-up), so training bars after a test group would read it: purge_bars + "
        f"embargo_bars must be >= {memory}; use cv.embargo_bars={max(0, memory - cfg.purge_bars)} or null "
        f"(that value), or a shorter window.zscore_window; got {cfg.embargo_bars}",
    )


# --------------------------------------------------------------------------------- logger
@dataclass
class LoggerConfig(Node):
    name: str = MISSING


@dataclass
class MLflowLoggerConfig(LoggerConfig):
    name: str = "mlflow"
    # null: a SQLite store ``mlflow.db`` (artifacts in ``mlartifacts/``) in the folder train.py
    # was started from.
    tracking_uri: Optional[str] = None
    experiment_name: str = "cappuccino"


@dataclass
class NoLoggerConfig(LoggerConfig):
    name: str = "none"


# -------------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig(Node):
    total_steps: int = 300_000  # environment steps summed over all environments
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto"
    torch_threads: Optional[int] = None  # null: PyTorch's default
    precision: str = "32"  # Lightning's names: "32" (float32) or "bf16-mixed" (bfloat16 autocast forwards)
    # Metric returned to Hydra (and Optuna); null: val/excess_sharpe with a validation split
    # (holdout), cv/objective across splits (cpcv, walk_forward).
    objective: Optional[str] = None
    # Environment steps (summed over envs, like total_steps) between deterministic backtests of
    # the validation segments during training, logged as val/* at each step; 0: only at the end.
    eval_every: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        _require(self.total_steps >= 1, "trainer.total_steps", "must be >= 1")
        _require(self.eval_every >= 0, "trainer.eval_every", f"must be >= 0 (0: off), got {self.eval_every}")
        _require(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "trainer.device",
            f"must be cpu, cuda[:N] or auto, got {self.device!r}",
        )
        _require(self.torch_threads is None or self.torch_threads >= 1, "trainer.torch_threads", "must be >= 1")
        _require(
            self.precision in PRECISIONS,
            "trainer.precision",
            f"must be one of {list(PRECISIONS)}, got {self.precision!r}",
        )


@dataclass
class TrainConfig(Node):
    data: DataConfig = MISSING
    window: WindowConfig = MISSING
    env: EnvConfig = MISSING
    agent: PPOConfig = MISSING
    encoder: EncoderConfig = MISSING
    cv: CVConfig = MISSING
    logger: LoggerConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    experiment: Optional[ExperimentConfig] = None  # null: train one agent

    def __post_init__(self) -> None:
        missing = [s for s in self.data.symbols if s not in self.env.min_order_size]
        _require(
            not missing,
            "env.min_order_size",
            f"has no entry for {missing}; add one per symbol, e.g. +env.min_order_size.{missing[0] if missing else 'X'}=0.01",
        )
        check_purge(self.cv, self.window)
        _require(
            self.trainer.eval_every == 0 or isinstance(self.cv, HoldoutConfig),
            "trainer.eval_every",
            f"periodic validation needs validation segments, and cv={self.cv.name} has none "
            "(its held-out parts are test data): use cv=holdout, or trainer.eval_every=0",
        )


# ------------------------------------------------------------------------------- pretrain
PRETRAIN_OBJECTIVES = ("mfm", "rfd")


@dataclass
class PretrainConfig(Node):
    """Self-supervised pre-training of the encoder (pretrain.py; see cappuccino.pretrain)."""

    objective: str = "mfm"  # "mfm": masked feature modelling, "rfd": replaced feature detection
    mask_ratio: float = 0.15  # share of market tokens masked (mfm) or of values replaced (rfd)
    lr: float = 1e-3  # AdamW peak learning rate, after linear warmup, then cosine decay to 0
    weight_decay: float = 1e-5  # not on tokenizers, biases, LayerNorms, [CLS] and [MASK]
    batch_size: int = 256
    max_steps: int = 20_000  # optimizer steps; the cosine schedule spans them all
    warmup_steps: int = 500
    eval_every: int = 500  # steps between validation losses (and early-stopping checks)
    patience: int = 5  # evaluations without a better validation loss before stopping
    val_fraction: float = 0.1  # last share of the training segment's decision bars held out
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        _require(
            self.objective in PRETRAIN_OBJECTIVES,
            "pretrain.objective",
            f"must be one of {list(PRETRAIN_OBJECTIVES)}, got {self.objective!r}",
        )
        _require(0.0 < self.mask_ratio < 1.0, "pretrain.mask_ratio", f"must be in (0, 1), got {self.mask_ratio}")
        _require(self.lr > 0, "pretrain.lr", f"must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, "pretrain.weight_decay", f"must be >= 0, got {self.weight_decay}")
        # rfd draws replacement values from the other samples of the batch.
        _require(self.batch_size >= 2, "pretrain.batch_size", f"must be >= 2, got {self.batch_size}")
        _require(self.max_steps >= 1, "pretrain.max_steps", f"must be >= 1, got {self.max_steps}")
        _require(
            0 <= self.warmup_steps < self.max_steps,
            "pretrain.warmup_steps",
            f"must be in [0, pretrain.max_steps={self.max_steps}), got {self.warmup_steps}",
        )
        _require(self.eval_every >= 1, "pretrain.eval_every", f"must be >= 1, got {self.eval_every}")
        _require(self.patience >= 1, "pretrain.patience", f"must be >= 1, got {self.patience}")
        _require(
            0.0 < self.val_fraction < 1.0, "pretrain.val_fraction", f"must be in (0, 1), got {self.val_fraction}"
        )
        _require(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "pretrain.device",
            f"must be cpu, cuda[:N] or auto, got {self.device!r}",
        )


@dataclass
class PretrainJobConfig(Node):
    """Top-level schema of pretrain.py (conf/pretrain.yaml): the data, window, encoder and cv
    groups mean what they mean in train.py, so the encoder sees the agent's windows."""

    data: DataConfig = MISSING
    window: WindowConfig = MISSING
    encoder: EncoderConfig = MISSING
    cv: CVConfig = MISSING
    logger: LoggerConfig = MISSING
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self) -> None:
        _require(
            self.encoder.name == "ft_transformer",
            "encoder",
            f"pre-training needs an encoder with one output per token, and encoder={self.encoder.name} has "
            "none: use encoder=ft_small, ft_default or ft_large",
        )


# ----------------------------------------------------------------------------- experiment
@dataclass
class ExperimentConfig(Node):
    """A comparison of several training runs (``python train.py experiment=NAME``): the rest of
    the config is what every arm shares. See cappuccino.experiments."""

    name: str = MISSING


@dataclass
class TransferExperimentConfig(ExperimentConfig):
    """Pre-train the encoder on ``source`` bars, then train the configured agent on the
    configured data twice, from scratch and from the pre-trained encoder, and compare their
    validation curves (``trainer.objective`` against environment steps, every
    ``trainer.eval_every`` steps); see cappuccino.experiments.transfer."""

    name: str = "transfer"
    source: DataConfig = MISSING  # the bars pre-training reads, e.g. hourly while data is 5-minute
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"synthetic": SyntheticDataConfig, "csv": CsvDataConfig, "alpaca": AlpacaDataConfig},
    "window": {"default": WindowConfig},
    "env": {"default": EnvConfig},
    "agent": {"ppo": PPOConfig},
    "encoder": {"mlp": MLPEncoderConfig, "ft_transformer": FTTransformerEncoderConfig},
    "cv": {"holdout": HoldoutConfig, "cpcv": CPCVConfig, "walk_forward": WalkForwardConfig},
    "logger": {"mlflow": MLflowLoggerConfig, "none": NoLoggerConfig},
    "trainer": {"default": TrainerConfig},
    "experiment": {"transfer": TransferExperimentConfig},
}


def register_configs() -> None:
    """Register the schemas so ``conf/*.yaml`` can extend them (``/schema/<group>/<name>@_here_``)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="pretrain_schema", node=PretrainJobConfig)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            store.store(group=f"schema/{group}", name=name, node=node)


def validate(cfg: DictConfig) -> TrainConfig:
    """Build the typed config, running every range check; raises ConfigError naming the key."""
    typed = OmegaConf.to_object(cfg)
    if not isinstance(typed, TrainConfig):
        raise ConfigError("the composed config is not a TrainConfig: conf/config.yaml must list train_schema first")
    return typed
