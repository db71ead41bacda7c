"""Trading rules: the orders the simulator fills and a live broker sends."""

from cappuccino.trading.rules import (
    Fill,
    Orders,
    SymbolRules,
    TradingRules,
    fill_orders,
    plan_orders,
    target_weights,
)

__all__ = ["Fill", "Orders", "SymbolRules", "TradingRules", "fill_orders", "plan_orders", "target_weights"]
