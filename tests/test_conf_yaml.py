"""conf/ and cappuccino.config agree key for key, and ``--help`` lists what a user picks from.

Every option file of a group lists every setting of its schema (the dataclass its defaults list
names as ``/schema_<group>_<option>@...``) and nothing else, so a user reading conf/ sees all of
them; the options that keep the schema's defaults hold exactly those values. ``_target_`` and
``name`` are a node's identity, set by the schema, not settings. The files are read from disk, so
a new option or a new schema field is covered without editing this test.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import pytest
from omegaconf import OmegaConf

from cappuccino.config import SCHEMAS, Node, PretrainConfig
from cappuccino.data.source import DEFAULT_SYMBOLS

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
IDENTITY = {"_target_", "name"}
NO_SCHEMA = {"hparams_search"}  # sweeps: settings of Hydra's sweeper, no group schema
ALL = "*"
# Options that keep their schema's defaults (the others exist to change some of them).
KEEPS_DEFAULTS: dict[str, set[str] | str] = {
    "env": {"default"},
    "rules": {"default"},
    "agent": {"ppo"},
    "window": {"default"},
    "trainer": {"default"},
    "cv": ALL,
    "logger": ALL,
    "data": {"synthetic"},
    "encoder": {"mlp"},
}
PRETRAIN_GROUPS = ("cv", "data", "encoder", "logger", "window")
TRAIN_ONLY_GROUPS = ("agent", "env", "rules", "trainer")
PICKED_IN_TRAIN = ("agent", "env", "rules", "data", "encoder", "cv", "logger", "trainer", "window")


def groups_on_disk() -> dict[str, list[str]]:
    """Every config group (a folder of conf/) and its options (the YAML files in it)."""
    return {
        folder.name: sorted(f.stem for f in folder.glob("*.yaml"))
        for folder in sorted(CONF.iterdir())
        if folder.is_dir() and not folder.name.startswith((".", "_"))
    }


GROUPS = groups_on_disk()
OPTIONS = [(group, option) for group, options in GROUPS.items() if group not in NO_SCHEMA for option in options]


def load(path: Path) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


def schema_entry(group: str, option: str) -> tuple[type[Node], str]:
    """The schema an option file extends and the package it puts it at (``_here_``, ``experiment``)."""
    entries = [e for e in load(CONF / group / f"{option}.yaml").get("defaults", []) if isinstance(e, str) and e.startswith("/schema_")]
    assert len(entries) == 1, f"conf/{group}/{option}.yaml must list one /schema_{group}_<option>@... entry, has {entries}"
    name, _, package = entries[0][1:].partition("@")
    assert name.startswith(f"schema_{group}_"), f"conf/{group}/{option}.yaml extends {name}, a schema of another group"
    schema_option = name.removeprefix(f"schema_{group}_")
    assert schema_option in SCHEMAS[group], f"conf/{group}/{option}.yaml: no schema {name} in cappuccino.config.SCHEMAS"
    return SCHEMAS[group][schema_option], package


def settings(node: dict[str, Any]) -> set[str]:
    return set(node) - {"defaults"} - IDENTITY


def schema_fields(schema: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema) if f.name not in IDENTITY}


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types (1 is no 1.0 and no True), lists and dicts item by item."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def key_diff(where: str, keys: set[str], schema: type) -> str:
    fields = set(schema_fields(schema))
    return (
        f"{where} and {schema.__name__} disagree: missing in the YAML {sorted(fields - keys)}, "
        f"not in the schema {sorted(keys - fields)}"
    )


def assert_same_keys(where: str, node: dict[str, Any], schema: type) -> None:
    assert settings(node) == set(schema_fields(schema)), key_diff(where, settings(node), schema)


def assert_defaults(where: str, node: dict[str, Any], schema: type, skip: tuple[str, ...] = ()) -> None:
    for key, f in schema_fields(schema).items():
        if key not in skip:
            assert same(node[key], default_of(f)), f"{where}: {key} is {node[key]!r}, {schema.__name__}'s default {default_of(f)!r}"


def keeps_defaults(group: str, option: str) -> bool:
    options = KEEPS_DEFAULTS.get(group, set())
    return options == ALL or option in options


def test_the_options_that_keep_defaults_exist():
    for group, options in KEEPS_DEFAULTS.items():
        assert group in GROUPS, f"conf/{group}/ is gone: update KEEPS_DEFAULTS"
        if options != ALL:
            missing = set(options) - set(GROUPS[group])
            assert not missing, f"conf/{group}/ has no {sorted(missing)}: update KEEPS_DEFAULTS"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}/{o}" for g, o in OPTIONS])
def test_option_file_lists_every_schema_field(group, option):
    schema, package = schema_entry(group, option)
    where = f"conf/{group}/{option}.yaml"
    yaml = load(CONF / group / f"{option}.yaml")
    if package == "_here_":
        node = yaml
    else:  # a _global_ file (experiment) with its group's settings under the package
        assert (CONF / group / f"{option}.yaml").read_text().startswith("# @package _global_"), where
        node = yaml
        for part in package.split("."):
            node = node[part]
        where = f"{where} {package}"
    assert_same_keys(where, node, schema)
    check_nested(where, yaml, node, schema, package)
    if keeps_defaults(group, option):
        if group == "rules":
            assert_defaults(where, node, schema, skip=("min_order_size",))
        else:
            assert_defaults(where, node, schema)


def check_nested(where: str, yaml: dict[str, Any], node: dict[str, Any], schema: type, package: str) -> None:
    """Fields that are config nodes themselves (experiment.source, experiment.pretrain) list
    their schema's fields too: the schema of an option placed there (``/data@experiment.source:
    synthetic``) or the field's own type."""
    hints = get_type_hints(schema)
    for key in schema_fields(schema):
        kind = hints[key]
        if not (get_origin(kind) is None and isinstance(kind, type) and issubclass(kind, Node)):
            continue
        path = f"{package}.{key}"
        placed = [e for e in yaml.get("defaults", []) if isinstance(e, dict) and any(k.endswith(f"@{path}") for k in e)]
        if placed:
            (target, option), = placed[0].items()
            kind, _ = schema_entry(target.lstrip("/").split("@")[0], option)
        assert isinstance(node[key], dict), f"{where}: {key} must be a mapping of {kind.__name__}'s fields"
        assert_same_keys(f"{where}.{key}", node[key], kind)


def test_rules_min_order_size_covers_every_default_symbol():
    sizes = load(CONF / "rules" / "default.yaml")["min_order_size"]
    missing = [s for s in DEFAULT_SYMBOLS if s not in sizes]
    assert not missing, f"conf/rules/default.yaml min_order_size has no entry for {missing}"
    assert all(isinstance(v, float) and v > 0 for v in sizes.values()), sizes


def test_pretrain_block_lists_every_pretrain_field_at_its_default():
    yaml = load(CONF / "pretrain.yaml")
    assert set(yaml) == {"defaults", "pretrain", "hydra"}, sorted(yaml)
    assert_same_keys("conf/pretrain.yaml pretrain", yaml["pretrain"], PretrainConfig)
    assert_defaults("conf/pretrain.yaml pretrain", yaml["pretrain"], PretrainConfig)


def test_experiment_overrides_are_settings_of_the_groups_they_change():
    """A _global_ experiment also sets keys of other groups: each must be a field of the option
    the composed config uses (the experiment's ``override /group: option``, else config.yaml's)."""
    chosen = {k: v for e in load(CONF / "config.yaml")["defaults"] if isinstance(e, dict) for k, v in e.items()}
    for option in GROUPS["experiment"]:
        yaml = load(CONF / "experiment" / f"{option}.yaml")
        _, package = schema_entry("experiment", option)
        overrides = {k.removeprefix("override /"): v for e in yaml["defaults"] if isinstance(e, dict) for k, v in e.items() if k.startswith("override /")}
        for group in set(yaml) - {"defaults", package.split(".")[0]}:
            assert group in SCHEMAS, f"conf/experiment/{option}.yaml sets {group}, which is no config group"
            schema, _ = schema_entry(group, {**chosen, **overrides}[group])
            extra = settings(yaml[group]) - set(schema_fields(schema))
            assert not extra, f"conf/experiment/{option}.yaml sets {group}.{sorted(extra)}, no fields of {schema.__name__}"


# ------------------------------------------------------------------------------------ --help
def run_help(script: str) -> str:
    out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def listed_groups(help_text: str) -> dict[str, list[str]]:
    """``group: option, option`` lines of the help's group section."""
    section = help_text.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    return {m.group(1): m.group(2).split(", ") for m in re.finditer(r"^([\w/]+): (\S.*)$", section, re.M)}


@pytest.fixture(scope="module")
def train_help() -> str:
    return run_help("train.py")


@pytest.fixture(scope="module")
def pretrain_help() -> str:
    return run_help("pretrain.py")


def test_train_help_lists_the_groups_a_user_picks_from(train_help):
    intro = train_help.split("== Configuration groups ==", 1)[0]
    assert intro.startswith("cappuccino train.py: train a PPO agent"), intro[:200]
    assert "Examples:" in intro and intro.count("python train.py") >= 3, intro
    listed = listed_groups(train_help)
    assert listed == GROUPS, f"--help lists {listed}, conf/ holds {GROUPS}"
    assert set(PICKED_IN_TRAIN) <= set(listed)
    assert "schema" not in train_help.lower()


def test_pretrain_help_lists_only_what_pretraining_reads(pretrain_help):
    intro = pretrain_help.split("== Configuration groups ==", 1)[0]
    assert intro.startswith("cappuccino pretrain.py: pre-train"), intro[:200]
    assert "Examples:" in intro and intro.count("python pretrain.py") >= 3, intro
    listed = listed_groups(pretrain_help)
    on_disk = {group: GROUPS[group] for group in PRETRAIN_GROUPS}
    assert listed == on_disk, f"conf/pretrain.yaml's help template lists {listed}, conf/ holds {on_disk}"
    for word in TRAIN_ONLY_GROUPS:
        assert not re.search(rf"\b{word}\b", pretrain_help), f"pretrain.py --help mentions {word}"
    config = pretrain_help.split("== Config ==", 1)[1]
    block = config.split("\npretrain:\n", 1)[1]
    for key in schema_fields(PretrainConfig):
        assert re.search(rf"^  {key}: ", block, re.M), f"pretrain.py --help shows no pretrain.{key}"
    assert "schema" not in pretrain_help.lower()
