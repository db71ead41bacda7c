"""Encoders: read (feature window, portfolio weights) and return one feature vector.

Every encoder maps ``window (N, L, A, F)`` and ``weights (N, A + 1)`` to ``(N, out_dim)``; the
actor and critic heads in :mod:`cappuccino.models.policy` only see that vector, so a new
architecture (e.g. an FT-Transformer) plugs in by subclassing :class:`Encoder` and adding one
entry to ``ENCODERS``.
"""

from __future__ import annotations

import abc
import math
from typing import Callable, Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from cappuccino.config import EncoderConfig, FTTransformerEncoderConfig, MLPEncoderConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with gain ``std`` and constant bias, as in CleanRL's PPO."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


class Encoder(nn.Module, abc.ABC):
    """Base class of all encoders: ``forward(window, weights) -> (N, out_dim)``."""

    out_dim: int

    @abc.abstractmethod
    def forward(self, window: Tensor, weights: Tensor) -> Tensor:
        """window: (N, L, A, F) features of the last L bars; weights: (N, A + 1) [cash, assets]."""

    def freeze_pretrained(self) -> None:
        """Stop gradients to the weights that pre-training learned (by default: all of them)."""
        self.requires_grad_(False)


class MLPEncoder(Encoder):
    """Flatten the window, append the portfolio weights, apply an MLP.

    Hidden layers use orthogonal init with gain sqrt(2) and zero bias (CleanRL); the output is
    the last hidden layer's activation, so ``out_dim == hidden_sizes[-1]``.
    """

    def __init__(
        self,
        lookback: int,
        n_assets: int,
        n_features: int,
        hidden_sizes: Sequence[int],
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        if not hidden_sizes:
            raise ValueError("MLPEncoder needs at least one hidden layer, got hidden_sizes=[]")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.input_shape = (lookback, n_assets, n_features)
        in_dim = lookback * n_assets * n_features + n_assets + 1
        layers: list[nn.Module] = []
        for size in hidden_sizes:
            layers += [layer_init(nn.Linear(in_dim, size)), ACTIVATIONS[activation]()]
            in_dim = size
        self.mlp = nn.Sequential(*layers)
        self.out_dim = in_dim

    def flat_input(self, window: Tensor, weights: Tensor) -> Tensor:
        """The MLP's input, (N, L*A*F + A + 1): the flattened window, then the weights.

        Under autocast both pieces are cast to the autocast dtype before they are concatenated: the
        first Linear would cast the whole input anyway (the same numbers), and casting first halves
        the bytes the concatenation copies.
        """
        if tuple(window.shape[1:]) != self.input_shape:
            L, A, F = self.input_shape
            raise ValueError(
                f"window has shape {tuple(window.shape)}, expected (N, L, A, F) = (N, {L}, {A}, {F}); "
                "build the encoder with the env's lookback, n_assets and n_features"
            )
        flat = rearrange(window, "n l a f -> n (l a f)")  # (N, L*A*F)
        if torch.is_autocast_enabled(flat.device.type):
            dtype = torch.get_autocast_dtype(flat.device.type)
            flat, weights = flat.to(dtype), weights.to(dtype)
        return torch.cat([flat, weights], dim=-1)

    def forward(self, window: Tensor, weights: Tensor, flat_input: Tensor | None = None) -> Tensor:
        """``flat_input``: :meth:`flat_input` of these arguments when the caller has built it already
        (:class:`~cappuccino.models.policy.ActorCritic` builds it once for its actor and critic)."""
        return self.mlp(self.flat_input(window, weights) if flat_input is None else flat_input)  # (N, out_dim)


def _build_mlp(cfg: EncoderConfig, lookback: int, n_assets: int, n_features: int) -> Encoder:
    if not isinstance(cfg, MLPEncoderConfig):
        raise TypeError(f"encoder 'mlp' needs an MLPEncoderConfig, got {type(cfg).__name__}")
    return MLPEncoder(lookback, n_assets, n_features, cfg.hidden_sizes, cfg.activation)


def _build_ft_transformer(cfg: EncoderConfig, lookback: int, n_assets: int, n_features: int) -> Encoder:
    # Imported here: ft_transformer subclasses Encoder, defined in this module.
    from cappuccino.models.ft_transformer import FTTransformerEncoder

    if not isinstance(cfg, FTTransformerEncoderConfig):
        raise TypeError(f"encoder 'ft_transformer' needs an FTTransformerEncoderConfig, got {type(cfg).__name__}")
    return FTTransformerEncoder(
        lookback,
        n_assets,
        n_features,
        d_token=cfg.d_token,
        n_blocks=cfg.n_blocks,
        n_heads=cfg.n_heads,
        ffn_factor=cfg.ffn_factor,
        attention_dropout=cfg.attention_dropout,
        ffn_dropout=cfg.ffn_dropout,
        residual_dropout=cfg.residual_dropout,
        activation=cfg.activation,
        tokens=cfg.tokens,
        out_dim=cfg.out_dim,
    )


ENCODERS: dict[str, Callable[[EncoderConfig, int, int, int], Encoder]] = {
    "mlp": _build_mlp,
    "ft_transformer": _build_ft_transformer,
}


def build_encoder(cfg: EncoderConfig, lookback: int, n_assets: int, n_features: int) -> Encoder:
    """Build the encoder named by ``cfg.name`` for windows of shape (L, A, F)."""
    if cfg.name not in ENCODERS:
        raise ValueError(f"unknown encoder {cfg.name!r}; known encoders: {sorted(ENCODERS)}")
    return ENCODERS[cfg.name](cfg, lookback, n_assets, n_features)
