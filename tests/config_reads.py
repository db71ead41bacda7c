"""Which config settings a run reads: test tooling that proves no setting is silently ignored.

``record_reads`` patches ``Node.__getattribute__`` for the duration of a block only, so
production code carries no recording hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any, get_args, get_type_hints

from cappuccino.config import Node

# Identity fields: which object a group builds and its display name, not settings.
IDENTITY = ("_target_", "name")


@contextmanager
def record_reads() -> Iterator[set[tuple[int, str]]]:
    """Collect (id(config node), field name) for every config field read inside the block."""
    reads: set[tuple[int, str]] = set()

    def recording(self: Node, name: str) -> Any:
        if not name.startswith("__"):
            reads.add((id(self), name))
        return object.__getattribute__(self, name)

    Node.__getattribute__ = recording  # type: ignore[method-assign]
    try:
        yield reads
    finally:
        del Node.__getattribute__


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
        elif f.name not in IDENTITY and (id(cfg), f.name) not in reads:
            unread.append(key)
    return unread
