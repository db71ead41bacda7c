"""End-to-end PPO training speed and memory per encoder at lookback 60: ``train.py``'s own job.

Every row is one fresh ``python train.py logger=none trainer.progress=false window.lookback=L
encoder=E trainer.total_steps=S trainer.device=D trainer.torch_threads=T [--override ...]``:
data, features, PPO, the deterministic validation and test backtests, the reference strategies
and (FT-Transformer) the attention probe, all that a user waits for. It reports

- environment steps per second over the whole job (``total_steps`` / wall time, evaluation
  included), and the same relative to the MLP's in the same repeat (the machine's load then
  partly cancels);
- the process's peak resident set size (``os.wait4``'s rusage: the kernel's high-water mark);
- on CUDA, the process's peak GPU memory as ``nvidia-smi`` sees it (CUDA context included),
  sampled every 0.2 s, and how many such training processes fit on a card of ``--card-gb``
  (12 GB: the RTX 3060 the original system targeted).

Rows alternate ``--repeats`` times; the table shows medians (and the range of the ratio).

    python benchmarks/ppo_encoders.py                              # CPU, 2 threads: mlp vs ft_default
    python benchmarks/ppo_encoders.py --encoders mlp ft_default ft_default+encoder.shared=true \
        ft_default+trainer.precision=bf16-mixed ft_default:asset_time --steps 8192
    python benchmarks/ppo_encoders.py --device cuda --encoders mlp ft_small ft_default ft_large --threads 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    """``ENCODER[:TOKENS][+KEY=VALUE...]``: a conf/encoder option, optionally its token layout and
    train.py overrides of this row only (e.g. ``ft_default+trainer.precision=bf16-mixed``)."""

    encoder: str
    tokens: str | None
    extra: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> "Row":
        head, *extra = text.split("+")
        encoder, _, tokens = head.partition(":")
        return cls(encoder, tokens or None, tuple(extra))

    @property
    def label(self) -> str:
        return " ".join([self.encoder + (f":{self.tokens}" if self.tokens else ""), *self.extra])

    def overrides(self) -> list[str]:
        return [f"encoder={self.encoder}", *([f"encoder.tokens={self.tokens}"] if self.tokens else []), *self.extra]


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_rss_mb: float
    peak_vram_mb: float | None


def gpu_memory_mb(pid: int) -> float | None:
    """This process's GPU memory (MiB) as nvidia-smi reports it, or None when it shows none."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    used = [float(mb) for p, mb in (line.split(",") for line in out.strip().splitlines() if "," in line) if int(p) == pid]
    return max(used) if used else None


def run_job(row: Row, args: argparse.Namespace, log: Path) -> Measurement:
    run_dir = Path(tempfile.mkdtemp(prefix="ppo_encoders_"))
    command = [
        sys.executable, "train.py", "logger=none", "trainer.progress=false", f"window.lookback={args.lookback}",
        f"trainer.total_steps={args.steps}", f"trainer.device={args.device}", f"trainer.torch_threads={args.threads}",
        *row.overrides(), *args.override, f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    peak_vram: list[float] = []
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample_vram() -> None:
            while not done.wait(0.2):
                used = gpu_memory_mb(process.pid)
                if used is not None:
                    peak_vram.append(used)

        sampler = threading.Thread(target=sample_vram, daemon=True)
        if args.device != "cpu" and shutil.which("nvidia-smi"):
            sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        process.returncode = os.waitstatus_to_exitcode(status)
    shutil.rmtree(run_dir, ignore_errors=True)
    if process.returncode != 0:
        raise SystemExit(f"{row.label} failed (exit {process.returncode}); its output is in {log}")
    return Measurement(seconds, usage.ru_maxrss / 1024, max(peak_vram) if peak_vram else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["mlp", "ft_default"], help="rows ENCODER[:TOKENS][+KEY=VALUE...]; the first is the reference")
    parser.add_argument("--lookback", type=int, default=60)
    parser.add_argument("--steps", type=int, default=65536, help="trainer.total_steps of every job (8 updates at the defaults)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="trainer.torch_threads (pinned: the default collapses under load)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--card-gb", type=float, default=12.0, help="GPU memory of the card to fit training processes on")
    parser.add_argument("--override", action="append", default=[], help="a train.py override for every job (repeatable)")
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "ppo_encoders.log")
    args = parser.parse_args()
    rows = [Row.parse(text) for text in args.encoders]
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.write_text("")

    results: dict[Row, list[Measurement]] = {row: [] for row in rows}
    for repeat in range(args.repeats):
        for row in rows:
            results[row].append(m := run_job(row, args, args.log))
            print(f"repeat {repeat + 1}/{args.repeats}  {row.label:<24} {args.steps / m.seconds:8,.0f} steps/s  {m.peak_rss_mb:7,.0f} MB", flush=True)

    reference = rows[0]
    print(
        f"\n{args.steps:,} steps at lookback {args.lookback} on {args.device}, {args.threads} torch threads, "
        f"median of {args.repeats}; x{reference.label}: wall time over {reference.label}'s in the same repeat\n"
    )
    gpu = args.device != "cpu"
    head = "| encoder | steps/s | wall s | x" + reference.label + " | peak RSS MB |" + (f" peak VRAM MB | processes per {args.card_gb:g} GB |" if gpu else "")
    print(head)
    print("|---|" + "---:|" * (head.count("|") - 2))
    for row, runs in results.items():
        seconds = statistics.median(m.seconds for m in runs)
        ratios = [m.seconds / r.seconds for m, r in zip(runs, results[reference])]
        cells = [
            row.label, f"{args.steps / seconds:,.0f}", f"{seconds:,.1f}",
            f"{statistics.median(ratios):.1f} ({min(ratios):.1f} .. {max(ratios):.1f})",
            f"{statistics.median(m.peak_rss_mb for m in runs):,.0f}",
        ]  # fmt: skip
        if gpu:
            vram = [m.peak_vram_mb for m in runs if m.peak_vram_mb is not None]
            peak = statistics.median(vram) if vram else None
            cells += [f"{peak:,.0f}", f"{int(args.card_gb * 1024 // peak)}"] if peak else ["unmeasured (no nvidia-smi)", "-"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
