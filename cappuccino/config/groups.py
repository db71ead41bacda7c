"""The schemas of the config groups that build library objects (``_target_``), and the checks
that span two of them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from omegaconf import MISSING

from cappuccino.config.base import DEFAULT_SYMBOLS, INDICATOR_REACH_BARS, Node, _require


# ----------------------------------------------------------------------------------- data
@dataclass
class DataConfig(Node):
    """A data source (cappuccino/data/): ``build(cfg).load()`` gives the bars."""

    group: ClassVar[str] = "data"
    _target_: str = MISSING
    symbols: list[str] = field(default_factory=lambda: list(DEFAULT_SYMBOLS))
    interval: str = "1h"  # pandas offset alias of one bar: "1h", "5min", ...
    max_gap_bars: int = 3  # missing bars forward-filled up to this run length, else fail
    # Bars whose high/low do not contain open and close (high < low among them): "repair" widens
    # high and low to the bar's extreme prices and reports it, "reject" fails naming them.
    inconsistent_bars: str = "repair"


@dataclass
class SyntheticDataConfig(DataConfig):
    _target_: str = "cappuccino.data.synthetic.SyntheticSource"
    seed: int = 7
    start: str = "2022-01-01"
    n_bars: int = 17520  # two years of hourly bars
    signal_strength: float = 0.1
    signal_half_life: float = 6.0
    annual_drift: float = 0.3


@dataclass
class CsvDataConfig(DataConfig):
    _target_: str = "cappuccino.data.csv_source.CsvSource"
    path: str = MISSING
    time_format: Optional[str] = None  # strftime format of text times, e.g. "%d/%m/%Y %H:%M"; None: ISO 8601


@dataclass
class AlpacaDataConfig(DataConfig):
    _target_: str = "cappuccino.data.alpaca_source.AlpacaSource"
    quote: str = "USD"
    start: str = "2023-01-01"
    end: str = "2024-12-31"
    cache_dir: str = "~/.cache/cappuccino/alpaca"
    url_override: Optional[str] = None


# --------------------------------------------------------------------------------- window
@dataclass
class WindowConfig(Node):
    """What the agent observes (cappuccino/data/features.py): read by the features, the env and
    the encoders, so it builds no object of its own."""

    group: ClassVar[str] = "window"
    lookback: int = 20
    zscore_window: int = 500

    def __post_init__(self) -> None:
        _require(1 <= self.lookback <= 512, "window.lookback", f"must be in [1, 512], got {self.lookback}")
        _require(self.zscore_window >= 20, "window.zscore_window", f"must be >= 20, got {self.zscore_window}")


# ------------------------------------------------------------------------------------ env
@dataclass
class EnvConfig(Node):
    """Training episodes (cappuccino/env/portfolio.py EpisodeSampling)."""

    group: ClassVar[str] = "env"
    _target_: str = "cappuccino.env.portfolio.EpisodeSampling"
    num_envs: int = 64
    episode_length: int = 720
    initial_cash: float = 100_000.0
    reward: str = "excess_log_return"
    reward_scale: float = 100.0
    turnover_penalty: float = 0.005
    rebalance_band: Optional[float] = 0.0


# ---------------------------------------------------------------------------------- rules
@dataclass
class RulesConfig(Node):
    """Trading rules shared by the simulator and the brokers (cappuccino/trading/rules.py)."""

    group: ClassVar[str] = "rules"
    _target_: str = "cappuccino.trading.rules.TradingRules"
    fee: float = 0.0025
    cash_reserve: float = 0.02
    rebalance_band: float = 0.05
    min_order_size: dict[str, float] = field(default_factory=dict)
    qty_increment: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------- broker
@dataclass
class BrokerConfig(Node):
    """Where trade.py's orders go (cappuccino/trading/): ``build(cfg, ...)`` with the session's prices."""

    group: ClassVar[str] = "broker"
    _target_: str = MISSING
    name: str = MISSING


@dataclass
class SimBrokerConfig(BrokerConfig):
    """The replay of held-out bars (cappuccino/trading/sim.py SimBroker)."""

    CONFIG_ONLY: ClassVar[frozenset[str]] = frozenset({"name", "part", "pace", "max_bars"})
    _target_: str = "cappuccino.trading.sim.SimBroker"
    name: str = "sim"
    part: str = "test"  # the cv scheme's part replayed: "test" or "val"
    pace: float = 0.0  # seconds per bar; 0: as fast as possible
    max_bars: Optional[int] = None  # stop after this many bars; null: the whole part

    def __post_init__(self) -> None:
        _require(self.part in ("test", "val"), "broker.part", f"must be 'test' or 'val', got {self.part!r}")
        _require(self.pace >= 0, "broker.pace", f"must be >= 0 seconds per bar, got {self.pace}")
        _require(self.max_bars is None or self.max_bars >= 1, "broker.max_bars", f"must be >= 1 or null, got {self.max_bars}")


@dataclass
class AlpacaBrokerConfig(BrokerConfig):
    """Alpaca's paper account (cappuccino/trading/alpaca.py AlpacaPaperBroker); keys from the environment."""

    CONFIG_ONLY: ClassVar[frozenset[str]] = frozenset({"name", "max_bars", "settle_seconds"})
    _target_: str = "cappuccino.trading.alpaca.AlpacaPaperBroker"
    name: str = "alpaca_paper"
    live: bool = False  # a live account: also needs CAPPUCCINO_LIVE_TRADING=yes in the environment
    url_override: Optional[str] = None  # another trading API server (tests: a local fake)
    max_bars: Optional[int] = None  # stop after this many bars; null: run until stopped
    settle_seconds: float = 10.0  # wait after a bar's close before reading it (Alpaca aggregates)
    requests_per_minute: int = 190  # under the plan's rate limit (200 on Alpaca's free plan)

    def __post_init__(self) -> None:
        _require(self.max_bars is None or self.max_bars >= 1, "broker.max_bars", f"must be >= 1 or null, got {self.max_bars}")
        _require(self.settle_seconds >= 0, "broker.settle_seconds", f"must be >= 0, got {self.settle_seconds}")
        _require(self.requests_per_minute >= 1, "broker.requests_per_minute", f"must be >= 1, got {self.requests_per_minute}")


@dataclass
class GuardsConfig(Node):
    """trade.py's risk guards (cappuccino/trading/guards.py RiskGuards)."""

    group: ClassVar[str] = "trade.guards"
    _target_: str = "cappuccino.trading.guards.RiskGuards"
    max_weight: float = 0.5
    max_order_notional: float = 50_000.0
    max_drawdown: float = 0.25
    daily_loss_limit: float = 0.10
    stale_after_bars: float = 2.0
    cooldown_bars: int = 24


# ---------------------------------------------------------------------------------- agent
@dataclass
class PPOConfig(Node):
    """PPO's hyperparameters (cappuccino/agents/ppo.py PPOSettings); ``init_log_std`` is the
    policy's starting exploration, read when the policy is built."""

    group: ClassVar[str] = "agent"
    CONFIG_ONLY: ClassVar[frozenset[str]] = frozenset({"name", "init_log_std"})
    _target_: str = "cappuccino.agents.ppo.PPOSettings"
    name: str = "ppo"
    lr: float = 3e-4
    anneal_lr: bool = True
    n_steps: int = 128
    gamma: float = 0.5
    gae_lambda: float = 0.95
    update_epochs: int = 4
    minibatch_size: int = 1024
    micro_batch_size: Optional[int] = None
    clip_coef: float = 0.2
    clip_value_loss: bool = True
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    target_kl: Optional[float] = 0.03
    norm_adv: bool = True
    init_log_std: float = -0.5
    final_log_std: Optional[float] = -2.5


# -------------------------------------------------------------------------------- encoder
@dataclass
class EncoderConfig(Node):
    """An encoder (cappuccino/models/): ``build(cfg, lookback=, n_assets=, n_features=)``.
    ``shared``, ``pretrained`` and ``freeze`` say how the policy uses it."""

    group: ClassVar[str] = "encoder"
    CONFIG_ONLY: ClassVar[frozenset[str]] = frozenset({"name", "shared", "pretrained", "freeze"})
    _target_: str = MISSING
    name: str = MISSING
    shared: bool = False
    pretrained: Optional[str] = None
    freeze: bool = False

    def __post_init__(self) -> None:
        _require(
            not self.freeze or self.pretrained is not None,
            "encoder.freeze",
            "freezing needs pre-trained weights: set encoder.pretrained=PATH (from pretrain.py)",
        )


@dataclass
class MLPEncoderConfig(EncoderConfig):
    _target_: str = "cappuccino.models.encoders.MLPEncoder"
    name: str = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    activation: str = "tanh"
    per_asset: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            self.pretrained is None,
            "encoder.pretrained",
            "only FT-Transformer encoders are pre-trained (pretrain.py); use encoder=ft_small, ft_default "
            "or ft_large with it, or leave encoder.pretrained null",
        )


@dataclass
class FTTransformerEncoderConfig(EncoderConfig):
    _target_: str = "cappuccino.models.ft_transformer.FTTransformerEncoder"
    name: str = "ft_transformer"
    tokens: str = "asset_time"
    patch_bars: int = 5
    d_token: int = 64
    n_blocks: int = 2
    n_heads: int = 4
    ffn_factor: float = 4 / 3
    activation: str = "reglu"
    attention_dropout: float = 0.0
    ffn_dropout: float = 0.0
    residual_dropout: float = 0.0
    out_dim: int = 128


# ------------------------------------------------------------------------------------- cv
@dataclass
class CVConfig(Node):
    """A splitter of the bar axis (cappuccino/evaluation/). ``split`` and ``std_penalty`` say
    which splits train.py runs and how it scores them."""

    group: ClassVar[str] = "cv"
    CONFIG_ONLY: ClassVar[frozenset[str]] = frozenset({"name", "split", "std_penalty"})
    _target_: str = MISSING
    name: str = MISSING


@dataclass
class HoldoutConfig(CVConfig):
    CONFIG_ONLY: ClassVar[frozenset[str]] = frozenset({"name"})
    _target_: str = "cappuccino.evaluation.splits.HoldoutSplitter"
    name: str = "holdout"
    train_fraction: float = 0.7
    val_fraction: float = 0.15
    embargo_bars: int = 24


@dataclass
class CPCVConfig(CVConfig):
    _target_: str = "cappuccino.evaluation.cpcv.CombinatorialPurgedCV"
    name: str = "cpcv"
    n_groups: int = 6
    n_test_groups: int = 2
    purge_bars: int = 60
    embargo_bars: Optional[int] = None
    val_fraction: float = 0.0
    split: Optional[int] = None
    std_penalty: float = 0.1

    def __post_init__(self) -> None:
        _require(0.0 <= self.val_fraction < 1.0, "cv.val_fraction", f"must be in [0, 1) (0: no validation segments), got {self.val_fraction}")
        n_splits = math.comb(self.n_groups, self.n_test_groups) if 1 <= self.n_test_groups < self.n_groups else None
        _require_split(self.split, n_splits)
        _require(self.std_penalty >= 0, "cv.std_penalty", f"must be >= 0, got {self.std_penalty}")


@dataclass
class WalkForwardConfig(CVConfig):
    """The split count depends on the data length, so the upper bound of ``split`` is checked
    once the data is loaded."""

    _target_: str = "cappuccino.evaluation.walk_forward.WalkForwardSplitter"
    name: str = "walk_forward"
    train_bars: int = 4320
    test_bars: int = 1440
    step_bars: int = 1440
    embargo_bars: int = 24
    split: Optional[int] = None
    std_penalty: float = 0.1

    def __post_init__(self) -> None:
        _require_split(self.split)
        _require(self.std_penalty >= 0, "cv.std_penalty", f"must be >= 0, got {self.std_penalty}")


def _require_split(split: Optional[int], n_splits: Optional[int] = None) -> None:
    _require(split is None or split >= 0, "cv.split", f"must be >= 0 or null (all splits), got {split}")
    if n_splits is not None and split is not None:
        _require(split < n_splits, "cv.split", f"must be < {n_splits}, the number of splits, got {split}")


def feature_reach(zscore_window: int) -> int:
    """How many bars back a feature reaches: the z-score window over indicators that each read
    INDICATOR_REACH_BARS back (to the features' stated tolerance)."""
    return zscore_window + INDICATOR_REACH_BARS - 1


def has_validation(cfg: CVConfig) -> bool:
    """Whether the scheme's splits have validation segments (what periodic validation reads)."""
    return isinstance(cfg, HoldoutConfig) or (isinstance(cfg, CPCVConfig) and cfg.val_fraction > 0)


def check_purge(cfg: CVConfig, window: WindowConfig) -> None:
    """CPCV's purge must keep training bars a full observation window away from every test group,
    and purge + embargo must keep every training bar's features from reading a test bar (a test
    group is in the past of the training bars after it). Other cv schemes only train on bars
    before their tests."""
    if not isinstance(cfg, CPCVConfig):
        return
    _require(
        cfg.purge_bars >= window.lookback,
        "cv.purge_bars",
        f"must be >= window.lookback={window.lookback} so no training window reaches a test group, got {cfg.purge_bars}",
    )
    memory = feature_reach(window.zscore_window)
    _require(
        cfg.embargo_bars is None or cfg.purge_bars + cfg.embargo_bars >= memory,
        "cv.embargo_bars",
        f"features reach {memory} bars back (window.zscore_window={window.zscore_window} plus the "
        f"indicators' {INDICATOR_REACH_BARS}), so training bars after a test group would read it: purge_bars + "
        f"embargo_bars must be >= {memory}; use cv.embargo_bars={max(0, memory - cfg.purge_bars)} or null "
        f"(that value), or a shorter window.zscore_window; got {cfg.embargo_bars}",
    )


# --------------------------------------------------------------------------------- logger
@dataclass
class LoggerConfig(Node):
    """An experiment tracker (cappuccino/tracking/): ``build(cfg, run_name=, project_dir=, ...)``."""

    group: ClassVar[str] = "logger"
    _target_: str = MISSING
    name: str = MISSING


@dataclass
class MLflowLoggerConfig(LoggerConfig):
    CONFIG_ONLY: ClassVar[frozenset[str]] = frozenset({"name", "register_as"})
    _target_: str = "cappuccino.tracking.mlflow_tracker.MLflowTracker"
    name: str = "mlflow"
    tracking_uri: Optional[str] = None
    experiment_name: str = "cappuccino"
    register_as: Optional[str] = None  # the registered model a run's (a study's: its best trial's) policy joins
    system_metrics_interval: Optional[float] = 10.0  # seconds between system/* samples; null: none

    def __post_init__(self) -> None:
        name = self.register_as
        _require(
            name is None or (bool(name.strip()) and not set(name) & set("/:%")),
            "logger.register_as",
            f"must be a model name without '/', ':' or '%' (models:/NAME/latest), or null, got {name!r}",
        )
        interval = self.system_metrics_interval
        _require(interval is None or interval > 0, "logger.system_metrics_interval", f"must be > 0 seconds or null, got {interval}")


@dataclass
class NoLoggerConfig(LoggerConfig):
    _target_: str = "cappuccino.tracking.NullTracker"
    name: str = "none"
