"""A single-environment gymnasium view of :class:`PortfolioEnv`, for gymnasium tooling and SB3.

The batched env stays the source of truth (same timing, fills, fees and rewards); this adapter
only converts tensors to numpy. Observations are the flattened feature window (L * A * F) followed
by the portfolio weights [cash, assets] (A + 1), as float32. Episodes end by time limit only, so
``terminated`` is always False and ``truncated`` is the env's ``done``; at truncation the returned
observation is where the episode stopped, and the next ``reset`` starts a new one.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from cappuccino.env.portfolio import Observation, PortfolioEnv


class PortfolioGymEnv(gym.Env):
    """Wraps a :class:`PortfolioEnv` built with ``num_envs=1``."""

    metadata = {"render_modes": []}

    def __init__(self, env: PortfolioEnv) -> None:
        if env.num_envs != 1:
            raise ValueError(f"PortfolioGymEnv wraps one environment; build the PortfolioEnv with num_envs=1, not {env.num_envs}")
        self.env = env
        window_size = env.lookback * env.n_assets * env.n_features
        # The box is the range of the features actually present (warm-up NaNs excluded, they are
        # never observed) followed by [0, 1] for the weights, which rounding cannot leave: each
        # share is a non-negative term divided by a float sum that includes it.
        features = env.market.features[torch.isfinite(env.market.features)]
        low = np.concatenate([np.full(window_size, float(features.min())), np.zeros(env.n_assets + 1)])
        high = np.concatenate([np.full(window_size, float(features.max())), np.ones(env.n_assets + 1)])
        self.observation_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (env.n_assets,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return self._observe(self.env.reset(seed=seed)), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, float]]:
        batch = torch.as_tensor(np.asarray(action, dtype=np.float32), device=self.env.device).reshape(1, -1)
        result = self.env.step(batch)
        info = {
            "value": float(result.value[0]),
            "fees": float(result.fees[0]),
            "turnover": float(result.turnover[0]),
        }
        return self._observe(result.final_obs), float(result.reward[0]), False, bool(result.done[0]), info

    def _observe(self, obs: Observation) -> np.ndarray:
        window = self.env.window(obs.bar).flatten()  # (L * A * F,)
        return torch.cat([window, obs.weights[0]]).cpu().numpy()
