"""What a run prints at its end: tables of typed results, where the outputs are, how to browse them."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from cappuccino.data.cleaning import DataReport
from cappuccino.data.market import MarketData
from cappuccino.evaluation.results import CVResult, HoldoutResult, Result, oracle_ratio
from cappuccino.progress import console, print_line


def data_label(market: MarketData) -> str:
    return "synthetic data" if market.synthetic else market.source


def print_data_report(report: DataReport) -> None:
    for line in report.lines(limit=20):
        console.print(f"[yellow]data:[/] {line}")


def print_outputs(run_dir: Path, ui_command: str | None, run_url: str | None = None) -> None:
    """Where the run's files are, the command that opens the tracking UI, and the run's page in it."""
    console.print(f"outputs: {run_dir}")
    if ui_command:
        print_line(f"browse runs: {ui_command}")
    if run_url and run_url != ui_command:
        print_line(f"this run:    {run_url}")


def print_training_summary(
    result: Result, objective_name: str, objective: float, market: MarketData, run_dir: Path, ui_command: str | None,
    run_url: str | None = None,
) -> None:
    data = data_label(market)
    console.print(holdout_table(result, data) if isinstance(result, HoldoutResult) else splits_table(result, data))
    console.print(verdict(result))
    console.print(objective_line(objective_name, objective))
    print_outputs(run_dir, ui_command, run_url)


def objective_line(name: str, value: float) -> str:
    """``objective (val/excess_sharpe, the validation split) = 0.1234``: the metric and its split."""
    return f"objective ({name}, {OBJECTIVE_SOURCES[name.split('/')[0]]}) = {value:.4f}"


# Where each objective's numbers come from: never the test table above it, for a holdout run.
OBJECTIVE_SOURCES = {"val": "the validation split", "cv": "the splits' test groups"}


def verdict(result: Result) -> str:
    """One line: did the agent beat buy-and-hold after fees on the test bars, beside the oracle."""
    if isinstance(result, HoldoutResult):
        excess, where = result.test["excess_sharpe"], "on the test split"
    else:
        excess, where = result.excess_sharpe_mean, f"on the test groups of {len(result.splits)} splits (mean)"
    beat = "beat" if excess > 0 else "did not beat"
    line = f"agent {beat} buy-and-hold after fees {where}: excess Sharpe {excess:+.2f}"
    beside = []
    equal_weight = result.references.get("equal_weight")
    if equal_weight is not None:  # no skill, the line to read the agent against
        beside.append(f"equal weight {equal_weight['excess_sharpe']:+.2f}")
    oracle = result.references.get("oracle")
    if oracle is not None:
        ratio = oracle_ratio(excess, oracle["excess_sharpe"])
        share = f", {ratio:.0%} of it" if excess > 0 and not math.isnan(ratio) else ""
        beside.append(f"oracle {oracle['excess_sharpe']:+.2f}{share}")
    return line + (f" ({'; '.join(beside)})" if beside else "")


def holdout_table(result: HoldoutResult, data: str) -> Table:
    table = Table(title=f"test split ({data})")
    references = list(result.references)
    table.add_column("metric", no_wrap=True)  # the metric names stay whole; headers wrap at their spaces
    for column in ("agent", "buy & hold", *(r.replace("_", " ") for r in references)):
        table.add_column(column, justify="right")
    test = result.test
    for name in ("total_return", "sharpe", "excess_sharpe", "sortino", "max_drawdown", "calmar", "annual_turnover", "fees_paid"):
        bench = test.get(f"benchmark_{name}")
        cells = [_cell(name, test[name]), "" if bench is None else _cell(name, bench)]
        cells += [_cell(name, result.references[r][name]) if name in result.references[r] else "" for r in references]
        table.add_row(name, *cells)
    return table


# Short enough for seven columns in 80 characters: ratios to 2 decimals, returns in percent.
_CELL_FORMATS = {"fees_paid": "{:,.0f}", "total_return": "{:+.1%}", "max_drawdown": "{:.1%}", "annual_turnover": "{:,.1f}", "excess_sharpe": "{:+.2f}"}


def _cell(name: str, value: float) -> str:
    return _CELL_FORMATS.get(name, "{:.2f}").format(value)


def splits_table(result: CVResult, data: str) -> Table:
    table = Table(title=f"test groups per split ({data})")
    for column in ("split", "agent Sharpe", "buy & hold Sharpe", "total return", "turnover"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split in result.splits:
        m = split.test
        table.add_row(f"split{split.index}", f"{m['sharpe']:.3f}", f"{m['benchmark_sharpe']:.3f}", f"{m['total_return']:.4f}", f"{m['turnover']:.2f}")
    table.add_row("mean", f"{result.sharpe_mean:.3f}", f"{result.benchmark_sharpe_mean:.3f}", "", "")
    if result.path_sharpes is not None:
        table.add_row("paths (mean, min)", f"{sum(result.path_sharpes) / len(result.path_sharpes):.3f}, {min(result.path_sharpes):.3f}", "", "", "")
    return table


def transfer_table(summary: dict[str, dict[str, float]], metric: str, labels: dict[str, str]) -> Table:
    table = Table(title=f"validation {metric}: pre-trained vs from scratch (means over seeds)")
    for column in ("arm", "final", "best (at step)", "steps to scratch's final (median [95 %])"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm, values in summary.items():
        reached, low, high = values["steps_to_scratch_final"], values["steps_to_scratch_final_low"], values["steps_to_scratch_final_high"]
        shown = "not reached" if math.isnan(reached) else f"{reached:,.0f}"
        if not math.isnan(low):
            shown += f" [{low:,.0f}, {high:,.0f}]"
        elif values["reached_share"] < 1:
            shown += f" ({values['reached_share']:.0%} of seeds reached it)"
        table.add_row(labels[arm], f"{values['final']:+.3f}", f"{values['best']:+.3f} ({values['best_step']:,.0f})", shown)
    return table
