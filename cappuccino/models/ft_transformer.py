"""FT-Transformer encoder, after Gorishniy et al. (2021), "Revisiting Deep Learning Models for
Tabular Data", https://arxiv.org/abs/2106.11959 (reference code: the rtdl packages).

Kept from the paper (Section 3.3) and its reference implementation:

- Feature tokenizer: scalar feature j becomes the token ``x_j * W_j + b_j``, with a weight and a
  bias vector per feature (``NumericalTokenizer``).
- A learnable [CLS] token, appended after the feature tokens as in the reference; the prediction
  reads only its final embedding. Tokens carry no position, so where [CLS] sits changes nothing.
- Pre-norm blocks, ``x + Attention(LayerNorm(x))`` then ``x + FFN(LayerNorm(x))``, where the first
  block has no attention LayerNorm: its input is the tokenizer's output, and the paper reports
  that this first normalisation hurts.
- Multi-head attention with q/k/v biases initialised to zero and an output projection only when
  there is more than one head.
- Feed-forward ``Linear -> ReGLU -> Dropout -> Linear`` with hidden size
  ``int(d_token * ffn_factor)``; ``ffn_factor=4/3`` with ReGLU has about as many parameters as
  2 with a plain activation. Attention-probability, FFN-hidden and residual-branch dropout.
- The last block computes the [CLS] query and its FFN only: no other output of it is ever read
  by ``forward``. ``encode_tokens`` (for pre-training, see cappuccino.pretrain) runs it on every
  token and returns all final token embeddings.
- Output ``Linear(ReLU(LayerNorm(cls)))``; the Linear maps to ``out_dim``, the input size of the
  policy's actor and critic heads (the paper's maps to the prediction).

Ours:

- Attention runs through ``torch.nn.functional.scaled_dot_product_attention``: fused flash /
  memory-efficient kernels on CUDA and a flash kernel on CPU, whose memory grows linearly with
  the number of tokens instead of quadratically. With ``attention_dropout > 0`` the CPU falls
  back to the math kernel, which holds the whole (N, heads, T, T) attention matrix: the shipped
  configs keep all dropouts at 0, which also keeps PPO's importance ratio free of dropout noise
  (rollouts run in eval mode, updates in train mode).
- GELU as an alternative to ReGLU.
- Token layouts (``tokens``) for a window (N, L, A, F) of L bars, A assets and F features plus
  the portfolio weights (N, A + 1):

  ``feature``     one token per scalar of the flattened state, the paper's scheme:
                  L*A*F + A + 1 tokens (5,888 at L=60, A=7, F=14), so attention costs
                  O((L*A*F)^2) per sample. For small states and comparison with the reference.
  ``asset_time``  one token per (bar, asset) from its F features through a shared
                  ``Linear(F, d_token)``, plus a learned asset embedding and a learned bar-position
                  embedding: L*A + A + 1 tokens (428 at L=60). The default.
  ``time``        one token per bar from its A*F values through ``Linear(A*F, d_token)``, plus the
                  bar-position embedding: L + A + 1 tokens.
  ``patch``       one token per (patch of ``patch_bars`` bars, asset) from its patch_bars*F values
                  through ``Linear(patch_bars*F, d_token)``, plus a learned asset embedding and a
                  learned patch-position embedding (PatchTST's tokens, per asset):
                  ceil(L / patch_bars)*A + A + 1 tokens (92 at L=60, patch_bars=5), so a block
                  costs ~5x less than ``asset_time``'s and attention ~20x less.

  In every layout the portfolio weights (cash, then one per asset) are tokenized the paper's
  way, one token each: the weight times a learned vector plus a learned bias that also tells
  cash and each holding apart.

  The first ``n_market_tokens`` tokens hold the window; token k is made from the values
  ``token_values(window)[:, k]``.

- Masked tokens (``encode_tokens(..., token_mask, mask_token)``, for masked feature modelling):
  a masked market token's content (``x_j * W_j`` for ``feature``, the projection of its values
  for the other layouts) is replaced by the ``mask_token`` vector BEFORE its position
  (the feature's bias, the asset + bar embeddings, the bar embedding) is added, as BERT adds
  position embeddings to its [MASK] token: the model knows which value it is asked to restore.
  Portfolio tokens and [CLS] are never masked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from cappuccino.errors import require
from cappuccino.models.encoders import Encoder


def _uniform_(tensor: Tensor) -> Tensor:
    """The reference's token init: U(-1/sqrt(d), 1/sqrt(d)) with d the token size."""
    bound = tensor.shape[-1] ** -0.5
    return nn.init.uniform_(tensor, -bound, bound)


# ------------------------------------------------------------------------------- tokenizers
class NumericalTokenizer(nn.Module):
    """(N, n) scalars -> (N, n, d) tokens ``x_j * weight[j] + bias[j]``: the paper's tokenizer."""

    def __init__(self, n_features: int, d_token: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(_uniform_(torch.empty(n_features, d_token)))
        self.bias = nn.Parameter(_uniform_(torch.empty(n_features, d_token)))

    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(-1) * self.weight + self.bias  # (N, n, d)


def _masked(content: Tensor, mask: Tensor | None, mask_token: Tensor | None) -> Tensor:
    """``content`` (N, n, d) with the tokens where ``mask`` (N, n) is True replaced by ``mask_token`` (d,)."""
    if mask is None:
        return content
    if mask_token is None:
        raise ValueError("token_mask needs a mask_token (d_token,) to put in place of the masked tokens")
    return torch.where(mask.unsqueeze(-1), mask_token.to(content.dtype), content)


class FeatureTokens(nn.Module):
    """``tokens=feature``: one token per scalar of [flattened window, weights]."""

    def __init__(self, lookback: int, n_assets: int, n_features: int, d_token: int) -> None:
        super().__init__()
        self.n_market_tokens = lookback * n_assets * n_features
        self.n_tokens = self.n_market_tokens + n_assets + 1
        self.values_per_token = 1
        self.tokenizer = NumericalTokenizer(self.n_tokens, d_token)

    def token_values(self, window: Tensor) -> Tensor:
        """(N, L, A, F) -> (N, L*A*F, 1)."""
        return rearrange(window, "n l a (f one) -> n (l a f) one", one=1)

    def forward(
        self, window: Tensor, weights: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
    ) -> Tensor:
        flat = rearrange(window, "n l a f -> n (l a f)")  # (N, L*A*F)
        values = torch.cat([flat, weights], dim=-1)  # (N, L*A*F + A + 1)
        if mask is None:
            return self.tokenizer(values)  # (N, L*A*F + A + 1, d)
        mask = torch.cat([mask, mask.new_zeros(weights.shape)], dim=-1)  # portfolio tokens: never masked
        # The bias b_j is token j's position: keep it, replace the content x_j * W_j.
        content = _masked(values.unsqueeze(-1) * self.tokenizer.weight, mask, mask_token)
        return content + self.tokenizer.bias  # (N, L*A*F + A + 1, d)


class AssetTimeTokens(nn.Module):
    """``tokens=asset_time``: one token per (bar, asset), then one per portfolio weight.

    The projection has no bias: the asset and bar embeddings added to every token play its part.
    """

    def __init__(self, lookback: int, n_assets: int, n_features: int, d_token: int) -> None:
        super().__init__()
        self.n_market_tokens = lookback * n_assets
        self.n_tokens = self.n_market_tokens + n_assets + 1
        self.values_per_token = n_features
        self.project = nn.Linear(n_features, d_token, bias=False)
        self.asset_embedding = nn.Parameter(_uniform_(torch.empty(n_assets, d_token)))
        self.bar_embedding = nn.Parameter(_uniform_(torch.empty(lookback, d_token)))
        self.portfolio = NumericalTokenizer(n_assets + 1, d_token)

    def token_values(self, window: Tensor) -> Tensor:
        """(N, L, A, F) -> (N, L*A, F)."""
        return rearrange(window, "n l a f -> n (l a) f")

    def forward(
        self, window: Tensor, weights: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
    ) -> Tensor:
        position = rearrange(self.bar_embedding.unsqueeze(1) + self.asset_embedding, "l a d -> (l a) d")
        content = rearrange(self.project(window), "n l a d -> n (l a) d")  # (N, L*A, d)
        market = _masked(content, mask, mask_token) + position  # (N, L*A, d)
        return torch.cat([market, self.portfolio(weights)], dim=1)  # (N, L*A + A + 1, d)


class PatchTokens(nn.Module):
    """``tokens=patch``: one token per (patch of ``patch_bars`` consecutive bars, asset), as
    PatchTST (Nie et al. 2023) tokenizes each series; then one per portfolio weight.

    A window whose lookback is not a multiple of ``patch_bars`` is left-padded with zeros (the
    z-scored features' mean) to one: the oldest patch holds fewer real bars. Tokens are ordered
    (patch, asset), oldest patch first; token k reads :meth:`token_values` ``[:, k]``, its
    patch's bars (padding included) in (bar, feature) order.
    """

    def __init__(self, lookback: int, n_assets: int, n_features: int, d_token: int, patch_bars: int) -> None:
        super().__init__()
        self.patch_bars = patch_bars
        self.n_patches = math.ceil(lookback / patch_bars)
        self.padding = self.n_patches * patch_bars - lookback
        self.n_market_tokens = self.n_patches * n_assets
        self.n_tokens = self.n_market_tokens + n_assets + 1
        self.values_per_token = patch_bars * n_features
        self.project = nn.Linear(patch_bars * n_features, d_token, bias=False)
        self.asset_embedding = nn.Parameter(_uniform_(torch.empty(n_assets, d_token)))
        self.patch_embedding = nn.Parameter(_uniform_(torch.empty(self.n_patches, d_token)))
        self.portfolio = NumericalTokenizer(n_assets + 1, d_token)

    def token_values(self, window: Tensor) -> Tensor:
        """(N, L, A, F) -> (N, n_market_tokens, patch_bars * F)."""
        padded = F.pad(window, (0, 0, 0, 0, self.padding, 0))  # zeros before the oldest bar
        return rearrange(padded, "n (p b) a f -> n (p a) (b f)", b=self.patch_bars)

    def forward(
        self, window: Tensor, weights: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
    ) -> Tensor:
        position = rearrange(self.patch_embedding.unsqueeze(1) + self.asset_embedding, "p a d -> (p a) d")
        content = self.project(self.token_values(window))  # (N, P*A, d)
        market = _masked(content, mask, mask_token) + position  # (N, P*A, d)
        return torch.cat([market, self.portfolio(weights)], dim=1)  # (N, P*A + A + 1, d)


class TimeTokens(nn.Module):
    """``tokens=time``: one token per bar from all its assets' features, then the portfolio."""

    def __init__(self, lookback: int, n_assets: int, n_features: int, d_token: int) -> None:
        super().__init__()
        self.n_market_tokens = lookback
        self.n_tokens = self.n_market_tokens + n_assets + 1
        self.values_per_token = n_assets * n_features
        self.project = nn.Linear(n_assets * n_features, d_token, bias=False)  # bar embedding = bias
        self.bar_embedding = nn.Parameter(_uniform_(torch.empty(lookback, d_token)))
        self.portfolio = NumericalTokenizer(n_assets + 1, d_token)

    def token_values(self, window: Tensor) -> Tensor:
        """(N, L, A, F) -> (N, L, A*F)."""
        return rearrange(window, "n l a f -> n l (a f)")

    def forward(
        self, window: Tensor, weights: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None
    ) -> Tensor:
        market = _masked(self.project(self.token_values(window)), mask, mask_token) + self.bar_embedding  # (N, L, d)
        return torch.cat([market, self.portfolio(weights)], dim=1)  # (N, L + A + 1, d)


TOKENIZERS: dict[str, type[nn.Module]] = {
    "feature": FeatureTokens,
    "asset_time": AssetTimeTokens,
    "time": TimeTokens,
    "patch": PatchTokens,
}


# ----------------------------------------------------------------------------------- blocks
class MultiheadAttention(nn.Module):
    """Multi-head attention of queries ``x_q`` (N, Tq, d) over ``x_kv`` (N, T, d).

    Keys and values come from one Linear (as many parameters as the reference's separate W_k and
    W_v); the queries have their own so that the last block can ask for [CLS] alone.
    """

    def __init__(self, d_token: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.query = nn.Linear(d_token, d_token)
        self.key_value = nn.Linear(d_token, 2 * d_token)
        self.out = nn.Linear(d_token, d_token) if n_heads > 1 else None
        for linear in (self.query, self.key_value, self.out):
            if linear is not None:
                nn.init.zeros_(linear.bias)

    def forward(self, x_q: Tensor, x_kv: Tensor) -> Tensor:
        q = rearrange(self.query(x_q), "n t (h e) -> n h t e", h=self.n_heads)  # (N, h, Tq, d/h)
        k, v = rearrange(self.key_value(x_kv), "n t (two h e) -> two n h t e", two=2, h=self.n_heads)
        dropout = self.dropout if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (N, h, Tq, d/h)
        x = rearrange(x, "n h t e -> n t (h e)")  # (N, Tq, d)
        return x if self.out is None else self.out(x)


class ReGLU(nn.Module):
    """ReGLU(x) = a * relu(b) with [a, b] the two halves of x's last dimension."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=-1)
        return a * F.relu(b)


class FeedForward(nn.Sequential):
    """Linear -> ReGLU | GELU -> Dropout -> Linear; ReGLU halves the width, so it gets 2x."""

    def __init__(self, d_token: int, d_hidden: int, activation: str, dropout: float) -> None:
        reglu = activation == "reglu"
        super().__init__(
            nn.Linear(d_token, 2 * d_hidden if reglu else d_hidden),
            ReGLU() if reglu else nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_hidden, d_token),
        )


class Block(nn.Module):
    """Pre-norm Transformer block; ``first`` drops the attention LayerNorm (see module docstring)."""

    def __init__(
        self,
        d_token: int,
        n_heads: int,
        d_hidden: int,
        activation: str,
        attention_dropout: float,
        ffn_dropout: float,
        residual_dropout: float,
        first: bool,
    ) -> None:
        super().__init__()
        self.attention_norm = nn.Identity() if first else nn.LayerNorm(d_token)
        self.attention = MultiheadAttention(d_token, n_heads, attention_dropout)
        self.ffn_norm = nn.LayerNorm(d_token)
        self.ffn = FeedForward(d_token, d_hidden, activation, ffn_dropout)
        self.residual_dropout = nn.Dropout(residual_dropout)

    def forward(self, x: Tensor, cls_only: bool = False) -> Tensor:
        """(N, T, d) -> (N, T, d), or (N, 1, d) for the last token ([CLS]) when ``cls_only``."""
        normed = self.attention_norm(x)
        if cls_only:
            x, query = x[:, -1:], normed[:, -1:]  # (N, 1, d)
        else:
            query = normed
        x = x + self.residual_dropout(self.attention(query, normed))
        return x + self.residual_dropout(self.ffn(self.ffn_norm(x)))


# ---------------------------------------------------------------------------------- encoder
class FTTransformerEncoder(Encoder):
    """FT-Transformer over (window (N, L, A, F), weights (N, A + 1)) -> (N, out_dim).

    See the module docstring for the paper's choices, ours, and the ``tokens`` layouts.
    """

    def __init__(
        self,
        *,
        lookback: int,
        n_assets: int,
        n_features: int,
        d_token: int = 64,
        n_blocks: int = 2,
        n_heads: int = 4,
        ffn_factor: float = 4 / 3,
        attention_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
        residual_dropout: float = 0.0,
        activation: str = "reglu",
        tokens: str = "asset_time",
        patch_bars: int = 5,
        out_dim: int = 128,
    ) -> None:
        super().__init__()
        dropouts = {"attention_dropout": attention_dropout, "ffn_dropout": ffn_dropout, "residual_dropout": residual_dropout}
        _check_arguments(d_token, n_blocks, n_heads, ffn_factor, activation, tokens, out_dim, dropouts)
        self.input_shape = (lookback, n_assets, n_features)
        if tokens == "patch":
            require(
                1 <= patch_bars <= lookback,
                "patch_bars",
                f"must be in [1, lookback={lookback}] (the window's bars), got {patch_bars}: lower it or lengthen the window",
            )
            self.tokenizer = PatchTokens(lookback, n_assets, n_features, d_token, patch_bars)
        else:
            self.tokenizer = TOKENIZERS[tokens](lookback, n_assets, n_features, d_token)
        self.n_tokens: int = self.tokenizer.n_tokens + 1  # + [CLS]
        self.n_market_tokens: int = self.tokenizer.n_market_tokens  # the first ones; see the module docstring
        self.values_per_token: int = self.tokenizer.values_per_token  # V of token_values (N, n_market_tokens, V)
        self.bars_per_token: int = patch_bars if tokens == "patch" else 1  # consecutive bars a market token spans
        self.d_token = d_token
        self.cls = nn.Parameter(_uniform_(torch.empty(d_token)))
        d_hidden = int(d_token * ffn_factor)
        self.blocks = nn.ModuleList(
            Block(d_token, n_heads, d_hidden, activation, attention_dropout, ffn_dropout, residual_dropout, i == 0)
            for i in range(n_blocks)
        )
        self.head = nn.Sequential(nn.LayerNorm(d_token), nn.ReLU(), nn.Linear(d_token, out_dim))
        self.out_dim = out_dim

    def forward(self, window: Tensor, weights: Tensor) -> Tensor:
        x = self._tokens(window, weights)  # (N, T, d)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, cls_only=i == last)
        return self.head(x[:, -1])  # (N, out_dim)

    def freeze_pretrained(self) -> None:
        """Freeze tokenizer and blocks; the output head maps [CLS] to the policy's width and is
        never trained by pre-training, so it keeps learning during PPO."""
        self.requires_grad_(False)
        self.head.requires_grad_(True)

    def token_values(self, window: Tensor) -> Tensor:
        """(N, n_market_tokens, V): the values market token k is made from, ``[:, k]`` (what masked
        feature modelling restores)."""
        return self.tokenizer.token_values(window)

    def encode_tokens(
        self, window: Tensor, weights: Tensor, token_mask: Tensor | None = None, mask_token: Tensor | None = None
    ) -> Tensor:
        """(N, T, d_token) final embeddings of every token: the ``n_market_tokens`` market tokens,
        the A + 1 portfolio tokens, then [CLS]. They are the residual stream after the last block
        (no final LayerNorm: ``head`` has its own, so a pre-training head adds one too).

        ``token_mask`` (N, n_market_tokens) bool replaces those market tokens' content by
        ``mask_token`` (d_token,) before their positions are added (see the module docstring).
        """
        x = self._tokens(window, weights, token_mask, mask_token)  # (N, T, d)
        for block in self.blocks:
            x = block(x)
        return x

    def _tokens(
        self, window: Tensor, weights: Tensor, token_mask: Tensor | None = None, mask_token: Tensor | None = None
    ) -> Tensor:
        """(N, T, d) input tokens, [CLS] last."""
        if tuple(window.shape[1:]) != self.input_shape:
            raise ValueError(
                f"window has shape {tuple(window.shape)}, expected (N, L, A, F) with "
                f"(L, A, F) = {self.input_shape}; "
                "build the encoder with the env's lookback, n_assets and n_features"
            )
        if token_mask is not None and token_mask.shape != (window.shape[0], self.n_market_tokens):
            raise ValueError(
                f"token_mask has shape {tuple(token_mask.shape)}, expected (N, n_market_tokens) = "
                f"({window.shape[0]}, {self.n_market_tokens})"
            )
        x = self.tokenizer(window, weights, token_mask, mask_token)  # (N, T - 1, d)
        return torch.cat([x, self.cls.expand(x.shape[0], 1, -1)], dim=1)  # (N, T, d), [CLS] last


def _check_arguments(
    d_token: int, n_blocks: int, n_heads: int, ffn_factor: float, activation: str, tokens: str, out_dim: int,
    dropouts: dict[str, float],
) -> None:
    require(tokens in TOKENIZERS, "tokens", f"must be one of {sorted(TOKENIZERS)}, got {tokens!r}")
    require(activation in ("reglu", "gelu"), "activation", f"must be reglu or gelu, got {activation!r}")
    require(d_token >= 1, "d_token", f"must be >= 1, got {d_token}")
    require(n_blocks >= 1, "n_blocks", f"must be >= 1, got {n_blocks}")
    require(n_heads >= 1, "n_heads", f"must be >= 1, got {n_heads}")
    require(d_token % n_heads == 0, "d_token", f"must be a multiple of n_heads={n_heads}, got {d_token}")
    require(
        int(d_token * ffn_factor) >= 1,
        "ffn_factor",
        f"must give an FFN hidden size int(d_token * ffn_factor) >= 1, got {ffn_factor}",
    )
    for name, value in dropouts.items():
        require(0.0 <= value < 1.0, name, f"must be in [0, 1), got {value}")
    require(out_dim >= 1, "out_dim", f"must be >= 1, got {out_dim}")