"""The trader's one decision path, the same for the replay and a real account.

At the close of each bar (``Trader.step``):

1. the caller builds each member's observation window from the newest bar with the training
   code's features (``cappuccino.data.features``), as the environment does;
2. the portfolio is read from the broker and valued at the bar's close: the weights the
   members observe, exactly as the environment computes them;
3. the ensemble votes (``cappuccino.trading.ensemble``);
4. the risk guards judge (``cappuccino.trading.guards``);
5. ``plan_orders``, the function the environment fills, turns the targets into orders at the
   broker's sizing price; each gets its deterministic client id;
6. votes, targets, verdicts and planned orders are written in one transaction; then each order
   is looked up at the broker by its client id and placed only if the broker has none; what the
   broker answers is recorded, and a broker error is recorded and retried at the next bar.

A bar already finished in the state file is skipped, so a restart resumes where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal
from typing import Callable

import numpy as np
import pandas as pd
import torch

from cappuccino.data.tensors import LEDGER_DTYPE
from cappuccino.secrets import mask_text
from cappuccino.tracking import Tracker
from cappuccino.trading.broker import OPEN_STATUSES, Broker, OrderRecord, OrderRequest, client_order_id
from cappuccino.trading.ensemble import combine
from cappuccino.trading.guards import GuardState, RiskGuards, cap_order, judge
from cappuccino.trading.members import Member
from cappuccino.trading.rules import TradingRules, plan_orders
from cappuccino.trading.state import TradingState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BarInput:
    """What the trader knows at a bar's close."""

    bar: int  # the bar's index in the session's data
    time: pd.Timestamp  # its open time (the data's timestamp)
    ohlcv: np.ndarray  # (A, 5) float64: the newest bar itself, checked by the guards
    windows: list[torch.Tensor]  # per member, (1, L, A, F) observation windows ending at this bar


class Trader:
    """Decides and orders at each bar's close (module docstring)."""

    def __init__(
        self,
        *,
        members: list[Member],
        vote: str,
        rules: TradingRules,
        guards: RiskGuards,
        broker: Broker,
        state: TradingState,
        tracker: Tracker,
        symbols: tuple[str, ...],
        interval: pd.Timedelta,
        strategy_id: str,
        quantize: Callable[[str, float], Decimal],
        clock: Callable[[pd.Timestamp], pd.Timestamp],
    ) -> None:
        self.members, self.vote, self.rules, self.guards = members, vote, rules, guards
        self.broker, self.state, self.tracker = broker, state, tracker
        self.symbols, self.interval, self.strategy_id = symbols, interval, strategy_id
        self.quantize, self.clock = quantize, clock
        self.symbol_rules = rules.for_symbols(symbols)
        self.scores = np.array([m.score if m.score is not None else np.nan for m in members])
        self.guard_state = GuardState.from_meta(state.get)
        self.fees_paid = float(state.get("fees_paid", 0.0))
        self.last_decision: tuple[np.ndarray, np.ndarray | None] = (np.zeros(0), None)  # targets, (M, A) votes

    def step(self, bar: BarInput, decide: bool = True) -> None:
        """Value the portfolio at ``bar``'s close, then (``decide``) vote, guard and order."""
        key = bar.time.isoformat()
        row = self.state.bar(key)
        if row is not None and row.done:
            return  # a bar seen again (a restart, a duplicated bar): traded once
        latest = self.state.latest_time()
        if row is None and latest is not None and bar.time <= pd.Timestamp(latest):
            self.state.event(key, "data", f"out-of-order bar {key} after {latest}: skipped")
            return
        settled_notional = self._settle(key)
        account = self.broker.account()
        cash, holdings = float(account.cash), account.holdings(self.symbols)
        close = bar.ohlcv[:, 3]
        equity = cash + float(holdings @ close)
        if row is None:
            self._decide(bar, key, cash, holdings, account.positions, close, equity, decide)
        records = self._place(key)
        fees, traded = self._costs(records, settled_notional)
        self.fees_paid += fees
        positions = {s: float(q) for s, q in zip(self.symbols, holdings) if q > 0}
        turnover = traded / equity if equity > 0 else 0.0
        self.state.finish_bar(key, equity, cash, positions, close.tolist(), fees, turnover, fees_paid=self.fees_paid)
        self._log(bar.bar, equity, cash, holdings * close, len(records))

    def _decide(
        self, bar: BarInput, key: str, cash: float, holdings: np.ndarray, positions: dict[str, Decimal], close: np.ndarray, equity: float, decide: bool
    ) -> None:
        value = np.concatenate([[cash], holdings * close]) / equity  # the env's observation weights
        observed = torch.as_tensor(value, dtype=LEDGER_DTYPE).float().unsqueeze(0)
        votes = {m.name: m.policy.target_weights(w, observed, self.rules.cash_reserve)[0].numpy() for m, w in zip(self.members, bar.windows)} if decide else {}
        orders: list[OrderRequest] = []
        reasons: list[str] = [] if decide else ["valued, not traded: the session's last bar"]
        targets = np.zeros(0)
        if decide:
            targets = combine(self.vote, np.stack(list(votes.values())), value[1:], self.rules.rebalance_band, self.scores)
            verdict = judge(
                self.guards, self.guard_state, bar=bar.bar, bar_time=bar.time, now=self.clock(bar.time), interval=self.interval,
                ohlcv=bar.ohlcv, symbols=self.symbols, equity=equity, targets=targets,
            )  # fmt: skip
            targets, reasons = verdict.targets, verdict.reasons
            if verdict.trade:
                orders, capped = self._orders(bar.time, cash, holdings, targets, positions)
                reasons += capped
        self.last_decision = (targets, np.stack(list(votes.values())) if votes else None)
        votes_list = {k: v.tolist() for k, v in votes.items()}
        self.state.record_decision(key, bar.bar, votes_list, list(map(float, targets)), reasons, orders, **self.guard_state.as_meta())
        for reason in reasons:
            log.info(f"{key}: {reason}")
            self.state.event(key, "guard", reason)

    def _orders(
        self, bar_time: pd.Timestamp, cash: float, holdings: np.ndarray, targets: np.ndarray, positions: dict[str, Decimal]
    ) -> tuple[list[OrderRequest], list[str]]:
        """The environment's order plan at the broker's sizing price, capped and rounded, sells
        first; a sell of (all but float noise of) a position sells what the broker says is held."""
        price = torch.as_tensor(self.broker.plan_prices(), dtype=LEDGER_DTYPE).unsqueeze(0)
        planned = plan_orders(
            torch.tensor([cash], dtype=LEDGER_DTYPE), torch.as_tensor(holdings).unsqueeze(0),
            torch.as_tensor(targets, dtype=LEDGER_DTYPE).unsqueeze(0), price, self.rules, self.symbol_rules,
        )  # fmt: skip
        orders, reasons = [], []
        for side, quantities in (("sell", planned.sell[0]), ("buy", planned.buy[0])):
            for symbol, qty, p in zip(self.symbols, quantities.tolist(), price[0].tolist()):
                if qty <= 0:
                    continue
                qty, reason = cap_order(qty, p, self.guards)
                reasons += [f"{symbol} {side}: {reason}"] if reason else []
                held = positions.get(symbol, Decimal(0))
                whole = side == "sell" and reason is None and qty >= float(held) * (1 - 1e-9)
                rounded = held if whole else self.quantize(symbol, qty)
                if rounded > 0:
                    orders.append(OrderRequest(client_order_id(self.strategy_id, bar_time, symbol, side), symbol, side, rounded))
        return orders, reasons

    def _settle(self, key: str) -> float:
        """Orders of earlier bars still open (partly filled, accepted, ...) read again: their
        fills, cancellations, expiries or rejections are recorded as the broker reports them.
        The notional filled since they were last read (its fees are this bar's)."""
        notional = 0.0
        for cid in self.state.unsettled_orders(OPEN_STATUSES):
            try:
                record = self.broker.find(cid)
            except Exception as error:  # noqa: BLE001 - read again at the next bar
                self.state.event(key, "broker_error", f"{cid}: {mask_text(f'{type(error).__name__}: {error}')}")
                continue
            if record is not None:
                notional += _filled_notional(record) - self.state.filled_notional(cid)
                self.state.record_order(record, cid)
                if not record.is_open:
                    self.state.event(key, "order", f"{cid} {record.status}: {record.filled_qty} of {record.qty} filled")
        return notional

    def _place(self, key: str) -> list[OrderRecord]:
        """Each planned order of the bar, found at the broker by its client id or placed once."""
        records = []
        for order, status in self.state.planned_orders(key):
            try:
                record = self.broker.find(order.client_order_id)
                if record is None:
                    record = self.broker.submit(order)
            except Exception as error:  # noqa: BLE001 - the loop never dies on a broker error
                detail = mask_text(f"{type(error).__name__}: {error}")
                self.state.record_order(None, order.client_order_id, detail)
                self.state.event(key, "broker_error", f"{order.client_order_id}: {detail}")
                log.warning(f"{key}: order {order.client_order_id} not placed ({detail}); retried at the next bar")
                continue
            self.state.record_order(record, order.client_order_id)
            if record.status in ("rejected", "canceled", "expired"):
                self.state.event(key, "order", f"{order.client_order_id} {record.status} at placing")
            records.append(record)
        return records

    def _costs(self, records: list[OrderRecord], settled_notional: float) -> tuple[float, float]:
        """Fees and traded notional of the bar: its orders' filled quantities, and what earlier
        bars' open orders filled since they were last read."""
        notional = sum(map(_filled_notional, records)) + settled_notional
        return self.rules.fee * notional, notional

    def _log(self, step: int, equity: float, cash: float, held: np.ndarray, n_orders: int) -> None:
        peak = max(self.guard_state.peak_equity, equity)
        metrics = {"equity": equity, "drawdown": 1.0 - equity / peak if peak > 0 else 0.0, "fees_paid": self.fees_paid, "orders": n_orders}
        metrics |= {"weight/cash": cash / equity} | {f"weight/{s}": v / equity for s, v in zip(self.symbols, held)}
        targets, votes = self.last_decision
        if votes is not None:  # the decision and how far the members were apart on it
            metrics |= {f"target/{s}": float(t) for s, t in zip(self.symbols, targets)}
            metrics |= {"votes/spread": float(votes.std(0).mean()), "votes/members": float(len(votes))}
        self.tracker.log_metrics(metrics, step=step)


def _filled_notional(record: OrderRecord) -> float:
    return float(record.filled_qty) * float(record.filled_avg_price or 0)


def exact_quantity(symbol: str, qty: float) -> Decimal:
    """The simulator's rounding: none (Decimal of a float is exact)."""
    return Decimal(qty)


def increment_quantity(increments: dict[str, Decimal]) -> Callable[[str, float], Decimal]:
    """A real broker's rounding: down to each symbol's quantity increment, in Decimal."""

    def quantize(symbol: str, qty: float) -> Decimal:
        step = increments[symbol]
        return (Decimal(repr(qty)) / step).to_integral_value(rounding=ROUND_DOWN) * step

    return quantize
