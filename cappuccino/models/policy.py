"""Gaussian actor-critic over any :class:`~cappuccino.models.encoders.Encoder`.

Action bounds follow CleanRL's continuous PPO: actions are sampled from an unbounded Gaussian,
and the log-probability is computed on (and the rollout stores) that UNclipped sample. The env
clamps each action to [-1, 1] before turning it into target weights. Squashing (tanh) would
need a Jacobian correction and saturates gradients; clamping only in the env keeps the policy
a plain Gaussian whose ratio the PPO update can compute exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from cappuccino.models.encoders import Encoder, MLPEncoder, layer_init


class ActorCritic(nn.Module):
    """Encoder(s) + linear actor head (Gaussian mean) + linear critic head.

    ``critic_encoder=None``: the actor's encoder feeds both heads (computed once per call);
    otherwise actor and critic each have their own, so value-loss gradients never reach the
    actor's features.
    The log-std is a state-independent learnable parameter per asset, started at
    ``init_log_std``. Head inits follow CleanRL: actor std 0.01 (near-zero initial means),
    critic std 1.0.

    The heads' outputs are cast to float32 (a no-op in float32), so under ``torch.autocast`` the
    encoders and heads compute in low precision while the Gaussian's parameters, log-probs,
    entropies and values stay float32.
    """

    def __init__(
        self, *, actor_encoder: Encoder, critic_encoder: Encoder | None, n_assets: int, init_log_std: float = -0.5
    ) -> None:
        super().__init__()
        self.n_assets = n_assets
        self.shared = critic_encoder is None
        self.actor_encoder = actor_encoder
        self.critic_encoder = actor_encoder if critic_encoder is None else critic_encoder
        self.actor_head = layer_init(nn.Linear(self.actor_encoder.out_dim, n_assets), std=0.01)
        self.critic_head = layer_init(nn.Linear(self.critic_encoder.out_dim, 1), std=1.0)
        self.log_std = nn.Parameter(torch.full((n_assets,), float(init_log_std)))

    def encoders(self) -> list[Encoder]:
        """The distinct encoders: one when shared, else the actor's and the critic's."""
        return [self.actor_encoder] if self.shared else [self.actor_encoder, self.critic_encoder]

    def _features(self, window: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """(actor features, critic features), each (N, out_dim); one pass when shared.

        Separate MLP encoders read the same parameter-free input, a copy of the whole window (at the
        update's batch sizes the largest tensor of the forward), so it is built once for both.
        """
        if self.shared:
            actor = self.actor_encoder(window, weights)
            return actor, actor
        if isinstance(self.actor_encoder, MLPEncoder) and isinstance(self.critic_encoder, MLPEncoder):
            flat = self.actor_encoder.flat_input(window, weights)
            return self.actor_encoder(window, weights, flat), self.critic_encoder(window, weights, flat)
        return self.actor_encoder(window, weights), self.critic_encoder(window, weights)

    def _normal(self, actor_features: Tensor) -> Normal:
        mean = self.actor_head(actor_features).float()  # (N, A)
        return Normal(mean, self.log_std.exp().expand_as(mean))

    def _value_head(self, critic_features: Tensor) -> Tensor:
        return self.critic_head(critic_features).squeeze(-1).float()  # (N,)

    def value(self, window: Tensor, weights: Tensor) -> Tensor:
        """V(s): (N,)."""
        return self._value_head(self.critic_encoder(window, weights))

    def distribution(self, window: Tensor, weights: Tensor) -> Normal:
        """pi(.|s): independent Normal per asset, batch shape (N, A)."""
        return self._normal(self.actor_encoder(window, weights))

    def mean_action(self, window: Tensor, weights: Tensor) -> Tensor:
        """The Gaussian's mean, (N, A): the deterministic action, from the actor alone (backtests
        and trading never need the critic's value or a log-prob)."""
        return self.actor_head(self.actor_encoder(window, weights)).float()

    def act(
        self, window: Tensor, weights: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(action (N, A), log_prob (N,), value (N,)); ``deterministic`` returns the mean.

        The action is unclipped (see the module docstring); log_prob is summed over assets.
        """
        actor, critic = self._features(window, weights)
        dist = self._normal(actor)
        action = dist.mean if deterministic else dist.sample()
        return action, dist.log_prob(action).sum(-1), self._value_head(critic)

    def evaluate(self, window: Tensor, weights: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log_prob (N,), entropy (N,), value (N,)) of stored unclipped ``action`` (N, A)."""
        actor, critic = self._features(window, weights)
        dist = self._normal(actor)
        return dist.log_prob(action).sum(-1), dist.entropy().sum(-1), self._value_head(critic)
