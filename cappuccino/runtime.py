"""Where a job runs: its folders, its device and its random generators."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cappuccino.errors import ConfigError, UserError


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path  # Hydra's output folder of this run
    project_dir: Path  # where the entry point was started: home of the embedded MLflow store

    def job(self, name: str) -> RunPaths:
        """A job's own folder inside this run's folder; the same project (and MLflow store)."""
        run_dir = self.run_dir / name
        run_dir.mkdir(parents=True, exist_ok=True)
        return RunPaths(run_dir=run_dir, project_dir=self.project_dir)


def resolve_device(name: str, key: str = "trainer.device") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error naming ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r} but CUDA is not available: use {key}=cpu")
    return device


def seed_everything(seed: int, threads: int | None) -> None:
    """Same seed on CPU -> same numbers: seed every generator and use deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)


@contextmanager
def one_line_errors(multirun: bool) -> Iterator[None]:
    """A ``UserError`` (a setting, a file, the data) ends the program with its message on one line
    and exit status 2, not a traceback. ``HYDRA_FULL_ERROR=1`` shows the traceback; in a multirun
    the error propagates, so the sweep records the job as failed and goes on."""
    try:
        yield
    except UserError as error:
        if multirun or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
