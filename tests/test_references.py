"""Reference strategies beside the agent: the oracle that knows the planted signal, a random
policy with an untrained agent's action distribution, and cash; and the synthetic market's
drift and planted signal they are judged on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cappuccino.config import build, validate
from cappuccino.data import load_market
from cappuccino.data.synthetic import SyntheticSource, planted_signal, synthetic_market
from cappuccino.data.tensors import MarketTensors, Segment
from cappuccino.evaluation.backtest import Backtest, backtest, stitch
from cappuccino.evaluation.references import (
    EqualWeightPolicy,
    FlatPolicy,
    OracleRule,
    RandomPolicy,
    mean_reference_metrics,
    oracle_gain,
    reference_backtests,
)
from cappuccino.evaluation.results import HoldoutResult
from cappuccino.evaluation.splits import select_splits
from cappuccino.reporting.console import verdict
from cappuccino.trading.rules import TradingRules

FEE = 0.0025


# ------------------------------------------------------------------ the synthetic market


def _one_asset(**kwargs: float) -> tuple[np.ndarray, SyntheticSource]:
    source = SyntheticSource(symbols=["BTC"], n_bars=200_000, seed=3, **kwargs)
    close = synthetic_market(source).ohlcv[:, 0, 3]
    return close[1:] / close[:-1] - 1.0, source


@pytest.mark.parametrize("drift", [0.0, 3.0])
def test_the_expected_price_grows_by_one_plus_annual_drift_a_year(drift: float) -> None:
    returns, _ = _one_asset(signal_strength=0.0, annual_drift=drift)
    per_bar = math.log1p(drift) / 8760
    standard_error = returns.std() / math.sqrt(len(returns))
    assert abs(returns.mean() - math.expm1(per_bar)) < 3 * standard_error
    if drift:
        assert returns.mean() > 5 * standard_error  # the drift is far from nothing at this length


def test_the_planted_expected_return_is_the_conditional_mean_of_the_next_bar() -> None:
    returns, source = _one_asset(signal_strength=0.3, signal_half_life=6.0)
    expected = planted_signal(source).expected_return[:-1, 0]  # row t forecasts bar t + 1
    # Unbiased, and a slope of 1: realised = expected + noise that is uncorrelated with it.
    slope, intercept = np.polyfit(expected, returns, 1)
    assert slope == pytest.approx(1.0, abs=0.06)
    assert abs(intercept) < 3 * returns.std() / math.sqrt(len(returns))
    # Nothing of the forecast is left in its errors, and it is a real forecast.
    errors = returns - expected
    assert abs(np.corrcoef(expected, errors)[0, 1]) < 0.01 and np.corrcoef(expected, returns)[0, 1] > 0.25


def test_the_horizon_gain_sums_the_decaying_signal_over_its_mean_life() -> None:
    signal = planted_signal(SyntheticSource(n_bars=500, signal_half_life=6.0, annual_drift=0.0))
    assert signal.decay == pytest.approx(0.5 ** (1 / 6))
    np.testing.assert_allclose(signal.horizon_gain(), signal.signal_return / (1 - signal.decay))
    without_signal = planted_signal(SyntheticSource(n_bars=500, signal_strength=0.0, annual_drift=0.3))
    np.testing.assert_allclose(without_signal.signal_return, 0.0)
    np.testing.assert_allclose(without_signal.horizon_gain(), math.expm1(math.log1p(0.3) / 8760 / (1 - without_signal.decay)))


def test_a_negative_growth_factor_is_refused() -> None:
    from cappuccino.errors import ArgumentError

    with pytest.raises(ArgumentError, match="annual_drift"):
        SyntheticSource(annual_drift=-1.0)


# ------------------------------------------------------------------ the oracle rule


def test_the_oracle_sells_below_minus_the_round_trip_cost_and_buys_back_above_it() -> None:
    cost = 2 * FEE
    gains = [0.0, -0.004, -0.006, 0.003, -0.002, 0.006, 0.001]  # asset 0 at bars 0..6; asset 1 always 0
    rule = OracleRule(torch.tensor([[g, 0.0] for g in gains], dtype=torch.float64), cost)
    weights = torch.tensor([[1.0, 0.0, 0.0]])  # [cash, asset 0, asset 1]: all cash at the start
    targets = []
    for t in range(len(gains)):
        target = rule.target_weights_at(torch.tensor([t]), weights, 0.0)
        targets.append(target[0].tolist())
        weights = torch.cat([1 - target.sum(-1, keepdim=True), target * torch.tensor([1.1, 1.0])], -1)
        weights = (weights / weights.sum()).float()  # asset 0 rose 10 % over the bar
    held = [t[0] > 0 for t in targets]
    # Starts held; -0.004 is inside the band: kept; -0.006 sells; +0.003 and -0.002 stay out;
    # +0.006 buys; +0.001 keeps.
    assert held == [True, True, False, False, False, True, True]
    assert targets[0] == [0.5, 0.5]  # a new position: the benchmark's share
    assert targets[1][0] == pytest.approx(0.55 / 1.05) and targets[1][1] == pytest.approx(0.5 / 1.05)  # kept as drifted: no trade
    assert targets[5] == pytest.approx([0.5, targets[5][1]]) and targets[5][1] < 0.5  # bought back at the share
    # A bar that does not follow the previous call starts a new episode: held again, at the share.
    rule.target_weights_at(torch.tensor([2]), weights, 0.0)  # sold
    assert rule.target_weights_at(torch.tensor([0]), torch.tensor([[1.0, 0.0, 0.0]]), 0.0)[0].tolist() == [0.5, 0.5]


def test_the_oracle_holds_each_asset_at_the_benchmarks_share_of_the_invested_value() -> None:
    gain = torch.tensor([[0.01, -0.01, 0.0]], dtype=torch.float64)
    weights = OracleRule(gain, 2 * FEE).target_weights_at(torch.tensor([0]), torch.zeros(1, 4), 0.02)
    torch.testing.assert_close(weights, torch.tensor([[0.98 / 3, 0.0, 0.98 / 3]], dtype=torch.float64))


@pytest.fixture(scope="module")
def default_test_split():
    """The default run's market (calibrated synthetic data, 0.25 % fees) and its test split."""
    from hydra import compose, initialize_config_dir

    from cappuccino.config import register_configs

    from .conftest import CONF_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = validate(compose("config"))
    market, _ = load_market(cfg.data, cfg.window.zscore_window)
    ((_, split),) = select_splits(build(cfg.cv), None, market.first_valid, market.n_bars)
    tensors = MarketTensors.from_market(market, cfg.window.lookback, "cpu")
    return cfg, market, tensors, split


def test_the_default_market_gives_the_oracle_a_clear_edge_after_fees(default_test_split) -> None:
    cfg, market, tensors, split = default_test_split
    rules = build(cfg.rules)
    assert rules.fee == FEE
    gain = oracle_gain(planted_signal(build(cfg.data)), market, "cpu")
    runs = reference_backtests(tensors, split.test, rules, cfg.env.initial_cash, gain=gain, init_log_std=cfg.agent.init_log_std, seed=0)
    oracle, random, flat = (stitch(runs[name]).metrics(8760.0) for name in ("oracle", "random", "flat"))
    assert oracle["excess_sharpe"] >= 1.0, oracle  # what the issue asks of the default market
    assert oracle["fees_paid"] > 0 and oracle["annual_turnover"] > 12  # it trades, and pays for it
    assert random["excess_sharpe"] < oracle["excess_sharpe"] - 1 and random["excess_sharpe"] < 0 < random["fees_paid"]
    # Exploration noise at log std -0.5 (where training starts; the schedule narrows it) pays away most of the capital.
    noisy = reference_backtests(tensors, split.test, rules, cfg.env.initial_cash, gain=None, init_log_std=-0.5, seed=0)["random"]
    noisy = stitch(noisy)
    assert noisy.metrics(8760.0)["excess_sharpe"] < -5 and noisy.fees_paid > 2 * oracle["fees_paid"]
    assert flat["total_return"] == 0.0 and flat["fees_paid"] == 0.0 and flat["sharpe"] == 0.0


def test_without_a_signal_the_oracle_holds_the_benchmark(default_test_split) -> None:
    cfg, market, tensors, split = default_test_split
    source = SyntheticSource(**{**build(cfg.data).__dict__, "signal_strength": 0.0})
    gain = oracle_gain(planted_signal(source), market, "cpu")  # drift only: always worth holding
    (run,) = backtest(OracleRule(gain, 2 * FEE), tensors, split.test, build(cfg.rules), cfg.env.initial_cash)
    assert run.turnover == pytest.approx(0.98, abs=1e-3)  # bought once at the start, never traded again
    assert run.equity[-1] == pytest.approx(run.benchmark[-1], rel=0.03)  # the benchmark keeps 0 % cash


def test_the_oracles_gain_follows_the_markets_symbol_order() -> None:
    source = SyntheticSource(symbols=["ETH", "BTC"], n_bars=300)
    market = synthetic_market(source)
    gain = oracle_gain(planted_signal(source), market, "cpu")
    raw = planted_signal(source).horizon_gain()
    for column, symbol in enumerate(market.symbols):
        np.testing.assert_array_equal(gain[:, column].numpy(), raw[:, source.symbols.index(symbol)])


# ------------------------------------------------------------------ random and flat


def test_the_random_policy_samples_an_untrained_agents_action_distribution() -> None:
    window = torch.zeros(20_000, 2, 3, 1)
    narrow = RandomPolicy(3, seed=0, log_std=-3.0).target_weights(window, torch.zeros(20_000, 4), 0.0)
    wide = RandomPolicy(3, seed=0, log_std=0.0).target_weights(window, torch.zeros(20_000, 4), 0.0)
    # Mean action 0 maps to weight 0.5 per asset, scaled down to a total of 1: 1/3 each.
    torch.testing.assert_close(narrow.mean(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=2e-3, rtol=0)
    # Weight = (action + 1) / 2 / total: its spread is half the action's, shrunk by the scaling.
    assert narrow.std(0).max() < 0.5 * math.exp(-3.0) and wide.std(0).min() > 0.1
    again = RandomPolicy(3, seed=0, log_std=-3.0).target_weights(window, torch.zeros(20_000, 4), 0.0)
    assert torch.equal(narrow, again)  # same seed, same draws


def test_flat_holds_cash() -> None:
    weights = FlatPolicy().target_weights(torch.ones(4, 2, 3, 5), torch.rand(4, 4), 0.02)
    assert weights.shape == (4, 3) and not weights.any()


# ------------------------------------------------------------------ reporting


def _backtest(equity: list[float], benchmark: list[float], turnover: float) -> Backtest:
    n = len(equity)
    return Backtest(np.arange(n), np.asarray(equity, float), np.asarray(benchmark, float), 1.0, turnover)


def test_annual_turnover_is_the_summed_turnover_per_year() -> None:
    metrics = _backtest([1.0, 1.01, 1.0, 1.02, 1.03], [1.0] * 5, turnover=2.0).metrics(8760.0)
    assert metrics["annual_turnover"] == pytest.approx(2.0 * 8760 / 4)


def test_reference_metrics_average_over_splits_and_land_in_the_results_metrics() -> None:
    per_split = [
        {"oracle": {"sharpe": 2.0, "excess_sharpe": 1.0, "total_return": 0.1, "max_drawdown": 0.1, "annual_turnover": 50, "fees_paid": 5}},
        {"oracle": {"sharpe": 4.0, "excess_sharpe": 3.0, "total_return": 0.3, "max_drawdown": 0.3, "annual_turnover": 70, "fees_paid": 7}},
    ]
    mean = mean_reference_metrics(per_split)
    assert mean["oracle"]["excess_sharpe"] == 2.0 and mean["oracle"]["annual_turnover"] == 60
    test = stitch([_backtest([1.0, 1.02, 1.03], [1.0, 1.01, 1.0], 0.5)]).metrics(8760.0)
    result = HoldoutResult(val=test, test=test, references=mean)
    metrics = result.metrics()
    assert metrics["test/oracle_excess_sharpe"] == 2.0 and metrics["test/oracle_fees_paid"] == 6
    assert metrics["test/agent_oracle_ratio"] == pytest.approx(test["excess_sharpe"] / 2.0)
    assert "val/oracle_excess_sharpe" not in metrics  # references are scored on the test split only


@pytest.mark.parametrize(
    ("agent", "oracle", "line"),
    [
        (1.3, 2.0, "agent beat buy-and-hold after fees on the test split: excess Sharpe +1.30 (oracle +2.00, 65% of it)"),
        (-0.4, 2.0, "agent did not beat buy-and-hold after fees on the test split: excess Sharpe -0.40 (oracle +2.00)"),
        (0.0, None, "agent did not beat buy-and-hold after fees on the test split: excess Sharpe +0.00"),
    ],
)
def test_the_verdict_says_whether_the_agent_beat_buy_and_hold_after_fees(agent: float, oracle: float | None, line: str) -> None:
    references = {} if oracle is None else {"oracle": {"excess_sharpe": oracle}}
    result = HoldoutResult(val={}, test={"excess_sharpe": agent}, references=references)
    assert verdict(result) == line


def test_the_verdict_shows_the_no_skill_line_first() -> None:
    references = {"oracle": {"excess_sharpe": 2.0}, "equal_weight": {"excess_sharpe": 0.47}}
    result = HoldoutResult(val={}, test={"excess_sharpe": 0.39}, references=references)
    assert verdict(result) == (
        "agent beat buy-and-hold after fees on the test split: excess Sharpe +0.39 (equal weight +0.47; oracle +2.00, 20% of it)"
    )


def test_equal_weight_targets_equal_weight_less_the_cash_reserve_and_rebalances_through_the_band() -> None:
    weights = EqualWeightPolicy().target_weights(torch.randn(3, 8, 4, 14), torch.full((3, 5), 0.2), cash_reserve=0.02)
    assert torch.allclose(weights, torch.full((3, 4), 0.98 / 4, dtype=weights.dtype))
    # Two assets, one doubling: buy-and-hold drifts to 2:1, equal weight sells the winner back.
    rules = TradingRules(fee=0.0, cash_reserve=0.0, rebalance_band=0.05, min_order_size={"X": 0.0, "Y": 0.0})

    def turnover(x_prices: list[float]) -> float:
        close = torch.tensor([[x, 1.0] for x in x_prices], dtype=torch.float64)
        tensors = MarketTensors(torch.zeros(len(x_prices), 2, 3), close, close, lookback=2, symbols=("X", "Y"))
        (run,) = backtest(EqualWeightPolicy(), tensors, [Segment(0, len(x_prices))], rules, 1000.0)
        return run.turnover

    flat = turnover([1.0] * 10)  # the first bar's purchase only
    assert turnover([1.0] * 5 + [2.0] * 5) == pytest.approx(flat + 1 / 3, rel=0.05)  # sells 1/6 of X, buys 1/6 of Y


def test_a_run_reports_the_references_and_labels_its_objective(compose_config, tmp_path, capsys) -> None:
    import json

    from cappuccino.runtime import RunPaths

    from .conftest import TINY
    from .conftest import run_train as run

    (tmp_path / "run").mkdir()
    run(compose_config([*TINY, "logger=none"]), RunPaths(tmp_path / "run", tmp_path))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for name in ("oracle", "random", "flat", "equal_weight"):
        assert math.isfinite(metrics[f"test/{name}_sharpe"]), name
    assert metrics["test/flat_total_return"] == 0.0
    out = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "objective (val/excess_sharpe, the validation split) = " in out
    assert "buy-and-hold after fees on the test split: excess Sharpe" in out and "(equal weight " in out and "; oracle " in out


def test_the_oracle_needs_the_generator_so_real_data_gets_none(tmp_path) -> None:
    tensors = MarketTensors(torch.zeros(40, 2, 3), torch.ones(40, 2), torch.ones(40, 2), lookback=4, symbols=("X", "Y"))
    rules = TradingRules(min_order_size={"X": 0.0, "Y": 0.0})
    runs = reference_backtests(tensors, [Segment(0, 40)], rules, 1000.0, gain=None, init_log_std=-0.5, seed=0)
    assert set(runs) == {"random", "flat", "equal_weight"}
