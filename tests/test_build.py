"""One way from a config group to its object: every option of every group builds the object its
``_target_`` names, with the group's fields as the object's arguments (a field the object does not
take, or an argument the schema lacks, fails here), and an out-of-range argument is reported
with its config key."""

from __future__ import annotations

import pytest
import torch

from cappuccino.config import SCHEMAS, ConfigError, build, validate
from cappuccino.data.source import BarSource
from cappuccino.env.portfolio import EpisodeSampling
from cappuccino.agents.ppo import PPOSettings
from cappuccino.evaluation.splits import Splitter
from cappuccino.models.encoders import Encoder
from cappuccino.trading.rules import TradingRules

from .conftest import CONF_DIR

# What each group's object is, and the arguments only a run knows.
EXPECTED = {
    "data": (BarSource, {}),
    "env": (EpisodeSampling, {}),
    "rules": (TradingRules, {}),
    "agent": (PPOSettings, {}),
    "cv": (Splitter, {}),
    "encoder": (Encoder, {"lookback": 4, "n_assets": 7, "n_features": 14}),
}
EXTRA = {"data=csv": ["data.path=bars.csv"], **{f"encoder={o}": ["encoder.patch_bars=4"] for o in ("ft_small", "ft_default", "ft_large")}}


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in EXPECTED for o in _options(g)])
def test_every_option_builds_its_object(compose_config, group, option):
    cfg = validate(compose_config([f"{group}={option}", *EXTRA.get(f"{group}={option}", [])]))
    kind, runtime = EXPECTED[group]
    with torch.device("meta"):
        made = build(getattr(cfg, group), **runtime)
    if kind is Splitter:
        assert callable(made.split) and callable(made.get_n_splits)
    else:
        assert isinstance(made, kind)


def test_every_schema_names_a_target():
    for group, options in SCHEMAS.items():
        for option, schema in options.items():
            if group in ("window", "trainer"):
                continue  # settings the app reads itself: no object of their own
            assert getattr(schema(), "_target_", "").startswith("cappuccino."), (group, option)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("agent.lr=-1", "agent.lr"),
        ("agent.gamma=1.5", "agent.gamma"),
        ("env.num_envs=0", "env.num_envs"),
        ("env.reward=profit", "env.reward"),
        ("rules.fee=0.5", "rules.fee"),
        ("rules.min_order_size.BTC=-1", "rules.min_order_size.BTC"),
        ("data.n_bars=10", "data.n_bars"),
        ("data.symbols=[BTC,BTC]", "data.symbols"),
        ("cv=cpcv cv.n_test_groups=9", "cv.n_test_groups"),
        ("cv.train_fraction=0.9", "cv.val_fraction"),
        ("encoder.hidden_sizes=[]", "encoder.hidden_sizes"),
        ("encoder=ft_small encoder.n_heads=3", "encoder.d_token"),
        ("encoder=ft_small encoder.ffn_dropout=1.0", "encoder.ffn_dropout"),
    ],
)
def test_a_bad_value_fails_in_validation_naming_its_config_key(compose_config, override, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        validate(compose_config(override.split()))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data.start=garbage"], "data.start"),
        (["data=alpaca_1h", "data.end=31/12/2024x"], "data.end"),
        (["data.interval=1M"], "data.interval"),
    ],
)
def test_unreadable_dates_and_intervals_fail_in_validation(compose_config, overrides, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        validate(compose_config(overrides))
