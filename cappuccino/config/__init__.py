"""Structured configuration: one dataclass per config group, registered in Hydra's ConfigStore.

The YAML files under ``conf/`` list every setting with its default and extend these schemas
(``/schema_<group>_<option>@_here_`` in their defaults lists), so a misspelt key or a wrong type
fails when Hydra composes the config. Each group that describes a library object names it in
``_target_``; :func:`build` makes that object from the group's values, and the object checks its
own arguments once (an out-of-range value raises ``ArgumentError``, reported here as a
``ConfigError`` naming the config key). The dataclasses hold types, defaults and the checks that
span several groups; :func:`validate` runs all of them, and builds every object that needs no
data, before any work starts.

This module imports no other part of the package: it is the bottom layer.
"""

from cappuccino.config.base import DEFAULT_SYMBOLS, INDICATOR_REACH_BARS, PRECISIONS, Node, build
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
    feature_reach,
)
from cappuccino.config.jobs import (
    ABLATION_ARMS,
    PRETRAIN_OBJECTIVES,
    AblationExperimentConfig,
    SCHEMAS,
    ExperimentConfig,
    PretrainConfig,
    PretrainJobConfig,
    SensitivityExperimentConfig,
    TradeConfig,
    TradeJobConfig,
    TrainConfig,
    TrainerConfig,
    TransferExperimentConfig,
    check_buildable,
    check_encoder,
    check_symbols,
    register_configs,
    to_typed,
    validate,
)
from cappuccino.errors import ArgumentError, ConfigError

__all__ = [
    "ABLATION_ARMS", "AblationExperimentConfig", "DEFAULT_SYMBOLS", "SensitivityExperimentConfig", "INDICATOR_REACH_BARS", "PRECISIONS", "PRETRAIN_OBJECTIVES", "SCHEMAS",
    "AlpacaBrokerConfig", "AlpacaDataConfig", "ArgumentError", "BrokerConfig", "GuardsConfig", "SimBrokerConfig", "TradeConfig", "TradeJobConfig", "CPCVConfig", "CVConfig", "ConfigError", "CsvDataConfig",
    "DataConfig", "EncoderConfig", "EnvConfig", "ExperimentConfig", "FTTransformerEncoderConfig",
    "HoldoutConfig", "LoggerConfig", "MLPEncoderConfig", "MLflowLoggerConfig", "NoLoggerConfig", "Node",
    "PPOConfig", "PretrainConfig", "PretrainJobConfig", "RulesConfig", "SyntheticDataConfig",
    "TrainConfig", "TrainerConfig", "TransferExperimentConfig", "WalkForwardConfig", "WindowConfig",
    "build", "check_buildable", "check_encoder", "check_purge", "check_symbols", "feature_reach",
    "register_configs", "to_typed", "validate",
]  # fmt: skip
