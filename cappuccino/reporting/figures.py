"""Figures logged with each run.

Figures are built with ``matplotlib.figure.Figure`` directly, not through ``pyplot``: they need no
display, never touch pyplot's global figure list, and are freed once the last reference goes.
PNGs are rendered by the Agg canvas, whatever backend pyplot would pick.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import dates as mdates
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator, PercentFormatter

_AGENT_COLOR = "tab:blue"
_BENCHMARK_COLOR = "tab:gray"
REFERENCE_COLORS = {"oracle": "tab:green", "random": "tab:red", "flat": "black", "equal_weight": "tab:orange"}


@dataclass(frozen=True)
class PathEquity:
    """One backtest path's equity curves, on the same bars: an arm's per seed, buy-and-hold's,
    and the references' (name -> curve)."""

    name: str  # e.g. "path 0"
    agent: np.ndarray  # (seeds, T)
    benchmark: np.ndarray  # (T,)
    references: dict[str, np.ndarray]  # name -> (T,)


def equity_figure(
    timestamps: pd.DatetimeIndex, agent: np.ndarray, benchmark: np.ndarray, title: str
) -> Figure:
    """Agent vs equal-weight buy-and-hold equity, both normalised to 1 at the first bar.

    The top panel shows the two equity curves (the legend gives each total return), the bottom
    panel their drawdown from the running peak. Naive timestamps are taken as UTC and aware ones
    converted to it, so the date axis always reads in UTC.

    Args:
        timestamps: (T,) time of each equity value.
        agent: (T,) portfolio value of the agent, any currency.
        benchmark: (T,) value of the benchmark portfolio.
        title: figure title, e.g. "val: fold 0".
    """
    agent_equity = _normalised("agent", agent, len(timestamps))  # (T,)
    benchmark_equity = _normalised("benchmark", benchmark, len(timestamps))  # (T,)
    times = _utc_datetime64(timestamps)  # (T,)

    figure = Figure(figsize=(10, 6), layout="constrained")
    equity_ax, drawdown_ax = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    figure.suptitle(title)

    for equity, label, color in (
        (agent_equity, "Agent", _AGENT_COLOR),
        (benchmark_equity, "Buy & hold (equal weight)", _BENCHMARK_COLOR),
    ):
        equity_ax.plot(times, equity, color=color, lw=1.2, label=f"{label}: {equity[-1] - 1:+.1%}")
        drawdown_ax.plot(times, _drawdown(equity), color=color, lw=1.0)
    # Only the agent's drawdown is filled: two overlapping fills blur into a third colour.
    drawdown_ax.fill_between(times, _drawdown(agent_equity), 0.0, color=_AGENT_COLOR, alpha=0.2, lw=0)

    equity_ax.axhline(1.0, color="black", lw=0.6, ls="--")
    equity_ax.set_ylabel("Equity (start = 1)")
    equity_ax.legend(loc="upper left")
    equity_ax.grid(alpha=0.3)
    drawdown_ax.set_ylabel("Drawdown")
    drawdown_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    drawdown_ax.grid(alpha=0.3)

    locator = mdates.AutoDateLocator(tz="UTC")
    drawdown_ax.xaxis.set_major_locator(locator)
    drawdown_ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz="UTC"))
    drawdown_ax.set_xlabel("Time (UTC)")
    drawdown_ax.set_xlim(times[0], times[-1])
    return figure


def attention_figure(
    cls_attention: np.ndarray, title: str, lookback: int, asset_names: Sequence[str], patch_bars: int = 1
) -> Figure:
    """Where the [CLS] query looks, one row of panels per block.

    Left: attention on the market tokens as a (assets x bars) map, bars on x counted back from
    the decision bar (0 = the decision bar). ``feature`` tokens (one per bar, asset and feature)
    are summed over features into their (bar, asset) cell; ``time`` tokens (one per bar) show as
    a single "all assets" row; ``patch`` tokens (one per asset and patch of ``patch_bars`` bars)
    show as cells ``patch_bars`` bars wide, the oldest one reaching back over the window's
    zero padding. Right: a strip with the portfolio tokens (cash, each holding) and
    [CLS] itself. Each panel has its own colour scale: the few portfolio tokens often take far more
    attention than any one market token, and a shared scale would leave the market map blank.

    Args:
        cls_attention: (blocks, T_key) [CLS] attention averaged over heads and batch; T_key =
            market tokens + A + 1 portfolio tokens + [CLS], in that order.
        title: figure title, e.g. "val: [CLS] attention".
        lookback: L, bars per window.
        asset_names: the A asset symbols, in the env's order.
        patch_bars: bars per market token column: the encoder's ``patch_bars`` for ``patch``
            tokens, 1 for the other layouts.
    """
    cls_attention = np.asarray(cls_attention, dtype=np.float64)
    n_assets = len(asset_names)
    if cls_attention.ndim != 2:
        raise ValueError(f"cls_attention must be (blocks, T_key), got shape {cls_attention.shape}")
    n_market = cls_attention.shape[1] - n_assets - 2
    columns = -(-lookback // patch_bars)  # bars, or patches of bars
    rows = _market_rows(n_market, columns, n_assets)
    market = cls_attention[:, :n_market].reshape(len(cls_attention), columns, rows, -1).sum(-1)  # (B, columns, rows)
    side = cls_attention[:, n_market:]  # (B, A + 2): cash, holdings, [CLS]
    row_names = list(asset_names) if rows == n_assets else ["all assets"]
    side_names = ["cash", *(f"{asset} held" for asset in asset_names), "[CLS]"]

    n_blocks = len(cls_attention)
    figure = Figure(figsize=(11, 1.0 + n_blocks * (0.9 + 0.3 * max(rows, n_assets + 2))), layout="constrained")
    figure.suptitle(title)
    axes = figure.subplots(n_blocks, 2, squeeze=False, width_ratios=[6, 1])
    bars = np.arange(1 - columns * patch_bars, 1)  # patched: the oldest -lookback % patch_bars are padding
    for b, (market_ax, side_ax) in enumerate(axes):
        # The colour scale spans this block's own range: from 0 up, small differences would not show.
        image = market_ax.imshow(
            market[b].T, aspect="auto", cmap="viridis", vmin=market[b].min(), vmax=market[b].max(),
            extent=(bars[0] - 0.5, bars[-1] + 0.5, rows - 0.5, -0.5),
        )  # fmt: skip
        figure.colorbar(image, ax=market_ax, pad=0.01, label="share of attention", format=PercentFormatter(xmax=1.0, decimals=None))  # decimals from the range: a narrow one needs more
        market_ax.set_yticks(range(rows), row_names)
        market_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        market_ax.set_title(f"block {b}: market tokens ({market[b].sum():.0%} of attention)", loc="left")
        market_ax.set_xlabel("bar (0 = decision bar)")
        strip = side_ax.imshow(side[b][:, None], aspect="auto", cmap="viridis", vmin=0.0)
        figure.colorbar(strip, ax=side_ax, pad=0.05, label="share of attention", format=PercentFormatter(xmax=1.0, decimals=1))
        side_ax.set_yticks(range(len(side_names)), side_names)
        side_ax.set_xticks([])
        side_ax.set_title(f"portfolio ({side[b, :-1].sum():.0%})", loc="left")
    return figure


def _market_rows(n_market: int, columns: int, n_assets: int) -> int:
    """Rows of the market map: A for ``asset_time``, ``patch`` and ``feature`` tokens, 1 for ``time``."""
    if n_market == columns:
        return 1
    if n_market > 0 and n_market % (columns * n_assets) == 0:
        return n_assets
    raise ValueError(
        f"{n_market} market tokens fit no token layout for {columns} bars (or patches) and {n_assets} assets "
        "(expected L, L*A, L*A*F or patches*A); pass the lookback, asset names and patch_bars the encoder was built with"
    )


def close_figure(figure: Figure) -> None:
    """Release a figure once logged; pyplot-made figures are also dropped from pyplot's registry."""
    pyplot = sys.modules.get("matplotlib.pyplot")  # never import pyplot just to close a figure
    if pyplot is not None:
        pyplot.close(figure)
    figure.clear()


def _normalised(name: str, values: np.ndarray, length: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) like timestamps, got {values.shape}")
    if length < 2:
        raise ValueError(f"equity_figure needs at least 2 points, got {length}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{name} equity must be finite and > 0 to be normalised and drawn")
    return values / values[0]


def _drawdown(equity: np.ndarray) -> np.ndarray:
    return equity / np.maximum.accumulate(equity) - 1.0  # (T,) <= 0, fraction below the running peak


def _utc_datetime64(timestamps: pd.DatetimeIndex) -> np.ndarray:
    if not isinstance(timestamps, pd.DatetimeIndex):
        raise TypeError(f"timestamps must be a pandas DatetimeIndex, got {type(timestamps).__name__}")
    utc = timestamps.tz_localize("UTC") if timestamps.tz is None else timestamps.tz_convert("UTC")
    return utc.tz_localize(None).to_numpy()  # matplotlib reads naive datetime64 as UTC


def transfer_figure(curves: dict[str, list[list[dict[str, float]]]], metric: str, title: str, labels: dict[str, str]) -> Figure:
    """Validation ``metric`` against environment steps, one labelled line per arm: the mean over
    its seeds' curves, with their range as a band when there are several."""
    figure = Figure(figsize=(8, 4.5))
    ax = figure.subplots()
    for arm, arm_curves in curves.items():
        steps = [r["step"] for r in arm_curves[0]]
        values = np.array([[r[metric] for r in curve] for curve in arm_curves])  # (seeds, validations)
        (line,) = ax.plot(steps, values.mean(axis=0), marker="o", markersize=3, label=labels[arm] + (f" (mean of {len(values)} seeds)" if len(values) > 1 else ""))
        if len(values) > 1:
            ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("environment steps (summed over environments)")
    ax.set_ylabel(f"validation {metric}")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def paths_figure(paths: Sequence[PathEquity], arm: str, title: str) -> Figure:
    """Per backtest path: the arm's equity for each seed (thin) and their median (bold) against
    buy-and-hold and the references (e.g. the oracle), normalised to 1 at the path's first bar,
    with their drawdowns underneath. The x axis counts the path's test bars: a path chains test
    periods that purged gaps separate, so calendar time would show holes."""
    figure = Figure(figsize=(10, 4.2 * len(paths)), layout="constrained")
    axes = figure.subplots(2 * len(paths), 1, height_ratios=[3, 1] * len(paths), squeeze=False)[:, 0]
    figure.suptitle(title)
    for k, path in enumerate(paths):
        equity_ax, drawdown_ax = axes[2 * k], axes[2 * k + 1]
        steps = np.arange(path.agent.shape[1])  # (T,)
        agent = path.agent / path.agent[:, :1]  # (seeds, T)
        for seed_curve in agent:
            equity_ax.plot(steps, seed_curve, color=_AGENT_COLOR, lw=0.6, alpha=0.35)
            drawdown_ax.plot(steps, _drawdown(seed_curve), color=_AGENT_COLOR, lw=0.5, alpha=0.35)
        median = np.median(agent, axis=0)
        equity_ax.plot(steps, median, color=_AGENT_COLOR, lw=1.6, label=f"{arm}, median of {len(agent)} seeds: {median[-1] - 1:+.1%}")
        lines = {"buy-and-hold (equal weight)": (path.benchmark, _BENCHMARK_COLOR), **{n: (c, REFERENCE_COLORS.get(n, "tab:purple")) for n, c in path.references.items()}}
        for label, (curve, color) in lines.items():
            curve = curve / curve[0]
            equity_ax.plot(steps, curve, color=color, lw=1.2, label=f"{label}: {curve[-1] - 1:+.1%}")
            drawdown_ax.plot(steps, _drawdown(curve), color=color, lw=1.0)
        drawdown_ax.fill_between(steps, _drawdown(median), 0.0, color=_AGENT_COLOR, alpha=0.2, lw=0)
        equity_ax.axhline(1.0, color="black", lw=0.6, ls="--")
        equity_ax.set_title(path.name, loc="left", fontsize=10)
        equity_ax.set_ylabel("equity (start = 1)")
        equity_ax.legend(loc="upper left", fontsize=8)
        equity_ax.grid(alpha=0.3)
        drawdown_ax.set_ylabel("drawdown")
        drawdown_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        drawdown_ax.set_xlabel("test bars along the path")
        drawdown_ax.grid(alpha=0.3)
        for ax in (equity_ax, drawdown_ax):
            ax.set_xlim(0, steps[-1])
    return figure
