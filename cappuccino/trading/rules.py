"""Order rules shared by the simulator and a live broker, so that both send the same orders.

``plan_orders`` decides the orders from the portfolio valued at the fill price; ``fill_orders``
applies them with fees. Together they are the fill the environment simulates at open[t+1].

Per asset, with V = cash + q.price the value at the fill price, the target is q* = w V / price
and the wanted trade delta = q* - q.
  * A trade below the symbol's minimum order size is skipped: the exchange would reject it.
  * A trade worth less than ``rebalance_band`` of V is skipped: a no-trade band keeps a policy
    whose targets drift a little every bar from paying fees on every drift.
  * Sells go first and their proceeds, net of fee, pay for the buys; buys that would overdraw the
    cash, fee included, are scaled down together.
  * Each order is rounded down to a multiple of its symbol's quantity increment (where that is
    > 0) and dropped if that leaves it below the minimum size. Sells are rounded before the buys
    are sized, so the buys are paid for by the proceeds actually received.
Rounding and skipping only ever shrink an order, so cash and holdings never go negative and the
value right after the fill is V minus the fees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from cappuccino.data.tensors import LEDGER_DTYPE
from cappuccino.errors import require


# Relative float noise below which a quantity counts as a whole number of increments: selling a
# position made of whole increments must not leave one increment behind.
_INCREMENT_SLACK = 1e-13


class SymbolRules(NamedTuple):
    min_order_size: Tensor  # (A,) float64 asset units
    qty_increment: Tensor  # (A,) float64 asset units; 0 = any quantity


class Orders(NamedTuple):
    sell: Tensor  # (B, A) asset units >= 0
    buy: Tensor  # (B, A) asset units >= 0


class Fill(NamedTuple):
    cash: Tensor  # (B,) after the fill
    holdings: Tensor  # (B, A) asset units after the fill
    fees: Tensor  # (B,) fee * traded notional
    turnover: Tensor  # (B,) traded notional / value before the fill


@dataclass(frozen=True, kw_only=True)
class TradingRules:
    """What every order obeys; per-symbol rules are keyed by symbol, never by position."""

    fee: float = 0.0025  # per side, fraction of traded notional
    cash_reserve: float = 0.02  # share of portfolio value never invested
    rebalance_band: float = 0.05  # skip orders worth less than this share of portfolio value
    min_order_size: Mapping[str, float] = field(default_factory=dict)  # per symbol, asset units
    qty_increment: Mapping[str, float] = field(default_factory=dict)  # per symbol, asset units; missing or 0 = any

    def __post_init__(self) -> None:
        require(0.0 <= self.fee < 0.1, "fee", f"must be in [0, 0.1), got {self.fee}")
        require(0.0 <= self.cash_reserve < 1.0, "cash_reserve", f"must be in [0, 1), got {self.cash_reserve}")
        require(
            0.0 <= self.rebalance_band < 1.0, "rebalance_band", f"must be in [0, 1), got {self.rebalance_band}"
        )
        for name in ("min_order_size", "qty_increment"):
            sizes = dict(getattr(self, name))  # a copy: validated here, so nobody may change it later
            for symbol, size in sizes.items():
                require(size >= 0, f"{name}.{symbol}", f"must be >= 0, got {size}")
            object.__setattr__(self, name, sizes)

    def for_symbols(self, symbols: Sequence[str], device: torch.device | str | None = None) -> SymbolRules:
        """(A,) rules in the order of ``symbols``; every symbol needs a minimum order size."""
        require(not isinstance(symbols, str), "symbols", f"must be a sequence of symbols, got the string {symbols!r}")
        missing = [symbol for symbol in symbols if symbol not in self.min_order_size]
        require(
            not missing,
            "min_order_size",
            f"has no entry for symbol(s) {missing}; add one per symbol, "
            f"e.g. rules.min_order_size.{missing[0] if missing else 'X'}=0.01",
        )

        def column(per_symbol: Mapping[str, float]) -> Tensor:
            return torch.tensor([float(per_symbol.get(s, 0.0)) for s in symbols], dtype=LEDGER_DTYPE, device=device)

        return SymbolRules(column(self.min_order_size), column(self.qty_increment))


def target_weights(action: Tensor, cash_reserve: float) -> Tensor:
    """(..., A) actions -> (..., A) long-only target weights summing to at most 1 - cash_reserve.

    Each asset maps from [-1, 1] to [0, 1] on its own, so any asset can go to zero (a softmax
    cannot); only a total above 1 is scaled down.
    """
    raw = (action.clamp(-1.0, 1.0) + 1.0) / 2.0
    raw = raw / raw.sum(-1, keepdim=True).clamp(min=1.0)
    return raw * (1.0 - cash_reserve)


def plan_orders(
    cash: Tensor,  # (B,)
    holdings: Tensor,  # (B, A) asset units
    weights: Tensor,  # (B, A) target shares of portfolio value
    price: Tensor,  # (B, A) fill price
    rules: TradingRules,
    symbol_rules: SymbolRules,  # (A,) each, in the column order of ``holdings``
) -> Orders:
    """The orders that move ``holdings`` towards ``weights`` at ``price`` under the module's rules.

    Pure, so the simulator and a live broker given the same portfolio send the same orders.
    """
    min_size, increment = symbol_rules
    n_assets = holdings.shape[-1]
    require(
        min_size.shape == increment.shape == (n_assets,),
        "symbol_rules",
        f"has shapes {tuple(min_size.shape)} and {tuple(increment.shape)}, expected ({n_assets},) like "
        f"holdings; build it with rules.for_symbols(symbols) for the symbols of the holdings columns",
    )
    value = _value(cash, holdings, price)  # (B,)
    delta = weights * value.unsqueeze(-1) / price - holdings  # (B, A) q* - q
    too_small = (delta.abs() < min_size) | (delta.abs() * price < rules.rebalance_band * value.unsqueeze(-1))
    delta = delta.masked_fill(too_small, 0.0)
    sell = _to_increment((-delta).clamp(min=0.0), increment, min_size)
    buy = delta.clamp(min=0.0)
    available = _cash_after_sells(cash, sell, price, rules.fee)  # (B,)
    cost = _buy_cost(buy, price, rules.fee)  # (B,)
    # Fees make a fully invested target cost more than the cash freed; shrink all buys alike.
    scale = torch.where(cost > available, available / cost, torch.ones_like(available))
    buy = _to_increment(buy * scale.unsqueeze(-1), increment, min_size)
    return Orders(sell, buy)


def fill_orders(
    cash: Tensor,  # (B,)
    holdings: Tensor,  # (B, A) asset units
    orders: Orders,  # from plan_orders on the same cash, holdings and price
    price: Tensor,  # (B, A) fill price
    fee: float,
) -> Fill:
    """Fill ``orders`` at ``price``, sells first, each side paying ``fee`` on its notional."""
    value = _value(cash, holdings, price)  # (B,) before the fill
    cash = _cash_after_sells(cash, orders.sell, price, fee)
    cash = (cash - _buy_cost(orders.buy, price, fee)).clamp(min=0.0)  # clamps only absorb float rounding
    holdings = (holdings - orders.sell + orders.buy).clamp(min=0.0)
    notional = ((orders.sell + orders.buy) * price).sum(-1)  # (B,)
    return Fill(cash, holdings, fee * notional, notional / value)


def _value(cash: Tensor, holdings: Tensor, price: Tensor) -> Tensor:
    """(B,) portfolio value at ``price``."""
    return cash + (holdings * price).sum(-1)


def _cash_after_sells(cash: Tensor, sell: Tensor, price: Tensor, fee: float) -> Tensor:
    """(B,) cash once the sells are filled, net of their fee."""
    return cash + (1.0 - fee) * (sell * price).sum(-1)


def _buy_cost(buy: Tensor, price: Tensor, fee: float) -> Tensor:
    """(B,) cash the buys take, fee included."""
    return (1.0 + fee) * (buy * price).sum(-1)


def _to_increment(quantity: Tensor, increment: Tensor, min_size: Tensor) -> Tensor:
    """(B, A) ``quantity`` rounded down to a multiple of ``increment`` (A,) where that is > 0,
    then 0 where below ``min_size`` (A,); untouched where the increment is 0."""
    has_step = increment > 0
    step = torch.where(has_step, increment, 1.0)  # no 0 / 0 where any quantity goes
    whole = torch.floor(quantity / step * (1.0 + _INCREMENT_SLACK)) * step
    quantity = torch.where(has_step, torch.minimum(whole, quantity), quantity)
    return quantity.masked_fill(quantity < min_size, 0.0)
