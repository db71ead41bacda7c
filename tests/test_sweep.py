"""`python train.py -m hparams_search=...`: real Hydra + Optuna multiruns at tiny sizes, scored by
CPCV, tracked as one MLflow run per study, resumed after a real kill, shared by two workers."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from cappuccino.hparams_search.sweeper import counted

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
TINY_SWEEP = [
    *(o for o in TINY if not o.startswith(("data.n_bars", "window.lookback", "encoder.hidden_sizes", "cv.embargo_bars"))),
    "data.n_bars=2500",  # 4 groups of ~600 bars: more than the purge + embargo features need (446)
    "cv.n_groups=4", "cv.n_test_groups=1", "cv.purge_bars=20",
    "window.lookback=choice(8,12)",
]  # fmt: skip
COMPLETE, FAIL, RUNNING = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING


def sweep_command(tmp_path: Path, *overrides: str, search: str = "ppo_mlp", sweep_dir: str = "multirun") -> list[str]:
    return [
        sys.executable, str(ROOT / "train.py"), "-m", f"hparams_search={search}", *TINY_SWEEP,
        "encoder.hidden_sizes=choice([16,16],[32,32])",
        "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
        f"hydra.sweep.dir={tmp_path}/{sweep_dir}", *overrides,
    ]  # fmt: skip


def run_sweep(tmp_path: Path, *overrides: str) -> optuna.Study:
    done = subprocess.run(sweep_command(tmp_path, *overrides), cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return load(tmp_path)


def load(tmp_path: Path, name: str = "ppo_mlp") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")


def child_runs(client: MlflowClient, run_id: str) -> list:
    run = client.get_run(run_id)
    return client.search_runs([run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")


@pytest.mark.slow
def test_study_is_one_mlflow_run_with_trials_and_splits_nested_and_a_runnable_best_config(tmp_path):
    study = run_sweep(tmp_path, "hydra.sweeper.keep_checkpoints=1", "logger.register_as=ppo_mlp_best")
    trials = study.get_trials(states=(COMPLETE,))
    assert len(study.trials) == 3 and len(trials) == 3
    assert {"agent.lr", "env.reward", "window.lookback", "encoder.hidden_sizes"} <= set(trials[0].params)
    assert len({t.params["agent.lr"] for t in trials}) == 3  # TPE sampled, not one point thrice
    assert all(len(t.user_attrs["split_excess_sharpe"]) == 4 for t in trials)  # scored by CPCV: C(4, 1) splits

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.get_run(study.user_attrs["mlflow_run_id"])
    assert parent.info.run_name == "study ppo_mlp" and parent.info.status == "FINISHED"
    # One objective name at every level: the study's is its best trial's so far, one point per batch.
    assert parent.data.metrics["objective"] == pytest.approx(study.best_value)
    history = client.get_metric_history(parent.info.run_id, "objective")
    assert sorted({m.step for m in history}) == [1, 2, 3]
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert values == sorted(values)  # the best so far never gets worse (maximised)
    assert parent.data.tags["best.trial"] == str(study.best_trial.number)
    assert parent.data.params["study.objective"] == "cv/objective" and parent.data.params["study.n_trials"] == "3"
    assert parent.data.params["study.sampler"] == "TPESampler" and parent.data.params["study.direction"] == "maximize"
    assert parent.data.params["search.agent.lr"].startswith("FloatDistribution(")
    assert {"pbo", "deflated_sharpe", "trials_complete"} <= set(parent.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    expected = {"best_trial.yaml", "optimization_results.yaml", "overfitting.json", "optimization_history.png", "param_importances.png"}
    assert expected <= artifacts
    # python -m cappuccino.report <the study's run>: the same numbers, read back from MLflow alone
    from cappuccino.report import main as report_command

    out = tmp_path / "study_report"
    assert report_command([parent.info.run_id, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--out", str(out)]) == 0
    import pandas as pd

    table = pd.read_csv(out / "trials.csv")
    assert table["objective"].tolist() == pytest.approx([t.value for t in sorted(trials, key=lambda t: t.number)])
    text = (out / "report.md").read_text()
    assert f"- best: trial {study.best_trial.number}, objective {study.best_value:+.4g}" in text
    assert f"probability of backtest overfitting {parent.data.metrics['pbo']:.2f}" in text and "![Parameter importances (PED-ANOVA)](param_importances.png)" in text
    assert {"slices.png", "param_importances.png", "optimization_history.png"} <= {p.name for p in out.iterdir()}

    trial_runs = child_runs(client, parent.info.run_id)
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trial_runs) == [0, 1, 2]
    for run in trial_runs:
        splits = child_runs(client, run.info.run_id)
        assert sorted(r.data.tags["cv.split"] for r in splits) == ["0", "1", "2", "3"]
        trial = run.data.tags["optuna.trial"]
        assert run.info.run_name == f"trial {trial}" and "agent.lr=" in run.data.tags["overrides"]
        assert run.data.tags["best"] == str(int(trial) == study.best_trial.number).lower()  # best=true on the best alone
        assert run.data.metrics["objective"] == pytest.approx(study.trials[int(trial)].value)
        assert run.data.tags["objective.key"] == "cv/objective" and "std" in run.data.tags["objective.definition"]
        assert sorted(r.info.run_name for r in splits) == [f"trial {trial} · split {k}" for k in range(4)]
    best_run = parent.data.tags["best.run_id"]
    assert int(client.get_run(best_run).data.tags["optuna.trial"]) == study.best_trial.number
    # The study run's page: a Markdown summary linking the best trial's run, and the rerun command.
    best_url = parent.data.tags["best.run_url"]
    assert best_url.startswith("http://127.0.0.1:5000/#/experiments/") and f"/runs/{best_run}" in best_url
    description = parent.data.tags["mlflow.note.content"]
    assert f"**Best: [trial {study.best_trial.number}]({best_url})**, objective {study.best_value:.4g}" in description
    assert "(finished): 3 of 3 trials complete, 0 failed; objective `cv/objective`, maximized" in description
    assert f"| `agent.lr` | {study.best_params['agent.lr']:.4g} |" in description
    assert "Probability of backtest overfitting" in description and "--config-name best_trial" in description
    # logger.register_as: the best trial's per-split ensemble is a registered model that acts.
    import mlflow
    import numpy as np

    (version,) = client.search_model_versions("name = 'ppo_mlp_best'")
    assert version.run_id == best_run and parent.data.tags["best.registered_model"] == f"models:/ppo_mlp_best/{version.version}"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    model = mlflow.pyfunc.load_model("models:/ppo_mlp_best/latest")
    window_shape = model.metadata.signature.inputs.inputs[0].shape[1:]
    weights = np.zeros((1, window_shape[1] + 1), dtype=np.float32)
    weights[0, 0] = 1.0
    assert model.predict({"window": np.zeros((1, *window_shape), dtype=np.float32), "weights": weights}).shape == (1, window_shape[1])
    # The store holds the one experiment: no empty "Default" for the UI to open on.
    assert [e.name for e in client.search_experiments()] == ["cappuccino"]
    checkpoints = {Path(a.path).name for a in client.list_artifacts(best_run, "policy/data/policy")}
    assert checkpoints >= {f"checkpoint_split{i}.pt" for i in range(4)}  # the best trial's ensemble, found by its run id
    # Retention: the other trials' agents are gone from their runs and folders; the best's are kept.
    for run in trial_runs:
        trial = study.trials[int(run.data.tags["optuna.trial"])]
        kept = trial.number == study.best_trial.number
        agents = [a.path for r in [run, *child_runs(client, run.info.run_id)] for a in client.list_artifacts(r.info.run_id)]
        agents = [a for a in agents if a.startswith(("checkpoint", "policy"))]
        files = sorted(Path(trial.user_attrs["output_dir"]).glob("checkpoint*.pt"))
        assert (len(files), len(agents) > 0, run.data.tags.get("checkpoints")) == ((4, True, None) if kept else (0, False, "deleted"))
        # The figures are in MLflow alone: the sweep folder holds no second copy.
        assert not list(Path(trial.user_attrs["output_dir"]).glob("*.png"))
        assert all("equity_test.png" in {a.path for a in client.list_artifacts(r.info.run_id)} for r in child_runs(client, run.info.run_id))

    # best_trial.yaml reruns the best trial: same seed, same numbers on CPU.
    rerun = [
        sys.executable, str(ROOT / "train.py"), "--config-dir", f"{tmp_path}/multirun", "--config-name", "best_trial",
        f"hydra.run.dir={tmp_path}/rerun",
    ]  # fmt: skip
    done = subprocess.run(rerun, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"objective (cv/objective, the splits' test groups) = {study.best_value:.4f}" in done.stdout


@pytest.mark.slow
def test_failing_trials_are_recorded_as_failed_and_the_sweep_finishes(tmp_path):
    # A config every check accepts, but whose data is too short for CPCV's purge and embargo:
    # those trials raise when they split the bars; the seeded TPE picks both values.
    command = [o for o in sweep_command(tmp_path, "window.zscore_window=choice(50,900)", "hydra.sweeper.n_trials=4", "logger=none") if o != "window.zscore_window=50"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    study = load(tmp_path)
    states = {t.params["window.zscore_window"]: t.state for t in study.trials}
    assert len(study.trials) == 4
    assert states == {50: COMPLETE, 900: FAIL}


@pytest.mark.slow
def test_rerunning_a_finished_study_adds_no_trial(tmp_path):
    run_sweep(tmp_path, "logger=none", "hydra.sweeper.n_trials=1")
    study = run_sweep(tmp_path, "logger=none", "hydra.sweeper.n_trials=1")
    assert len(study.trials) == 1


def start_sweep_and_wait_for_trial_1(command: list[str], tmp_path: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not (tmp_path / "multirun" / "1").exists():  # trial 1 started: trial 0 is done
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"the sweep ended before trial 1 started: {process.communicate()[1][-3000:]}")
        time.sleep(0.2)
    time.sleep(1.0)  # inside trial 1's training
    return process


def trial_runs_by_number(tmp_path: Path) -> dict[int, list]:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    by_number: dict[int, list] = {}
    for run in runs:
        if "optuna.trial" in run.data.tags:
            splits = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
            by_number.setdefault(int(run.data.tags["optuna.trial"]), []).append((run, splits))
    return by_number


@pytest.mark.slow
def test_a_killed_study_resumes_to_exactly_n_trials_reruns_the_killed_trial_and_ends_its_run_killed(tmp_path):
    heartbeat = ("hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2")
    process = start_sweep_and_wait_for_trial_1(sweep_command(tmp_path, *heartbeat), tmp_path)
    os.killpg(process.pid, signal.SIGKILL)  # no cleanup runs: like a power cut or the OOM killer
    process.communicate()
    killed = load(tmp_path)
    assert [t.state for t in killed.trials] == [COMPLETE, RUNNING]
    ((trial_1_run, _),) = trial_runs_by_number(tmp_path)[1]
    assert trial_1_run.info.status == "RUNNING"  # nothing could close it

    time.sleep(2.5)  # past the grace period: trial 1's heartbeats have stopped
    study = run_sweep(tmp_path, *heartbeat)
    states = [t.state for t in study.trials]
    assert states == [COMPLETE, FAIL, COMPLETE, COMPLETE]  # 1 failed as killed, 2 is its rerun, 3 the last
    assert study.trials[2].params == study.trials[1].params
    assert [t.number for t in counted(study.trials)] == [0, 2, 3]
    runs = trial_runs_by_number(tmp_path)
    ((trial_1_run, splits),) = runs[1]
    assert trial_1_run.info.status == "KILLED" and trial_1_run.info.end_time is not None  # ended by the resuming worker
    assert {r.info.status for r in splits} <= {"KILLED", "FINISHED"} and "KILLED" in {r.info.status for r in splits}
    assert all(run.info.status == "FINISHED" for n in (0, 2, 3) for run, _ in runs[n])


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_sweep_ends_in_one_line_its_runs_killed_and_resumes_the_trial_at_once(tmp_path, signum, status):
    heartbeat = ("hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=600")  # no heartbeat rescue
    process = start_sweep_and_wait_for_trial_1(sweep_command(tmp_path, *heartbeat), tmp_path)
    process.send_signal(signum)  # the main process only, as `kill` or `timeout` does
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"interrupted ({signal.Signals(signum).name}): ")
    # Trial 1 is told failed and its parameters queued; every run it opened is ended KILLED.
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [COMPLETE, FAIL, optuna.trial.TrialState.WAITING]
    assert study.trials[2].params == study.trials[1].params
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(study.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    ((trial_1_run, splits),) = trial_runs_by_number(tmp_path)[1]
    assert trial_1_run.info.status == "KILLED" and splits[0].info.status == "KILLED"

    # The same command resumes at once (no grace period to wait out) to exactly n_trials.
    resumed = run_sweep(tmp_path, *heartbeat)
    assert [t.state for t in resumed.trials] == [COMPLETE, FAIL, COMPLETE, COMPLETE]
    assert [t.number for t in counted(resumed.trials)] == [0, 2, 3]
    assert client.get_run(resumed.user_attrs["mlflow_run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_two_workers_on_one_storage_share_the_study_with_parallel_jobs_from_a_fresh_folder(tmp_path):
    # Both workers start at once in a folder with no MLflow or Optuna store yet, each running two
    # joblib processes: four processes race to create both SQLite stores.
    commands = [
        sweep_command(tmp_path, "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4", sweep_dir=f"worker{w}")
        for w in (0, 1)
    ]
    workers = [subprocess.Popen(c, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    for worker in workers:
        _, stderr = worker.communicate(timeout=900)
        assert worker.returncode == 0, stderr[-3000:]

    study = load(tmp_path)
    assert len(counted(study.trials)) == 4
    assert all(t.state == COMPLETE for t in counted(study.trials))  # none lost, none left running
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    trial_runs = child_runs(client, study.user_attrs["mlflow_run_id"])
    ran = sorted(int(r.data.tags["optuna.trial"]) for r in trial_runs)
    assert ran == sorted(t.number for t in counted(study.trials))  # each counted trial ran exactly once


def test_ppo_ft_sweep_chooses_between_encoders_scores_by_cpcv_and_sweeps_no_mlp_only_keys():
    from hydra import compose, initialize_config_dir

    from .conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["hparams_search=ppo_ft"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params["encoder"] == "choice(mlp, ft_small, ft_default, ft_large)"
    assert "encoder.hidden_sizes" not in params
    assert cfg.hydra.sweeper.study_name == "ppo_ft" and "agent.lr" in params
    assert cfg.cv.name == "cpcv" and cfg.hydra.sweeper._target_.endswith("StudySweeper")


@pytest.mark.parametrize("search", ["ppo", "ppo_mlp", "ppo_ft"])
def test_every_searched_key_is_a_config_leaf_or_group_that_runs_read(search):
    """With test_train's every-leaf-is-read test, this proves each searched setting reaches the code
    (the system this replaces searched ~25 settings and passed 8 to the agent)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from .conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[f"hparams_search={search}"], return_hydra_config=True)
    for key in cfg.hydra.sweeper.params:
        if key in cfg.hydra.runtime.choices:  # a config group (encoder): its options' leaves are checked
            continue
        value = OmegaConf.select(cfg, key, default=KeyError)
        assert value is not KeyError and not OmegaConf.is_dict(value), f"{search}: {key} is not a config leaf"


def test_a_trial_returning_nan_or_raising_is_told_failed_and_a_finite_one_complete(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from cappuccino.hparams_search.sweeper import tell

    study = optuna.create_study(direction="maximize")
    hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}})
    results = [
        JobReturn(status=JobStatus.COMPLETED, _return_value=float("nan"), hydra_cfg=hydra_cfg),
        JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError("diverged"), hydra_cfg=hydra_cfg),
        JobReturn(status=JobStatus.COMPLETED, _return_value=1.5, hydra_cfg=hydra_cfg),
    ]
    errors = [tell(study, study.ask(), result) for result in results]
    assert [t.state for t in study.trials] == [FAIL, FAIL, COMPLETE]
    assert errors[2] is None and "nan" in str(errors[0]) and "diverged" in str(errors[1])
    assert study.best_value == 1.5 and study.trials[2].user_attrs["output_dir"] == str(tmp_path)


@pytest.mark.parametrize(
    ("override", "message"),
    [("hydra/sweeper/sampler=grid", "grid sampler"), ("cv.purge_bars=5", r"cv\.purge_bars")],
)
def test_a_sweep_that_cannot_work_fails_before_any_trial(tmp_path, override, message):
    done = subprocess.run(sweep_command(tmp_path, override, "logger=none"), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and re.search(message, done.stderr)
    assert not (tmp_path / "multirun").exists()  # no trial started


def test_overfitting_statistics_read_the_trials_out_of_sample_returns_and_say_why_when_they_cannot(tmp_path):
    import numpy as np
    from scipy import stats as scipy_stats

    from cappuccino.evaluation.overfitting import probability_of_backtest_overfitting
    from cappuccino.evaluation.results import OOS_RETURNS_FILE
    from cappuccino.hparams_search.report import overfitting

    rng = np.random.default_rng(0)
    returns = rng.normal(0.0, 0.01, size=(400, 5))  # (bars, trials)
    moments = [{"sharpe_per_period": 0.01 * i, "n_periods": 1000, "skewness": -0.2, "kurtosis": 5.0} for i in range(5)]
    trials = []
    for i in range(6):
        folder = tmp_path / f"trial{i}"
        folder.mkdir()
        np.save(folder / OOS_RETURNS_FILE, returns[:, i] if i < 5 else returns[:50, 0])  # trial 5: other bars
        trials.append(optuna.trial.create_trial(value=float(i), user_attrs={"output_dir": str(folder), **moments[min(i, 4)]}))
    stats = overfitting(trials[:5] + [trials[5]], trials[4], blocks=8)
    assert stats["pbo"] == probability_of_backtest_overfitting(returns, 8).pbo
    assert (stats["pbo_blocks"], stats["pbo_bars"], stats["pbo_trials"]) == (8, 400, 5)
    assert "mean over CPCV's backtest paths" in stats["pbo_performance"]

    # The deflated Sharpe ratio by hand (Bailey & Lopez de Prado 2014, eq. 2 and the SR0 below it):
    # the best trial's per-bar Sharpe, bars, skewness and kurtosis, against the expected maximum of
    # N = 6 trials' Sharpes with their sample variance.
    sharpes = np.array([m["sharpe_per_period"] for m in moments] + [0.04])
    n, gamma = len(sharpes), 0.5772156649015329
    sr0 = sharpes.std(ddof=1) * ((1 - gamma) * scipy_stats.norm.ppf(1 - 1 / n) + gamma * scipy_stats.norm.ppf(1 - 1 / (n * np.e)))
    sr, skew, kurt, bars = 0.04, -0.2, 5.0, 1000
    expected = scipy_stats.norm.cdf((sr - sr0) * np.sqrt(bars - 1) / np.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2))
    assert stats["deflated_sharpe"] == pytest.approx(expected, rel=1e-12)
    assert stats["deflated_sharpe_trials"] == 6 and "variance" in stats["deflated_sharpe_inputs"]
    variance = 1 - skew * sr + (kurt - 1) / 4 * sr**2  # the minimum track record length by hand
    assert stats["min_track_record_bars"] == pytest.approx(1 + variance * (scipy_stats.norm.ppf(0.95) / sr) ** 2, rel=1e-9)
    deflated = np.inf if sr <= sr0 else 1 + variance * (scipy_stats.norm.ppf(0.95) / (sr - sr0)) ** 2
    assert stats["min_track_record_bars_deflated"] == pytest.approx(deflated, rel=1e-9)

    holdout = [optuna.trial.create_trial(value=1.0), optuna.trial.create_trial(value=2.0)]
    stats = overfitting(holdout, holdout[1], blocks=8)
    assert stats["pbo"] is None and "cv=cpcv" in stats["pbo_reason"]
    assert stats["deflated_sharpe"] is None


def test_the_private_sweeper_helpers_the_study_sweeper_reuses_still_exist():
    """hydra-optuna-sweeper has no public API for parsing its search space or turning trials into
    overrides, and Optuna none for a trial's storage id; a release that moves them fails here,
    not in the middle of a user's sweep."""
    import inspect

    from hydra_plugins.hydra_optuna_sweeper import _impl

    for name in ("_process_searchspace_config", "_parse_sweeper_params_config", "_configure_trials", "_get_directions"):
        assert callable(getattr(_impl.OptunaSweeperImpl, name, None)), name
    assert list(inspect.signature(_impl.create_params_from_overrides).parameters) == ["arguments"]
    assert list(inspect.signature(_impl.OptunaSweeperImpl._configure_trials).parameters) == [
        "self", "trials", "search_space_distributions", "fixed_params", "fixed_overrides",
    ]  # fmt: skip
    trial = optuna.create_study().ask()
    assert isinstance(trial._trial_id, int)


@pytest.mark.slow
def test_a_multirun_over_cv_split_nests_its_jobs_and_gathers_them(tmp_path):
    """python train.py -m cv.split=0,1,2: one MLflow run over the jobs, the gathered score on it."""
    import json

    cpcv = [o for o in TINY if not o.startswith("cv.embargo_bars")]
    command = [
        sys.executable, str(ROOT / "train.py"), "-m", *cpcv, "cv=cpcv", "cv.n_groups=3", "cv.n_test_groups=1",
        "cv.purge_bars=8", "cv.split=0,1,2", f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"hydra.sweep.dir={tmp_path}/multirun",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    gathered = json.loads((tmp_path / "multirun" / "gathered" / "metrics.json").read_text())
    assert {"cv/objective", "cv/path0/sharpe", "split2/test/sharpe"} <= set(gathered)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (parent,) = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()]) if r.info.run_name.startswith("splits:")]
    assert parent.data.metrics["objective"] == pytest.approx(gathered["objective"])
    assert len(child_runs(client, parent.info.run_id)) == 3 and parent.info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("searched", "message"),
    [("agent.lrr=interval(1e-4,1e-3)", r"agent\.lrr"), ("encoder.activation=choice(tanh,swish)", r"encoder\.activation=swish")],
)
def test_a_misspelt_searched_key_or_option_fails_before_the_study_exists(tmp_path, searched, message):
    done = subprocess.run(sweep_command(tmp_path, searched, "logger=none"), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and re.search(message, done.stderr), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_a_queued_trial_the_schema_now_rejects_is_failed_not_run_again(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="ppo_mlp", storage=storage, direction="maximize")
    study.enqueue_trial({"agent.lrr": 3e-4, "agent.lr": 3e-4})  # as a retry of an old run's trial would be
    study = run_sweep(tmp_path, "hydra.sweeper.n_trials=1", "logger=none")
    queued, *rest = study.trials
    assert queued.state == FAIL and queued.user_attrs.get("skipped") is True
    assert [t.state for t in counted(study.trials)] == [COMPLETE] and rest
