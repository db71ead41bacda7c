"""broker=alpaca_paper through the real alpaca-py clients against a fake Alpaca on 127.0.0.1:
the orders Alpaca's crypto rules ask for, retries that never place an order twice, a refused
start, and keys that appear nowhere."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from cappuccino.config import ConfigError
from cappuccino.runtime import RunPaths
from cappuccino.trading import alpaca as alpaca_module
from cappuccino.trading.alpaca import AlpacaPaperBroker
from cappuccino.trading.broker import OrderRequest
from cappuccino.trading.live import ReconciliationError
from cappuccino.trading.session import run as trade
from cappuccino.trading.state import TradingState

from .conftest import CONF_DIR, TINY
from .conftest import run_train as train
from .fake_alpaca import FakeAlpaca

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = ("AAVE", "AVAX", "BTC", "ETH", "LINK", "LTC", "UNI")
KEY, SECRET = "PKFAKEKEY0123456789", "fakeSecret0123456789abcdefXYZ"
WIDE_GUARDS = ["trade.guards.max_weight=1.0", "trade.guards.stale_after_bars=100000", "trade.guards.max_drawdown=0.99", "trade.guards.daily_loss_limit=0.99"]


@pytest.fixture(scope="module")
def project(tiny_project: Path) -> Path:
    return tiny_project


def market(**settings: object) -> FakeAlpaca:
    rng = np.random.default_rng(0)
    n = 2500  # more bars than 20 restarts trade
    closes = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, (n, len(SYMBOLS))), 0)) * np.array([1, 2, 300, 20, 1, 5, 1])
    start = pd.Timestamp.now(tz="UTC").floor("h") - pd.Timedelta(hours=n + 5)
    return FakeAlpaca(SYMBOLS, closes, start, revealed=700, **settings)


@pytest.fixture
def fake():
    server = market()
    yield server
    server.stop()


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("ALPACA_API_KEY", KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    monkeypatch.setattr(alpaca_module, "BACKOFF_SECONDS", 0.01)


def overrides(fake: FakeAlpaca, *more: str) -> list[str]:
    return [
        "broker=alpaca_paper", "data=alpaca_1h", f"data.url_override={fake.url}", f"broker.url_override={fake.url}",
        "broker.settle_seconds=0", "broker.requests_per_minute=100000", "logger=none", "rules.rebalance_band=0.01", *WIDE_GUARDS, *more,
    ]  # fmt: skip  # the fake has no rate limit: the limiter has its own test


def session(project: Path, folder: str, fake: FakeAlpaca, *more: str) -> Path:
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("trade", overrides=overrides(fake, *more))
    trade(cfg, RunPaths(project / folder, project))
    return project / folder


def test_orders_are_alpacas_crypto_orders_rounded_to_the_increment_with_client_ids(project, fake, keys):
    run_dir = session(project, "paper", fake, "broker.max_bars=3")
    assert fake.posts, "the trader placed no order"
    for post in fake.posts:
        assert post["symbol"].endswith("/USD") and post["symbol"].split("/")[0] in SYMBOLS
        assert post["type"] == "market" and post["time_in_force"] == "gtc" and post["side"] in ("buy", "sell")
        assert Decimal(str(post["qty"])) % fake.increment == 0 and len(post["client_order_id"]) <= 48
    assert "GET /v2/assets/BTC/USD" in fake.requests  # the increments are read from Alpaca at start
    state = TradingState(run_dir / "trading.db")
    recorded = {cid: status for cid, status in state.db.execute("SELECT client_order_id, status FROM orders")}
    assert recorded == {cid: "filled" for cid in fake.orders}  # every order placed is in the state file, filled
    # Fees are taken in the asset bought: the state's positions are what Alpaca says is held.
    (positions,) = state.db.execute("SELECT positions FROM bars WHERE done = 1 ORDER BY bar DESC LIMIT 1").fetchone()
    assert positions is not None


def test_rate_limits_server_errors_and_a_lost_answer_are_retried_and_place_each_order_once(project, fake, keys):
    fake.script = [("POST", "/v2/orders", 429), ("POST", "/v2/orders", 500), ("POST", "/v2/orders", "place-then-500"), ("GET", "/v2/account", 503)]
    session(project, "retried", fake, "broker.max_bars=2")
    assert fake.script == []  # every fault was met
    placed = [p["client_order_id"] for p in fake.posts if p["client_order_id"] in fake.orders]
    sent = fake.requests.count("POST /v2/orders")
    assert sent == len(fake.orders) + 3 and len(set(placed)) == len(fake.orders)  # 3 re-sent, each placed once
    assert len(fake.orders) >= 2


def test_a_stalled_connection_times_out_and_is_retried(fake, keys, monkeypatch):
    monkeypatch.setattr(alpaca_module, "REQUEST_TIMEOUT", (1.0, 1.0))
    fake.stall_seconds = 2.5
    fake.script = [("GET", "/v2/account", "stall")]
    broker = AlpacaPaperBroker(symbols=SYMBOLS, url_override=fake.url)
    started = time.monotonic()
    assert broker.account().cash == Decimal(100_000)
    assert time.monotonic() - started < 10


def test_requests_wait_so_that_no_more_than_the_rate_limit_go_out_in_a_minute(fake, keys, monkeypatch):
    broker = AlpacaPaperBroker(symbols=SYMBOLS, url_override=fake.url, requests_per_minute=5)
    clock, waits = [1000.0], []
    monkeypatch.setattr(alpaca_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(alpaca_module.time, "sleep", lambda seconds: (waits.append(seconds), clock.__setitem__(0, clock[0] + seconds)))
    broker.sent.clear()  # the start's asset reads
    for _ in range(5):
        broker.account()  # two requests each
        clock[0] += 1.0
    assert waits == [pytest.approx(58.0)]  # the 6th request waited for the two oldest to age out
    assert max(sum(1 for t in broker.sent if t0 <= t < t0 + 60) for t0 in broker.sent) <= 5


def test_a_duplicate_client_order_id_is_looked_up_not_placed_again(fake, keys):
    broker = AlpacaPaperBroker(symbols=SYMBOLS, url_override=fake.url)
    broker.observe(fake.closes[fake.revealed - 1])
    order = OrderRequest("test-duplicate-1", "BTC", "buy", Decimal("0.01"))
    first = broker.submit(order)
    again = broker.submit(order)  # Alpaca answers 422 40010001
    assert first.broker_order_id == again.broker_order_id and len(fake.orders) == 1


def test_a_start_that_cannot_reconcile_refuses_to_trade(project, fake, keys):
    fake.script = [("GET", "/v2/account", 500)] * alpaca_module.MAX_ATTEMPTS
    with pytest.raises(ReconciliationError, match="reconciliation with the broker failed at start"):
        session(project, "refused", fake, "broker.max_bars=1")
    assert fake.posts == []


def test_keys_are_required_from_the_environment_and_a_live_account_needs_a_confirmation(project, fake, monkeypatch):
    monkeypatch.delenv("ALPACA_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ALPACA_API_KEY and ALPACA_SECRET_KEY"):
        session(project, "nokeys", fake, "broker.max_bars=1")
    monkeypatch.setenv("ALPACA_API_KEY", KEY)
    monkeypatch.setenv("ALPACA_SECRET_KEY", SECRET)
    with pytest.raises(ConfigError, match="CAPPUCCINO_LIVE_TRADING=yes"):
        session(project, "live", fake, "broker.max_bars=1", "broker.live=true")


def test_the_keys_appear_in_no_log_output_state_file_or_mlflow_store(project, fake, tmp_path):
    env = {**os.environ, "ALPACA_API_KEY": KEY, "ALPACA_SECRET_KEY": SECRET, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    command = [sys.executable, str(ROOT / "trade.py"), *overrides(fake, "broker.max_bars=2"), f"hydra.run.dir={tmp_path}/run"]
    command = [c for c in command if c != "logger=none"] + [f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert fake.orders and all(h.get("APCA-API-KEY-ID") == KEY for h in fake.headers if "APCA-API-KEY-ID" in h)  # they were used
    texts = [done.stdout, done.stderr] + [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()]
    assert not [t[:200] for t in texts if KEY in t or SECRET in t]


def finished_in(state_file: Path) -> Callable[[pd.Timestamp], bool]:
    """Whether the trader writing ``state_file`` has finished the bar at a time: the lockstep
    market's clock, so that a killed trader's restart finds the bar it was trading still newest."""

    def finished(bar_time: pd.Timestamp) -> bool:
        try:
            with closing(sqlite3.connect(state_file, timeout=10)) as db:
                row = db.execute("SELECT done FROM bars WHERE bar_time = ?", (bar_time.isoformat(),)).fetchone()
        except sqlite3.OperationalError:  # not created yet
            return False
        return bool(row and row[0])

    return finished


@pytest.mark.slow
def test_kill_9_twenty_times_places_no_order_twice_loses_none_and_ends_as_an_uninterrupted_run(project, tmp_path):
    env = {**os.environ, "ALPACA_API_KEY": KEY, "ALPACA_SECRET_KEY": SECRET, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}

    def command(fake: FakeAlpaca, folder: Path, *more: str) -> list[str]:
        return [sys.executable, str(ROOT / "trade.py"), *overrides(fake, *more), f"hydra.run.dir={folder}"]

    killed = market(advance=finished_in(tmp_path / "killed" / "trading.db"))
    rng = np.random.default_rng(1)
    for _ in range(20):
        process = subprocess.Popen(command(killed, tmp_path / "killed"), cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(float(rng.uniform(4.0, 8.0)))
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    done = subprocess.run(command(killed, tmp_path / "killed", "broker.max_bars=1"), cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    state = TradingState(tmp_path / "killed" / "trading.db")
    (n_bars,) = state.db.execute("SELECT count(*) FROM bars WHERE done = 1").fetchone()
    recorded = {cid for (cid,) in state.db.execute("SELECT client_order_id FROM orders WHERE status = 'filled'")}
    assert killed.orders, "no order was placed in 20 starts"
    bars_and_sides = [(o["client_order_id"].rsplit("-", 1)[0]) for o in killed.orders.values()]
    assert len(bars_and_sides) == len(set(bars_and_sides))  # one order per (bar, symbol, side)
    assert set(killed.orders) <= recorded  # none lost: the restarts found every order placed

    whole = market(advance=finished_in(tmp_path / "whole" / "trading.db"))
    done = subprocess.run(command(whole, tmp_path / "whole", f"broker.max_bars={n_bars}"), cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(killed.orders) == list(whole.orders)  # the same orders, in the same order
    assert killed.positions == whole.positions and killed.cash == whole.cash
    killed.stop()
    whole.stop()


def test_a_partly_filled_order_is_read_again_until_it_settles(project, fake, keys):
    fake.script = [("POST", "/v2/orders", "partial")]
    run_dir = session(project, "partial", fake, "broker.max_bars=3")
    state = TradingState(run_dir / "trading.db")
    first = next(iter(fake.orders))
    (status,) = state.db.execute("SELECT status FROM orders WHERE client_order_id = ?", (first,)).fetchone()
    assert status == "filled"  # answered partially_filled, then read again at the next bar
    (event,) = state.db.execute("SELECT detail FROM events WHERE kind = 'order' AND detail LIKE ?", (f"{first}%",)).fetchone()
    assert "filled" in event
    filled = sum(float(q) * float(p) for q, p in state.db.execute("SELECT filled_qty, filled_avg_price FROM orders WHERE filled_avg_price IS NOT NULL"))
    (fees,) = state.db.execute("SELECT sum(fees) FROM bars").fetchone()
    assert fees == pytest.approx(0.0025 * filled)  # the half filled after placing is charged too, once


def test_models_come_from_a_folder_latest_an_mlflow_run_and_a_registered_model(tmp_path):
    import mlflow

    from cappuccino.trading.members import load_members

    run_dir = tmp_path / "outputs" / "2026-12-02" / "11-00-00"
    run_dir.mkdir(parents=True)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=[*TINY, f"logger.tracking_uri={uri}", "logger.register_as=tiny", "logger.system_metrics_interval=null"])
    train(cfg, RunPaths(run_dir, tmp_path))
    run_id = mlflow.MlflowClient(uri).search_model_versions("name = 'tiny'")[0].run_id
    sources = ["latest", str(run_dir), str(run_dir / "checkpoint.pt"), f"runs:/{run_id}", "models:/tiny/latest"]
    members = load_members(sources, tmp_path, uri, "sqlite:///none.db")
    weights = [m.policy.module.state_dict() for m in members]
    assert len(members) == 5 and all(all((w[k] == weights[0][k]).all() for k in w) for w in weights)
    assert members[0].score is not None  # metrics.json beside it: the run's validation objective
    with pytest.raises(ConfigError, match="no checkpoint file, run folder"):
        load_members(["nowhere.pt"], tmp_path, uri, "sqlite:///none.db")


def test_a_member_that_does_not_fit_the_data_is_named_with_the_key(project, fake, keys):
    from cappuccino.models.checkpoint import CheckpointMismatch

    with pytest.raises(CheckpointMismatch, match=r"checkpoint.pt does not fit this market:\n.*symbols"):
        session(project, "mismatch", fake, "broker.max_bars=1", "data.symbols=[BTC,ETH]")


def test_positions_the_trader_did_not_open_are_refused_unless_adopted(project, fake, keys):
    fake.positions = {"BTC": Decimal("0.5")}
    with pytest.raises(ReconciliationError, match=r"did not open \(0.5 BTC\).*trade.adopt_positions=true"):
        session(project, "someone_elses", fake, "broker.max_bars=1")
    assert fake.posts == []
    session(project, "adopted", fake, "broker.max_bars=1", "trade.adopt_positions=true")
    assert fake.posts


class BarFuzzer:
    """Corrupts the bars answers the fake sends, at random: the newest bar gets a NaN, zero or
    negative price, a high below its low, or a second, different copy (all bad bars); or the
    answer is stale (its newest bars left out) or shuffled (harmless: the cleaning sorts)."""

    BAD = ("nan", "zero", "negative", "high_below_low", "duplicate")
    KINDS = ("clean", "shuffled", "stale", *BAD)
    CHANCES = (0.1, 0.05, 0.1, 0.15, 0.15, 0.15, 0.15, 0.15)

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.bad_times: set[str] = set()  # the newest bar's time in every answer that carried a bad bar
        self.served = {kind: 0 for kind in self.KINDS}

    def __call__(self, bars: dict[str, list[dict]]) -> None:
        kind = str(self.rng.choice(self.KINDS, p=self.CHANCES))
        pairs = list(bars)
        left_out = int(self.rng.integers(1, 4))
        if kind == "stale" and pd.Timestamp(bars[pairs[0]][-left_out - 1]["t"]).isoformat() in self.bad_times:
            kind = "clean"  # a bar once sent bad is never the newest again: the check below stays exact
        self.served[kind] += 1
        if kind == "stale":
            for pair in pairs:
                del bars[pair][-left_out:]
            return
        if kind == "shuffled":
            for pair in pairs:
                self.rng.shuffle(bars[pair])
            return
        if kind == "clean":
            return
        newest = bars[pairs[int(self.rng.integers(len(pairs)))]][-1]
        self.bad_times.add(pd.Timestamp(newest["t"]).isoformat())
        field = str(self.rng.choice(["o", "h", "l", "c"]))
        if kind == "nan":
            newest[field] = float("nan")
        elif kind == "zero":
            newest[field] = 0.0
        elif kind == "negative":
            newest[field] = -abs(newest[field])
        elif kind == "high_below_low":
            newest["h"], newest["l"] = min(newest["o"], newest["c"]) * 0.99, max(newest["o"], newest["c"]) * 1.01
        else:
            for pair in pairs:
                bars[pair].append({**bars[pair][-1], "c": bars[pair][-1]["c"] * 1.01})


@pytest.mark.slow
def test_a_thousand_bad_bars_from_alpaca_place_no_order_on_a_bad_bar_and_crash_nothing(project, fake, keys, monkeypatch):
    from cappuccino.trading import live

    monkeypatch.setattr(live, "_sleep_until_next_bar", lambda *args: None)  # the fake's next bar is there at once
    fuzz = fake.tamper = BarFuzzer(seed=3)
    run_dir = session(project, "fuzzed", fake, "broker.max_bars=540")
    assert sum(fuzz.served[kind] for kind in BarFuzzer.BAD) >= 1000
    state = TradingState(run_dir / "trading.db")
    ordered_at = {t for (t,) in state.db.execute("SELECT DISTINCT bar_time FROM orders")}
    assert ordered_at and not ordered_at & fuzz.bad_times
    assert {o["client_order_id"] for o in fake.orders.values()} <= {c for (c,) in state.db.execute("SELECT client_order_id FROM orders")}
    (data_errors,) = state.db.execute("SELECT count(*) FROM events WHERE kind = 'data_error'").fetchone()
    (bar_guards,) = state.db.execute("SELECT count(*) FROM events WHERE kind = 'guard' AND detail LIKE 'data:%'").fetchone()
    assert data_errors == sum(fuzz.served[kind] for kind in ("nan", "zero", "negative", "duplicate"))  # refused by the cleaning
    assert bar_guards >= fuzz.served["high_below_low"]  # repaired by the cleaning, refused by the guards
