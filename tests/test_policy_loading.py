"""Trading's view of a trained agent: a policy rebuilt from its checkpoint alone scores exactly
what training scored, ensembles come from files, folders, MLflow runs and studies, and a policy
refuses a market it was not trained for, naming every difference."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import optuna
import pytest
import torch

from cappuccino.config import build, validate
from cappuccino.data import load_market
from cappuccino.data.tensors import MarketTensors
from cappuccino.evaluation.backtest import backtest, stitch
from cappuccino.evaluation.metrics import periods_per_year
from cappuccino.evaluation.results import BACKTEST_METRICS
from cappuccino.evaluation.scoring import evaluate
from cappuccino.evaluation.splits import select_splits
from cappuccino.hparams_search.best import best_trial_folders
from cappuccino.models.checkpoint import CheckpointError, CheckpointMismatch
from cappuccino.models.loading import PolicyEnsemble, TrainedPolicy, load_policy
from cappuccino.runtime import RunPaths
from cappuccino.tracking.artifacts import run_checkpoints

from .conftest import TINY
from .conftest import run_train as run

CPCV = [*TINY, "cv=cpcv", "cv.n_groups=3", "cv.n_test_groups=1", "cv.purge_bars=8", "cv.embargo_bars=null"]


def _train(compose_config, tmp_path, overrides, name="run"):
    run_dir = tmp_path / name
    run_dir.mkdir(parents=True)
    cfg_dict = compose_config(overrides)
    run(cfg_dict, RunPaths(run_dir, tmp_path))
    return validate(cfg_dict), run_dir


def _market(cfg):
    market, _ = load_market(cfg.data, cfg.window.zscore_window)
    return market


@pytest.fixture(scope="module")
def cpcv_run(tmp_path_factory):
    from hydra import compose, initialize_config_dir

    from .conftest import CONF_DIR

    tmp_path = tmp_path_factory.mktemp("cpcv")
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg_dict = compose("config", overrides=[*CPCV, f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    (tmp_path / "run").mkdir()
    run(cfg_dict, RunPaths(tmp_path / "run", tmp_path))
    return validate(cfg_dict), tmp_path


@pytest.mark.parametrize("encoder", [[], ["encoder.per_asset=true"]], ids=["mlp", "per_asset_mlp"])
def test_a_loaded_policy_backtests_to_the_runs_own_test_metrics(compose_config, tmp_path, one_thread, encoder):
    cfg, run_dir = _train(compose_config, tmp_path, [*TINY, "logger=none", *encoder])
    policy = load_policy(run_dir / "checkpoint.pt")
    market = _market(cfg)
    policy.schema.check(market, cfg.window.lookback, cfg.window.zscore_window)
    ((_, split),) = select_splits(build(cfg.cv), None, market.first_valid, market.n_bars)
    tensors = MarketTensors.from_market(market, policy.schema.lookback, "cpu")
    runs = evaluate(policy, tensors, split, build(cfg.rules), cfg.env.initial_cash)["test"]  # the run's own path
    metrics = stitch(runs).metrics(periods_per_year(market.interval))
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert {f"test/{k}": v for k, v in metrics.items()} == {f"test/{k}": saved[f"test/{k}"] for k in BACKTEST_METRICS}

    # Segments batched together give each segment's own backtest; the batch size changes only
    # the matmuls' float rounding.
    segments = [split.validation[0], split.test[0], dataclasses.replace(split.test[0], stop=split.test[0].start + 40)]
    together = backtest(policy, tensors, segments, build(cfg.rules), cfg.env.initial_cash)
    for segment, batched in zip(segments, together):
        (alone,) = backtest(policy, tensors, [segment], build(cfg.rules), cfg.env.initial_cash)
        assert np.array_equal(batched.bars, alone.bars) and np.array_equal(batched.benchmark, alone.benchmark)
        np.testing.assert_allclose(batched.equity, alone.equity, rtol=1e-9)
        assert batched.turnover == pytest.approx(alone.turnover, rel=1e-9) and batched.fees_paid == pytest.approx(alone.fees_paid, rel=1e-9, abs=1e-9)
    assert len(together[2].equity) == 1 + 40 - cfg.window.lookback  # the start, then one value per decision bar


def test_an_ensemble_of_every_split_comes_from_the_folder_and_from_the_mlflow_run(cpcv_run):
    from mlflow import MlflowClient

    cfg, project = cpcv_run
    from_folder = PolicyEnsemble.from_folder(project / "run")
    assert [m.name.rsplit("/", 1)[-1] for m in from_folder.members] == [f"checkpoint_split{i}.pt" for i in range(3)]
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    (parent,) = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()]) if "mlflow.parentRunId" not in r.data.tags]
    from_run = PolicyEnsemble.from_files(run_checkpoints(parent.info.run_id, tracking_uri=f"sqlite:///{project}/mlflow.db"))
    assert len(from_run.members) == 3
    for a, b in zip(from_folder.members, from_run.members):
        for key, tensor in a.module.state_dict().items():
            assert torch.equal(tensor, b.module.state_dict()[key])
    # Each checkpoint is stored once in MLflow: in the run's policy model, which acts as the ensemble.
    import mlflow

    artifacts = [a.path for r in client.search_runs([parent.info.experiment_id]) for a in client.list_artifacts(r.info.run_id)]
    assert artifacts.count("policy") == 1 and not [a for a in artifacts if a.endswith(".pt")]
    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    model = mlflow.pyfunc.load_model(f"runs:/{parent.info.run_id}/policy")
    L, A, F = from_folder.schema.lookback, len(from_folder.schema.symbols), len(from_folder.schema.feature_names)
    generator = torch.Generator().manual_seed(0)
    window, weights = torch.randn(4, L, A, F, generator=generator), torch.softmax(torch.randn(4, A + 1, generator=generator), -1)
    predicted = model.predict({"window": window.numpy(), "weights": weights.numpy()})
    assert np.array_equal(predicted, from_folder.target_weights(window, weights, cfg.rules.cash_reserve).numpy())


def test_the_ensemble_trades_the_mean_of_its_members_target_weights(cpcv_run):
    _, project = cpcv_run
    ensemble = PolicyEnsemble.from_folder(project / "run")
    torch.manual_seed(0)
    window = torch.randn(5, 8, 7, 14)
    weights = torch.softmax(torch.randn(5, 8), -1)
    members = torch.stack([m.target_weights(window, weights, 0.02) for m in ensemble.members])
    combined = ensemble.target_weights(window, weights, 0.02)
    assert torch.allclose(combined, members.mean(0), rtol=0, atol=1e-15)
    assert not torch.allclose(members[0], members[1])  # the splits' agents differ: the mean is no copy


def test_an_ensemble_is_built_from_a_studys_best_trials(cpcv_run, tmp_path):
    _, project = cpcv_run
    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for value, folder in ((0.1, tmp_path / "missing"), (0.9, project / "run")):
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"output_dir": str(folder)}))
    assert best_trial_folders("s", storage, top_k=5) == [project / "run", tmp_path / "missing"]
    ensemble = PolicyEnsemble.from_folders(best_trial_folders("s", storage, top_k=1))
    assert len(ensemble.members) == 3  # the best trial's three splits
    with pytest.raises(FileNotFoundError, match="missing holds no checkpoint"):
        PolicyEnsemble.from_folders(best_trial_folders("s", storage, top_k=2))  # the second-best trial left no models


def test_members_that_read_other_windows_are_refused_naming_the_key(cpcv_run, compose_config, tmp_path):
    _, project = cpcv_run
    _, other = _train(compose_config, tmp_path, [*TINY, "logger=none", "window.lookback=10"], "other")
    members = [load_policy(project / "run" / "checkpoint_split0.pt"), load_policy(other / "checkpoint.pt")]
    with pytest.raises(CheckpointMismatch, match=r"checkpoint.pt reads other windows.*\n.*window\.lookback: checkpoint has 10, asked for 8"):
        PolicyEnsemble(members)


def test_the_schema_names_every_way_a_market_differs(cpcv_run):
    cfg, project = cpcv_run
    policy = load_policy(project / "run" / "checkpoint_split0.pt")
    market = _market(cfg)
    five_minute = dataclasses.replace(market, interval=market.interval / 12, content_hash="x")
    other = TrainedPolicy(policy.module, dataclasses.replace(policy.schema, symbols=("BTC",), feature_version=0))
    with pytest.raises(CheckpointMismatch) as error:
        other.schema.check(five_minute, lookback=8, zscore_window=50)
    message = str(error.value)
    for key in ("symbols", "feature_version", "interval"):
        assert f"\n  {key}: checkpoint has" in message, (key, message)
    assert "window.lookback" not in message


def test_a_file_of_another_format_or_kind_is_refused(cpcv_run, tmp_path):
    _, project = cpcv_run
    payload = torch.load(project / "run" / "checkpoint_split0.pt", weights_only=True)
    torch.save({**payload, "format_version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format 99"):
        load_policy(tmp_path / "future.pt")
    torch.save({**payload, "kind": "encoder"}, tmp_path / "encoder.pt")
    with pytest.raises(CheckpointError, match="is an encoder file from pretrain.py, not a policy checkpoint"):
        load_policy(tmp_path / "encoder.pt")
