"""Periodic validation (trainer.eval_every) and the 1h -> 5m transfer experiment, at tiny sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from omegaconf import OmegaConf

import cappuccino.evaluation.backtest as backtest_module
import cappuccino.evaluation.scoring as scoring_module
import cappuccino.evaluation.validation as validation_module
from cappuccino import training
from cappuccino.config import build, validate
from cappuccino.data import load_market
from cappuccino.errors import ConfigError
from cappuccino.evaluation.splits import select_splits
from cappuccino.evaluation.validation import VALIDATION_CURVE
from cappuccino.experiments import transfer
from cappuccino.runtime import RunPaths
from cappuccino.tracking import build_tracker

from .config_reads import record_reads, unread_leaves
from .conftest import TINY
from .conftest import run_train as run

pytestmark = pytest.mark.usefixtures("one_thread")

# TINY runs 3 PPO updates of 8 envs x 32 steps: global steps 256, 512, 768.
EVAL_EVERY = "trainer.eval_every=512"
EXPERIMENT_TINY = [
    "experiment=transfer_1h_5m",
    *[o for o in TINY if not o.startswith("encoder.")],
    "encoder.d_token=16",
    "encoder.out_dim=32",
    "trainer.eval_every=256",
    "experiment.source.n_bars=1500",
    "experiment.pretrain.batch_size=32",
    "experiment.pretrain.max_steps=30",
    "experiment.pretrain.warmup_steps=5",
    "experiment.pretrain.eval_every=10",
    "experiment.pretrain.val_fraction=0.2",
    "experiment.pretrain.progress=false",
    "experiment.seeds=null",  # one seed: trainer.seed (the quick size has three)
]


def _paths(tmp_path, name="run"):
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    return RunPaths(run_dir=tmp_path / name, project_dir=tmp_path)


def _runs_by_name(store):
    client = MlflowClient(f"sqlite:///{store}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "cappuccino"]
    return client, {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def test_periodic_validation_logs_val_metrics_at_crossed_steps_and_never_backtests_test_segments(
    compose_config, tmp_path, monkeypatch
):
    segments = []
    real_backtest = backtest_module.backtest

    def spy(policy, market, batch, *args):
        segments.extend(batch)
        return real_backtest(policy, market, batch, *args)

    # Every backtest of the agent, periodic or final; the references' run on the test segments by design.
    for module in (scoring_module, validation_module):
        monkeypatch.setattr(module, "backtest", spy)
    store = tmp_path / "store.db"
    cfg = compose_config([*TINY, EVAL_EVERY, f"logger.tracking_uri=sqlite:///{store}"])
    run(cfg, _paths(tmp_path))

    client, runs = _runs_by_name(store)
    (run_id,) = [r.info.run_id for r in runs.values()]
    for metric in ("excess_sharpe", "sharpe", "total_return"):
        history = client.get_metric_history(run_id, f"val/{metric}")
        # 512 crosses the first multiple; 768 is the last update, where the final metrics go too.
        assert sorted({m.step for m in history}) == [512, 768], metric
        assert len({m.value for m in history if m.step == 768}) == 1, metric
    curve = json.loads((tmp_path / "run" / VALIDATION_CURVE).read_text())
    final = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [record["step"] for record in curve] == [512, 768]
    assert curve[-1]["excess_sharpe"] == final["val/excess_sharpe"]  # the curve ends at the trained agent

    typed = validate(cfg)
    market, _ = load_market(typed.data, typed.window.zscore_window)
    ((_, split),) = select_splits(build(typed.cv), None, market.first_valid, market.n_bars)
    assert [s for s in segments if s in split.validation] == list(split.validation) * 3  # 2 periodic + the final
    assert [s for s in segments if s in split.test] == list(split.test)  # only the final evaluation's


def test_periodic_validation_leaves_training_unchanged(compose_config, tmp_path):
    for name, overrides in (("off", []), ("on", ["trainer.eval_every=256"])):
        run(compose_config([*TINY, "logger=none", *overrides]), _paths(tmp_path, name))
    off, on = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("off", "on"))
    assert on == off


@pytest.mark.parametrize("cv", ["cpcv", "walk_forward"])
def test_eval_every_without_validation_segments_fails_before_any_work(compose_config, tmp_path, cv):
    with pytest.raises(ConfigError, match=r"trainer\.eval_every.*cv=holdout"):
        tiny = [o for o in TINY if not o.startswith("cv.")]
        run(compose_config([*tiny, f"cv={cv}", "trainer.eval_every=256"]), _paths(tmp_path))
    assert not (tmp_path / "mlflow.db").exists() and not any((tmp_path / "run").iterdir())


def test_negative_eval_every_is_rejected(compose_config):
    with pytest.raises(ConfigError, match=r"trainer\.eval_every"):
        validate(compose_config(["trainer.eval_every=-1"]))


def test_experiment_needs_periodic_validation(compose_config, tmp_path):
    with pytest.raises(ConfigError, match=r"trainer\.eval_every"):
        overrides = [o for o in EXPERIMENT_TINY if not o.startswith("trainer.eval_every")]
        run(compose_config([*overrides, "trainer.eval_every=0", "logger=none"]), _paths(tmp_path))


def test_transfer_experiment_runs_end_to_end(compose_config, tmp_path, monkeypatch):
    """Pre-training, then two nested training runs, one starting from the pre-trained encoder;
    both curves in one figure on the parent run; every config leaf is read."""
    initial = {}
    real_build_policy = training.SplitJob.build_policy

    def spy(job):
        policy = real_build_policy(job)
        arm = "pretrained" if job.cfg.encoder.pretrained else "scratch"
        initial[arm] = {k: v.clone() for k, v in policy.actor_encoder.state_dict().items()}
        return policy

    monkeypatch.setattr(training.SplitJob, "build_policy", spy)
    store = tmp_path / "store.db"
    cfg_dict = compose_config([*EXPERIMENT_TINY, f"logger.tracking_uri=sqlite:///{store}"])
    cfg = validate(cfg_dict)
    with build_tracker(cfg.logger, "study", tmp_path) as study:  # as when a sweep runs the experiment
        with record_reads() as reads:
            result = transfer.run(
                cfg=cfg, config=cfg_dict, paths=_paths(tmp_path), overrides=["experiment=transfer_1h_5m"], parent_run_id=study.run_id
            )
    assert unread_leaves(cfg, reads) == []

    client, runs = _runs_by_name(store)
    parent = runs["transfer_1h_5m"]
    assert set(runs) == {"study", "transfer_1h_5m", "pretrain", "scratch", "pretrained"}
    assert parent.data.tags["mlflow.parentRunId"] == study.run_id
    for name in ("pretrain", "scratch", "pretrained"):
        assert runs[name].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "transfer_curves.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    curves = json.loads((tmp_path / "run" / "transfer_curves.json").read_text())
    for arm in ("scratch", "pretrained"):
        assert [r["step"] for r in curves["curves"][arm][0]] == [256, 512, 768]  # one seed
        assert curves["summary"][arm]["final"] == runs[arm].data.metrics["val/excess_sharpe"]
    assert result == curves["summary"]["pretrained"]["final"]

    encoder_file = tmp_path / "run" / "pretrain" / "best_encoder.pt"
    assert curves["encoder_file"] == str(encoder_file)
    saved = torch.load(encoder_file, weights_only=True)["state_dict"]
    assert all(torch.equal(initial["pretrained"][k], v) for k, v in saved.items())
    assert not all(torch.equal(initial["scratch"][k], v) for k, v in saved.items())
    # The source market is another seed and interval than the target's (yaml comment: no leakage).
    source = OmegaConf.create(torch.load(encoder_file, weights_only=True)["config"]).data
    assert (source.interval, source.seed) == ("1h", 1007) and (cfg.data.interval, cfg.data.seed) == ("5min", 7)


def test_a_sweep_job_nests_the_experiment_under_its_study_run(compose_config, tmp_path, monkeypatch):
    from cappuccino.hparams_search import STUDY_RUN_ENV

    received = {}

    def fake_experiment(*, cfg, config, paths, overrides=(), parent_run_id=None):  # transfer.run's signature
        received["parent"] = parent_run_id
        return 0.0

    monkeypatch.setattr(transfer, "run", fake_experiment)  # what experiment._target_ names
    monkeypatch.setenv(STUDY_RUN_ENV, "abc123")  # what the study sweeper sets for each of its jobs
    run(compose_config([*EXPERIMENT_TINY, "logger=none"]), _paths(tmp_path))
    assert received["parent"] == "abc123"


def _curve(values: list[float]) -> list[dict[str, float]]:
    return [{"step": 256 * (i + 1), "excess_sharpe": v} for i, v in enumerate(values)]


def test_sample_efficiency_is_the_median_over_seeds_of_the_steps_to_the_scratch_arms_final_value():
    curves = {
        "scratch": [_curve([0.0, 0.5, 1.0]), _curve([0.0, 0.2, 0.4]), _curve([0.1, 0.1, 0.3])],
        "pretrained": [_curve([0.2, 1.1, 1.2]), _curve([0.5, 0.6, 0.7]), _curve([0.0, 0.2, 0.4])],
    }
    summary = transfer.compare(curves, "excess_sharpe")
    # each seed against its own scratch arm's final (1.0, 0.4, 0.3): reached at 512, 256, 768 steps
    assert summary["pretrained"]["steps_to_scratch_final"] == 512.0 and summary["pretrained"]["reached_share"] == 1.0
    assert summary["pretrained"]["steps_to_scratch_final_low"] <= 512.0 <= summary["pretrained"]["steps_to_scratch_final_high"]
    assert summary["pretrained"]["final"] == pytest.approx((1.2 + 0.7 + 0.4) / 3)
    assert summary["scratch"]["steps_to_scratch_final"] == 768.0
    curves["pretrained"][1] = _curve([0.1, 0.2, 0.3])  # this seed never reaches 0.4
    summary = transfer.compare(curves, "excess_sharpe")
    assert summary["pretrained"]["reached_share"] == pytest.approx(2 / 3)
    assert summary["pretrained"]["steps_to_scratch_final"] == 640.0  # median of the seeds that did
    assert np.isnan(summary["pretrained"]["steps_to_scratch_final_low"])  # no interval over a censored sample


@pytest.mark.slow
def test_transfer_with_seeds_trains_both_arms_per_seed_and_joins_the_experiment_report(compose_config, tmp_path):
    from cappuccino.reporting.experiment_report import ARM_TAG

    store = tmp_path / "store.db"
    cfg = compose_config([*EXPERIMENT_TINY, "experiment.seeds=[0,1,2]", f"logger.tracking_uri=sqlite:///{store}", "logger.system_metrics_interval=null"])
    run(cfg, _paths(tmp_path))
    client, runs = _runs_by_name(store)
    arms = {(r.data.tags[ARM_TAG], r.data.params["trainer.seed"]) for r in runs.values() if ARM_TAG in r.data.tags}
    assert arms == {(arm, str(seed)) for arm in ("scratch", "pretrained") for seed in range(3)}
    curves = json.loads((tmp_path / "run" / "transfer_curves.json").read_text())
    assert [len(curves["curves"][arm]) for arm in ("scratch", "pretrained")] == [3, 3]
    assert {"steps_to_scratch_final_low", "reached_share"} <= set(curves["summary"]["pretrained"])
    text = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "one test period" in text and "scratch" in text and "pretrained" in text
