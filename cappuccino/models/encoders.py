"""Encoders: read (feature window, portfolio weights) and return one feature vector.

Every encoder maps ``window (N, L, A, F)`` and ``weights (N, A + 1)`` to ``(N, out_dim)``; the
actor and critic heads in :mod:`cappuccino.models.policy` only see that vector, so a new
architecture plugs in by subclassing :class:`Encoder` and naming it in a config group option's
``_target_`` (see ``conf/encoder/``).
"""

from __future__ import annotations

import abc
import math
from typing import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from cappuccino.errors import require

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
    """An MLP over the window and the portfolio weights, over all assets at once or per asset.

    ``per_asset=False``: the flattened window and all weights, (N, L*A*F + A + 1), through one MLP;
    ``out_dim == hidden_sizes[-1]``.

    ``per_asset=True``: the same MLP reads each asset's own window and its weight and the cash
    weight, (N, A, L*F + 2), and the asset's outputs are concatenated; ``out_dim == A *
    hidden_sizes[-1]``. This is the "ensemble of identical independent evaluators" of Jiang, Xu &
    Liang (2017, arXiv:1706.10059): every asset's bars train the same weights, so the network has
    A times fewer weights per input and A times more examples per weight, and an edge learnt on one
    asset applies to all. It sees no other asset's bars.

    Hidden layers use orthogonal init with gain sqrt(2) and zero bias (CleanRL); the output is the
    last hidden layer's activation.
    """

    def __init__(
        self,
        *,
        lookback: int,
        n_assets: int,
        n_features: int,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "tanh",
        per_asset: bool = False,
    ) -> None:
        super().__init__()
        require(len(hidden_sizes) >= 1, "hidden_sizes", "needs at least one layer")
        require(all(h >= 1 for h in hidden_sizes), "hidden_sizes", f"sizes must be >= 1, got {list(hidden_sizes)}")
        require(activation in ACTIVATIONS, "activation", f"must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.input_shape = (lookback, n_assets, n_features)
        self.per_asset = per_asset
        in_dim = lookback * n_features + 2 if per_asset else lookback * n_assets * n_features + n_assets + 1
        layers: list[nn.Module] = []
        for size in hidden_sizes:
            layers += [layer_init(nn.Linear(in_dim, size)), ACTIVATIONS[activation]()]
            in_dim = size
        self.mlp = nn.Sequential(*layers)
        self.out_dim = n_assets * in_dim if per_asset else in_dim

    def flat_input(self, window: Tensor, weights: Tensor) -> Tensor:
        """The MLP's input: (N, L*A*F + A + 1), the flattened window then the weights; per asset
        (N, A, L*F + 2), each asset's flattened window, then its weight and the cash weight.

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
        if torch.is_autocast_enabled(window.device.type):
            dtype = torch.get_autocast_dtype(window.device.type)
            window, weights = window.to(dtype), weights.to(dtype)
        if not self.per_asset:
            return torch.cat([rearrange(window, "n l a f -> n (l a f)"), weights], dim=-1)
        n_assets = self.input_shape[1]
        cash = weights[:, :1, None].expand(-1, n_assets, 1)  # (N, A, 1)
        own = weights[:, 1:, None]  # (N, A, 1)
        return torch.cat([rearrange(window, "n l a f -> n a (l f)"), own, cash], dim=-1)

    def forward(self, window: Tensor, weights: Tensor, flat_input: Tensor | None = None) -> Tensor:
        """``flat_input``: :meth:`flat_input` of these arguments when the caller has built it already
        (:class:`~cappuccino.models.policy.ActorCritic` builds it once for its actor and critic)."""
        hidden = self.mlp(self.flat_input(window, weights) if flat_input is None else flat_input)
        return rearrange(hidden, "n a h -> n (a h)") if self.per_asset else hidden  # (N, out_dim)
