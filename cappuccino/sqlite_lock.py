"""One process at a time opens a SQLite store that may not exist yet.

The first client of a new MLflow or Optuna SQLite file creates its schema; two doing it at once
(parallel sweep jobs or workers started in a fresh folder) fail, MLflow's with an alembic "Online
migration expected to match one row" error. A lock file beside the database serialises the
opening only; reads and writes afterwards are SQLite's own business.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from filelock import FileLock

_SQLITE = "sqlite:///"


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other URLs and in-memory databases)."""
    if not url.startswith(_SQLITE) or url == _SQLITE + ":memory:":
        return None
    return Path(url[len(_SQLITE) :]).expanduser().resolve()


def opening_lock(url: str) -> contextlib.AbstractContextManager[object]:
    """Hold while opening the store at ``url``; a no-op for anything but a SQLite file."""
    database = sqlite_file(url)
    if database is None:
        return contextlib.nullcontext()
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{database}.lock")
