"""trade.py: the replay equals backtest() to the cent, a killed trader resumes without placing an
order twice, the guards fire and hold across restarts, bad bars place no order, and the votes."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from cappuccino.config import ConfigError, build, validate
from cappuccino.data import load_market
from cappuccino.data.tensors import MarketTensors
from cappuccino.evaluation.backtest import backtest
from cappuccino.evaluation.splits import select_splits
from cappuccino.models.loading import load_policy
from cappuccino.runtime import RunPaths
from cappuccino.tracking import NullTracker
from cappuccino.trading.broker import CLIENT_ORDER_ID_LENGTH, Account, OrderRecord, OrderRequest, client_order_id
from cappuccino.trading.ensemble import combine
from cappuccino.trading.guards import GuardState, RiskGuards, bar_problems, judge, request_resume
from cappuccino.trading.members import Member
from cappuccino.trading.rules import TradingRules
from cappuccino.trading.session import run as trade
from cappuccino.trading.state import TradingState
from cappuccino.trading.trader import BarInput, Trader, exact_quantity, increment_quantity

from .conftest import CONF_DIR, TINY

ROOT = Path(__file__).resolve().parents[1]
# The data and holdout settings TINY trained on, so the replay is that run's test split.
SAME_BARS = ["data.n_bars=1500", "cv.embargo_bars=4"]
WIDE_GUARDS = [
    "trade.guards.max_weight=1.0", "trade.guards.max_order_notional=1e12", "trade.guards.max_drawdown=0.99",
    "trade.guards.daily_loss_limit=0.99",
]  # fmt: skip


def compose_trade(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose("trade", overrides=overrides)


@pytest.fixture(scope="module")
def project(tiny_project: Path) -> Path:
    return tiny_project


def replay(project: Path, folder: str, *overrides: str) -> tuple[float, Path]:
    run_dir = project / folder
    cfg = compose_trade([*SAME_BARS, "logger=none", "rules.rebalance_band=0.01", *overrides])
    return trade(cfg, RunPaths(run_dir, project)), run_dir


def equity(run_dir: Path) -> np.ndarray:
    state = TradingState(run_dir / "trading.db")
    curve = np.array([row[2] for row in state.equity_curve()])
    state.close()
    return curve


def exchange(run_dir: Path) -> tuple[list[tuple], dict[str, float]]:
    db = sqlite3.connect(run_dir / "sim_exchange.db")
    orders = db.execute("SELECT client_order_id, symbol, side, qty FROM orders ORDER BY client_order_id").fetchall()
    positions = dict(db.execute("SELECT symbol, qty FROM positions"))
    db.close()
    return orders, positions


def test_the_replay_equals_backtest_to_the_cent(project):
    _, run_dir = replay(project, "replay", *WIDE_GUARDS)
    (checkpoint,) = (project / "outputs").glob("*/*/checkpoint.pt")
    policy = load_policy(checkpoint)
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = validate(compose("config", overrides=[*TINY, "logger=none", "rules.rebalance_band=0.01"]))
    market, _ = load_market(cfg.data, cfg.window.zscore_window)
    tensors = MarketTensors.from_market(market, cfg.window.lookback, "cpu")
    ((_, split),) = select_splits(build(cfg.cv), None, market.first_valid, market.n_bars, market.feature_memory)
    (expected,) = backtest(policy, tensors, split.test, build(cfg.rules), cfg.env.initial_cash)
    got = equity(run_dir)
    assert len(got) == len(expected.equity) > 100
    np.testing.assert_allclose(got, expected.equity, rtol=0, atol=0.01)  # to the cent
    orders, _ = exchange(run_dir)
    assert orders and len({o[0] for o in orders}) == len(orders)
    assert all(len(o[0]) <= CLIENT_ORDER_ID_LENGTH for o in orders)


def test_the_status_command_reads_the_state_file_and_draws_the_curve_on_demand(project, capsys):
    from cappuccino.trading.status import main as status

    _, run_dir = replay(project, "status", *WIDE_GUARDS, "broker.max_bars=30")
    status([str(run_dir / "trading.db"), "--last", "2", "--plot", str(run_dir / "now.png")])
    shown = capsys.readouterr().out
    assert "last bar" in shown and "positions" in shown and "peak_equity" in shown and "last 2 decisions" in shown
    assert (run_dir / "now.png").stat().st_size > 10_000


def test_a_stopped_session_resumes_where_it_stopped_and_ends_as_an_uninterrupted_one(project):
    replay(project, "whole", *WIDE_GUARDS)
    replay(project, "parts", *WIDE_GUARDS, "broker.max_bars=40")
    assert len(equity(project / "parts")) == 41  # 40 decisions and the valuation of the last fill
    # The same folder again, to the end: the last valuation bar of the first part is decided now.
    replay(project, "parts", *WIDE_GUARDS)
    np.testing.assert_allclose(equity(project / "parts")[:41], equity(project / "whole")[:41], atol=0.01)
    assert exchange(project / "parts") == exchange(project / "whole")


@pytest.mark.slow
def test_kill_9_at_random_points_never_places_an_order_twice(project, tmp_path):
    """SIGKILL (no cleanup at all) at random moments of a session, restarted each time: the
    exchange ends with the uninterrupted session's orders and positions, each order once."""
    replay(project, "uninterrupted", *WIDE_GUARDS)
    run_dir = project / "killed"
    command = [
        sys.executable, str(ROOT / "trade.py"), *SAME_BARS, "logger=none", "rules.rebalance_band=0.01", *WIDE_GUARDS,
        f"hydra.run.dir={run_dir}", "broker.pace=0.1",  # ~18 s of bars: longer than a few kills' worth of progress
    ]  # fmt: skip
    rng = random.Random(0)
    kills = 0
    for _ in range(8):
        process = subprocess.Popen(command, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(rng.uniform(3.0, 7.0))
        if process.poll() is not None:  # the session finished before this kill
            assert process.returncode == 0, process.stderr.read()[-3000:]  # type: ignore[union-attr]
            break
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        kills += 1
    done = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert kills >= 3
    assert exchange(run_dir) == exchange(project / "uninterrupted")
    np.testing.assert_allclose(equity(run_dir), equity(project / "uninterrupted"), atol=0.01)


def test_sigterm_finishes_the_bar_and_exits_cleanly(project):
    run_dir = project / "terminated"
    command = [
        sys.executable, str(ROOT / "trade.py"), *SAME_BARS, "logger=none", *WIDE_GUARDS, f"hydra.run.dir={run_dir}", "broker.pace=0.05",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "heartbeat.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    state = TradingState(run_dir / "trading.db")
    rows = state.db.execute("SELECT count(*), sum(done) FROM bars").fetchone()
    assert rows[0] >= 1 and rows[0] == rows[1]  # no half-written bar


def fired_at(run_dir: Path, guard: str) -> tuple[int, str] | None:
    """The bar and time a guard first fired at, from the state file of a running session."""
    try:
        with closing(sqlite3.connect(run_dir / "trading.db", timeout=10)) as db:
            return db.execute(
                "SELECT bars.bar, bars.bar_time FROM events JOIN bars USING (bar_time) WHERE events.detail LIKE ? ORDER BY bars.bar LIMIT 1",
                (f"{guard}:%",),
            ).fetchone()
    except sqlite3.OperationalError:  # not created yet
        return None


def orders_by_bar(run_dir: Path) -> list[tuple[int, str, str]]:
    """(bar, bar time, side) of every order the session planned."""
    with closing(sqlite3.connect(run_dir / "trading.db")) as db:
        return db.execute("SELECT bars.bar, bars.bar_time, orders.side FROM orders JOIN bars USING (bar_time) ORDER BY bars.bar").fetchall()


def kill_when_fired(command: list[str], project: Path, run_dir: Path, guard: str) -> tuple[int, str]:
    """Start a session, SIGKILL it just after ``guard`` fired; where it fired."""
    process = subprocess.Popen(command, cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while (fired := fired_at(run_dir, guard)) is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert fired is not None, f"{guard} never fired"
    return fired


@pytest.mark.slow
def test_the_kill_switch_holds_across_a_kill_9_and_clears_only_with_the_flag_after_the_cool_down(project, tmp_path):
    run_dir = tmp_path / "killed"
    guards = [*WIDE_GUARDS, "trade.guards.max_drawdown=0.003", "trade.guards.cooldown_bars=10"]
    command = [sys.executable, str(ROOT / "trade.py"), *SAME_BARS, "logger=none", "rules.rebalance_band=0.01", *guards, f"hydra.run.dir={run_dir}"]
    kill_bar, _ = kill_when_fired([*command, "broker.pace=0.05"], project, run_dir, "kill switch")
    with closing(sqlite3.connect(run_dir / "trading.db")) as db:
        (first_bar,) = db.execute("SELECT min(bar) FROM bars").fetchone()
    restarted = subprocess.run([*command, f"broker.max_bars={kill_bar - first_bar + 20}"], cwd=project, capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert {side for bar, _, side in orders_by_bar(run_dir) if bar >= kill_bar} == {"sell"}  # flattened, nothing bought since
    with closing(sqlite3.connect(run_dir / "trading.db")) as db:
        after = [json.loads(t) for (t,) in db.execute("SELECT targets FROM bars WHERE bar > ? ORDER BY bar", (kill_bar,))]
    assert len(after) >= 19 and all(not any(t) for t in after)  # flat at every bar of the restart
    resumed = subprocess.run([*command, "trade.resume_after_kill=true"], cwd=project, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    buys = [bar for bar, _, side in orders_by_bar(run_dir) if side == "buy" and bar > kill_bar]
    assert buys and min(buys) >= kill_bar + 20  # the flag clears the kill at the restart's first bar, after the cool-down


@pytest.mark.slow
def test_the_daily_loss_limit_holds_across_a_kill_9_until_the_day_ends(project, tmp_path):
    run_dir = tmp_path / "killed"
    guards = [*WIDE_GUARDS, "trade.guards.daily_loss_limit=0.003"]
    command = [sys.executable, str(ROOT / "trade.py"), *SAME_BARS, "logger=none", "rules.rebalance_band=0.01", *guards, f"hydra.run.dir={run_dir}"]
    stop_bar, stop_time = kill_when_fired([*command, "broker.pace=0.05"], project, run_dir, "daily loss limit")
    restarted = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    day = stop_time[:10]
    orders = orders_by_bar(run_dir)
    assert not [bar for bar, when, _ in orders if bar >= stop_bar and when[:10] == day]  # none for the rest of that day
    assert [bar for bar, when, _ in orders if when[:10] > day]  # a later day trades again


# ------------------------------------------------------------------------------ the trader alone
class RecordingBroker:
    """A broker that fills nothing and records what it was asked."""

    def __init__(self, n_assets: int) -> None:
        self.submitted: list[OrderRequest] = []
        self.prices = np.full(n_assets, 100.0)

    def account(self) -> Account:
        return Account(Decimal(100_000), {})

    def open_orders(self) -> list[OrderRecord]:
        return []

    def find(self, client_order_id: str) -> OrderRecord | None:
        return None

    def submit(self, order: OrderRequest) -> OrderRecord:
        self.submitted.append(order)
        return OrderRecord(order.client_order_id, "x", order.symbol, order.side, order.qty, Decimal(0), None, "new")

    def plan_prices(self) -> np.ndarray:
        return self.prices


class AllInPolicy:
    """Wants every asset at an equal share: trades whenever it may."""

    def target_weights(self, window, weights, cash_reserve):  # noqa: ANN001
        n = window.shape[2]
        return torch.full((window.shape[0], n), (1 - cash_reserve) / n, dtype=torch.float64)


SYMBOLS = ("BTC", "ETH")


def make_trader(tmp_path: Path, guards: RiskGuards | None = None) -> tuple[Trader, RecordingBroker, TradingState]:
    broker = RecordingBroker(len(SYMBOLS))
    state = TradingState(tmp_path / "trading.db")
    rules = TradingRules(fee=0.0025, rebalance_band=0.0, min_order_size={s: 0.0 for s in SYMBOLS})
    trader = Trader(
        members=[Member("all-in", AllInPolicy(), None)], vote="mean", rules=rules, guards=guards or RiskGuards(max_weight=1.0),
        broker=broker, state=state, tracker=NullTracker(), symbols=SYMBOLS, interval=pd.Timedelta("1h"),
        strategy_id="test", quantize=exact_quantity, clock=lambda t: t + pd.Timedelta("1h"),
    )  # fmt: skip
    return trader, broker, state


def good_bar(price: float = 100.0) -> np.ndarray:
    return np.array([[price, price * 1.01, price * 0.99, price, 10.0]] * len(SYMBOLS))


def bar_input(index: int, ohlcv: np.ndarray, start: str = "2026-01-01") -> BarInput:
    return BarInput(index, pd.Timestamp(start, tz="UTC") + pd.Timedelta(hours=index), ohlcv, [torch.zeros(1, 4, len(SYMBOLS), 3)])


def corrupt(rng: np.random.Generator) -> np.ndarray:
    bar = good_bar(float(rng.uniform(1, 1000)))
    asset, kind = rng.integers(len(SYMBOLS)), rng.integers(5)
    if kind == 0:
        bar[asset, rng.integers(5)] = np.nan
    elif kind == 1:
        bar[asset, rng.integers(4)] = 0.0
    elif kind == 2:
        bar[asset, rng.integers(4)] = -abs(rng.normal()) * 10
    elif kind == 3:
        bar[asset, 1], bar[asset, 2] = bar[asset, 2], bar[asset, 1] * 1.5  # high below low
    else:
        bar[asset, 0] = bar[asset, 1] * 1.2  # open above high
    return bar


def test_a_thousand_bad_bars_place_no_order_and_crash_nothing(tmp_path):
    trader, broker, state = make_trader(tmp_path)
    rng = np.random.default_rng(0)
    for index in range(1000):
        trader.step(bar_input(index, corrupt(rng)))
    assert broker.submitted == []
    (count,) = state.db.execute("SELECT count(*) FROM events WHERE kind = 'guard' AND detail LIKE 'data:%'").fetchone()
    assert count == 1000
    trader.step(bar_input(1000, good_bar()))  # a good bar after them trades
    assert {o.symbol for o in broker.submitted} == set(SYMBOLS)


def test_stale_duplicated_and_out_of_order_bars_place_no_order(tmp_path):
    trader, broker, _ = make_trader(tmp_path)
    trader.clock = lambda t: t + pd.Timedelta("5h")  # the newest bar is 5 intervals old
    trader.step(bar_input(0, good_bar()))
    assert broker.submitted == []
    trader.clock = lambda t: t + pd.Timedelta("1h")
    trader.step(bar_input(2, good_bar()))
    placed = len(broker.submitted)
    assert placed == len(SYMBOLS)
    trader.step(bar_input(2, good_bar()))  # the same bar again
    trader.step(bar_input(1, good_bar()))  # an older bar after a newer one
    assert len(broker.submitted) == placed


def test_the_kill_switch_flattens_holds_across_a_restart_and_resumes_only_with_the_flag_after_the_cool_down():
    guards = RiskGuards(max_drawdown=0.2, cooldown_bars=5, daily_loss_limit=0.99)
    state, targets = GuardState(), np.array([0.4, 0.4])
    t0 = pd.Timestamp("2026-01-01", tz="UTC")

    def at(bar: int, equity: float):
        when = t0 + pd.Timedelta(hours=bar)
        return judge(guards, state, bar=bar, bar_time=when, now=when, interval=pd.Timedelta("1h"), ohlcv=good_bar(), symbols=SYMBOLS, equity=equity, targets=targets)

    assert at(0, 100.0).targets.tolist() == targets.tolist()
    fired = at(1, 79.0)
    assert fired.targets.tolist() == [0.0, 0.0] and "kill switch" in fired.reasons[0]
    restarted = GuardState(**vars(state))  # what the state file gives back
    state = restarted
    assert at(2, 120.0).targets.tolist() == [0.0, 0.0]  # no flag: flat, whatever happens
    request_resume(state, next_bar=3, guards=guards)
    assert at(4, 120.0).targets.tolist() == [0.0, 0.0]  # cool-down: 5 bars after the kill at bar 1
    assert at(6, 120.0).targets.tolist() == targets.tolist()


def test_the_daily_loss_limit_stops_orders_for_the_rest_of_the_day():
    guards = RiskGuards(daily_loss_limit=0.05, max_drawdown=0.9)
    state = GuardState()
    t0 = pd.Timestamp("2026-01-01", tz="UTC")

    def at(hours: int, equity: float) -> bool:
        when = t0 + pd.Timedelta(hours=hours)
        return judge(guards, state, bar=hours, bar_time=when, now=when, interval=pd.Timedelta("1h"), ohlcv=good_bar(), symbols=SYMBOLS, equity=equity, targets=np.array([0.3, 0.3])).trade

    assert at(0, 100.0) and at(5, 96.0)
    assert not at(6, 94.0) and not at(20, 99.0)  # the day's first bar was 100: 6 % down, and stays stopped
    assert at(24, 94.0)  # a new day starts from its own first bar


def test_guard_state_survives_the_state_file(tmp_path):
    state = TradingState(tmp_path / "trading.db")
    memory = GuardState(peak_equity=123.0, day="2026-01-01", day_start_equity=120.0, killed_at=7, resume_from=None)
    state.record_decision("t", 7, {}, [], [], [], **memory.as_meta())
    state.close()
    assert GuardState.from_meta(TradingState(tmp_path / "trading.db").get) == memory


@pytest.mark.parametrize("ohlcv, problem", [
    ([[np.nan, 1, 1, 1, 1]], "NaN"), ([[1, 1, 1, 0, 1]], "zero or negative"), ([[1, 1, 2, 1, 1]], "inconsistent"),
    ([[3, 2, 1, 1.5, 1]], "inconsistent"),
])  # fmt: skip
def test_bar_problems_name_what_is_wrong(ohlcv, problem):
    (found,) = bar_problems(np.array(ohlcv, dtype=float), ("BTC",))
    assert found.startswith("BTC: ") and problem in found
    assert bar_problems(np.array([[1.0, 1.1, 0.9, 1.0, 0.0]]), ("BTC",)) == []


# ---------------------------------------------------------------------------------- votes, ids
def test_the_voting_rules():
    targets = np.array([[0.5, 0.1], [0.4, 0.1], [0.0, 0.6]])
    current = np.array([0.2, 0.1])
    np.testing.assert_allclose(combine("mean", targets, current, 0.02), [0.3, 0.8 / 3])
    np.testing.assert_allclose(combine("median", targets, current, 0.02), [0.4, 0.1])
    # Asset 0: two of three vote up, so the agreeing members' mean; asset 1: one votes up, no majority.
    np.testing.assert_allclose(combine("majority", targets, current, 0.02), [0.45, 0.1])
    np.testing.assert_allclose(combine("score_weighted", targets, current, 0.02, np.array([1.0, 0.0, -1.0])), [0.5, 0.1])
    np.testing.assert_allclose(combine("score_weighted", targets, current, 0.02, np.array([-1.0, -2.0, 0.0])), targets.mean(0))
    with pytest.raises(ValueError, match="voting rule"):
        combine("vote", targets, current, 0.02)


def test_client_order_ids_are_deterministic_distinct_and_within_alpacas_limit():
    when = pd.Timestamp("2026-01-01 13:00", tz="UTC")
    ids = {client_order_id("a-very-long-strategy-name", when + pd.Timedelta(hours=h), s, side) for h in range(50) for s in ("BTC", "ETH") for side in ("buy", "sell")}
    assert len(ids) == 200 and max(map(len, ids)) <= CLIENT_ORDER_ID_LENGTH
    assert client_order_id("s", when, "BTC", "buy") == client_order_id("s", when, "BTC", "buy")


def test_quantities_round_down_to_the_increment_in_decimal():
    quantize = increment_quantity({"BTC": Decimal("0.0001")})
    assert quantize("BTC", 0.123456789) == Decimal("0.1234")
    assert quantize("BTC", 0.00009) == 0


@pytest.mark.parametrize("override, message", [
    ("trade.ensemble=vote", "trade.ensemble"), ("trade.guards.max_drawdown=1.5", "max_drawdown"),
    ("trade.strategy_id=a/b", "trade.strategy_id"), ("broker.part=train", "broker.part"), ("cv=cpcv", "cv=holdout"),
])  # fmt: skip
def test_a_bad_trade_setting_fails_before_any_work(project, override, message):
    with pytest.raises(ConfigError, match=message):
        replay(project, "bad", override)
    assert not (project / "bad" / "trading.db").exists()
