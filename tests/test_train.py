"""End-to-end smoke runs of the training job through Hydra's compose API, at tiny sizes."""

import json
import math

import numpy as np

import pytest
import torch
from omegaconf import OmegaConf

from cappuccino.config import validate
from cappuccino.errors import ConfigError
from cappuccino.models.checkpoint import CheckpointMismatch
from cappuccino.models.loading import load_policy
from cappuccino.runtime import RunPaths
from cappuccino.training import train

from .config_reads import record_reads, unread_leaves
from .conftest import TINY
from .conftest import run_train as run


def _paths(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunPaths(run_dir=run_dir, project_dir=tmp_path)


def test_smoke_run_without_mlflow_returns_objective_and_writes_outputs(compose_config, tmp_path):
    objective = run(compose_config([*TINY, "logger=none"]), _paths(tmp_path))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # The sweeper optimises what the run returns: the holdout's validation excess Sharpe, as saved.
    assert math.isfinite(objective) and objective == metrics["objective"] == metrics["val/excess_sharpe"]
    for name in ("checkpoint.pt", "config.yaml", "metrics.json", "equity_val.png", "equity_test.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert not (tmp_path / "mlflow.db").exists()


def test_every_config_leaf_is_read_during_a_run(compose_config, tmp_path):
    """The system this replaces tuned ~25 settings and passed 8 to the agent: none may be ignored."""
    cfg_dict = compose_config([*TINY, f"logger.tracking_uri=sqlite:///{tmp_path}/store.db", "logger.register_as=tiny"])
    cfg = validate(cfg_dict)
    with record_reads() as reads:
        train(cfg, OmegaConf.to_yaml(cfg_dict), _paths(tmp_path))
    assert unread_leaves(cfg, reads) == []
    # logger.register_as: the run's policy model is a registered model's version.
    from mlflow import MlflowClient

    (version,) = MlflowClient(f"sqlite:///{tmp_path}/store.db").search_model_versions("name = 'tiny'")
    assert version.source.endswith("/artifacts/policy")


def test_same_seed_gives_identical_metrics_on_cpu(compose_config, tmp_path):
    cfg = compose_config([*TINY, "logger=none"])
    first = run(cfg, _paths(tmp_path / "a"))
    second = run(cfg, _paths(tmp_path / "b"))
    assert first == second
    other_seed = run(compose_config([*TINY, "logger=none", "trainer.seed=1"]), _paths(tmp_path / "c"))
    assert other_seed != first


def test_mlflow_run_holds_params_metrics_and_artifacts(compose_config, tmp_path):
    from mlflow import MlflowClient

    run(compose_config([*TINY]), _paths(tmp_path), overrides=["agent.lr=1e-4"])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "cappuccino"]
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.run_name == "lr=0.0001"  # short; the overrides as typed are a tag and the description
    assert mlflow_run.data.tags["overrides"] == "agent.lr=1e-4"
    assert mlflow_run.data.tags["mlflow.note.content"] == "python train.py agent.lr=1e-4"
    assert mlflow_run.data.params["agent.gamma"] == "0.5"
    assert "val/excess_sharpe" in mlflow_run.data.metrics and "objective" in mlflow_run.data.metrics
    history = client.get_metric_history(mlflow_run.info.run_id, "train/policy_loss")
    assert len(history) >= 2
    last_step = max(m.step for m in history)
    # Curves from the first update, validation curves by default, no metric repeating the step axis.
    assert len(client.get_metric_history(mlflow_run.info.run_id, "train/step_reward")) == len(history)
    assert len({m.step for m in client.get_metric_history(mlflow_run.info.run_id, "val/excess_sharpe")}) >= 2
    assert not {"train/global_step", "train/update"} & set(mlflow_run.data.metrics)
    assert [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "peak_rss_mb")] == [last_step]  # the run's peak
    # The policy is an MLflow model that acts as the checkpoint does.
    import mlflow

    from cappuccino.models.loading import load_policy

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    model = mlflow.pyfunc.load_model(f"runs:/{mlflow_run.info.run_id}/policy")
    policy = load_policy(tmp_path / "run" / "checkpoint.pt")
    L, A, F = policy.schema.lookback, len(policy.schema.symbols), len(policy.schema.feature_names)
    generator = torch.Generator().manual_seed(0)
    window, weights = torch.randn(5, L, A, F, generator=generator), torch.softmax(torch.randn(5, A + 1, generator=generator), -1)
    predicted = model.predict({"window": window.numpy(), "weights": weights.numpy()})
    cash_reserve = OmegaConf.create((tmp_path / "run" / "config.yaml").read_text()).rules.cash_reserve
    assert np.array_equal(predicted, policy.target_weights(window, weights, cash_reserve).numpy())
    # The bars are the run's input dataset: the digest is their content hash, the source their settings.
    (dataset_input,) = mlflow_run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert dataset.digest == mlflow_run.data.tags["data.hash"] and dataset.source_type == "synthetic"
    assert json.loads(dataset.source)["seed"] == 7 and json.loads(dataset.profile)["bars"] > 0
    artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
    assert {"policy", "config.yaml", "equity_val.png"} <= artifacts and "checkpoint.pt" not in artifacts  # stored once: in the model
    assert mlflow_run.data.tags["data.synthetic"] == "True"


def test_checkpoint_loads_into_the_trained_policy_and_names_a_mismatch(compose_config, tmp_path):
    run(compose_config([*TINY, "logger=none"]), _paths(tmp_path))
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    payload = torch.load(checkpoint, weights_only=True)
    policy = load_policy(checkpoint)
    for name, tensor in policy.module.state_dict().items():
        assert torch.equal(tensor, payload["state_dict"][name])
    assert policy.schema.lookback == 8 and policy.schema.zscore_window == 50
    cfg = validate(compose_config(TINY))
    from cappuccino.data import load_market

    market, _ = load_market(cfg.data, cfg.window.zscore_window)
    policy.schema.check(market, lookback=8, zscore_window=50)  # the market it was trained on fits
    with pytest.raises(CheckpointMismatch, match=r"window\.lookback: checkpoint has 8, asked for 60") as error:
        policy.schema.check(market, lookback=60, zscore_window=40)
    assert "window.zscore_window: checkpoint has 50, asked for 40" in str(error.value)


def test_unknown_objective_fails_before_any_work(compose_config, tmp_path):
    with pytest.raises(ConfigError, match="trainer.objective"):
        run(compose_config([*TINY, "logger=none", "trainer.objective=val/profit"]), _paths(tmp_path))


def test_too_little_data_for_the_lookback_is_a_clear_error(compose_config, tmp_path):
    with pytest.raises(ConfigError, match="window.lookback"):
        run(compose_config([*TINY, "logger=none", "data.n_bars=300", "window.lookback=60"]), _paths(tmp_path))


@pytest.mark.parametrize("objective", ["test/sharpe", "test/excess_sharpe"])
def test_an_objective_on_test_data_is_rejected_before_any_data_is_loaded(compose_config, tmp_path, monkeypatch, objective):
    from cappuccino import training

    monkeypatch.setattr(training, "load_market", lambda *a: pytest.fail("data was loaded"))
    with pytest.raises(ConfigError, match=r"trainer\.objective: .*test segments.*tune on test data.*'val/excess_sharpe'") as error:
        run(compose_config([*TINY, "logger=none", f"trainer.objective={objective}"]), _paths(tmp_path))
    assert "'test/" not in str(error.value).split("choose")[1]


def test_cross_validation_objectives_say_they_are_measured_on_held_out_test_groups(compose_config, tmp_path):
    with pytest.raises(ConfigError, match=r"by design on each split's held-out test groups.*'cv/objective'"):
        run(compose_config([*TINY, "logger=none", "cv=cpcv", "cv.embargo_bars=null", "trainer.objective=test/sharpe"]), _paths(tmp_path))


def test_the_training_band_reaches_the_training_env_and_backtests_keep_the_rules_band(compose_config, tmp_path, monkeypatch):
    import cappuccino.evaluation.backtest as backtest
    import cappuccino.training as training

    bands: dict[str, list[float]] = {"training": [], "backtest": []}

    def recording(kind: str, env_class):
        def make(*args, **kwargs):
            bands[kind].append(kwargs["rules"].rebalance_band)
            return env_class(*args, **kwargs)

        return make

    monkeypatch.setattr(training, "PortfolioEnv", recording("training", training.PortfolioEnv))
    monkeypatch.setattr(backtest, "PortfolioEnv", recording("backtest", backtest.PortfolioEnv))
    run(compose_config([*TINY, "logger=none", "rules.rebalance_band=0.04", "env.rebalance_band=0.0"]), _paths(tmp_path))
    assert bands["training"] == [0.0]
    assert bands["backtest"] and set(bands["backtest"]) == {0.04}
