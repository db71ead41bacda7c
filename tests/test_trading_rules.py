"""Trading rules: plan + fill is today's rebalance, increments, symbol lookup, validation, band, fees."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import Tensor

from cappuccino.trading import Fill, Orders, SymbolRules, TradingRules, fill_orders, plan_orders, target_weights

F64 = torch.float64


def _reference_rebalance(
    cash: Tensor,
    holdings: Tensor,
    weights: Tensor,
    price: Tensor,
    min_order_size: Tensor,
    fee: float,
    band: float = 0.0,
) -> Fill:
    """A literal copy of cappuccino.env.portfolio.rebalance before the order rules moved out."""
    value = cash + (holdings * price).sum(-1)  # (B,)
    delta = weights * value.unsqueeze(-1) / price - holdings  # (B, A)
    too_small = (delta.abs() < min_order_size) | (delta.abs() * price < band * value.unsqueeze(-1))
    delta = delta.masked_fill(too_small, 0.0)
    sell = (-delta).clamp(min=0.0)
    buy = delta.clamp(min=0.0)
    cash = cash + (1.0 - fee) * (sell * price).sum(-1)
    cost = (1.0 + fee) * (buy * price).sum(-1)
    scale = torch.where(cost > cash, cash / cost, torch.ones_like(cash))
    buy = buy * scale.unsqueeze(-1)
    buy = buy.masked_fill(buy < min_order_size, 0.0)
    cash = (cash - (1.0 + fee) * (buy * price).sum(-1)).clamp(min=0.0)
    holdings = (holdings - sell + buy).clamp(min=0.0)
    notional = ((sell + buy) * price).sum(-1)
    return Fill(cash, holdings, fee * notional, notional / value)


def random_portfolios(seed: int, B: int = 512, A: int = 4, cash_reserve: float = 0.0) -> tuple[Tensor, ...]:
    """(B,) cash, (B, A) holdings, weights and prices; some rows all cash, some nearly empty."""
    g = torch.Generator().manual_seed(seed)
    cash = 1000.0 * torch.rand(B, generator=g, dtype=F64) * (torch.rand(B, generator=g) > 0.2)
    holdings = 10.0 * torch.rand(B, A, generator=g, dtype=F64) * (torch.rand(B, A, generator=g) > 0.3)
    cash[0], holdings[0] = 1.0, 0.0  # nearly nothing to trade with
    price = 50.0 * torch.exp(torch.randn(B, A, generator=g, dtype=F64))
    # Large actions saturate the clamp: many rows want to be fully invested, so buys get scaled.
    weights = target_weights(2.0 * torch.randn(B, A, generator=g, dtype=F64), cash_reserve)
    return cash, holdings, weights, price


def assert_same_bits(got: Tensor, want: Tensor, name: str = "") -> None:
    """Equal element for element; NaN matches NaN (an empty portfolio's turnover is 0 / 0)."""
    torch.testing.assert_close(got, want, rtol=0.0, atol=0.0, equal_nan=True, msg=name or None)


def plan_and_fill(cash, holdings, weights, price, rules: TradingRules, symbols: list[str]) -> tuple[Orders, Fill]:
    orders = plan_orders(cash, holdings, weights, price, rules, rules.for_symbols(symbols))
    return orders, fill_orders(cash, holdings, orders, price, rules.fee)


SYMBOLS = ["BTC", "ETH", "SOL", "LINK"]
MIN_SIZES = {"BTC": 0.0, "ETH": 0.01, "SOL": 0.5, "LINK": 2.0}  # the larger ones skip many orders


# ----------------------------------------------------------------------------- target weights
def test_target_weights_mapping() -> None:
    action = torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, -1.0], [5.0, 5.0], [0.0, -1.0]], dtype=F64)
    expected = torch.tensor([[0.0, 0.0], [0.45, 0.45], [0.9, 0.0], [0.45, 0.45], [0.45, 0.0]], dtype=F64)
    torch.testing.assert_close(target_weights(action, cash_reserve=0.1), expected, rtol=1e-15, atol=0.0)


# ------------------------------------------------------------------- same fills as rebalance
@pytest.mark.parametrize(
    ("seed", "fee", "band", "cash_reserve"),
    [(0, 0.0025, 0.0, 0.0), (1, 0.0025, 0.02, 0.0), (2, 0.01, 0.05, 0.02), (3, 0.0, 0.02, 0.0), (4, 0.003, 0.1, 0.3)],
)
def test_plan_then_fill_is_rebalance_bit_for_bit(seed: int, fee: float, band: float, cash_reserve: float) -> None:
    cash, holdings, weights, price = random_portfolios(seed, cash_reserve=cash_reserve)
    rules = TradingRules(fee=fee, cash_reserve=cash_reserve, rebalance_band=band, min_order_size=MIN_SIZES)
    min_size = rules.for_symbols(SYMBOLS).min_order_size

    # The batch exercises every rule: min-size skips, band skips and (all in) scaled-down buys.
    value = (cash + (holdings * price).sum(-1)).unsqueeze(-1)  # (B, 1)
    delta = weights * value / price - holdings
    assert ((delta.abs() > 0) & (delta.abs() < min_size)).any()
    if band > 0:
        assert ((delta.abs() >= min_size) & (delta.abs() * price < band * value)).any()
    if cash_reserve == 0.0:
        proceeds = cash + (1 - fee) * ((-delta).clamp(min=0) * price).sum(-1)
        assert ((1 + fee) * (delta.clamp(min=0) * price).sum(-1) > proceeds).any()

    _, fill = plan_and_fill(cash, holdings, weights, price, rules, SYMBOLS)
    expected = _reference_rebalance(cash, holdings, weights, price, min_size, fee, band)
    for name, got, want in zip(Fill._fields, fill, expected):
        assert_same_bits(got, want, name)


# ------------------------------------------------------------------------------- increments
INCREMENTS = {"BTC": 1e-4, "ETH": 0.1, "SOL": 0.0, "LINK": 1.0}  # SOL: any quantity


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_increments_round_orders_down_and_keep_the_ledger_sound(seed: int) -> None:
    cash, holdings, weights, price = random_portfolios(seed)
    fee = 0.0025
    rules = TradingRules(fee=fee, rebalance_band=0.01, min_order_size=MIN_SIZES, qty_increment=INCREMENTS)
    unrounded_rules = TradingRules(fee=fee, rebalance_band=0.01, min_order_size=MIN_SIZES)
    orders, fill = plan_and_fill(cash, holdings, weights, price, rules, SYMBOLS)
    unrounded, _ = plan_and_fill(cash, holdings, weights, price, unrounded_rules, SYMBOLS)
    increment = rules.for_symbols(SYMBOLS).qty_increment
    min_size = rules.for_symbols(SYMBOLS).min_order_size

    stepped = increment > 0
    for quantity, before in zip(orders, unrounded):
        q, inc = quantity[:, stepped], increment[stepped]
        assert ((q - torch.round(q / inc) * inc).abs() <= 1e-12 * q).all()  # whole increments
        assert (quantity <= before).all()  # rounding only ever shrinks an order
        assert ((quantity == 0) | (quantity >= min_size)).all()  # what rounds below the minimum is dropped
    assert (orders.sell[:, stepped] != unrounded.sell[:, stepped]).any()  # the increments did bite
    assert (orders.buy[:, stepped] != unrounded.buy[:, stepped]).any()

    assert (orders.sell <= holdings).all()
    left = cash + (1 - fee) * (orders.sell * price).sum(-1) - (1 + fee) * (orders.buy * price).sum(-1)
    value = cash + (holdings * price).sum(-1)
    assert (left >= -1e-12 * value).all()  # no overdraft beyond float rounding, before any clamp
    assert (fill.cash >= 0).all() and (fill.holdings >= 0).all()
    after = fill.cash + (fill.holdings * price).sum(-1)
    torch.testing.assert_close(after, value - fill.fees, rtol=1e-9, atol=0.0)


def test_increment_by_hand() -> None:
    # V = 1000, half of it at 100 is 5 units: 16 steps of 0.3 (4.8), not 17 (5.1).
    cash, holdings = torch.tensor([1000.0], dtype=F64), torch.zeros(1, 1, dtype=F64)
    price, weights = torch.tensor([[100.0]], dtype=F64), torch.tensor([[0.5]], dtype=F64)
    rules = TradingRules(fee=0.0, rebalance_band=0.0, min_order_size={"ETH": 0.0}, qty_increment={"ETH": 0.3})
    orders = plan_orders(cash, holdings, weights, price, rules, rules.for_symbols(["ETH"]))
    assert orders.buy.item() == pytest.approx(4.8, rel=1e-12) and orders.sell.item() == 0.0

    # Rounded down below the minimum size: no order at all.
    strict = TradingRules(fee=0.0, rebalance_band=0.0, min_order_size={"ETH": 5.0}, qty_increment={"ETH": 0.3})
    assert plan_orders(cash, holdings, weights, price, strict, strict.for_symbols(["ETH"])).buy.item() == 0.0


@pytest.mark.parametrize("units", [3, 7, 29, 123457])
def test_selling_everything_sells_a_position_of_whole_increments(units: int) -> None:
    # Whole increments of 0.1 are not exact in binary: 0.7 / 0.1 == 6.999999999999999, whose
    # floor would leave one increment unsold.
    increment = 0.1
    holdings = torch.tensor([[units * increment, round(units * increment, 1)]], dtype=F64)
    cash, price = torch.zeros(1, dtype=F64), torch.tensor([[20.0, 30.0]], dtype=F64)
    rules = TradingRules(fee=0.001, min_order_size={"A": 0.0, "B": 0.0}, qty_increment={"A": increment, "B": increment})
    orders, fill = plan_and_fill(cash, holdings, torch.zeros(1, 2, dtype=F64), price, rules, ["A", "B"])
    assert torch.equal(orders.sell, holdings) and torch.equal(fill.holdings, torch.zeros(1, 2, dtype=F64))


# ----------------------------------------------------------------------- symbols by name
def test_symbol_rules_are_looked_up_by_name() -> None:
    rules = TradingRules(
        min_order_size={"BTC": 1e-4, "SOL": 0.1, "ETH": 1e-3}, qty_increment={"SOL": 0.01, "ETH": 1e-5}
    )
    got = rules.for_symbols(["ETH", "BTC"])
    assert isinstance(got, SymbolRules)
    assert got.min_order_size.dtype == F64 and got.qty_increment.dtype == F64
    assert got.min_order_size.tolist() == [1e-3, 1e-4]
    assert got.qty_increment.tolist() == [1e-5, 0.0]  # BTC has no increment: any quantity


def test_missing_symbol_is_named_with_how_to_add_it() -> None:
    rules = TradingRules(min_order_size={"BTC": 1e-4})
    with pytest.raises(ValueError, match=r"^min_order_size: .*\['XRP', 'DOGE'\].*rules\.min_order_size\.XRP="):
        rules.for_symbols(["BTC", "XRP", "DOGE"])


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"fee": 0.1}, "fee"),
        ({"fee": -0.001}, "fee"),
        ({"fee": math.nan}, "fee"),
        ({"cash_reserve": 1.0}, "cash_reserve"),
        ({"cash_reserve": -0.1}, "cash_reserve"),
        ({"rebalance_band": 1.0}, "rebalance_band"),
        ({"rebalance_band": -0.01}, "rebalance_band"),
        ({"min_order_size": {"ETH": 0.1, "BTC": -1}}, "min_order_size.BTC"),
        ({"min_order_size": {"BTC": math.nan}}, "min_order_size.BTC"),
        ({"qty_increment": {"ETH": -0.5}}, "qty_increment.ETH"),
    ],
)
def test_every_validation_error_names_its_argument(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        TradingRules(**kwargs)


def test_edges_of_the_valid_ranges_are_accepted_and_rules_cannot_change() -> None:
    sizes = {"BTC": 0.0}
    rules = TradingRules(fee=0.0, cash_reserve=0.0, rebalance_band=0.0, min_order_size=sizes, qty_increment=sizes)
    sizes["BTC"] = -1.0  # the caller's dict was copied, so the validated rules stay valid
    assert rules.min_order_size == {"BTC": 0.0} and rules.qty_increment == {"BTC": 0.0}


def test_mismatched_symbol_rules_and_symbol_string_are_named() -> None:
    rules = TradingRules(min_order_size={"BTC": 0.0, "ETH": 0.0})
    cash, holdings, weights, price = random_portfolios(0, B=2, A=3)
    with pytest.raises(ValueError, match=r"^symbol_rules: "):
        plan_orders(cash, holdings, weights, price, rules, rules.for_symbols(["BTC", "ETH"]))
    with pytest.raises(ValueError, match=r"^symbols: "):
        rules.for_symbols("BTC")


# ---------------------------------------------------------------------------- band and fees
def test_band_and_fees_by_hand() -> None:
    # V = 125 at price 100. Asset 0 wants +2.5 (2% of V, inside the 5% band): no order.
    # Asset 1 wants +25 (20%): buys 0.25 units for 25 plus a 1% fee of 0.25.
    cash = torch.tensor([50.0], dtype=F64)
    holdings = torch.tensor([[0.5, 0.25]], dtype=F64)
    price = torch.tensor([[100.0, 100.0]], dtype=F64)
    weights = torch.tensor([[0.42, 0.40]], dtype=F64)
    rules = TradingRules(fee=0.01, rebalance_band=0.05, min_order_size={"A": 0.0, "B": 0.0})
    orders, fill = plan_and_fill(cash, holdings, weights, price, rules, ["A", "B"])
    assert orders.sell.tolist() == [[0.0, 0.0]]
    assert orders.buy[0, 0].item() == 0.0 and orders.buy[0, 1].item() == pytest.approx(0.25, rel=1e-12)
    assert fill.holdings[0, 0].item() == 0.5 and fill.holdings[0, 1].item() == pytest.approx(0.5, rel=1e-12)
    assert fill.cash.item() == pytest.approx(50.0 - 25.25, rel=1e-12)
    assert fill.fees.item() == pytest.approx(0.25, rel=1e-12)
    assert fill.turnover.item() == pytest.approx(25.0 / 125.0, rel=1e-12)

    # Selling back: proceeds are net of the fee.
    down = torch.tensor([[0.0, 0.40]], dtype=F64)
    orders, fill = plan_and_fill(cash, holdings, down, price, rules, ["A", "B"])
    assert orders.sell.tolist() == [[0.5, 0.0]] and orders.buy[0, 0].item() == 0.0
    assert fill.cash[0].item() == pytest.approx(50.0 + 0.99 * 50.0 - 1.01 * 25.0, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_no_order_below_the_band_and_fees_are_fee_times_notional(seed: int) -> None:
    cash, holdings, weights, price = random_portfolios(seed, cash_reserve=0.1)
    band, fee = 0.04, 0.004
    rules = TradingRules(
        fee=fee, cash_reserve=0.1, rebalance_band=band, min_order_size=MIN_SIZES, qty_increment=INCREMENTS
    )
    orders, fill = plan_and_fill(cash, holdings, weights, price, rules, SYMBOLS)
    value = (cash + (holdings * price).sum(-1)).unsqueeze(-1)  # (B, 1)
    wanted = (weights * value / price - holdings).abs() * price  # (B, A) notional of the wanted trade
    traded = (orders.sell > 0) | (orders.buy > 0)
    assert traded.any() and (wanted[traded] >= band * value.expand_as(wanted)[traded]).all()
    assert ((wanted < band * value) & ~traded).any()  # the band did skip some
    notional = ((orders.sell + orders.buy) * price).sum(-1)
    assert torch.equal(fill.fees, fee * notional) and (fill.fees[notional > 0] > 0).all()
    torch.testing.assert_close(fill.turnover, notional / value.squeeze(-1), rtol=1e-15, atol=0.0, equal_nan=True)


# ------------------------------------------------- gaps closed after mutation testing (mutmut)
def test_actions_above_one_count_as_one() -> None:
    # (2, -1, 0) -> raw (1, 0, 0.5): the 2 is clamped before the total is scaled down by 1.5;
    # unclamped it would be (1.5, 0, 0.5) / 2 = (0.75, 0, 0.25).
    got = target_weights(torch.tensor([[2.0, -1.0, 0.0]], dtype=F64), cash_reserve=0.1)
    torch.testing.assert_close(got, torch.tensor([[0.6, 0.0, 0.3]], dtype=F64), rtol=1e-15, atol=1e-16)


def test_target_weights_work_on_any_leading_shape() -> None:
    action = 2.0 * torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    rows = target_weights(action.reshape(12, 5), cash_reserve=0.05).reshape(4, 3, 5)
    assert torch.equal(target_weights(action, cash_reserve=0.05), rows)  # (T, B, A)
    assert torch.equal(target_weights(action[1, 2], cash_reserve=0.05), rows[1, 2])  # one portfolio (A,)


def test_an_order_of_exactly_the_minimum_size_is_sent() -> None:
    # V = 1000 at price 100: a 5% target is exactly 0.5 units, the minimum: the exchange takes it.
    cash, holdings = torch.tensor([1000.0], dtype=F64), torch.zeros(1, 1, dtype=F64)
    price, weights = torch.tensor([[100.0]], dtype=F64), torch.tensor([[0.05]], dtype=F64)
    rules = TradingRules(fee=0.0, rebalance_band=0.0, min_order_size={"ETH": 0.5})
    assert plan_orders(cash, holdings, weights, price, rules, rules.for_symbols(["ETH"])).buy.item() == 0.5
    # Rounded down to the increment, 0.6 units become 0.5 == the minimum: still sent, both sides.
    stepped = TradingRules(fee=0.0, rebalance_band=0.0, min_order_size={"ETH": 0.5}, qty_increment={"ETH": 0.25})
    up = plan_orders(cash, holdings, torch.tensor([[0.06]], dtype=F64), price, stepped, stepped.for_symbols(["ETH"]))
    assert up.buy.item() == 0.5 and up.sell.item() == 0.0
    held = torch.tensor([[0.6]], dtype=F64)
    down = plan_orders(cash, held, torch.zeros(1, 1, dtype=F64), price, stepped, stepped.for_symbols(["ETH"]))
    assert down.sell.item() == 0.5 and down.buy.item() == 0.0


def test_an_order_worth_exactly_the_band_is_sent() -> None:
    # "Skip orders worth less than the band": 50 of V = 1000 with a 5% band is not less.
    cash, holdings = torch.tensor([1000.0], dtype=F64), torch.zeros(1, 2, dtype=F64)
    price, weights = torch.tensor([[100.0, 100.0]], dtype=F64), torch.tensor([[0.05, 0.0499]], dtype=F64)
    rules = TradingRules(fee=0.0, rebalance_band=0.05, min_order_size={"A": 0.0, "B": 0.0})
    orders = plan_orders(cash, holdings, weights, price, rules, rules.for_symbols(["A", "B"]))
    assert orders.buy.tolist() == [[0.5, 0.0]]


def test_validation_messages_in_full() -> None:
    cases = [
        ({"fee": 0.1}, "fee: must be in [0, 0.1), got 0.1"),
        ({"cash_reserve": 1.0}, "cash_reserve: must be in [0, 1), got 1.0"),
        ({"rebalance_band": -0.5}, "rebalance_band: must be in [0, 1), got -0.5"),
        ({"min_order_size": {"X": -1}}, "min_order_size.X: must be >= 0, got -1"),
        ({"qty_increment": {"X": -0.5}}, "qty_increment.X: must be >= 0, got -0.5"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            TradingRules(**kwargs)
    rules = TradingRules(min_order_size={"A": 0.0, "B": 0.0})
    with pytest.raises(ValueError, match=f"^{re.escape(SYMBOLS_STRING)}$"):
        rules.for_symbols("AB")
    cash, holdings, weights, price = random_portfolios(0, B=2, A=3)
    with pytest.raises(ValueError, match=f"^{re.escape(SHAPE_MESSAGE)}$"):
        plan_orders(cash, holdings, weights, price, rules, rules.for_symbols(["A", "B"]))


SYMBOLS_STRING = "symbols: must be a sequence of symbols, got the string 'AB'"
SHAPE_MESSAGE = (
    "symbol_rules: has shapes (2,) and (2,), expected (3,) like holdings; "
    "build it with rules.for_symbols(symbols) for the symbols of the holdings columns"
)
