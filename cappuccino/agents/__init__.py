"""Reinforcement-learning algorithms."""

from cappuccino.agents.ppo import PPO, PPOSettings, approx_kl, clipped_surrogate, explained_variance, gae, value_loss

__all__ = ["PPO", "PPOSettings", "approx_kl", "clipped_surrogate", "explained_variance", "gae", "value_loss"]
