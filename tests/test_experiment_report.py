"""The experiment report, read from an MLflow store: arm runs nested under an experiment run,
scored per split, become the tables, verdicts and figures a researcher reads; the command finds
the run by id or by experiment name. Runs are written straight into a SQLite store, so the
scores (and the truth about which arm is better) are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cappuccino.evaluation.backtest import Backtest, stitch
from cappuccino.evaluation.gathering import SplitScores
from cappuccino.report import main as report_command
from cappuccino.reporting.experiment_report import (
    ARM_TAG,
    FACTORS_TAG,
    SCORES,
    ReportError,
    buy_and_hold_intervals,
    buy_and_hold_verdict,
    comparisons,
    main_effects,
    path_equities,
    read_arms,
    reference_comparisons,
    reference_scores,
    write_report,
)

N_SPLITS, SEEDS = 4, (0, 1, 2, 3, 4)


def experiment_store(
    tmp_path: Path, edges: dict[str, float], period_sd: float = 1.0, seed: int = 0, levels: dict[str, dict[str, str]] | None = None
) -> tuple[MlflowClient, str]:
    """An experiment run with one arm run per (arm, seed): test excess Sharpe per split = that
    split's market luck (shared by every arm and seed) + the arm's edge + seed noise. ``levels``:
    a grid's arm -> factor -> value, logged as params and named in the factors tag."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("cappuccino", artifact_location=(tmp_path / "artifacts").as_uri())
    rng = np.random.default_rng(seed)
    luck = rng.normal(0, period_sd, N_SPLITS)
    parent = client.create_run(experiment_id, tags={"experiment": "ablation", "mlflow.runName": "ablation_encoder"})
    for arm, edge in edges.items():
        for seed_ in SEEDS:
            run = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent.info.run_id, ARM_TAG: arm, "mlflow.runName": f"{arm} seed={seed_}"})
            client.log_param(run.info.run_id, "trainer.seed", seed_)
            client.log_param(run.info.run_id, "policy.parameters", 1000 if arm == "mlp" else 5000)
            for factor, value in (levels or {}).get(arm, {}).items():
                client.log_param(run.info.run_id, factor, value)
            if levels:
                client.set_tag(run.info.run_id, FACTORS_TAG, ",".join(levels[arm]))
            excess = luck + edge + rng.normal(0, 0.3, N_SPLITS)
            for k in range(N_SPLITS):
                values = {name: float(rng.normal()) for name in SCORES} | {"excess_sharpe": float(excess[k])}
                for name, value in values.items():
                    client.log_metric(run.info.run_id, f"split{k}/test/{name}", value)
                split = client.create_run(experiment_id, tags={"mlflow.parentRunId": run.info.run_id, "cv.split": str(k)})
                for step in range(1, 5):
                    client.log_metric(split.info.run_id, "train/step_reward", step * (1 + edge) + rng.normal(0, 0.1), step=step * 512)
                client.set_terminated(split.info.run_id)
            client.log_metric(run.info.run_id, "cv/oracle_excess_sharpe_mean", 2.5)
            client.log_metric(run.info.run_id, "cv/oracle_sharpe_mean", 3.0)
            client.log_metric(run.info.run_id, "cv/benchmark_sharpe_mean", 0.5)
            client.log_metric(run.info.run_id, "train/steps_per_second", 400.0)
            client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)
    return client, parent.info.run_id


def test_the_report_reads_every_arm_seed_and_split_from_mlflow(tmp_path):
    client, parent = experiment_store(tmp_path, {"mlp": 0.0, "ft_scratch": 0.0})
    arms, references = read_arms(client, parent)
    assert list(arms) == ["mlp", "ft_scratch"]  # the ablation's order
    assert arms["mlp"].seeds == list(SEEDS) and arms["mlp"].splits == [f"split {k}" for k in range(N_SPLITS)]
    assert arms["mlp"].scores["excess_sharpe"].shape == (N_SPLITS, len(SEEDS))
    seed_2 = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.`{ARM_TAG}` = 'mlp' and params.`trainer.seed` = '2'")[0]
    assert arms["mlp"].scores["excess_sharpe"][3, 2] == seed_2.data.metrics["split3/test/excess_sharpe"]
    assert references["oracle excess_sharpe"] == 2.5 and references["buy-and-hold sharpe"] == 0.5


def test_a_real_edge_is_claimed_and_written_with_its_interval(tmp_path):
    client, parent = experiment_store(tmp_path, {"mlp": 0.0, "ft_finetuned": 3.0}, period_sd=0.5)
    report = write_report(client, parent, tmp_path / "report")
    assert report.best_arm == "ft_finetuned"
    assert report.verdicts[1].startswith("highest IQM of test excess Sharpe: ft_finetuned") and report.verdicts[1].endswith("it beats mlp with confidence")
    assert report.verdicts[2].startswith("ft_finetuned beats mlp: P(mlp > ft_finetuned) = 0.00")
    assert "ft_finetuned" in report.verdicts[0] and report.verdicts[0].startswith("beat buy-and-hold")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Verdict" in text and "ft_finetuned beats mlp" in text and "![Performance profiles](profiles.png)" in text
    arms_csv = pd.read_csv(tmp_path / "report" / "arms.csv")
    row = arms_csv[(arms_csv.arm == "ft_finetuned") & (arms_csv.metric == "excess_sharpe") & (arms_csv.statistic == "iqm")].iloc[0]
    assert row.low < row.value < row.high
    resources = set(arms_csv[(arms_csv.arm == "mlp") & (arms_csv.statistic == "iqm")].metric) - set(SCORES)
    assert resources == {"wall_minutes", "steps_per_second", "parameters"}  # with intervals over seeds; no RSS or VRAM was logged
    assert len(pd.read_csv(tmp_path / "report" / "runs.csv")) == 2 * len(SEEDS) * N_SPLITS
    for figure in ("aggregates.png", "profiles.png", "learning_curves.png"):
        assert (tmp_path / "report" / figure).stat().st_size > 10_000
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/pairs.csv", "report/profiles.png"} <= logged


def test_without_an_edge_no_arm_beats_buy_and_hold_and_the_arms_are_not_told_apart(tmp_path):
    client, parent = experiment_store(tmp_path, {"mlp": 0.0, "ft_scratch": 0.0, "ft_frozen": 0.0}, seed=3)
    report = write_report(client, parent, tmp_path / "report")
    assert report.verdicts[0].startswith("no arm beats buy-and-hold after fees with confidence")
    assert report.verdicts[1].endswith("it beats no other arm with confidence")
    assert all(v.startswith("the data cannot tell") for v in report.verdicts[2:]) and len(report.verdicts) == 5


def test_the_command_finds_the_run_by_experiment_name_and_says_what_is_missing(tmp_path, capsys, monkeypatch):
    client, parent = experiment_store(tmp_path, {"mlp": 0.0, "ft_scratch": 1.0})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    assert report_command(["cappuccino", "--tracking-uri", uri]) == 0
    assert (tmp_path / f"report-{parent}" / "report.md").is_file()
    assert "report:" in capsys.readouterr().out
    assert report_command(["no-such-thing", "--tracking-uri", uri]) == 2
    assert "neither a run id nor an MLflow experiment name" in capsys.readouterr().err


def test_an_arm_without_two_common_seeds_is_refused(tmp_path):
    client, parent = experiment_store(tmp_path, {"mlp": 0.0, "ft_scratch": 0.0})
    experiment_id = client.get_run(parent).info.experiment_id
    for run in client.search_runs([experiment_id], f"tags.`{ARM_TAG}` = 'ft_scratch' and params.`trainer.seed` != '0'"):
        client.set_terminated(run.info.run_id, status="FAILED")
    with pytest.raises(ReportError, match=r"the arms share 1 finished seed\(s\) \(\[0\]\)"):
        read_arms(client, parent)


def test_no_skill_arms_make_a_claim_in_at_most_about_five_percent_of_experiments_whatever_their_number():
    """Four arms from one distribution (six pairs), split luck shared, fat tails: the share of
    experiments with any claim at all, pairwise or against buy-and-hold, stays within the stated
    5 % (and the simulation's error)."""
    rng = np.random.default_rng(0)
    n_experiments, any_pair, any_buy_and_hold = 150, 0, 0
    for experiment in range(n_experiments):
        luck = rng.normal(0, 1, (N_SPLITS, 1))
        scores = {arm: luck + rng.standard_t(3, (N_SPLITS, len(SEEDS))) * 0.5 for arm in ("a", "b", "c", "d")}
        _, verdicts = comparisons(scores, seed=experiment)
        any_pair += any(not v.startswith("the data cannot tell") for v in verdicts)
        any_buy_and_hold += buy_and_hold_verdict(buy_and_hold_intervals(scores, seed=experiment)).startswith("beat")
    stated = 0.05
    bound = stated + 2 * np.sqrt(stated * (1 - stated) / n_experiments)
    assert any_pair / n_experiments <= bound and any_buy_and_hold / n_experiments <= bound


def test_a_study_run_is_pointed_to_its_own_report(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    study = client.create_run(client.create_experiment("cappuccino"), tags={"optuna.study": "ppo_ft"})
    with pytest.raises(ReportError, match="is the study 'ppo_ft', not an experiment: its report is reporting.study_report"):
        read_arms(client, study.info.run_id)


def _piece(start: int, growth: float, n: int = 6) -> Backtest:
    bars = np.arange(start, start + n)
    return Backtest(bars, 100.0 * growth ** np.arange(n), 100.0 * 1.01 ** np.arange(n), 0.0, 0.0)


def _split_scores(seed: int) -> SplitScores:
    """Two splits whose test pieces one path chains; the oracle's per-split score is seed-free,
    the random policy's is not."""
    tests = {0: [_piece(0, 1.02 + 0.001 * seed)], 1: [_piece(10, 0.99)]}
    references = {i: {"oracle": {"excess_sharpe": 2.0 + i}, "random": {"excess_sharpe": -1.0 - seed}} for i in range(2)}
    reference_tests = {i: {"oracle": [_piece(10 * i, 1.03)], "random": [_piece(10 * i, 0.98)]} for i in range(2)}
    return SplitScores(tests, [[(0, 0), (1, 0)]], 2, 0.1, 8760.0, "hash", references, reference_tests)


def test_each_path_chains_every_seed_s_test_pieces_beside_the_oracle_on_the_same_bars():
    backtests = [_split_scores(seed) for seed in range(3)]
    (path,) = path_equities(backtests)
    assert path.agent.shape == (3, 11)  # 6 + 5 bars: the second piece's first value is the first's last
    for seed, curve in enumerate(path.agent):
        np.testing.assert_allclose(curve, stitch([backtests[seed].tests[0][0], backtests[seed].tests[1][0]]).equity)
    np.testing.assert_allclose(path.references["oracle"], 100.0 * 1.03 ** np.arange(11))
    np.testing.assert_allclose(path.benchmark, 100.0 * 1.01 ** np.arange(11))
    assert set(path.references) == {"oracle"}  # the figure shows the oracle, not the random policy


def test_arms_are_compared_with_each_reference_on_the_same_split_and_seed():
    backtests = [_split_scores(seed) for seed in range(3)]
    per_split = reference_scores(backtests)
    np.testing.assert_array_equal(per_split["oracle"], [[2.0] * 3, [3.0] * 3])
    np.testing.assert_array_equal(per_split["random"], [[-1.0, -2.0, -3.0]] * 2)
    arm = per_split["oracle"] * 0.5  # half the oracle's edge on every split
    runs = {"ft": _arm("ft", arm)}
    against = reference_comparisons(runs, per_split).set_index("reference")
    assert against.loc["oracle", "mean_difference"] == pytest.approx(-1.25)
    assert against.loc["oracle", "share_of_oracle"] == pytest.approx(0.5)
    assert against.loc["oracle", "arm_wins_share_of_runs"] == 0.0 and against.loc["random", "arm_wins_share_of_runs"] == 1.0
    assert np.isnan(against.loc["random", "share_of_oracle"])


def _arm(name: str, excess: np.ndarray):
    from cappuccino.reporting.experiment_report import ArmRuns

    return ArmRuns(name, [0, 1, 2], ["split 0", "split 1"], {"excess_sharpe": excess}, {}, ["a", "b", "c"], "0")


def test_a_grid_s_main_effects_pool_each_level_over_the_other_factors(tmp_path):
    """d_token carries the whole edge (+2 at 64), n_blocks none: the d_token levels' intervals
    are apart, the n_blocks levels' overlap, and the report ranks d_token first."""
    grid = {f"d{d} b{b}": {"encoder.d_token": str(d), "encoder.n_blocks": str(b)} for d in (32, 64) for b in (1, 2)}
    client, parent = experiment_store(tmp_path, {arm: 2.0 * (sizes["encoder.d_token"] == "64") for arm, sizes in grid.items()}, period_sd=0.5, levels=grid)
    arms, _ = read_arms(client, parent)
    assert arms["d64 b1"].levels == {"encoder.d_token": "64", "encoder.n_blocks": "1"}
    effects = main_effects(arms).set_index(["factor", "level"])
    assert effects.loc[("encoder.d_token", "32"), "arms"] == 2
    small, large = effects.loc[("encoder.d_token", "32")], effects.loc[("encoder.d_token", "64")]
    assert small.high < large.low and large.value - small.value == pytest.approx(2.0, abs=0.5)
    one, two = effects.loc[("encoder.n_blocks", "1")], effects.loc[("encoder.n_blocks", "2")]
    assert one.low < two.high and two.low < one.high
    pooled = np.concatenate([arms["d32 b1"].scores["excess_sharpe"], arms["d32 b2"].scores["excess_sharpe"]], axis=1)
    assert small.value == pytest.approx(float(stats_trim_mean(pooled)))
    report = write_report(client, parent, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Main effects" in text and text.index("Spread of the levels' IQM: `encoder.d_token`") > 0
    assert (tmp_path / "report" / "main_effects.png").stat().st_size > 10_000 and len(pd.read_csv(tmp_path / "report" / "effects.csv")) == 4
    assert not report.effects.empty


def test_arms_that_form_no_grid_have_no_main_effects(tmp_path):
    client, parent = experiment_store(tmp_path, {"mlp": 0.0, "ft_scratch": 0.0})
    arms, _ = read_arms(client, parent)
    assert main_effects(arms).empty
    write_report(client, parent, tmp_path / "report")
    assert not (tmp_path / "report" / "effects.csv").exists() and "## Main effects" not in (tmp_path / "report" / "report.md").read_text()


def stats_trim_mean(values: np.ndarray) -> float:
    from scipy import stats

    return stats.trim_mean(values.ravel(), 0.25)
