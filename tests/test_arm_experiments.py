"""experiment=ablation_encoder and experiment=sensitivity_ft at tiny sizes: one pre-training on
another market (the ablation), every arm and seed trained on the same cpcv splits as runs nested
under the experiment's run, and the report written from MLflow into the run folder and onto the
experiment's run."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from cappuccino.config import ConfigError, validate
from cappuccino.reporting.experiment_report import ARM_TAG
from cappuccino.runtime import RunPaths

from .conftest import CONF_DIR, TINY
from .conftest import run_train as run

pytestmark = pytest.mark.usefixtures("one_thread")

ABLATION_TINY = [
    "experiment=ablation_encoder",
    *[o for o in TINY if not o.startswith(("encoder.", "cv.", "data.n_bars"))],
    "data.n_bars=2400", "window.zscore_window=20", "cv.n_groups=2", "cv.purge_bars=10",
    "encoder.d_token=16", "encoder.out_dim=32", "experiment.baseline.hidden_sizes=[32,32]",
    "experiment.arms=[mlp,ft_scratch,ft_finetuned]", "experiment.seeds=[0,1,2]",
    "experiment.source.n_bars=1500", "experiment.pretrain.batch_size=32", "experiment.pretrain.max_steps=20",
    "experiment.pretrain.warmup_steps=5", "experiment.pretrain.eval_every=10", "experiment.pretrain.val_fraction=0.2",
]  # fmt: skip


def compose_ablation(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose("config", overrides=[*ABLATION_TINY, *overrides])


@pytest.mark.slow
def test_every_arm_and_seed_runs_on_the_same_splits_and_without_an_edge_the_report_claims_none(tmp_path):
    store = tmp_path / "mlflow.db"
    cfg = compose_ablation(f"logger.tracking_uri=sqlite:///{store}", "logger.system_metrics_interval=null", "data.signal_strength=0")
    (tmp_path / "run").mkdir()
    best = run(cfg, RunPaths(run_dir=tmp_path / "run", project_dir=tmp_path))
    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("cappuccino").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("experiment") == "ablation"]
    arms = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and ARM_TAG in r.data.tags]
    assert sorted((r.data.tags[ARM_TAG], r.data.params["trainer.seed"]) for r in arms) == sorted(
        (arm, str(seed)) for arm in ("mlp", "ft_scratch", "ft_finetuned") for seed in range(3)
    )
    assert {r.info.run_name for r in arms} == {f"{arm} seed={seed}" for arm in ("mlp", "ft_scratch", "ft_finetuned") for seed in range(3)}
    finetuned = [r for r in arms if r.data.tags[ARM_TAG] == "ft_finetuned"]
    assert all(r.data.params["encoder.pretrained"].endswith("best_encoder.pt") and r.data.params["encoder.freeze"] == "False" for r in finetuned)
    assert {r.data.params["encoder.name"] for r in arms if r.data.tags[ARM_TAG] == "mlp"} == {"mlp"}
    hashes = {r.data.tags["data.hash"] for r in arms}
    assert len(hashes) == 1  # the same bars for every arm
    assert {"split0/test/excess_sharpe", "split1/test/excess_sharpe"} <= set(arms[0].data.metrics)
    # each split validates on its last training bars as it learns: the report's learning curves
    splits = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == arms[0].info.run_id]
    assert len(splits) == 2 and all(len(client.get_metric_history(r.info.run_id, "val/excess_sharpe")) >= 2 for r in splits)
    report = tmp_path / "run" / "report" / "report.md"
    assert "## Verdict" in report.read_text() and math.isfinite(best)
    assert "no arm beats buy-and-hold after fees with confidence" in report.read_text()  # no planted signal: nothing to find
    assert {"report/report.md", "report/arms.csv", "report/aggregates.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    folder = report.parent
    # the best arm's equity per path beside buy-and-hold and the oracle; a heat map per FT arm only
    assert {"equity_paths.png", "attention_ft_scratch.png", "attention_ft_finetuned.png"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "attention_mlp.png").exists() and "![Equity per backtest path](equity_paths.png)" in report.read_text()
    against = pd.read_csv(folder / "references.csv")
    assert sorted(zip(against.arm, against.reference)) == sorted((a, r) for a in ("mlp", "ft_scratch", "ft_finetuned") for r in ("oracle", "random", "flat", "equal_weight"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment.seeds=[0]"], "experiment.seeds: must be two or more distinct seeds"),
        (["experiment.arms=[mlp,mlp]"], "experiment.arms: must be two or more of"),
        (["experiment.source.symbols=[BTC,ETH]"], "experiment.source.symbols"),
    ],
)
def test_a_bad_ablation_setting_fails_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        cfg = compose_ablation("logger=none", *overrides)
        validate(cfg)
        run(cfg, RunPaths(run_dir=tmp_path / "run", project_dir=tmp_path))
    assert not (tmp_path / "run" / "pretrain").exists()


def test_an_ablation_of_an_mlp_against_itself_is_refused():
    from dataclasses import replace

    from cappuccino.experiments import ablation

    typed = validate(compose_ablation("logger=none"))
    with pytest.raises(ConfigError, match="encoder=mlp: the ablation's FT arms train the configured encoder"):
        ablation.check(replace(typed, encoder=typed.experiment.baseline))


@pytest.mark.slow
def test_the_sensitivity_grid_trains_every_size_with_every_seed(tmp_path):
    store = tmp_path / "mlflow.db"
    common = [o for o in ABLATION_TINY if not o.startswith(("experiment", "encoder."))]
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[
            "experiment=sensitivity_ft", *common, "encoder.out_dim=32", "experiment.d_token=[16]", "experiment.n_blocks=[1,2]",
            "experiment.n_heads=[4]", "experiment.seeds=[0,1,2]", f"logger.tracking_uri=sqlite:///{store}", "logger.system_metrics_interval=null",
        ])  # fmt: skip
    (tmp_path / "run").mkdir()
    run(cfg, RunPaths(run_dir=tmp_path / "run", project_dir=tmp_path))
    client = MlflowClient(f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("cappuccino").experiment_id], f"tags.`{ARM_TAG}` != ''")
    arms = {(r.data.tags[ARM_TAG], r.data.params["encoder.n_blocks"], r.data.params["trainer.seed"]) for r in runs}
    assert arms == {(f"d_token=16 n_blocks={b} n_heads=4", str(b), str(s)) for b in (1, 2) for s in range(3)}
    text = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "d_token=16 n_blocks=1 n_heads=4" in text and "## Paired comparisons" in text
    effects = pd.read_csv(tmp_path / "run" / "report" / "effects.csv")  # the one factor the grid varies
    assert effects["factor"].tolist() == ["encoder.n_blocks"] * 2 and effects["level"].tolist() == [1, 2]


def test_a_sensitivity_grid_that_cannot_be_built_fails_before_any_work():
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=["experiment=sensitivity_ft", "experiment.d_token=[30]", "experiment.n_heads=[4]"])
    with pytest.raises(ConfigError, match=r"every d_token must be a multiple of every n_heads; \[\(30, 4\)\]"):
        validate(cfg)
