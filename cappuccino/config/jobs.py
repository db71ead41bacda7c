"""The top-level schemas of train.py and pretrain.py, their registration with Hydra, and
``validate``, which runs every check before any work."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cappuccino.config.base import PRECISIONS, Node, _require, build
from cappuccino.config.groups import (
    AlpacaBrokerConfig,
    AlpacaDataConfig,
    BrokerConfig,
    CPCVConfig,
    CsvDataConfig,
    CVConfig,
    DataConfig,
    EncoderConfig,
    EnvConfig,
    FTTransformerEncoderConfig,
    GuardsConfig,
    HoldoutConfig,
    LoggerConfig,
    MLflowLoggerConfig,
    MLPEncoderConfig,
    NoLoggerConfig,
    PPOConfig,
    RulesConfig,
    SimBrokerConfig,
    SyntheticDataConfig,
    WalkForwardConfig,
    WindowConfig,
    check_purge,
    has_validation,
)
from cappuccino.errors import ConfigError
from cappuccino.secrets import refuse_passwords


# -------------------------------------------------------------------------------- trainer
@dataclass
class TrainerConfig(Node):
    """How train.py runs (cappuccino/training.py); no library object of its own."""

    group: ClassVar[str] = "trainer"
    total_steps: int = 300_000
    seed: int = 0
    device: str = "cpu"
    torch_threads: Optional[int] = None
    precision: str = "32"
    objective: Optional[str] = None
    eval_every: Optional[int] = None  # None: a tenth of total_steps with validation segments (validation_every)
    progress: bool = True

    def __post_init__(self) -> None:
        _require(self.total_steps >= 1, "trainer.total_steps", "must be >= 1")
        _require(
            self.eval_every is None or self.eval_every >= 0,
            "trainer.eval_every",
            f"must be >= 0 (0: off) or null (a tenth of total_steps), got {self.eval_every}",
        )
        _require_device(self.device, "trainer.device")
        _require(self.torch_threads is None or self.torch_threads >= 1, "trainer.torch_threads", "must be >= 1")
        _require(
            self.precision in PRECISIONS,
            "trainer.precision",
            f"must be one of {list(PRECISIONS)}, got {self.precision!r}",
        )


def _require_device(device: str, key: str) -> None:
    _require(
        device == "auto" or device == "cpu" or device.startswith("cuda"),
        key,
        f"must be cpu, cuda[:N] or auto, got {device!r}",
    )


@dataclass
class TrainConfig(Node):
    data: DataConfig = MISSING
    window: WindowConfig = MISSING
    env: EnvConfig = MISSING
    rules: RulesConfig = MISSING
    agent: PPOConfig = MISSING
    encoder: EncoderConfig = MISSING
    cv: CVConfig = MISSING
    logger: LoggerConfig = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    experiment: Optional[ExperimentConfig] = None  # null: train one agent

    def __post_init__(self) -> None:
        check_symbols(self.data, self.rules)
        rollout = self.env.num_envs * self.agent.n_steps  # each >= 1 is checked by its own group's object
        _require(
            rollout < 1 or self.agent.minibatch_size <= rollout,
            "agent.minibatch_size",
            f"{self.agent.minibatch_size} exceeds the rollout batch env.num_envs * agent.n_steps = "
            f"{self.env.num_envs} * {self.agent.n_steps} = {rollout}; lower agent.minibatch_size or raise "
            "agent.n_steps / env.num_envs",
        )
        check_purge(self.cv, self.window)
        _require(
            not self.trainer.eval_every or has_validation(self.cv),
            "trainer.eval_every",
            f"periodic validation needs validation segments, and cv={self.cv.name} has none "
            "(its held-out parts are test data): use cv=holdout, cv=cpcv with cv.val_fraction > 0, or trainer.eval_every=0",
        )


def check_symbols(data: DataConfig, rules: RulesConfig) -> None:
    """Every traded symbol needs its exchange's minimum order size."""
    missing = [s for s in data.symbols if s not in rules.min_order_size]
    _require(
        not missing,
        "rules.min_order_size",
        f"has no entry for {missing}; add one per symbol, e.g. +rules.min_order_size.{missing[0] if missing else 'X'}=0.01",
    )


# ------------------------------------------------------------------------------- pretrain
PRETRAIN_OBJECTIVES = ("mfm", "rfd")


@dataclass
class PretrainConfig(Node):
    """Self-supervised pre-training of the encoder (pretrain.py; see cappuccino.pretrain)."""

    group: ClassVar[str] = "pretrain"
    objective: str = "mfm"
    mask_ratio: float = 0.15
    lr: float = 1e-3
    weight_decay: float = 1e-5
    batch_size: int = 256
    max_steps: int = 20_000
    warmup_steps: int = 500
    eval_every: int = 500
    patience: int = 5
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
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
        _require_device(self.device, "pretrain.device")


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
            isinstance(self.encoder, FTTransformerEncoderConfig),
            "encoder",
            f"pre-training needs an encoder with one output per token, and encoder={self.encoder.name} has "
            "none: use encoder=ft_small, ft_default or ft_large",
        )
        _require(not self.encoder.freeze, "encoder.freeze", "pre-training trains the encoder; freeze it in train.py instead")
        _require(
            getattr(self.logger, "register_as", None) is None,
            "logger.register_as",
            "registers a trained policy, and pretrain.py makes an encoder (best_encoder.pt); set it in train.py",
        )
        _require(
            not self.encoder.shared,
            "encoder.shared",
            "pre-training makes one encoder, which train.py loads into the actor and the critic alike; "
            "set encoder.shared in train.py instead",
        )


# ---------------------------------------------------------------------------------- trade
VOTING_RULES = ("mean", "median", "majority", "score_weighted")  # cappuccino.trading.ensemble


@dataclass
class TradeConfig(Node):
    """What trade.py trades and how (cappuccino/trading/session.py)."""

    models: list[str] = field(default_factory=lambda: ["latest"])
    ensemble: str = "mean"
    initial_cash: float = 100_000.0
    strategy_id: str = "cappuccino"
    resume_after_kill: bool = False
    adopt_positions: bool = False
    study_storage: str = "sqlite:///optuna.db"
    guards: GuardsConfig = field(default_factory=GuardsConfig)

    def __post_init__(self) -> None:
        _require(bool(self.models), "trade.models", "must name at least one model")
        _require(self.ensemble in VOTING_RULES, "trade.ensemble", f"must be one of {list(VOTING_RULES)}, got {self.ensemble!r}")
        _require(self.initial_cash > 0, "trade.initial_cash", f"must be > 0, got {self.initial_cash}")
        _require(
            bool(self.strategy_id) and self.strategy_id.replace("-", "").replace("_", "").isalnum(),
            "trade.strategy_id", f"must be letters, digits, '-' or '_' (it starts every client order id), got {self.strategy_id!r}",
        )  # fmt: skip


@dataclass
class TradeJobConfig(Node):
    """Top-level schema of trade.py (conf/trade.yaml): data, cv and rules mean what they mean in
    train.py (the replay's bars, its held-out part and the fees), the broker where orders go."""

    data: DataConfig = MISSING
    cv: CVConfig = MISSING
    rules: RulesConfig = MISSING
    broker: BrokerConfig = MISSING
    logger: LoggerConfig = MISSING
    trade: TradeConfig = field(default_factory=TradeConfig)


# ----------------------------------------------------------------------------- experiment
@dataclass
class ExperimentConfig(Node):
    """A comparison of several training runs (``python train.py experiment=NAME``): the rest of
    the config is what every arm shares. ``_target_`` is the function that runs it (see
    cappuccino.experiments)."""

    group: ClassVar[str] = "experiment"
    _target_: str = MISSING
    name: str = MISSING


@dataclass
class TransferExperimentConfig(ExperimentConfig):
    """Pre-train the encoder on ``source`` bars, then train the configured agent on the
    configured data twice, from scratch and from the pre-trained encoder, and compare their
    validation curves; see cappuccino.experiments.transfer."""

    _target_: str = "cappuccino.experiments.transfer.run"
    name: str = "transfer"
    source: DataConfig = MISSING
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    seeds: Optional[list[int]] = None  # the two arms' seeds; null: trainer.seed alone

    def __post_init__(self) -> None:
        _require(
            self.seeds is None or len(set(self.seeds)) == len(self.seeds) >= 1, "experiment.seeds",
            f"must be null or distinct seeds, got {self.seeds}",
        )  # fmt: skip


ABLATION_ARMS = ("mlp", "ft_scratch", "ft_frozen", "ft_finetuned")


@dataclass
class AblationExperimentConfig(ExperimentConfig):
    """Train one agent per arm and seed on the same cv splits with the same step budget: the
    ``baseline`` encoder (an MLP), the configured FT-Transformer from scratch, and the same
    pre-trained on ``source`` bars (frozen, or fine-tuned); then report which arm wins and how
    sure that is; see cappuccino.experiments.ablation."""

    _target_: str = "cappuccino.experiments.ablation.run"
    name: str = "ablation"
    arms: list[str] = field(default_factory=lambda: list(ABLATION_ARMS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    baseline: EncoderConfig = MISSING
    source: DataConfig = MISSING
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self) -> None:
        unknown = [arm for arm in self.arms if arm not in ABLATION_ARMS]
        _require(not unknown and len(set(self.arms)) == len(self.arms) >= 2, "experiment.arms", f"must be two or more of {list(ABLATION_ARMS)}, each once; got {self.arms}")
        _require(len(set(self.seeds)) == len(self.seeds) >= 2, "experiment.seeds", f"must be two or more distinct seeds (an interval needs them); got {self.seeds}")


@dataclass
class SensitivityExperimentConfig(ExperimentConfig):
    """Train the configured FT-Transformer at every point of a grid over ``d_token``,
    ``n_blocks`` and ``n_heads`` (each grid point an arm), with every seed, on the same cv
    splits and step budget, then report; see cappuccino.experiments.sensitivity."""

    _target_: str = "cappuccino.experiments.sensitivity.run"
    name: str = "sensitivity"
    d_token: list[int] = field(default_factory=lambda: [32, 64])
    n_blocks: list[int] = field(default_factory=lambda: [1, 2])
    n_heads: list[int] = field(default_factory=lambda: [2, 4])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def __post_init__(self) -> None:
        for key in ("d_token", "n_blocks", "n_heads"):
            values = getattr(self, key)
            _require(len(values) == len(set(values)) >= 1 and all(v >= 1 for v in values), f"experiment.{key}", f"must be distinct values >= 1, got {values}")
        bad = [(d, h) for d in self.d_token for h in self.n_heads if d % h]
        _require(not bad, "experiment.d_token", f"every d_token must be a multiple of every n_heads; {bad} are not")
        _require(len(self.d_token) * len(self.n_blocks) * len(self.n_heads) >= 2, "experiment", "the grid needs two or more points")
        _require(len(set(self.seeds)) == len(self.seeds) >= 2, "experiment.seeds", f"must be two or more distinct seeds (an interval needs them); got {self.seeds}")


SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"synthetic": SyntheticDataConfig, "csv": CsvDataConfig, "alpaca": AlpacaDataConfig},
    "window": {"default": WindowConfig},
    "env": {"default": EnvConfig},
    "rules": {"default": RulesConfig},
    "agent": {"ppo": PPOConfig},
    "encoder": {"mlp": MLPEncoderConfig, "ft_transformer": FTTransformerEncoderConfig},
    "cv": {"holdout": HoldoutConfig, "cpcv": CPCVConfig, "walk_forward": WalkForwardConfig},
    "logger": {"mlflow": MLflowLoggerConfig, "none": NoLoggerConfig},
    "trainer": {"default": TrainerConfig},
    "broker": {"sim": SimBrokerConfig, "alpaca_paper": AlpacaBrokerConfig},
    "experiment": {"transfer": TransferExperimentConfig, "ablation": AblationExperimentConfig, "sensitivity": SensitivityExperimentConfig},
}


def register_configs() -> None:
    """Register the schemas so ``conf/*.yaml`` can extend them (``/schema_<group>_<name>@_here_``).

    They are stored outside any config group, so ``--help`` lists only the groups a user picks from.
    """
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig, replace=True)
    store.store(name="pretrain_schema", node=PretrainJobConfig, replace=True)
    store.store(name="trade_schema", node=TradeJobConfig, replace=True)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            store.store(name=f"schema_{group}_{name}", node=node, replace=True)


def to_typed(cfg: DictConfig, schema: type[Node]) -> Any:
    """The typed config of a composed one, running the schema's checks; ConfigError names the key.

    Keys the schema does not know are refused however they got in (``+agent.lrr=1e-4`` adds one
    past Hydra's own check), and so are infinite or NaN numbers."""
    missing = sorted(key for key in OmegaConf.missing_keys(cfg) if not key.startswith("hydra."))
    if missing:
        raise ConfigError(f"{missing[0]}: is required and has no default; set it on the command line ({missing[0]}=...)")
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("hydra", None)  # type: ignore[union-attr]
    refuse_passwords(plain)  # from a YAML file or ${oc.env:...}: it would reach MLflow, config.yaml, checkpoints
    typed = OmegaConf.to_object(cfg)
    if not isinstance(typed, schema):
        raise ConfigError(f"the composed config is not a {schema.__name__}: its YAML must list its schema first")
    _check_keys_and_numbers(plain, typed, "")
    return typed


def _check_keys_and_numbers(plain: Any, typed: Any, prefix: str) -> None:
    """Every key of ``plain`` (the composed values) is a field of ``typed``; every number is finite."""
    if isinstance(typed, Node):
        known = {f.name for f in fields(typed)}  # type: ignore[arg-type]
        for key, value in plain.items():
            if key not in known:
                raise ConfigError(
                    f"{prefix}{key}: not a setting of {prefix.rstrip('.') or 'the config'}; its settings are "
                    f"{sorted(k for k in known if k != '_target_')}"
                )
            _check_keys_and_numbers(value, getattr(typed, key), f"{prefix}{key}.")
    elif isinstance(plain, dict):
        for key, value in plain.items():
            _check_keys_and_numbers(value, value, f"{prefix}{key}.")
    elif isinstance(plain, float) and not math.isfinite(plain):
        raise ConfigError(f"{prefix.rstrip('.')}: must be a finite number, got {plain}")


def validate(cfg: DictConfig) -> TrainConfig:
    """Build the typed config and every object that needs no data: all checks run before any work."""
    typed: TrainConfig = to_typed(cfg, TrainConfig)
    check_buildable(typed.data, typed.rules, typed.env, typed.agent, typed.cv)
    check_encoder(typed.encoder, typed.window, len(typed.data.symbols))
    return typed


def check_buildable(*nodes: Node) -> None:
    """Build each node's object (none of these touches data or devices) so its checks run now."""
    for node in nodes:
        build(node)


def check_encoder(encoder: EncoderConfig, window: WindowConfig, n_assets: int) -> None:
    """Build the encoder on PyTorch's meta device: it checks its arguments, allocates nothing and
    draws no random numbers."""
    import torch

    with torch.device("meta"):
        build(encoder, lookback=window.lookback, n_assets=n_assets, n_features=1)
