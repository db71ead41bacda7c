"""What an FT-Transformer encoder attends to: attention maps recomputed by a probe pass, and
per-block, per-head statistics of them for the tracker.

The encoder's ``forward`` runs ``scaled_dot_product_attention``, which never materialises the
attention probabilities (that is what keeps it fast and its memory linear in the tokens). The
probe therefore recomputes them, ``softmax(q k^T / sqrt(d_head))``, from the same LayerNorms and
q/k projections the forward uses, in a separate no-grad pass: the encoder's forward, outputs and
speed are untouched.

Choices:

- The probe computes every query of every block, the last one included, although ``forward``
  only computes the last block's [CLS] query: the [CLS] row (the last query) is the one the
  forward uses; the other rows of the last block are what ``encode_tokens`` uses.
- It runs in eval mode (restoring the encoder's mode afterwards): attention dropout and residual
  dropout would make the maps noisy, and the probabilities are reported before any dropout.
- Maps hold (N, heads, T, T) floats per block, quadratic in the tokens: ``summarize_attention``
  probes a large batch in chunks sized to a memory budget, and its statistics are exact means
  over the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn

from cappuccino.models.ft_transformer import FTTransformerEncoder, MultiheadAttention

_CHUNK_FLOATS = 2**25  # attention floats per probed chunk and block: 128 MiB in float32


@torch.no_grad()
def attention_maps(encoder: FTTransformerEncoder, window: Tensor, weights: Tensor) -> list[Tensor]:
    """One (N, heads, T_query, T_key) attention-probability tensor per block, T = ``encoder.n_tokens``.

    Rows sum to 1. Token order on both axes: the ``n_market_tokens`` market tokens, the A + 1
    portfolio tokens (cash, then each holding), then [CLS] (the last row is [CLS]'s query).
    """
    with _eval_mode(encoder):
        x = encoder._tokens(window, weights).float()  # (N, T, d); the encoder's own tokenization
        maps = []
        for block in encoder.blocks:
            normed = block.attention_norm(x)
            maps.append(_probabilities(block.attention, normed))
            x = block(x)  # the full residual stream, every token, as encode_tokens computes it
        return maps


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside the block, the module's own mode restored after it."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _probabilities(attention: MultiheadAttention, x: Tensor) -> Tensor:
    """(N, T, d) normalised tokens -> (N, h, T, T) softmax(q k^T / sqrt(d_head)), as in forward."""
    q = rearrange(attention.query(x), "n t (h e) -> n h t e", h=attention.n_heads)  # (N, h, T, e)
    k, _ = rearrange(attention.key_value(x), "n t (two h e) -> two n h t e", two=2, h=attention.n_heads)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (N, h, T, T)
    return scores.softmax(dim=-1)


def attention_stats(
    maps: list[Tensor], n_market_tokens: int, n_portfolio_tokens: int, encoding: Tensor | None = None
) -> dict[str, float]:
    """Per block b and head h, each a mean over the batch and every query:

    ``attention/block{b}/head{h}/entropy``          -sum_k p log p of the query's row (0 for a
                                                    one-hot row, log T_key for a uniform one)
    ``attention/block{b}/head{h}/weight_norm``      L2 norm of the row (1 one-hot, 1/sqrt(T_key) uniform)
    ``attention/block{b}/head{h}/portfolio_share``  attention mass on the A + 1 portfolio tokens

    and, when ``encoding`` (N, out_dim), the encoder's output for the same batch, is given,
    ``encoder/cls_norm``: its mean L2 norm.
    """
    stats: dict[str, float] = {}
    portfolio = slice(n_market_tokens, n_market_tokens + n_portfolio_tokens)
    for b, p in enumerate(maps):
        if p.shape[-1] != n_market_tokens + n_portfolio_tokens + 1:
            raise ValueError(
                f"block {b}'s map has {p.shape[-1]} keys, expected n_market_tokens + n_portfolio_tokens + 1 "
                f"([CLS]) = {n_market_tokens + n_portfolio_tokens + 1}; pass the encoder's n_market_tokens and A + 1"
            )
        per_head = {
            "entropy": -torch.special.xlogy(p, p).sum(-1),  # (N, h, Tq); xlogy: 0 log 0 = 0
            "weight_norm": torch.linalg.vector_norm(p, dim=-1),
            "portfolio_share": p[..., portfolio].sum(-1),
        }
        for name, values in per_head.items():
            for h, value in enumerate(values.mean(dim=(0, 2)).tolist()):
                stats[f"attention/block{b}/head{h}/{name}"] = value
    if encoding is not None:
        stats["encoder/cls_norm"] = torch.linalg.vector_norm(encoding.float(), dim=-1).mean().item()
    return stats


def cls_attention(maps: list[Tensor]) -> np.ndarray:
    """(blocks, T_key): the [CLS] query's attention, averaged over heads and batch, per block."""
    return torch.stack([p[:, :, -1].mean(dim=(0, 1)) for p in maps]).cpu().numpy()


@torch.no_grad()
def summarize_attention(
    encoder: FTTransformerEncoder, window: Tensor, weights: Tensor
) -> tuple[dict[str, float], np.ndarray]:
    """``attention_stats`` (with ``encoder/cls_norm``) and ``cls_attention`` of a whole batch,
    probed in chunks that keep each block's map near 128 MiB; chunk means are weighted by chunk
    size, so the results equal a single pass's."""
    n, heads = window.shape[0], encoder.blocks[0].attention.n_heads
    chunk = max(1, _CHUNK_FLOATS // (heads * encoder.n_tokens**2))
    n_portfolio = weights.shape[-1]
    totals: dict[str, float] = {}
    cls_total = np.zeros((len(encoder.blocks), encoder.n_tokens))
    for start in range(0, n, chunk):
        w, p = window[start : start + chunk], weights[start : start + chunk]
        maps = attention_maps(encoder, w, p)
        with _eval_mode(encoder):
            encoding = encoder(w, p)  # (n, out_dim)
        share = w.shape[0] / n
        for key, value in attention_stats(maps, encoder.n_market_tokens, n_portfolio, encoding).items():
            totals[key] = totals.get(key, 0.0) + share * value
        cls_total += share * cls_attention(maps)
    return totals, cls_total


@dataclass(frozen=True)
class AttentionMap:
    """A probed encoder's [CLS] attention with what it takes to draw it (``reporting.figures.attention_figure``)."""

    cls: np.ndarray  # (blocks, T_key), mean over heads and windows
    lookback: int
    symbols: tuple[str, ...]
    patch_bars: int  # bars per market-token column (1 unless patch tokens)
    windows: int  # windows averaged


def save_attention_map(path: Path, attention: AttentionMap) -> None:
    np.savez(
        path, cls=attention.cls, lookback=attention.lookback, symbols=np.array(attention.symbols),
        patch_bars=attention.patch_bars, windows=attention.windows,
    )  # fmt: skip


def load_attention_map(path: Path) -> AttentionMap:
    with np.load(path) as archive:
        return AttentionMap(
            archive["cls"], int(archive["lookback"]), tuple(str(s) for s in archive["symbols"]), int(archive["patch_bars"]), int(archive["windows"])
        )
