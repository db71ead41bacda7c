"""Does the agent learn an edge after fees? Agent vs oracle vs buy-and-hold vs random vs cash.

Trains ``train.py``'s default agent (plus any ``--override``) for every seed x signal strength x
fee, each on the calibrated synthetic market, and reads the test-split metrics every run
writes: the agent's, buy-and-hold's, and the reference strategies' on the same bars and fees
(``cappuccino.evaluation.references``: the oracle knows the planted signal; random has an
untrained agent's action distribution; flat holds cash). Prints the medians over seeds with
their min-max, writes them as Markdown and CSV, and draws them as a PNG.

    python benchmarks/learning.py                        # 5 seeds x {0, 0.1, 0.3} x {0, 0.25 %}
    python benchmarks/learning.py --seeds 3 --strengths 0.1 --fees 0.0025 --override rules.rebalance_band=0.05

Each run is ``python train.py logger=none data.signal_strength=S rules.fee=F trainer.seed=K
[overrides]``: what a user gets. ``--jobs 2`` runs two at once with one torch thread each.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFERENCES = ("equal_weight", "oracle", "random", "flat")  # cappuccino.evaluation.references
STRATEGIES = ("agent", "buy_and_hold", *REFERENCES)
COLUMNS = ("sharpe", "excess_sharpe", "total_return", "max_drawdown", "annual_turnover", "fees_paid")


@dataclass(frozen=True)
class Condition:
    strength: float
    fee: float

    @property
    def label(self) -> str:
        return f"signal {self.strength:g}, fee {self.fee:.2%}"


def train_one(condition: Condition, seed: int, overrides: list[str], out: Path, threads: int) -> dict[str, dict[str, float]]:
    """One default run; the test metrics of each strategy (``STRATEGIES``)."""
    from hydra import compose, initialize_config_dir

    from cappuccino.config import register_configs
    from cappuccino.progress import console
    from cappuccino.runtime import RunPaths
    from train import run

    console.quiet = True  # each run's own end-of-run table: the summary below replaces them

    run_dir = out / "runs" / f"s{condition.strength:g}_f{condition.fee:g}_seed{seed}"
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():  # a rerun of the benchmark reuses finished runs
        run_dir.mkdir(parents=True, exist_ok=True)
        register_configs()
        arguments = [
            "logger=none", "trainer.progress=false", f"trainer.torch_threads={threads}", f"trainer.seed={seed}",
            f"data.signal_strength={condition.strength}", f"rules.fee={condition.fee}", *overrides,
        ]  # fmt: skip
        with initialize_config_dir(config_dir=str(ROOT / "conf")):
            cfg = compose("config", overrides=arguments)
        run(cfg, RunPaths(run_dir=run_dir, project_dir=out))
    test = {k.removeprefix("test/"): v for k, v in json.loads(metrics_file.read_text()).items() if k.startswith("test/")}
    rows = {
        "agent": {c: test[c] for c in COLUMNS},
        "buy_and_hold": {**{c: test[f"benchmark_{c}"] for c in ("sharpe", "total_return", "max_drawdown")}, "excess_sharpe": 0.0},
    }
    for name in REFERENCES:
        if f"{name}_sharpe" in test:
            rows[name] = {c: test[f"{name}_{c}"] for c in COLUMNS}
    return rows


def summarise(results: dict[Condition, list[dict[str, dict[str, float]]]]) -> list[dict[str, object]]:
    """Per condition and strategy: median and min-max over seeds of every column."""
    table = []
    for condition, runs in results.items():
        for strategy in STRATEGIES:
            per_seed = [r[strategy] for r in runs if strategy in r]
            if not per_seed:
                continue
            row: dict[str, object] = {"condition": condition.label, "strategy": strategy, "seeds": len(per_seed)}
            for column in COLUMNS:
                values = [p[column] for p in per_seed if column in p]
                if values:
                    row[column] = statistics.median(values)
                    row[f"{column}_min"], row[f"{column}_max"] = min(values), max(values)
            table.append(row)
    return table


def markdown(table: list[dict[str, object]]) -> str:
    head = "| condition | strategy | seeds | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * 3 + "---:|" * len(COLUMNS)]
    for row in table:
        cells = []
        for column in COLUMNS:
            if column not in row:
                cells.append("")
                continue
            fmt = "{:,.0f}" if column in ("fees_paid", "annual_turnover") else "{:+.2f}" if "sharpe" in column else "{:+.1%}" if column == "total_return" else "{:.1%}"
            cells.append(f"{fmt.format(row[column])} ({fmt.format(row[f'{column}_min'])} .. {fmt.format(row[f'{column}_max'])})")
        lines.append(f"| {row['condition']} | {row['strategy']} | {row['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(table: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(dict.fromkeys(str(r["condition"]) for r in table))
    shown = [s for s in STRATEGIES if s != "buy_and_hold"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(shown)
    for k, strategy in enumerate(shown):
        for ax, column in zip(axes, ("excess_sharpe", "annual_turnover")):
            rows = {str(r["condition"]): r for r in table if r["strategy"] == strategy and column in r}
            present = [(i, rows[c]) for i, c in enumerate(conditions) if c in rows]
            mid = [float(row[column]) for _, row in present]  # type: ignore[arg-type]
            low = [m - float(row[f"{column}_min"]) for m, (_, row) in zip(mid, present)]  # type: ignore[arg-type]
            high = [float(row[f"{column}_max"]) - m for m, (_, row) in zip(mid, present)]  # type: ignore[arg-type]
            ax.bar([i + k * width for i, _ in present], mid, width, yerr=[low, high], capsize=3, label=strategy)
    axes[0].set_title("test excess Sharpe over buy-and-hold (median, min-max over seeds)")
    axes[0].axhline(0, color="black", lw=0.8)
    axes[1].set_title("test turnover per year (x portfolio value)")
    axes[1].set_yscale("symlog", linthresh=10)
    for ax in axes:
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(conditions))], conditions, rotation=15, fontsize=8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--fees", type=float, nargs="+", default=[0.0, 0.0025])
    parser.add_argument("--override", action="append", default=[], help="a train.py override for every run (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores / jobs torch threads)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    conditions = [Condition(s, f) for s in args.strengths for f in args.fees]
    work = [(c, seed) for c in conditions for seed in range(args.seeds)]
    started = time.perf_counter()
    results: dict[Condition, list[dict[str, dict[str, float]]]] = {c: [] for c in conditions}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(train_one, c, seed, args.override, args.out, threads): c for c, seed in work}
        for done, future in enumerate(futures, 1):
            results[futures[future]].append(future.result())
            print(f"[{done}/{len(work)}] {futures[future].label} ({time.perf_counter() - started:,.0f} s)", flush=True)
    wall = time.perf_counter() - started

    table = summarise(results)
    text = markdown(table)
    command = " ".join(["python benchmarks/learning.py", *sys.argv[1:]])
    (args.out / "learning.md").write_text(f"`{command}` ({len(work)} runs, {wall / 60:.1f} min)\n\n{text}\n")
    with (args.out / "learning.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=sorted({k for row in table for k in row}, key=lambda k: (k not in ("condition", "strategy", "seeds"), k)))
        writer.writeheader()
        writer.writerows(table)
    figure(table, args.out / "learning.png")
    print(text)
    print(f"\n{len(work)} runs in {wall / 60:.1f} min; {args.out / 'learning.md'}, learning.csv, learning.png")


if __name__ == "__main__":
    main()
