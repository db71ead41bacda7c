"""What every config schema shares: the ``Node`` base and ``build``, which makes a group's object.

This package imports no other part of cappuccino: it is the bottom layer.
"""


from __future__ import annotations

from dataclasses import fields
from typing import Any, ClassVar

from hydra.utils import get_object

from cappuccino.errors import ArgumentError, ConfigError

DEFAULT_SYMBOLS = ["AAVE", "AVAX", "BTC", "ETH", "LINK", "LTC", "UNI"]

# Training precisions, named as in PyTorch Lightning; see cappuccino.agents.ppo.PPO.
PRECISIONS = ("32", "bf16-mixed")

# How many bars back the slowest raw indicator reads (cappuccino.data.features.INDICATOR_REACH;
# a test keeps the two equal): the config checks CPCV's embargo before any data is loaded.
INDICATOR_REACH_BARS = 377


class Node:
    """Base of every config dataclass.

    ``group`` is the config group the node is the value of; ``_target_`` (where a group has one)
    the object it builds; ``CONFIG_ONLY`` the fields that say how the app uses the object and are
    no argument of it.
    """

    group: ClassVar[str] = ""
    CONFIG_ONLY: ClassVar[frozenset[str]] = frozenset({"name"})


def build(node: Node, /, **runtime: Any) -> Any:
    """The object ``node`` describes: ``node._target_`` called with the node's fields (less
    ``CONFIG_ONLY``) and ``runtime``'s arguments, which the config cannot know (the data's shape,
    a run name). An out-of-range argument is reported as a ``ConfigError`` naming its key."""
    target = get_object(node._target_)  # type: ignore[attr-defined]
    arguments = {f.name: getattr(node, f.name) for f in fields(node) if f.name != "_target_" and f.name not in node.CONFIG_ONLY}  # type: ignore[arg-type]
    try:
        return target(**arguments, **runtime)
    except ArgumentError as error:
        key = f"{node.group}.{error.argument}" if error.argument.split(".")[0] in arguments else error.argument
        raise ConfigError(f"{key}: {error.message}") from None


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")
