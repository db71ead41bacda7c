"""Encoder training throughput and peak memory: MLP, FT-Transformer sizes x token layouts, and
rtdl's FTTransformer (the paper's reference code).

Each row times forward + backward of one encoder (loss = mean square of its output, gradients
cleared between steps) on random windows (N, L, 7, 14) and portfolio weights (N, 8), and
reports samples per second. The encoders are built from the shipped configs
(``conf/encoder/*.yaml``) through Hydra, as ``train.py`` builds them. The rtdl row is
``rtdl_revisiting_models.FTTransformer`` with ft_default's width, depth, heads and output size,
fed the same state flattened to L*7*14 + 8 continuous features: one token per scalar.

Peak memory: every row runs in a fresh subprocess, which reports its peak resident set size
(``resource.getrusage``, the kernel's high-water mark, so short-lived attention buffers count)
minus the peak just before the first step (after imports, model and inputs). With
``--device cuda`` it reports ``torch.cuda.max_memory_allocated`` over the same span instead.

Token-quadratic rows: a layer that materialises attention holds
batch * heads * tokens^2 * 4 bytes (the "attn. matrix" column, at the batch run). rtdl always
does; ours does not (fused scaled_dot_product_attention), but its compute still grows as
tokens^2. So every transformer row halves ``--batch`` until the estimate is under
``--attention-cap-mb`` (2048, or 1024 with ``--quick``); a row that is over the cap even at
batch 1 is skipped and reports its estimate. A row whose process fails (e.g. killed for memory) says so.

    python benchmarks/encoder_throughput.py                       # lookback 10 and 60, all rows
    python benchmarks/encoder_throughput.py --quick --threads 1   # fewer rows, shorter timing
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from hydra import compose, initialize_config_dir
from torch import Tensor, nn

from cappuccino.config import EncoderConfig, FTTransformerEncoderConfig, register_configs, validate
from cappuccino.config import build as build_from_config
from cappuccino.models.ft_transformer import FTTransformerEncoder

N_ASSETS, N_FEATURES = 7, 14
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SIZES = ("ft_small", "ft_default", "ft_large")
LAYOUTS = ("patch", "asset_time", "time", "feature")
RTDL = "rtdl"


@dataclass(frozen=True)
class Spec:
    """One row: which encoder, at which lookback and batch, for how long, on what."""

    encoder: str  # "mlp", a conf/encoder/ft_*.yaml name, or "rtdl"
    tokens: str  # FT token layout; "-" for the MLP, "feature" for rtdl
    lookback: int
    batch: int
    seconds: float
    threads: int | None
    device: str


def encoder_config(name: str, tokens: str) -> EncoderConfig:
    """The shipped config ``conf/encoder/<name>.yaml`` (with ``tokens`` for FT), validated."""
    overrides = [f"encoder={name}"] + ([f"encoder.tokens={tokens}"] if name != "mlp" else [])
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return validate(compose("config", overrides=overrides)).encoder


def build(spec: Spec) -> tuple[nn.Module, Callable[[Tensor, Tensor], Tensor], int, int]:
    """(model, forward(window, weights), tokens incl. [CLS], heads); 0 tokens for the MLP."""
    if spec.encoder == RTDL:
        import rtdl_revisiting_models as rtdl

        ft = encoder_config("ft_default", "feature")
        assert isinstance(ft, FTTransformerEncoderConfig)
        n_cont = spec.lookback * N_ASSETS * N_FEATURES + N_ASSETS + 1
        model = rtdl.FTTransformer(
            n_cont_features=n_cont, cat_cardinalities=[], d_out=ft.out_dim, n_blocks=ft.n_blocks,
            d_block=ft.d_token, attention_n_heads=ft.n_heads, attention_dropout=0.0, ffn_d_hidden=None,
            ffn_d_hidden_multiplier=ft.ffn_factor, ffn_dropout=0.0, residual_dropout=0.0,
        )  # fmt: skip
        return model, lambda w, p: model(torch.cat([w.flatten(1), p], -1), None), n_cont + 1, ft.n_heads
    model = build_from_config(
        encoder_config(spec.encoder, spec.tokens), lookback=spec.lookback, n_assets=N_ASSETS, n_features=N_FEATURES
    )
    if isinstance(model, FTTransformerEncoder):
        return model, model, model.n_tokens, model.blocks[0].attention.n_heads
    return model, model, 0, 0


def attention_mb(batch: int, heads: int, n_tokens: int) -> float:
    return batch * heads * n_tokens**2 * 4 / 2**20


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(spec: Spec) -> dict:
    """Run one row in this process: samples/s and peak memory over the pre-step baseline."""
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(0)
    device = torch.device(spec.device)
    model, forward, _, _ = build(spec)
    model.to(device).train()
    window = torch.randn(spec.batch, spec.lookback, N_ASSETS, N_FEATURES, device=device)
    weights = torch.softmax(torch.randn(spec.batch, N_ASSETS + 1, device=device), -1)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def step() -> None:
        forward(window, weights).square().mean().backward()
        model.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = peak_mb(device)
    step()  # warm-up: allocator, kernels, lazy init
    synchronize()
    steps, start = 0, time.perf_counter()
    while steps < 2 or time.perf_counter() - start < spec.seconds:
        step()
        steps += 1
    synchronize()
    elapsed = time.perf_counter() - start
    return {"samples_per_s": spec.batch * steps / elapsed, "peak_mb": peak_mb(device) - baseline}


def run_isolated(spec: Spec) -> dict:
    """``measure`` in a fresh interpreter, so each row's peak memory is its own."""
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", json.dumps(asdict(spec))], capture_output=True, text=True
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"error": last[:80]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rows(lookbacks: list[int], sizes: tuple[str, ...], layouts: tuple[str, ...], with_rtdl: bool):
    for lookback in lookbacks:
        yield "mlp", "-", lookback
        for size in sizes:
            for layout in layouts:
                yield size, layout, lookback
        if with_rtdl:
            yield RTDL, "feature", lookback


def largest_batch(batch: int, heads: int, n_tokens: int, cap_mb: float) -> int:
    """``batch`` halved until its attention-matrix estimate is <= cap_mb; 0 if even 1 is over."""
    while batch >= 1 and attention_mb(batch, heads, n_tokens) > cap_mb:
        batch //= 2
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="ft_default layouts + other sizes' patch, 0.5 s each")
    parser.add_argument("--lookbacks", type=int, nargs="+", default=[10, 60])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row (at least 2 steps)")
    parser.add_argument("--attention-cap-mb", type=float, default=None, help="default 2048, 1024 with --quick")
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default PyTorch's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one row, in a subprocess
    args = parser.parse_args()
    register_configs()
    if args.measure:
        print(json.dumps(measure(Spec(**json.loads(args.measure)))))
        return

    try:
        import rtdl_revisiting_models  # noqa: F401

        with_rtdl = True
    except ImportError:
        with_rtdl = False
        print("rtdl_revisiting_models is not installed: no rtdl rows (pip install rtdl_revisiting_models)\n")
    seconds = 0.5 if args.quick else args.seconds
    cap_mb = args.attention_cap_mb or (1024.0 if args.quick else 2048.0)
    plan = list(rows(args.lookbacks, SIZES, LAYOUTS, with_rtdl))
    if args.quick:
        plan = [r for r in plan if r[1] in ("-", "patch") or r[0] in ("ft_default", RTDL)]

    print(
        f"device {args.device}, torch threads {args.threads or torch.get_num_threads()}, "
        f"batch <= {args.batch}, attention cap {cap_mb:.0f} MB, {seconds} s per row\n"
    )
    print("| encoder | tokens | lookback | n tokens | params | batch | samples/s | peak MB | attn. matrix MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    speed: dict[tuple[str, str, int], float] = {}
    for encoder, tokens, lookback in plan:
        spec = Spec(encoder, tokens, lookback, args.batch, seconds, args.threads, args.device)
        model, _, n_tokens, heads = build(spec)
        params = sum(p.numel() for p in model.parameters())
        batch = largest_batch(args.batch, heads, n_tokens, cap_mb) if n_tokens else args.batch
        estimate = attention_mb(max(batch, 1), heads, n_tokens) if n_tokens else 0.0
        head = f"| {encoder} | {tokens} | {lookback} | {n_tokens or '-'} | {params:,} | {batch or '-'} |"
        if batch == 0:
            print(f"{head} skipped | - | {estimate:,.0f} (over cap at batch 1) |", flush=True)
            continue
        result = run_isolated(Spec(encoder, tokens, lookback, batch, seconds, args.threads, args.device))
        if "error" in result:
            print(f"{head} failed: {result['error']} | - | {estimate:,.0f} |", flush=True)
            continue
        speed[encoder, tokens, lookback] = result["samples_per_s"]
        print(
            f"{head} {result['samples_per_s']:,.1f} | {result['peak_mb']:,.0f} | {estimate:,.0f} |", flush=True
        )

    print()
    for lookback in args.lookbacks:
        ours, reference = speed.get(("ft_default", "asset_time", lookback)), speed.get((RTDL, "feature", lookback))
        if ours and reference:
            print(
                f"lookback {lookback}: ft_default/asset_time trains {ours / reference:,.0f}x faster per sample "
                f"than rtdl's feature-token FTTransformer of the same width and depth"
            )


if __name__ == "__main__":
    main()
