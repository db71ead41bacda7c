"""``python trade.py``: one trading session, from the config to the summary.

The default broker (``broker=sim``) replays the held-out part of the configured data (the
holdout's test split) bar by bar, through the same trader a real account uses, and its equity
curve is ``backtest()``'s on the same bars and models. The run folder keeps ``trading.db`` (the
trader's state: ``cappuccino.trading.state``), ``sim_exchange.db`` (the simulated exchange) and
``heartbeat.json`` (updated every bar); start the same command with ``hydra.run.dir=<that
folder>`` to resume a session where it stopped. The session is one MLflow run, updated every
bar: equity, drawdown, weights, fees and orders.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from cappuccino.config import AlpacaBrokerConfig, AlpacaDataConfig, HoldoutConfig, TradeJobConfig, build, check_buildable, to_typed
from cappuccino.data.features import with_features
from cappuccino.data.market import MarketData
from cappuccino.data.tensors import MarketTensors, Segment
from cappuccino.env.portfolio import equal_weight_buy_and_hold
from cappuccino.errors import ConfigError
from cappuccino.evaluation.backtest import Backtest
from cappuccino.evaluation.metrics import periods_per_year
from cappuccino.evaluation.splits import select_splits
from cappuccino.progress import console, print_line, progress_bar
from cappuccino.reporting.console import print_data_report
from cappuccino.reporting.figures import equity_figure
from cappuccino.runtime import RunPaths, check_interrupt, deferred_interrupts
from cappuccino.tracking import build_tracker, flatten_config
from cappuccino.trading.guards import GuardState, request_resume
from cappuccino.trading.live import live_loop, reconcile
from cappuccino.trading.members import Member, load_members
from cappuccino.trading.rules import TradingRules
from cappuccino.trading.state import TradingState
from cappuccino.trading.trader import BarInput, Trader, exact_quantity

STATE_FILE, EXCHANGE_FILE, HEARTBEAT_FILE = "trading.db", "sim_exchange.db", "heartbeat.json"
MIN_SUMMARY_BARS = 3  # equity values a Sharpe ratio needs


@dataclass(frozen=True)
class Replay:
    """The replayed bars and each member's windows over them."""

    market: MarketData  # raw bars (features of the first member's z-score window)
    tensors: list[MarketTensors]  # per member
    decision_bars: np.ndarray  # the bars decided at, in order; each fills at the next bar's open


def run(cfg: DictConfig, paths: RunPaths) -> float:
    """Validate, load the models, trade every bar through the configured broker, summarise; the
    session's annualised Sharpe ratio."""
    typed: TradeJobConfig = to_typed(cfg, TradeJobConfig)
    check_buildable(typed.data, typed.rules, typed.cv, typed.trade.guards)
    live = isinstance(typed.broker, AlpacaBrokerConfig)
    if live and not isinstance(typed.data, AlpacaDataConfig):
        raise ConfigError(f"broker=alpaca_paper reads its bars from Alpaca, and data={typed.data.name} does not: use data=alpaca_1h or data=alpaca_5m")
    if not live and not isinstance(typed.cv, HoldoutConfig):
        raise ConfigError(f"cv={typed.cv.name}: the replay needs cv=holdout, whose test split is one held-out stretch of bars")
    settings = typed.trade
    members = load_members(settings.models, paths.project_dir, getattr(typed.logger, "tracking_uri", None), settings.study_storage)
    if settings.ensemble == "score_weighted" and (unscored := [m.name for m in members if m.score is None]):
        raise ConfigError(f"trade.ensemble=score_weighted: no validation objective (metrics.json) beside {unscored}")
    rules, guards = build(typed.rules), build(settings.guards)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    source = build(typed.data)
    if live:
        broker = build(typed.broker, symbols=source.symbols, quote=source.quote, fallback_rules=_fallback_rules(rules, source.symbols))
        interval, symbols, replay, quantize = pd.Timedelta(source.interval), source.symbols, None, broker.quantize
    else:
        raw, report = source.load()
        print_data_report(report)
        replay = replay_bars(raw, members, typed.cv, typed.broker.part)  # type: ignore[attr-defined]
        broker = build(
            typed.broker, open_prices=raw.field("open"), symbols=raw.symbols, fee=rules.fee,
            initial_cash=settings.initial_cash, exchange_file=paths.run_dir / EXCHANGE_FILE,
        )  # fmt: skip
        interval, symbols, quantize = raw.interval, raw.symbols, exact_quantity
    state = TradingState(paths.run_dir / STATE_FILE)
    if live:
        reconcile(broker, state, settings.adopt_positions)
    first_bar = int(replay.decision_bars[0]) if replay is not None else int(pd.Timestamp.now(tz="UTC").value // interval.value)
    if settings.resume_after_kill:
        memory = GuardState.from_meta(state.get)
        request_resume(memory, first_bar, guards)
        with state.transaction() as db:
            state.put(db, **memory.as_meta())
    names = ", ".join(sorted({Path(m.name).parent.name or m.name for m in members}))
    with build_tracker(typed.logger, f"trade {typed.broker.name} {names}"[:80], paths.project_dir) as tracker:
        tracker.log_params(flatten_config(OmegaConf.to_container(cfg, resolve=True)))
        tracker.set_tags({"trade.broker": typed.broker.name, "trade.members": "\n".join(m.name for m in members)[:5000]})
        trader = Trader(
            members=members, vote=settings.ensemble, rules=rules, guards=guards, broker=broker, state=state, tracker=tracker,
            symbols=symbols, interval=interval, strategy_id=settings.strategy_id, quantize=quantize,
            clock=(lambda _: pd.Timestamp.now(tz="UTC")) if live else (lambda bar_time: bar_time + interval),
        )  # fmt: skip
        with deferred_interrupts():
            if replay is not None:
                trade_replay(trader, broker, replay, typed.broker.pace, typed.broker.max_bars, paths.run_dir)  # type: ignore[attr-defined]
            else:
                beat = lambda bar_time: heartbeat(paths.run_dir, bar_time)  # noqa: E731
                live_loop(trader, broker, source, typed.broker.max_bars, typed.broker.settle_seconds, beat)  # type: ignore[attr-defined]
        sharpe = float("nan")
        curve = state.equity_curve()
        if len(curve) < MIN_SUMMARY_BARS:
            print_line(f"{len(curve)} bars traded: too few for a Sharpe ratio (a volatility needs two returns)")
        else:
            result = summarise(curve, state, replay, rules.fee)
            metrics = result.metrics(periods_per_year(interval))
            tracker.log_metrics({f"session/{k}": v for k, v in metrics.items()})
            times = pd.DatetimeIndex([pd.Timestamp(row[0]) for row in curve])
            tracker.log_figure(equity_figure(times, result.equity, result.benchmark, f"trade.py ({typed.broker.name}): agent vs equal-weight buy-and-hold"), "equity.png")
            print_summary(metrics, len(result.bars) - 1)
            sharpe = float(metrics["sharpe"])
        tracker.log_artifact(paths.run_dir / STATE_FILE)
        print_line(f"state: {paths.run_dir / STATE_FILE} (python -m cappuccino.trading.status {paths.run_dir / STATE_FILE})")
        if tracker.run_url:
            print_line(f"this session: {tracker.run_url}")
    state.close()
    broker.close()
    return sharpe


def _fallback_rules(rules: TradingRules, symbols: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """The configured (minimum order size, increment) per symbol: used where Alpaca gives none."""
    return {s: (rules.min_order_size.get(s, 0.0), rules.qty_increment.get(s, 0.0)) for s in symbols}


def replay_bars(raw: MarketData, members: list[Member], cv: HoldoutConfig, part: str) -> Replay:
    """Every member's windows over the data, checked against its schema, and the part's bars."""
    markets: dict[int, MarketData] = {}
    tensors = []
    for member in members:
        schema = member.policy.schema
        market = markets.setdefault(schema.zscore_window, with_features(raw, schema.zscore_window))
        schema.check(market, schema.lookback, schema.zscore_window, name=member.name)
        tensors.append(MarketTensors.from_market(market, schema.lookback, "cpu"))
    first = markets[members[0].policy.schema.zscore_window]
    ((_, split),) = select_splits(build(cv), None, max(m.first_valid for m in markets.values()), raw.n_bars, first.feature_memory)
    segments: tuple[Segment, ...] = split.test if part == "test" else split.validation
    if len(segments) != 1:
        raise ConfigError(f"broker.part={part}: the holdout gives {len(segments)} segments there, the replay needs one")
    longest = max(tensors, key=lambda t: t.lookback)
    return Replay(first, tensors, longest.decision_bars(segments[0]).numpy())


def trade_replay(trader: Trader, broker, replay: Replay, pace: float, max_bars: int | None, run_dir: Path) -> None:  # noqa: ANN001
    """Each decision bar in order, then the last fill's bar valued; SIGINT / SIGTERM stop after a bar."""
    bars = replay.decision_bars[: max_bars] if max_bars else replay.decision_bars
    final = int(bars[-1]) + 1
    market = replay.market
    with progress_bar("trade", len(bars) + 1, console.is_terminal) as advance:
        for done, bar in enumerate([*map(int, bars), final], start=1):
            started = time.monotonic()
            broker.at_bar(bar)
            windows = [t.window(torch.tensor([bar])) for t in replay.tensors] if bar != final else []
            trader.step(BarInput(bar, market.timestamps[bar], market.ohlcv[bar], windows), decide=bar != final)
            heartbeat(run_dir, market.timestamps[bar])
            advance(done)
            check_interrupt()
            if pace:
                time.sleep(max(pace - (time.monotonic() - started), 0.0))


def heartbeat(run_dir: Path, bar_time: pd.Timestamp) -> None:
    """``heartbeat.json``: the last bar handled and when, replaced atomically."""
    scratch = run_dir / (HEARTBEAT_FILE + ".tmp")
    scratch.write_text(json.dumps({"bar_time": bar_time.isoformat(), "at": pd.Timestamp.now(tz="UTC").isoformat()}))
    scratch.replace(run_dir / HEARTBEAT_FILE)


def summarise(curve: list[tuple], state: TradingState, replay: Replay | None, fee: float) -> Backtest:
    """The session's equity at each bar's close against equal-weight buy-and-hold on the same
    bars: bought at the first fill (the replay: the next bar's open, as ``backtest()``; a real
    account: the first bar's close). ``curve``: ``state.equity_curve()``, at least one row."""
    bars = np.array([row[1] for row in curve])
    equity = np.array([row[2] for row in curve])
    if replay is not None:
        market = replay.tensors[0]
        first, closes = market.open[bars[0] + 1], market.close[bars[0] + 1 : bars[-1] + 1]
    else:
        prices = torch.tensor(state.closes(), dtype=torch.float64)
        first, closes = prices[0], prices[1:]
    held = equal_weight_buy_and_hold(first, closes, float(equity[0]), fee)
    benchmark = np.concatenate([[equity[0]], held.cpu().numpy()])
    return Backtest(bars, equity, benchmark, float(sum(r[3] for r in curve)), float(sum(r[4] for r in curve)))


def print_summary(metrics: dict[str, float], n_bars: int) -> None:
    table = Table(title=f"trading session: {n_bars:,} bars against equal-weight buy-and-hold on the same bars")
    table.add_column("")
    table.add_column("agent", justify="right")
    table.add_column("buy-and-hold", justify="right")
    table.add_row("return", f"{metrics['total_return']:+.2%}", f"{metrics['benchmark_total_return']:+.2%}")
    table.add_row("Sharpe (annualised)", f"{metrics['sharpe']:+.2f}", f"{metrics['benchmark_sharpe']:+.2f}")
    table.add_row("max drawdown", f"{metrics['max_drawdown']:.2%}", f"{metrics['benchmark_max_drawdown']:.2%}")
    table.add_row("fees paid", f"{metrics['fees_paid']:,.2f}", "")
    table.add_row("turnover per year", f"{metrics['annual_turnover']:,.1f}", "")
    console.print(table)
