"""train.py across cross-validation splits: one agent per split, scored on its test groups."""

import json
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from cappuccino.config import validate
from cappuccino.errors import ConfigError
from cappuccino.evaluation.backtest import Backtest, stitch
from cappuccino.evaluation.scoring import return_moments, score_cv
from cappuccino.runtime import RunPaths
from cappuccino.training import train

from .config_reads import record_reads, unread_leaves
from .conftest import TINY
from .conftest import run_train as run

CPCV = [*TINY, "logger=none", "cv=cpcv", "cv.n_groups=3", "cv.n_test_groups=1", "cv.purge_bars=8", "cv.embargo_bars=null"]


def _run(compose_config, tmp_path, overrides):
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    objective = run(compose_config(overrides), RunPaths(run_dir, tmp_path))
    return objective, json.loads((run_dir / "metrics.json").read_text()), run_dir


def test_cpcv_trains_one_agent_per_split_and_returns_the_penalised_mean(compose_config, tmp_path):
    objective, metrics, run_dir = _run(compose_config, tmp_path, CPCV)
    agent = np.array([metrics[f"split{i}/test/sharpe"] for i in range(3)])
    excess = np.array([metrics[f"split{i}/test/excess_sharpe"] for i in range(3)])
    assert objective == metrics["cv/objective"] == pytest.approx(excess.mean() - 0.1 * agent.std())
    assert "cv/path0/sharpe" in metrics  # C(3,1) = 3 splits make phi = 1 path over all groups
    for i in range(3):
        assert (run_dir / f"checkpoint_split{i}.pt").is_file()
        assert (run_dir / f"equity_split{i}_test.png").is_file()


def test_a_cpcv_run_keeps_every_split_s_reference_backtests_beside_the_agent_s(compose_config, tmp_path):
    """The experiment report draws the references' equity per path from split_backtests.npz."""
    from cappuccino.evaluation.gathering import BACKTESTS_FILE, load_split_scores

    _, metrics, run_dir = _run(compose_config, tmp_path, CPCV)
    scores = load_split_scores(run_dir / BACKTESTS_FILE)
    assert sorted(scores.reference_tests) == [0, 1, 2] and set(scores.reference_tests[0]) == {"oracle", "random", "flat", "equal_weight"}
    for i, by_name in scores.reference_tests.items():
        agent = scores.tests[i]
        for name, pieces in by_name.items():
            assert [p.bars.tolist() for p in pieces] == [a.bars.tolist() for a in agent]  # the same test bars
            assert stitch(pieces).metrics(8760.0) == pytest.approx(scores.references[i][name])
        np.testing.assert_allclose(stitch(by_name["flat"]).equity, agent[0].equity[0])  # cash never moves
    oracle_mean = np.mean([stitch(scores.reference_tests[i]["oracle"]).metrics(8760.0)["excess_sharpe"] for i in range(3)])
    assert metrics["cv/oracle_excess_sharpe_mean"] == pytest.approx(oracle_mean)


def test_cpcv_with_validation_tails_logs_a_learning_curve_per_split(compose_config, tmp_path):
    _, metrics, run_dir = _run(compose_config, tmp_path, [*CPCV, "cv.val_fraction=0.2"])
    for i in range(3):
        curve = json.loads((run_dir / f"validation_curve_split{i}.json").read_text())
        assert [point["step"] for point in curve] == [256, 512, 768]  # every tenth of the budget: each update of 8 x 32 steps
        assert all(math.isfinite(point["excess_sharpe"]) for point in curve)
        assert (run_dir / f"equity_split{i}_val.png").is_file()
    assert "cv/objective" in metrics and not any(k.startswith("val/") for k in metrics)  # scored on the test groups only


def test_cv_split_runs_one_split_only(compose_config, tmp_path):
    _, metrics, run_dir = _run(compose_config, tmp_path, [*CPCV, "cv.split=1"])
    assert {k.split("/")[0] for k in metrics if k.startswith("split")} == {"split1"}
    assert "cv/path_sharpe_mean" not in metrics  # a path needs every split
    assert [p.name for p in run_dir.glob("checkpoint*.pt")] == ["checkpoint_split1.pt"]


def test_every_config_leaf_is_read_in_a_cpcv_run(compose_config, tmp_path):
    cfg_dict = compose_config([*CPCV, "cv.split=0"])
    cfg = validate(cfg_dict)
    (tmp_path / "run").mkdir()
    with record_reads() as reads:
        train(cfg, OmegaConf.to_yaml(cfg_dict), RunPaths(tmp_path / "run", tmp_path))
    assert unread_leaves(cfg, reads) == []


def test_an_objective_the_cv_scheme_cannot_give_fails_before_work(compose_config, tmp_path):
    with pytest.raises(ConfigError, match="trainer.objective.*cv/objective"):
        _run(compose_config, tmp_path, [*CPCV, "trainer.objective=val/excess_sharpe"])


def test_walk_forward_scores_each_test_window(compose_config, tmp_path):
    overrides = [*TINY, "logger=none", "cv=walk_forward", "cv.train_bars=600", "cv.test_bars=300", "cv.step_bars=300", "cv.embargo_bars=4"]
    objective, metrics, _ = _run(compose_config, tmp_path, overrides)
    n_splits = len({k.split("/")[0] for k in metrics if k.startswith("split")})
    assert n_splits == 2 and objective == metrics["cv/objective"]


def _backtest(equity, benchmark, start_bar):
    equity, benchmark = np.asarray(equity, float), np.asarray(benchmark, float)
    return Backtest(np.arange(start_bar, start_bar + len(equity)), equity, benchmark, 1.0, 0.5)


def test_stitch_chains_returns_across_pieces():
    joined = stitch([_backtest([100, 110, 99], [100, 100, 101], 0), _backtest([100, 120], [100, 90], 10)])
    assert joined.equity == pytest.approx([100, 110, 99, 118.8])
    assert joined.benchmark == pytest.approx([100, 100, 101, 90.9])
    assert list(joined.bars) == [0, 1, 2, 11] and joined.fees_paid == 2.0


def test_cv_scores_build_each_path_from_its_split_pieces():
    rng = np.random.default_rng(0)

    def piece():
        return _backtest(100 * np.cumprod(1 + rng.normal(0, 0.01, 50)), 100 * np.cumprod(1 + rng.normal(0, 0.01, 50)), 0)

    tests = {0: [piece()], 1: [piece()]}
    paths = [[(0, 0), (1, 0)]]
    out = score_cv(tests, 8760.0, std_penalty=0.5, paths=paths).metrics()
    expected_path = stitch([tests[0][0], tests[1][0]]).metrics(8760.0)["sharpe"]
    assert out["cv/path0/sharpe"] == pytest.approx(expected_path)
    sharpes = np.array([out["split0/test/sharpe"], out["split1/test/sharpe"]])
    assert out["cv/objective"] == pytest.approx(out["cv/excess_sharpe_mean"] - 0.5 * sharpes.std())


def test_return_moments_match_scipy_and_feed_the_deflated_sharpe_one_history_per_path():
    from scipy import stats
    rng = np.random.default_rng(1)
    equity = 100 * np.cumprod(1 + rng.standard_t(4, 400) * 0.01)
    returns = np.diff(equity) / equity[:-1]
    moments = return_moments(equity)
    assert moments.skewness == pytest.approx(stats.skew(returns))
    assert moments.kurtosis == pytest.approx(stats.kurtosis(returns, fisher=False))  # plain: normal = 3
    assert moments.sharpe_per_period == pytest.approx(returns.mean() / returns.std(ddof=1))
    assert moments.n_periods == 399

    def piece(n):
        return _backtest(100 * np.cumprod(1 + rng.normal(0, 0.01, n)), np.full(n, 100.0), 0)

    tests = {0: [piece(50)], 1: [piece(70)]}
    out = score_cv(tests, 8760.0, std_penalty=0.1, paths=[[(0, 0), (1, 0)]]).metrics()
    assert out["cv/n_periods"] == 49 + 69  # the path's returns, not one split's


def test_splits_run_separately_gather_into_the_one_process_score(compose_config, tmp_path):
    """cv.split=i fans a configuration out; gathering its runs gives the objective, per-path
    Sharpes and out-of-sample returns (the PBO inputs) of all splits in one process."""
    from cappuccino.evaluation.results import OOS_RETURNS_FILE, load_result
    from cappuccino.hparams_search.gather import main as gather_main

    _, together, together_dir = _run(compose_config, tmp_path / "together", CPCV)
    folders = []
    for i in range(3):
        _, _, folder = _run(compose_config, tmp_path / f"split{i}", [*CPCV, f"cv.split={i}"])
        folders.append(folder)
    gather_main([*map(str, folders), "--out", str(tmp_path / "gathered")])
    gathered = json.loads((tmp_path / "gathered" / "metrics.json").read_text())
    assert gathered == together  # objective, per-split, per-path and moments alike
    assert load_result(tmp_path / "gathered" / "result.json") == load_result(together_dir / "result.json")
    np.testing.assert_array_equal(np.load(tmp_path / "gathered" / OOS_RETURNS_FILE), np.load(together_dir / OOS_RETURNS_FILE))


def test_gathering_refuses_runs_that_are_not_one_configuration(compose_config, tmp_path):
    from cappuccino.hparams_search.gather import gather_folders

    a = _run(compose_config, tmp_path / "a", [*CPCV, "cv.split=0"])[2]
    b = _run(compose_config, tmp_path / "b", [*CPCV, "cv.split=1", "agent.lr=1e-4"])[2]
    c = _run(compose_config, tmp_path / "c", [*CPCV, "cv.split=0"])[2]
    with pytest.raises(ValueError, match=r"differ in \['agent\.lr'\]"):
        gather_folders([a, b])
    with pytest.raises(ValueError, match="split 0 was run twice"):
        gather_folders([a, c])
    with pytest.raises(ValueError, match=r"splits \[1, 2\] of 3 are missing"):
        gather_folders([a])
