"""The study report, read from an MLflow store: a study's run and its trial runs become the best
trial, what its overfitting statistics mean, a table of trials and the objective per parameter.
The runs are written straight into a SQLite store, so every number in the report is known
(tests/test_sweep.py reports a real sweep)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cappuccino.report import main as report_command
from cappuccino.reporting.study_report import StudyReportError, verdicts, write_study_report

LRS = (3e-4, 1e-3, 3e-3, 1e-2)
OBJECTIVES = (0.2, 1.1, -0.4, None)  # trial 3 failed
STATISTICS = {
    "n_trials": 3, "pbo": 0.25, "pbo_blocks": 8, "pbo_bars": 2400, "pbo_trials": 3,
    "deflated_sharpe": 0.81, "deflated_sharpe_trials": 3, "best_sharpe_per_period": 0.02,
    "min_track_record_bars": 4800.0, "min_track_record_bars_deflated": float("inf"),
}  # fmt: skip


def study_store(tmp_path: Path, statistics: dict = STATISTICS) -> tuple[MlflowClient, str]:
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("cappuccino", artifact_location=(tmp_path / "artifacts").as_uri())
    study = client.create_run(experiment_id, tags={"optuna.study": "ppo_mlp", "best.trial": "1", "mlflow.runName": "study ppo_mlp"})
    study_id = study.info.run_id
    for key, value in {"study.objective": "cv/objective", "study.direction": "maximize", "study.n_trials": "4", "study.sampler": "TPESampler",
                       "study.sampler_seed": "0", "search.agent.lr": "FloatDistribution(log=True)", "search.encoder.name": "CategoricalDistribution"}.items():  # fmt: skip
        client.log_param(study_id, key, value)
    for trial, (lr, objective) in enumerate(zip(LRS, OBJECTIVES)):
        run = client.create_run(experiment_id, tags={"mlflow.parentRunId": study_id, "optuna.trial": str(trial)})
        for key, value in {"agent.lr": lr, "encoder.name": "mlp" if trial % 2 else "ft_default", "data.interval": "1h"}.items():
            client.log_param(run.info.run_id, key, value)
        if objective is not None:
            client.log_metric(run.info.run_id, "objective", objective)
            client.log_metric(run.info.run_id, "cv/excess_sharpe_mean", objective + 0.1)
        client.set_terminated(run.info.run_id, "FINISHED" if objective is not None else "FAILED")
    (tmp_path / "overfitting.json").write_text(json.dumps(statistics))
    client.log_artifact(study_id, str(tmp_path / "overfitting.json"))
    client.set_terminated(study_id)
    return client, study_id


def test_the_report_names_the_best_trial_and_says_what_its_statistics_mean(tmp_path):
    client, study = study_store(tmp_path)
    report = write_study_report(client, study, tmp_path / "report")
    assert (report.best_trial, report.best_value) == (1, 1.1)
    trials = pd.read_csv(tmp_path / "report" / "trials.csv")
    assert trials["trial"].tolist() == [0, 1, 2, 3] and trials["state"].tolist() == ["FINISHED"] * 3 + ["FAILED"]
    assert trials["objective"].iloc[:3].tolist() == [0.2, 1.1, -0.4] and math.isnan(trials["objective"].iloc[3])
    assert trials["agent.lr"].tolist() == list(LRS) and trials["cv/excess_sharpe_mean"].iloc[1] == pytest.approx(1.2)
    pbo, dsr, record, deflated = report.verdicts
    assert pbo.startswith("probability of backtest overfitting 0.25 over 3 trials and 8 disjoint blocks of 2,400 bars: the in-sample best usually")
    assert dsr.startswith("deflated Sharpe ratio of the best trial 0.81") and dsr.endswith("not significant (needs 0.95)")
    assert record == "minimum track record against 0: 4,800 bars (about 200 days) of paper trading before the best trial's Sharpe is significant at 95 %"
    assert deflated.endswith("never (the best trial's Sharpe is not above it)")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "- best: trial 1, objective +1.1" in text and "| `agent.lr` | 0.001 |" in text and "![Objective per parameter](slices.png)" in text
    assert text.index("| 1 | FINISHED | +1.1 |") < text.index("| 0 | FINISHED | +0.2 |") < text.index("| 3 | FAILED | - |")  # best first
    assert (tmp_path / "report" / "slices.png").stat().st_size > 10_000
    assert {"report/report.md", "report/trials.csv", "report/slices.png"} <= {a.path for a in client.list_artifacts(study, "report")}


def test_an_overfit_selection_and_missing_statistics_are_said_so():
    overfit = verdicts({**STATISTICS, "pbo": 0.7, "deflated_sharpe": 0.97}, bars_per_day=None)
    assert overfit[0].endswith("the selection is more likely overfit than not") and overfit[1].endswith("significant")
    assert overfit[2] == "minimum track record against 0: 4,800 bars of paper trading before the best trial's Sharpe is significant at 95 %"
    missing = verdicts({"pbo": None, "pbo_reason": "needs cv=cpcv", "deflated_sharpe": None, "deflated_sharpe_reason": "needs two trials"}, 24.0)
    assert missing == ["probability of backtest overfitting: not computed (needs cv=cpcv)", "deflated Sharpe ratio: not computed (needs two trials)"]


def test_the_command_reports_a_study_by_its_run_or_as_the_newest_run_of_its_experiment(tmp_path, capsys, monkeypatch):
    client, study = study_store(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    assert report_command(["cappuccino", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / f"report-{study}" / "report.md").is_file() and "probability of backtest overfitting 0.25" in out
    assert report_command([study, "--tracking-uri", uri, "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "trials.csv").is_file()


def test_a_run_that_is_no_study_or_a_study_without_a_complete_trial_is_refused(tmp_path):
    client, study = study_store(tmp_path)
    other = client.create_run(client.get_run(study).info.experiment_id).info.run_id
    with pytest.raises(StudyReportError, match=rf"^run {other} is not a study's run"):
        write_study_report(client, other, tmp_path / "r")
    empty = client.create_run(client.get_run(study).info.experiment_id, tags={"optuna.study": "fresh"}).info.run_id
    with pytest.raises(StudyReportError, match="the study 'fresh' has no complete trial yet"):
        write_study_report(client, empty, tmp_path / "r")
