import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from cappuccino.agents import ppo
from cappuccino.config import (
    PRECISIONS,
    AlpacaDataConfig,
    ConfigError,
    CsvDataConfig,
    MLPEncoderConfig,
    NoLoggerConfig,
    SyntheticDataConfig,
    TrainConfig,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]


def test_default_config_composes_to_typed_dataclasses(compose_config):
    cfg = validate(compose_config())
    assert isinstance(cfg, TrainConfig)
    assert isinstance(cfg.data, SyntheticDataConfig)
    assert isinstance(cfg.encoder, MLPEncoderConfig)
    assert cfg.data.symbols == ["AAVE", "AVAX", "BTC", "ETH", "LINK", "LTC", "UNI"]


@pytest.mark.parametrize(
    ("option", "expected"),
    [("data=csv", CsvDataConfig), ("data=alpaca_1h", AlpacaDataConfig), ("data=alpaca_5m", AlpacaDataConfig), ("logger=none", NoLoggerConfig)],
)
def test_every_group_option_composes(compose_config, option, expected):
    overrides = [option, "data.path=bars.csv"] if option == "data=csv" else [option]
    cfg = validate(compose_config(overrides))
    assert isinstance(cfg.data if option.startswith("data") else cfg.logger, expected)


def test_alpaca_5m_uses_five_minute_bars(compose_config):
    assert validate(compose_config(["data=alpaca_5m"])).data.interval == "5min"


def test_misspelt_key_fails_naming_it(compose_config):
    with pytest.raises(ConfigCompositionException, match="agent.lrr"):
        compose_config(["agent.lrr=1e-4"])


def test_wrong_type_fails_naming_the_key(compose_config):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_config(["agent.lr=fast"])
    assert "agent.lr" in str(err.value) or "agent.lr" in str(err.value.__cause__)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("rules.fee=0.5", "rules.fee"),
        ("agent.gamma=1.5", "agent.gamma"),
        ("window.lookback=0", "window.lookback"),
        ("data.signal_strength=1.0", "data.signal_strength"),
        ("cv.train_fraction=0.9", "cv.val_fraction"),
        ("env.reward=sharpe", "env.reward"),
        ("trainer.device=tpu", "trainer.device"),
        ("trainer.precision=16-mixed", "trainer.precision"),
        ("encoder.activation=swish", "encoder.activation"),
    ],
)
def test_out_of_range_values_fail_before_work_naming_the_key(compose_config, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config([override]))


def test_symbol_without_minimum_order_size_is_rejected(compose_config):
    with pytest.raises(ConfigError, match=r"rules\.min_order_size: has no entry for \['DOGE'\]"):
        validate(compose_config(["data.symbols=[BTC,DOGE]"]))


def test_csv_source_requires_a_path(compose_config):
    with pytest.raises(ConfigError, match=r"^data\.path: is required and has no default"):
        validate(compose_config(["data=csv"]))


def test_config_and_ppo_accept_the_same_precisions():
    assert PRECISIONS == ppo.PRECISIONS


def test_help_lists_the_config_groups():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for group in ("data", "window", "env", "rules", "agent", "encoder", "cv", "logger", "trainer"):
        assert f"{group}: " in out.stdout
    assert "alpaca_5m" in out.stdout

