"""Errors a user can read: one line naming the key and the fix, before any work, and no
setting that slips past the schema."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cappuccino.config import validate
from cappuccino.errors import ConfigError

from .conftest import ROOT, TINY


def _train(tmp_path, *overrides, env=None):
    command = [sys.executable, str(ROOT / "train.py"), "logger=none", *overrides, f"hydra.run.dir={tmp_path}/run"]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_a_config_error_is_one_line_and_exit_status_2_and_hydra_full_error_shows_the_traceback(tmp_path):
    done = _train(tmp_path, "agent.lr=inf")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: agent.lr: must be a finite number, got inf"]
    full = _train(tmp_path, "agent.lr=inf", env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr and "agent.lr: must be a finite number" in full.stderr


def test_too_little_data_is_one_line_too(tmp_path):
    done = _train(tmp_path, "data.n_bars=120", "trainer.progress=false")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: ohlcv has 120 bars") and "data.n_bars" in done.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+agent.lrr=1e-4", r"^agent\.lrr: not a setting of agent; its settings are \[.*'lr'"),
        ("+trainer.seeds=3", r"^trainer\.seeds: not a setting of trainer"),
        ("+rules.min_order_size.XRP=inf", r"^rules\.min_order_size\.XRP: must be a finite number, got inf"),
        ("agent.lr=inf", r"^agent\.lr: must be a finite number, got inf"),
        ("rules.fee=nan", r"^rules\.fee: must be a finite number, got nan"),
        ("env.reward_scale=inf", r"^env\.reward_scale: must be a finite number"),
        ("agent.minibatch_size=100000", r"^agent\.minibatch_size: 100000 exceeds the rollout batch env\.num_envs \* agent\.n_steps"),
    ],
)
def test_keys_and_values_hydra_lets_through_are_refused_in_validation(compose_config, override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_config([override]))


def test_late_checks_fail_before_any_data_is_loaded(compose_config, tmp_path, monkeypatch):
    from cappuccino import training

    from .conftest import run_train
    from cappuccino.runtime import RunPaths

    monkeypatch.setattr(training, "load_market", lambda *a: pytest.fail("data was loaded"))
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="agent.minibatch_size"):
        run_train(compose_config([*TINY, "logger=none", "agent.minibatch_size=4096"]), RunPaths(tmp_path / "run", tmp_path))
