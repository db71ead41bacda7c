"""Experiment tracking: what a run leaves in MLflow, and the helpers that name and flatten it."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import psutil
import pytest
import torch
from hydra.errors import ConfigCompositionException
from mlflow import MlflowClient

from cappuccino.config import LoggerConfig, MLflowLoggerConfig, NoLoggerConfig, PPOConfig, validate
from cappuccino.errors import ConfigError
from cappuccino.tracking import (
    MAX_PARAM_VALUE_LENGTH,
    MAX_TAG_VALUE_LENGTH,
    SHORT_NAME_LENGTH,
    NullTracker,
    build_tracker,
    flatten_config,
    overrides_tags,
    short_run_name,
)
from cappuccino.reporting.figures import equity_figure
from cappuccino.tracking.resources import peak_rss_mb, peak_vram_mb

EXPERIMENT = "cappuccino-test"


def _equity_inputs(n: int = 200) -> tuple[pd.DatetimeIndex, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    timestamps = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    agent = 1000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    benchmark = 1000.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    return timestamps, agent, benchmark


@pytest.fixture(scope="module")
def project_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One default store for the module: creating the SQLite schema takes a couple of seconds."""
    return tmp_path_factory.mktemp("project")


@pytest.fixture(scope="module")
def finished_run(project_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A run that logged one of everything, returning (run_id, ui_command)."""
    artifact = tmp_path_factory.mktemp("files") / "summary.json"
    artifact.write_text('{"sharpe": 1.0}')
    with build_tracker(MLflowLoggerConfig(experiment_name=EXPERIMENT), "encoder=mlp", project_dir) as tracker:
        tracker.log_params({"agent": {"lr": 3e-4, "target_kl": None}, "encoder": {"hidden_sizes": [64, 64]}})
        for step, loss in enumerate([1.0, float("nan"), 0.5]):
            tracker.log_metrics({"train/loss": loss, "train/sps": 100.0 + step}, step=step)
        tracker.log_artifact(artifact, artifact_path="eval")
        tracker.log_figure(equity_figure(*_equity_inputs(), title="val"), "equity/val")
        tracker.set_tags({"cv.fold": "0"})
        return tracker.run_id, tracker.ui_command


def _client(project_dir: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project_dir.resolve()}/mlflow.db")


def test_default_store_lives_in_project_dir(project_dir: Path, finished_run: tuple[str, str]) -> None:
    _, ui_command = finished_run
    assert (project_dir / "mlflow.db").is_file()
    assert ui_command == f"mlflow ui --backend-store-uri sqlite:///{project_dir.resolve()}/mlflow.db"


def test_the_runs_page_is_linked_on_the_machine_learning_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from cappuccino import progress
    from cappuccino.reporting import console as console_module

    with build_tracker(MLflowLoggerConfig(experiment_name=EXPERIMENT), "run", tmp_path / ("deep" * 30)) as tracker:
        experiment_id = MlflowClient(tracking_uri=tracker.tracking_uri).get_run(tracker.run_id).info.experiment_id
        assert tracker.run_url == (
            f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{tracker.run_id}?workflowType=machine_learning"
        )
        out = io.StringIO()
        monkeypatch.setattr(progress, "console", Console(file=out, width=60))
        console_module.print_outputs(tmp_path, tracker.ui_command, tracker.run_url)
    lines = out.getvalue().splitlines()
    assert f"browse runs: {tracker.ui_command}" in lines and f"this run:    {tracker.run_url}" in lines  # never wrapped


def test_run_records_name_status_params_and_tags(project_dir: Path, finished_run: tuple[str, str]) -> None:
    run = _client(project_dir).get_run(finished_run[0])
    assert run.info.run_name == "encoder=mlp"
    assert run.info.status == "FINISHED"
    assert run.data.params == {
        "agent.lr": "0.0003",
        "agent.target_kl": "None",
        "encoder.hidden_sizes": "[64, 64]",
    }
    assert run.data.tags["cv.fold"] == "0"


def test_metric_history_is_by_step_and_skips_nan(project_dir: Path, finished_run: tuple[str, str]) -> None:
    client = _client(project_dir)
    loss = client.get_metric_history(finished_run[0], "train/loss")
    sps = client.get_metric_history(finished_run[0], "train/sps")
    assert [(m.step, m.value) for m in loss] == [(0, 1.0), (2, 0.5)]
    assert [(m.step, m.value) for m in sps] == [(0, 100.0), (1, 101.0), (2, 102.0)]


def test_artifacts_are_files_under_mlartifacts(project_dir: Path, finished_run: tuple[str, str]) -> None:
    run_dir = project_dir / "mlartifacts" / finished_run[0] / "artifacts"
    assert (run_dir / "eval" / "summary.json").read_text() == '{"sharpe": 1.0}'
    png = run_dir / "equity" / "val.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_child_run_reuses_experiment(project_dir: Path, finished_run: tuple[str, str]) -> None:
    parent_id = finished_run[0]
    with pytest.raises(RuntimeError, match="diverged"):
        with build_tracker(
            MLflowLoggerConfig(experiment_name=EXPERIMENT), "trial", project_dir, parent_run_id=parent_id
        ) as tracker:
            raise RuntimeError("diverged")
    client = _client(project_dir)
    child = client.get_run(tracker.run_id)
    assert child.info.status == "FAILED"
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.info.experiment_id == client.get_run(parent_id).info.experiment_id


def test_child_runs_nest_and_a_finished_run_can_be_reopened(project_dir: Path) -> None:
    config = MLflowLoggerConfig(experiment_name=EXPERIMENT)
    with build_tracker(config, "study", project_dir) as study:
        study.log_metrics({"best_value": 1.0}, step=1)
        with study.child("trial 0") as trial:
            trial.child("split0").close()
    client = _client(project_dir)
    assert client.get_run(trial.run_id).data.tags["mlflow.parentRunId"] == study.run_id
    split = client.search_runs([client.get_run(trial.run_id).info.experiment_id], "attributes.run_name = 'split0'")
    assert split[0].data.tags["mlflow.parentRunId"] == trial.run_id

    with build_tracker(config, "ignored", project_dir, run_id=study.run_id) as resumed:  # a resumed sweep
        assert client.get_run(study.run_id).info.status == "RUNNING"
        resumed.log_metrics({"best_value": 2.0}, step=2)
    history = client.get_metric_history(study.run_id, "best_value")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 2.0)]
    assert client.get_run(study.run_id).info.status == "FINISHED"


def test_close_rejects_unknown_status(project_dir: Path) -> None:
    tracker = build_tracker(MLflowLoggerConfig(experiment_name=EXPERIMENT), "bad-status", project_dir)
    with pytest.raises(ValueError, match="FINISHED, FAILED or KILLED"):
        tracker.close("DONE")
    tracker.close("KILLED")
    tracker.close("FINISHED")  # already closed: no change
    assert _client(project_dir).get_run(tracker.run_id).info.status == "KILLED"


def test_given_tracking_uri_is_used_as_is_and_quietly(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root for a given store is ./mlruns
    uri = f"sqlite:///{tmp_path}/elsewhere.db"
    # Hydra's job logging puts an INFO handler on the root logger; schema creation must not flood it.
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        tracker = build_tracker(MLflowLoggerConfig(tracking_uri=uri), "given", tmp_path / "project")
        tracker.close()
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
    stderr = capfd.readouterr().err
    assert "alembic" not in stderr and "database tables" not in stderr
    assert tracker.ui_command == f"mlflow ui --backend-store-uri {uri}"
    assert (tmp_path / "elsewhere.db").is_file() and not (tmp_path / "project").exists()
    assert MlflowClient(tracking_uri=uri).get_run(tracker.run_id).info.run_name == "given"


def test_log_figure_closes_pyplot_figures(project_dir: Path) -> None:
    with build_tracker(MLflowLoggerConfig(experiment_name=EXPERIMENT), "figure", project_dir) as tracker:
        figure = plt.figure()
        figure.add_subplot().plot([0, 1], [1, 2])
        tracker.log_figure(figure, "line.png")
    assert figure.number not in plt.get_fignums()
    assert (project_dir / "mlartifacts" / tracker.run_id / "artifacts" / "line.png").is_file()


def test_logger_none_writes_nothing(tmp_path: Path) -> None:
    with build_tracker(NoLoggerConfig(), "anything", tmp_path) as tracker:
        tracker.log_params({"a": 1})
        tracker.log_metrics({"m": 1.0}, step=1)
        tracker.log_figure(equity_figure(*_equity_inputs(), title="t"), "equity")
    assert isinstance(tracker, NullTracker)
    assert tracker.ui_command is None and tracker.run_id is None
    assert list(tmp_path.iterdir()) == []


def test_logger_none_does_not_import_mlflow(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from cappuccino.config import NoLoggerConfig\n"
        "from cappuccino.tracking import build_tracker\n"
        f"build_tracker(NoLoggerConfig(), 'x', Path({str(tmp_path)!r})).close()\n"
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_unknown_logger_names_the_choices(compose_config) -> None:
    with pytest.raises(ConfigCompositionException, match=r"logger/wandb(.|\n)*mlflow(.|\n)*none"):
        compose_config(["logger=wandb"])


class RecordingTracker(NullTracker):
    """A tracker that keeps the arguments it was built with."""

    def __init__(self, **arguments: object) -> None:
        super().__init__()
        self.arguments = arguments


@dataclass
class RecordingLoggerConfig(LoggerConfig):
    _target_: str = f"{__name__}.RecordingTracker"
    name: str = "recording"
    level: int = 3


def test_build_tracker_builds_the_configured_target_with_the_run_arguments(tmp_path: Path) -> None:
    tracker = build_tracker(RecordingLoggerConfig(), "run", tmp_path, parent_run_id="parent", run_id="resumed")
    assert type(tracker) is RecordingTracker
    assert tracker.arguments == {
        "level": 3, "run_name": "run", "project_dir": tmp_path, "parent_run_id": "parent", "run_id": "resumed"
    }
    # the name is a label, not a choice: the target is built whatever it says
    assert type(build_tracker(NoLoggerConfig(name="wandb"), "x", tmp_path)) is NullTracker


def test_composed_logger_none_builds_a_null_tracker(compose_config, tmp_path: Path) -> None:
    cfg = validate(compose_config(["logger=none"]))
    with build_tracker(cfg.logger, "x", tmp_path, parent_run_id="p") as tracker:
        assert type(tracker) is NullTracker
    assert list(tmp_path.iterdir()) == []


def test_null_tracker_accepts_and_ignores_run_arguments(tmp_path: Path) -> None:
    tracker = NullTracker(run_name="x", project_dir=tmp_path, parent_run_id="p", run_id="r", anything=1)
    assert tracker.ui_command is None and tracker.run_id is None
    assert tracker.child("split0") is tracker
    tracker.close()
    assert list(tmp_path.iterdir()) == []


def test_flatten_config_dots_keys_and_stringifies_values() -> None:
    nested = {"agent": {"lr": 1e-4, "gamma": 0.99}, "data": {"symbols": ["BTC", "ETH"]}, "seed": 3, "empty": {}}
    assert flatten_config(nested) == {
        "agent.lr": "0.0001",
        "agent.gamma": "0.99",
        "data.symbols": "['BTC', 'ETH']",
        "seed": "3",
        "empty": "{}",
    }
    assert flatten_config({"lr": 0.5}, prefix="agent.") == {"agent.lr": "0.5"}


def test_flatten_config_accepts_config_dataclasses() -> None:
    @dataclass
    class Outer:
        agent: PPOConfig = field(default_factory=PPOConfig)

    flat = flatten_config(Outer())
    assert flat["agent.lr"] == "0.0003"
    assert flat["agent.target_kl"] == "0.03"


def test_flatten_config_truncates_values_to_mlflow_limit() -> None:
    flat = flatten_config({"symbols": list(range(5000))})
    assert len(flat["symbols"]) == MAX_PARAM_VALUE_LENGTH
    assert flat["symbols"].startswith("[0, 1, 2") and flat["symbols"].endswith("...")


def test_long_params_are_accepted_by_mlflow(project_dir: Path) -> None:
    with build_tracker(MLflowLoggerConfig(experiment_name=EXPERIMENT), "long", project_dir) as tracker:
        tracker.log_params({f"p{i}": list(range(3000)) for i in range(120)})  # > one batch of 100
    params = _client(project_dir).get_run(tracker.run_id).data.params
    assert len(params) == 120 and all(len(v) == MAX_PARAM_VALUE_LENGTH for v in params.values())


def test_a_run_is_named_by_its_choices_and_rounded_settings() -> None:
    assert short_run_name(["encoder=ft_default", "agent.lr=0.00031234", "trainer.seed=1"]) == "ft_default lr=0.000312 seed=1"
    assert short_run_name(["+data.n_bars=17520", "logger.tracking_uri=http://h:5000", "logger=mlflow"]) == "n_bars=17520"
    assert short_run_name(["agent.lr=1e-4", "window.lookback=60"]) == "lr=0.0001 lookback=60"
    assert short_run_name(["pretrain"]) == "pretrain"  # a bare word, as a job's own name
    assert short_run_name([]) == "default"
    assert short_run_name(["  ", ""]) == "default"
    assert short_run_name(["data.note='two\nlines'\x00"]) == "note='two lines'"
    long_name = short_run_name([f"agent.k{i}=value" for i in range(100)])
    assert len(long_name) == SHORT_NAME_LENGTH and long_name.endswith("...")


def test_the_overrides_are_kept_in_full_as_a_tag_and_the_runs_description() -> None:
    overrides = ["encoder=ft_default", "agent.lr=0.00031234"]
    assert overrides_tags(overrides) == {
        "overrides": "encoder=ft_default agent.lr=0.00031234",
        "mlflow.note.content": "python train.py encoder=ft_default agent.lr=0.00031234",
    }
    assert overrides_tags([]) == {"overrides": "(none: the defaults)"}
    long = overrides_tags([f"agent.k{i}=value" for i in range(1000)])
    assert all(len(v) == MAX_TAG_VALUE_LENGTH for v in long.values())

def test_equity_figure_normalises_and_has_two_panels() -> None:
    timestamps, agent, benchmark = _equity_inputs()
    figure = equity_figure(timestamps.tz_convert("America/New_York"), agent, benchmark, title="val fold 0")
    equity_ax, drawdown_ax = figure.axes
    assert figure.get_suptitle() == "val fold 0"
    agent_line, benchmark_line = equity_ax.get_lines()[:2]
    assert agent_line.get_ydata()[0] == pytest.approx(1.0)
    assert agent_line.get_ydata()[-1] == pytest.approx(agent[-1] / agent[0])
    assert benchmark_line.get_ydata()[0] == pytest.approx(1.0)
    assert len(equity_ax.get_legend().get_texts()) == 2
    assert max(line.get_ydata().max() for line in drawdown_ax.get_lines()) <= 0.0
    # x data is UTC: the New York index is drawn at the same instants as the UTC one.
    assert pd.Timestamp(agent_line.get_xdata()[0]) == timestamps[0].tz_localize(None)


def test_equity_figure_rejects_mismatched_inputs() -> None:
    timestamps, agent, benchmark = _equity_inputs()
    with pytest.raises(ValueError, match="benchmark must have shape"):
        equity_figure(timestamps, agent, benchmark[:-1], title="t")
    with pytest.raises(ValueError, match="> 0"):
        equity_figure(timestamps, agent, np.zeros_like(benchmark), title="t")


def test_peak_memory() -> None:
    current_mb = psutil.Process().memory_info().rss / 2**20
    assert current_mb <= peak_rss_mb() <= psutil.virtual_memory().total / 2**20
    assert peak_vram_mb(torch.device("cpu")) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_peak_vram_counts_allocations() -> None:
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats(device)
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)  # 64 MiB
    assert peak_vram_mb(device) >= 64
    del block


def test_a_given_sqlite_store_keeps_artifacts_beside_it(tmp_path, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tracker = build_tracker(MLflowLoggerConfig(tracking_uri=f"sqlite:///{tmp_path}/store/runs.db"), "r", tmp_path)
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    tracker.log_artifact(artifact)
    tracker.close()
    assert list((tmp_path / "store" / "mlartifacts").rglob("note.txt"))
    assert not (elsewhere / "mlruns").exists()


@pytest.mark.parametrize("behaviour", ["refuse", "stall"])
def test_an_unreachable_tracking_server_fails_at_once_naming_the_setting(tmp_path, monkeypatch, behaviour):
    """MLflow retries a refused connection for over a minute and waits forever on a silent one."""
    import socket
    import threading

    from cappuccino.config import MLflowLoggerConfig
    from cappuccino.tracking import TrackingError, build_tracker
    from cappuccino.tracking import mlflow_tracker

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(mlflow_tracker, "PROBE_TIMEOUT", (1.0, 0.5))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if behaviour == "stall":
        listener.listen()  # accepts connections, never answers
        threading.Timer(10.0, listener.close).start()
    else:
        listener.close()  # nothing listens: refused
    cfg = MLflowLoggerConfig(tracking_uri=f"http://127.0.0.1:{port}/")
    reason = "timed out" if behaviour == "stall" else "connection refused"
    with pytest.raises(TrackingError, match=rf"^logger\.tracking_uri: no MLflow server answers at http://127\.0\.0\.1:{port}/? \({reason}"):
        build_tracker(cfg, "run", tmp_path)
    listener.close()


def test_a_new_store_holds_only_its_experiment_and_default_comes_back_when_asked_for(tmp_path: Path) -> None:
    """MLflow creates an empty "Default" experiment with every SQLite store; the UI would open on it."""
    with build_tracker(MLflowLoggerConfig(experiment_name="cappuccino"), "x", tmp_path) as tracker:
        assert [e.name for e in tracker.client.search_experiments()] == ["cappuccino"]
    with build_tracker(MLflowLoggerConfig(experiment_name="Default"), "y", tmp_path) as tracker:
        assert tracker.experiment_id == "0" and len(tracker.client.search_experiments()) == 2


def test_system_metrics_are_sampled_while_the_run_is_open_and_can_be_switched_off(tmp_path: Path) -> None:
    import time

    for interval in (0.2, None):
        with build_tracker(MLflowLoggerConfig(system_metrics_interval=interval), "x", tmp_path / str(interval)) as tracker:
            time.sleep(1.2)
        history = tracker.client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")
        memory = tracker.client.get_metric_history(tracker.run_id, "system/system_memory_usage_megabytes")
        assert (len(history) >= 2 and len(memory) == len(history)) if interval else history == []


@pytest.mark.parametrize("name", ["", "a/b", "runs:/x"])
def test_a_registered_model_name_mlflow_cannot_address_fails_in_the_config(name: str) -> None:
    with pytest.raises(ConfigError, match="logger.register_as"):
        MLflowLoggerConfig(register_as=name)
    with pytest.raises(ConfigError, match="logger.system_metrics_interval"):
        MLflowLoggerConfig(system_metrics_interval=0)


def test_the_study_description_summarises_progress_and_links_the_best_run() -> None:
    import optuna

    from cappuccino.hparams_search.report import StudyProgress, study_description

    best = optuna.trial.create_trial(params={"agent.lr": 0.000312345, "encoder": "mlp"}, distributions={
        "agent.lr": optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True),
        "encoder": optuna.distributions.CategoricalDistribution(["mlp", "ft_small"]),
    }, value=1.234567)  # fmt: skip
    best.number = 7
    progress = StudyProgress("s", complete=4, failed=1, n_trials=20, objective="cv/objective", direction="maximize")
    running = study_description(progress, best, "http://h/#/experiments/1/runs/abc")
    assert running.startswith("**Study `s`** (running): 4 of 20 trials complete, 1 failed; objective `cv/objective`, maximized.")
    assert "**Best: [trial 7](http://h/#/experiments/1/runs/abc)**, objective 1.235." in running
    assert "| `agent.lr` | 0.0003123 |" in running and "| `encoder` | mlp |" in running
    assert "overfitting" not in running and "```" not in running
    finished = study_description(progress, best, None, {"pbo": 0.25, "deflated_sharpe": None}, "python train.py --config-name best_trial")
    assert "(finished)" in finished and "**Best: trial 7**" in finished
    assert "overfitting: 0.250; deflated Sharpe ratio of the best trial: n/a." in finished
    assert finished.endswith("```bash\npython train.py --config-name best_trial\n```")


def test_marking_the_best_trial_tags_every_other_trial_run_false_even_one_never_best(tmp_path: Path) -> None:
    from cappuccino.hparams_search.report import mark_best_trial
    from cappuccino.tracking import TRIAL_TAG

    with build_tracker(MLflowLoggerConfig(), "study", tmp_path) as study:
        runs = [
            study.client.create_run(study.experiment_id, tags={"mlflow.parentRunId": study.run_id, TRIAL_TAG: str(n)}).info.run_id
            for n in range(3)
        ]
        mark_best_trial(study, 0)
        mark_best_trial(study, 2)  # trial 1 was never the best
        assert [study.client.get_run(r).data.tags.get("best") for r in runs] == ["false", "false", "true"]
