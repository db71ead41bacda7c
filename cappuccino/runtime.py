"""Where a job runs: its folders, its device and its random generators."""

from __future__ import annotations

import os
import random
import signal
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


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM asked the job to stop; ``exit_code`` is the shell's 128 + signal number.
    A KeyboardInterrupt, so trackers close their runs as KILLED."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(signal.Signals(signum).name)


class _Signals:
    """Where a stop request waits: raised at once, or at the next safe point while deferring."""

    deferring = 0
    pending: int | None = None

    @classmethod
    def handle(cls, signum: int, frame: object) -> None:
        if cls.deferring and cls.pending is None:  # a second signal stops at once
            cls.pending = signum
            print(f"{signal.Signals(signum).name}: stopping after the current step (again to stop now)", file=sys.stderr)
            return
        raise Interrupted(signum)


@contextmanager
def graceful_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` (at the next ``check_interrupt`` inside
    ``deferred_interrupts``, else at once); the previous handlers come back afterwards."""
    previous = {s: signal.signal(s, _Signals.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _Signals.pending = None


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Inside, a stop request waits for ``check_interrupt`` (the end of a training step), so an
    update is never cut in half and what was learnt can be saved."""
    _Signals.deferring += 1
    try:
        yield
    finally:
        _Signals.deferring -= 1


def pending_interrupt() -> int | None:
    """The signal of a stop requested while deferring (then cleared), or None."""
    signum, _Signals.pending = _Signals.pending, None
    return signum


def check_interrupt() -> None:
    """Raise ``Interrupted`` if a stop was requested while deferring."""
    signum = pending_interrupt()
    if signum is not None:
        raise Interrupted(signum)


@contextmanager
def exit_on_interrupt(multirun: bool) -> Iterator[None]:
    """Outside a multirun, an ``Interrupted`` job ends with one line and the shell's exit status
    (130 for SIGINT, 143 for SIGTERM) instead of a traceback."""
    with graceful_interrupts():
        try:
            yield
        except Interrupted as stop:
            if multirun:
                raise
            print(f"interrupted ({signal.Signals(stop.signum).name}): what was learnt so far is saved, and the run marked KILLED", file=sys.stderr)
            raise SystemExit(stop.exit_code) from None
