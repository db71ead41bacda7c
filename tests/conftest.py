from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cappuccino.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
register_configs()


def _entry_point(name: str) -> ModuleType:
    """An entry point script (train.py, pretrain.py) imported as a module, to call its ``run``."""
    spec = importlib.util.spec_from_file_location(f"{name}_entry", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_train = _entry_point("train").run  # what `python train.py` runs, minus Hydra's composition

# Small enough for a 2-core CPU in seconds, big enough for every stage to do real work.
TINY = [
    "data.n_bars=1500",
    "window.lookback=8",
    "window.zscore_window=50",
    "env.num_envs=8",
    "env.episode_length=64",
    "agent.n_steps=32",
    "agent.minibatch_size=64",
    "agent.update_epochs=2",
    "encoder.hidden_sizes=[32,32]",
    "cv.embargo_bars=4",
    "trainer.total_steps=768",
    "trainer.progress=false",
]


@pytest.fixture
def compose_config() -> Callable[[Sequence[str]], DictConfig]:
    def _compose(overrides: Sequence[str] = ()) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR)):
            return compose("config", overrides=list(overrides))

    return _compose


@pytest.fixture
def one_thread():
    """The test machine is shared: one thread is plenty at tiny sizes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- processes a test starts (servers, workers) ------------------------------------------------
def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} is missing)"


@dataclass
class Process:
    popen: subprocess.Popen
    log: Path

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.log.name}: still running after {timeout} s\n{tail(self.log)}")


@pytest.fixture
def processes() -> Iterator[Callable[..., Process]]:
    """``start(command, log, env, cwd)``: a process in a session of its own, output to ``log``;
    every one still running at the end is stopped by its process group (TERM, then KILL after 5 s)."""
    started: list[Process] = []

    def start(command: Sequence[str], log: Path, env: Mapping[str, str], cwd: Path | None = None) -> Process:
        with log.open("a") as out:
            popen = subprocess.Popen(
                [str(c) for c in command], cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        started.append(Process(popen, log))
        return started[-1]

    yield start
    for process in started:  # the whole group: a server's workers outlive a leader that has exited
        signal_group(process, signal.SIGTERM)
    for process in started:
        try:
            process.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            signal_group(process, signal.SIGKILL)
            process.popen.wait()


def signal_group(process: Process, signum: int) -> None:
    try:
        os.killpg(process.popen.pid, signum)
    except ProcessLookupError:  # the group has ended
        pass


# -- the recipe ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder whose outputs/ holds one trained TINY run (band 1 %, so it trades), what
    trade.py's ``latest`` finds."""
    from cappuccino.runtime import RunPaths

    project = tmp_path_factory.mktemp("project")
    run_dir = project / "outputs" / "2026-12-02" / "10-00-00"
    run_dir.mkdir(parents=True)
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[*TINY, "logger=none", "rules.rebalance_band=0.01"])
    run_train(cfg, RunPaths(run_dir, project))
    return project
