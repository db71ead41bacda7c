"""SIGINT and SIGTERM end a run cleanly: the update in progress finishes, the weights so far are
saved and marked interrupted, the MLflow run ends KILLED, and the process exits with the shell's
status (130, 143) after one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from cappuccino.sqlite_lock import opening_lock

from .conftest import ROOT, TINY

pytestmark = pytest.mark.slow

LONG = [o for o in TINY if not o.startswith(("trainer.total_steps", "trainer.progress"))] + [
    "trainer.total_steps=100000000",  # far more than the test waits for
    "trainer.progress=true",
]


def _start(tmp_path: Path, script: str, overrides: list[str]) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / script), *overrides, f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"hydra.run.dir={tmp_path}/run"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_training(tmp_path: Path, process: subprocess.Popen, pattern: str, timeout: float = 120.0) -> None:
    """Until the job's MLflow run has logged ``pattern`` metrics (it is inside the training loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if (tmp_path / "mlflow.db").exists():
            with opening_lock(f"sqlite:///{tmp_path}/mlflow.db"):  # not while the job creates the store
                client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
                runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
            if runs and any(k.startswith(pattern) for k in runs[0].data.metrics):
                return
        time.sleep(0.5)
    process.kill()
    pytest.fail("training never started")


def _only_run(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return run


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_training_after_the_update_saves_the_weights_and_kills_the_run(tmp_path, signum, status):
    process = _start(tmp_path, "train.py", LONG)
    _wait_for_training(tmp_path, process, "train/")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    lines = [line for line in stderr.strip().splitlines() if line]
    assert lines[-1].startswith("interrupted (") and "Traceback" not in stderr
    run = _only_run(tmp_path)
    assert run.info.status == "KILLED" and run.info.end_time is not None
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["interrupted"] is True
    assert "checkpoint.pt" in {a.path for a in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").list_artifacts(run.info.run_id)}


def test_a_signal_ends_pretraining_with_its_encoder_files_and_a_killed_run(tmp_path):
    overrides = [
        "data.n_bars=1500", "window.lookback=8", "window.zscore_window=50", "encoder=ft_small", "encoder.patch_bars=4", "encoder.d_token=16",
        "cv.embargo_bars=4", "pretrain.batch_size=32", "pretrain.max_steps=10000000", "pretrain.warmup_steps=5",
        "pretrain.eval_every=20", "pretrain.patience=100000", "pretrain.val_fraction=0.2",
    ]  # fmt: skip
    process = _start(tmp_path, "pretrain.py", overrides)
    _wait_for_training(tmp_path, process, "val/")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert _only_run(tmp_path).info.status == "KILLED"
    final = torch.load(tmp_path / "run" / "final_encoder.pt", weights_only=True)
    assert final["interrupted"] is True and (tmp_path / "run" / "best_encoder.pt").is_file()
    assert (tmp_path / "run" / "training_history.json").is_file()
