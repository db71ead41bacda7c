"""`python train.py -m hparams_search=ppo_mlp`: a real Hydra + Optuna multirun at tiny sizes."""

import subprocess
import sys
from pathlib import Path

import optuna

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]


def _sweep(tmp_path, *overrides: str) -> optuna.Study:
    tiny = [o for o in TINY if not o.startswith(("window.lookback", "encoder.hidden_sizes"))]
    command = [
        sys.executable, str(ROOT / "train.py"), "-m", "hparams_search=ppo_mlp", "logger=none",
        *tiny, "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        f"hydra.sweep.dir={tmp_path}/multirun", *overrides,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return optuna.load_study(study_name="ppo_mlp", storage=f"sqlite:///{tmp_path}/optuna.db")


def test_ppo_mlp_sweep_runs_the_asked_trials_into_its_sqlite_study(tmp_path):
    study = _sweep(tmp_path)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 3
    assert {"agent.lr", "env.reward", "window.lookback"} <= set(trials[0].params)
    assert len({t.params["agent.lr"] for t in trials}) == 3  # TPE sampled, not one point thrice


def test_failing_trials_are_recorded_as_failed_and_the_sweep_finishes(tmp_path):
    # env.fee=0.5 is out of range: those trials raise ConfigError; the seeded TPE picks both.
    study = _sweep(tmp_path, "env.fee=choice(0.001,0.5)", "hydra.sweeper.n_trials=4")
    states = {t.params["env.fee"]: t.state for t in study.trials}
    assert len(study.trials) == 4
    assert states == {0.001: optuna.trial.TrialState.COMPLETE, 0.5: optuna.trial.TrialState.FAIL}


def test_ppo_ft_sweep_chooses_between_encoders_and_sweeps_no_mlp_only_keys():
    from hydra import compose, initialize_config_dir

    from .conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["hparams_search=ppo_ft"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params["encoder"] == "choice(mlp, ft_small, ft_default, ft_large)"
    assert "encoder.hidden_sizes" not in params
    assert cfg.hydra.sweeper.study_name == "ppo_ft" and "agent.lr" in params
