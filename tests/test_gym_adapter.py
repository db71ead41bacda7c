"""PortfolioGymEnv: gymnasium's checker, observation layout, truncation, info."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from cappuccino.data.tensors import MarketTensors, Segment
from cappuccino.env import EpisodeSampling, PortfolioEnv
from cappuccino.env.gym_adapter import PortfolioGymEnv
from cappuccino.trading.rules import TradingRules

T, A, F, L = 120, 3, 4, 6


def batched_env(num_envs: int = 1, episode_length: int | None = 10) -> PortfolioEnv:
    g = torch.Generator().manual_seed(0)
    close = 100.0 * torch.exp(0.01 * torch.randn(T, A, generator=g).cumsum(0))
    open_ = torch.cat([close[:1], close[:-1]])
    features = torch.randn(T, A, F, generator=g)
    features[:10] = float("nan")  # warm-up rows outside the segment
    symbols = tuple(f"S{i}" for i in range(A))
    market = MarketTensors(features, open_, close, lookback=L, symbols=symbols)
    rules = TradingRules(fee=0.001, min_order_size=dict.fromkeys(symbols, 0.01))
    sampling = EpisodeSampling(num_envs=num_envs)
    return PortfolioEnv(market, [Segment(10, T)], rules=rules, sampling=sampling, episode_length=episode_length)


def test_passes_gymnasium_env_checker_without_warnings() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Whole-segment episodes: training episodes clipped at a segment's edge can last one step,
        # which gymnasium's checker takes for a broken env.
        check_env(PortfolioGymEnv(batched_env(episode_length=None)))
    # The only acceptable remark: render modes cannot be tested without a registered spec.
    assert [str(w.message) for w in caught if "render" not in str(w.message)] == []


def test_observation_is_window_then_weights() -> None:
    env = PortfolioGymEnv(batched_env())
    obs, _ = env.reset(seed=3)
    inner = env.env
    bar = int(inner.reset(seed=3).bar)  # same seed, same start
    assert obs.shape == (L * A * F + A + 1,) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs[: L * A * F], inner.market.features[bar - L + 1 : bar + 1].flatten().numpy())
    np.testing.assert_array_equal(obs[-(A + 1) :], [1.0, 0.0, 0.0, 0.0])
    assert env.observation_space.contains(obs)


def test_truncates_after_episode_length_with_info() -> None:
    env = PortfolioGymEnv(batched_env(episode_length=10))
    # An episode whose window lies inside the segment (one clipped at its edge is shorter).
    seed = next(s for s in range(100) if env.reset(seed=s) and int(env.env._state.last_bar - env.env._state.bar) == 9)
    env.reset(seed=seed)
    for i in range(10):
        obs, reward, terminated, truncated, info = env.step(np.full(A, 0.5, np.float32))
        assert not terminated and truncated == (i == 9)
        assert set(info) == {"value", "fees", "turnover"} and info["value"] > 0
        assert isinstance(reward, float) and env.observation_space.contains(obs)
    assert obs[-(A + 1)] < 0.1  # the stopped episode's weights (invested), not a fresh all-cash one


def test_rejects_batched_env() -> None:
    with pytest.raises(ValueError, match="num_envs=1"):
        PortfolioGymEnv(batched_env(num_envs=4))
