import math
from dataclasses import replace

import pytest
import torch

from cappuccino.agents import PPO, PPOSettings, approx_kl, clipped_surrogate, explained_variance, gae, value_loss
from cappuccino.config import MLPEncoderConfig
from cappuccino.env.portfolio import Observation, StepResult
from cappuccino.models.loading import policy_from_config


class TargetEnv:
    """Toy env with the PortfolioEnv interface: reward = -sum((clamp(action) - target)^2).

    The target of each asset is feature 0 at the decision bar (visible in the window), so a
    policy that reads the last bar of its window can earn ~0 reward. Episodes last
    ``episode_length`` steps from random start bars (own seeded generator) and auto-reset.
    """

    def __init__(self, num_envs=16, n_assets=2, lookback=3, episode_length=8, seed=0):
        self.generator = torch.Generator().manual_seed(seed)
        self.num_envs, self.n_assets, self.n_features, self.lookback = num_envs, n_assets, 2, lookback
        self.device = torch.device("cpu")
        self.episode_length = episode_length
        self.features = torch.rand(200, n_assets, self.n_features, generator=self.generator) * 1.6 - 0.8  # (T, A, F)
        self.bar = torch.zeros(num_envs, dtype=torch.long)
        self.t = torch.zeros(num_envs, dtype=torch.long)
        self.weights = torch.zeros(num_envs, n_assets + 1)

    def _starts(self, n: int) -> torch.Tensor:
        high = self.features.shape[0] - self.episode_length
        return torch.randint(self.lookback - 1, high, (n,), generator=self.generator)

    def reset(self) -> Observation:
        self.bar, self.t = self._starts(self.num_envs), torch.zeros_like(self.t)
        self.weights = torch.full((self.num_envs, self.n_assets + 1), 1.0 / (self.n_assets + 1))
        return Observation(self.bar.clone(), self.weights.clone())

    def step(self, action: torch.Tensor) -> StepResult:
        clamped = action.clamp(-1.0, 1.0)
        reward = -((clamped - self.features[self.bar, :, 0]) ** 2).sum(-1)
        risky = (clamped + 1.0) / (2.0 * self.n_assets)
        self.weights = torch.cat([1.0 - risky.sum(-1, keepdim=True), risky], dim=-1)
        self.bar, self.t = self.bar + 1, self.t + 1
        done = self.t >= self.episode_length
        final_obs = Observation(self.bar.clone(), self.weights.clone())
        self.bar = torch.where(done, self._starts(self.num_envs), self.bar)
        self.t = self.t.masked_fill(done, 0)
        zeros = torch.zeros(self.num_envs)
        obs = Observation(self.bar.clone(), self.weights.clone())
        return StepResult(obs, reward, done, final_obs, zeros, zeros, zeros)

    def window(self, bar: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        offsets = torch.arange(-self.lookback + 1, 1)  # oldest bar first
        return self.features[bar[:, None] + offsets].to(dtype)  # (N, L, A, F)


class RecordingEnv(TargetEnv):
    """TargetEnv that remembers each action and raw step result."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.actions, self.results = [], []

    def step(self, action):
        result = super().step(action)
        self.actions.append(action.clone())
        self.results.append(result)
        return result


SMALL = PPOSettings(n_steps=8, minibatch_size=32, update_epochs=2, target_kl=None, lr=1e-3)


def make_policy(env, hidden=(32, 32), shared=False, init_log_std=-0.5):
    cfg = MLPEncoderConfig(hidden_sizes=list(hidden), shared=shared)
    return policy_from_config(cfg, init_log_std, env.lookback, env.n_assets, env.n_features)


def comparable(history):
    """Metrics without the timing, NaN made comparable (nan != nan)."""
    return [{k: "nan" if v != v else v for k, v in m.items() if k != "steps_per_second"} for m in history]


def run(cfg=SMALL, total_steps=512, seed=0, env=None, hidden=(32, 32), shared=False, precision="32"):
    torch.manual_seed(seed)
    env = env or TargetEnv()
    ppo = PPO(make_policy(env, hidden, shared), env, cfg, total_steps, precision)
    history = []
    ppo.learn(history.append)
    return history


# ------------------------------------------------------------------------- loss pieces
def test_clipped_surrogate_on_hand_made_numbers():
    ratio = torch.tensor([0.5, 1.5, 1.1, 0.7], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss = clipped_surrogate(ratio, adv, clip_coef=0.2)
    # per sample max(-A r, -A clamp(r)): -0.5, -1.2 (clipped), 1.1, 0.8 (clipped)
    assert loss.item() == pytest.approx((-0.5 - 1.2 + 1.1 + 0.8) / 4)
    loss.backward()
    # The clipped samples give no gradient: the ratio cannot be pushed further out of the band.
    torch.testing.assert_close(ratio.grad, torch.tensor([-0.25, 0.0, 0.25, 0.0]))


def test_value_loss_clips_to_the_old_value_band():
    new, old, ret = torch.tensor([2.0, 1.05]), torch.tensor([1.0, 1.0]), torch.tensor([3.0, 0.0])
    # unclipped squared errors: 1.0, 1.1025; clipped predictions 1.2, 1.05 -> 3.24, 1.1025
    assert value_loss(new, old, ret, clip_coef=None).item() == pytest.approx(0.5 * (1.0 + 1.1025) / 2)
    assert value_loss(new, old, ret, clip_coef=0.2).item() == pytest.approx(0.5 * (3.24 + 1.1025) / 2)


def test_approx_kl_is_zero_for_equal_policies_and_positive_otherwise():
    assert approx_kl(torch.zeros(5)).item() == 0.0
    log_ratio = torch.tensor([0.1, -0.2, 0.3])
    expected = ((log_ratio.exp() - 1) - log_ratio).mean()
    assert approx_kl(log_ratio).item() == pytest.approx(expected.item())
    assert expected > 0


def test_explained_variance():
    target = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(target, target) == 1.0
    assert explained_variance(torch.full((4,), 2.5), target) == pytest.approx(0.0)
    assert math.isnan(explained_variance(target, torch.ones(4)))


def gae_loop(rewards, values, dones, next_value, gamma, lam):
    """Reference: the textbook backward recursion, one scalar at a time."""
    T, B = len(rewards), len(rewards[0])
    advantages = [[0.0] * B for _ in range(T)]
    for b in range(B):
        last = 0.0
        for t in reversed(range(T)):
            next_v = next_value[b] if t == T - 1 else values[t + 1][b]
            nonterminal = 0.0 if dones[t][b] else 1.0
            delta = rewards[t][b] + gamma * next_v * nonterminal - values[t][b]
            last = delta + gamma * lam * nonterminal * last
            advantages[t][b] = last
    return torch.tensor(advantages)


def test_gae_matches_a_scalar_loop():
    g = torch.Generator().manual_seed(3)
    rewards, values = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g)
    dones, next_value = torch.rand(12, 5, generator=g) < 0.2, torch.randn(5, generator=g)
    got = gae(rewards, values, dones, next_value, gamma=0.97, lam=0.9)
    want = gae_loop(rewards.tolist(), values.tolist(), dones.tolist(), next_value.tolist(), 0.97, 0.9)
    torch.testing.assert_close(got, want)


def test_gae_special_cases_are_td_error_and_discounted_return():
    rewards, values = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[0.5], [0.6], [0.7]])
    dones, next_value, gamma = torch.zeros(3, 1, dtype=torch.bool), torch.tensor([0.8]), 0.9
    td = gae(rewards, values, dones, next_value, gamma, lam=0.0)
    torch.testing.assert_close(td[:, 0], torch.tensor([1 + 0.9 * 0.6 - 0.5, 2 + 0.9 * 0.7 - 0.6, 3 + 0.9 * 0.8 - 0.7]))
    mc = gae(rewards, values, dones, next_value, gamma, lam=1.0) + values
    torch.testing.assert_close(mc[0, 0], torch.tensor(1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 0.8))


def test_gae_with_a_truncation_bootstrapped_into_the_reward():
    # Episode ends (time limit) after step 1, whose final observation is worth 10; step 2 starts a new one.
    gamma, lam, final_value = 0.9, 0.8, 10.0
    rewards, values = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[0.5], [0.6], [0.7]])
    dones, next_value = torch.tensor([[False], [True], [False]]), torch.tensor([0.8])
    rewards[1] += gamma * final_value
    adv = gae(rewards, values, dones, next_value, gamma, lam)[:, 0]
    delta1 = 2.0 + gamma * final_value - 0.6  # the new episode's value 0.7 is not used
    delta0 = 1.0 + gamma * 0.6 - 0.5
    torch.testing.assert_close(adv[2], torch.tensor(3.0 + gamma * 0.8 - 0.7))
    torch.testing.assert_close(adv[1], torch.tensor(delta1))
    torch.testing.assert_close(adv[0], torch.tensor(delta0 + gamma * lam * delta1))


# ------------------------------------------------------------------------------ PPO loop
def test_rollout_bootstraps_truncated_episodes_with_the_final_observation_value():
    torch.manual_seed(0)
    env = RecordingEnv(num_envs=4, episode_length=3)
    ppo = PPO(make_policy(env), env, replace(SMALL, gamma=0.9), total_steps=32)
    rollout, *_ = ppo._collect(env.reset(), torch.zeros(4))
    raw = torch.stack([r.reward for r in env.results])
    dones = torch.stack([r.done for r in env.results])
    assert dones.any() and (dones == rollout.dones).all()
    final = [r.final_obs for r in env.results]
    with torch.no_grad():
        final_values = torch.stack([ppo.policy.value(env.window(o.bar), o.weights) for o in final])
    torch.testing.assert_close(rollout.rewards, raw + 0.9 * final_values * dones)
    torch.testing.assert_close(rollout.actions, torch.stack(env.actions))  # stored unclipped


def test_each_epoch_uses_every_sample_exactly_once_including_the_last_partial_minibatch():
    env = RecordingEnv(num_envs=4)
    torch.manual_seed(0)
    policy = make_policy(env)
    seen = []
    evaluate = policy.evaluate

    def recording_evaluate(window, weights, action):
        seen.append(action.detach().clone())
        return evaluate(window, weights, action)

    policy.evaluate = recording_evaluate
    cfg = replace(SMALL, n_steps=6, minibatch_size=10, update_epochs=3)  # batch 24 -> 10, 10, 4
    PPO(policy, env, cfg, total_steps=24).learn()
    assert [len(a) for a in seen] == [10, 10, 4] * 3
    rollout_actions = torch.cat(env.actions)  # (24, A)
    for epoch in range(3):
        used = torch.cat(seen[3 * epoch : 3 * epoch + 3])
        assert sorted(map(tuple, used.tolist())) == sorted(map(tuple, rollout_actions.tolist()))


def test_target_kl_stops_the_epoch_loop_early():
    stopped = run(replace(SMALL, update_epochs=6, target_kl=1e-9, minibatch_size=16), total_steps=128)
    assert [m["epochs_run"] for m in stopped] == [1]
    assert stopped[0]["approx_kl"] > 1e-9
    full = run(replace(SMALL, update_epochs=6, target_kl=None, minibatch_size=16), total_steps=128)
    assert [m["epochs_run"] for m in full] == [6]


def test_learning_rate_anneals_linearly_towards_zero():
    history = run(replace(SMALL, lr=1e-3, anneal_lr=True), total_steps=128 * 10)
    rates = [m["learning_rate"] for m in history]
    assert len(rates) == 10
    assert rates == pytest.approx([1e-3 * (1 - u / 10) for u in range(10)])
    constant = run(replace(SMALL, lr=1e-3, anneal_lr=False), total_steps=128 * 3)
    assert [m["learning_rate"] for m in constant] == [1e-3] * 3


def test_total_steps_round_down_to_whole_updates_of_at_least_one():
    env = TargetEnv()  # 16 envs x 8 steps = 128 steps per update
    ppo = PPO(make_policy(env), env, SMALL, total_steps=128 * 3 + 100)
    assert (ppo.num_updates, ppo.total_steps) == (3, 384)
    ppo = PPO(make_policy(env), env, SMALL, total_steps=10)
    assert (ppo.num_updates, ppo.total_steps) == (1, 128)


@pytest.mark.parametrize("shared", [False, True])
def test_metrics_are_reported_after_every_update(shared):
    history = run(total_steps=128 * 3, shared=shared)
    assert [m["update"] for m in history] == [1, 2, 3]
    assert [m["global_step"] for m in history] == [128, 256, 384]
    expected = {
        "global_step", "update", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction",
        "explained_variance", "steps_per_second", "learning_rate", "grad_norm", "episode_reward", "step_reward",
        "epochs_run", "log_std",
    }  # fmt: skip
    assert all(set(m) == expected for m in history)
    assert all(math.isfinite(m[k]) for m in history for k in expected)  # 8-step episodes end in every rollout


def test_episode_reward_is_nan_when_no_episode_ends_and_the_step_reward_is_always_there():
    history = run(replace(SMALL, n_steps=4), env=TargetEnv(episode_length=8), total_steps=128)
    assert math.isnan(history[0]["episode_reward"])
    assert math.isfinite(history[1]["episode_reward"])
    assert all(math.isfinite(m["step_reward"]) for m in history)
    # An 8-step episode's reward sums its steps: the mean over the two 4-step rollouts it spans, times 8.
    assert history[1]["episode_reward"] == pytest.approx(4 * (history[0]["step_reward"] + history[1]["step_reward"]), rel=1e-5)


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_same_seed_gives_identical_metrics_and_another_seed_does_not(precision):
    first, second, other = (run(seed=seed, precision=precision) for seed in (5, 5, 6))
    assert comparable(first) == comparable(second)
    assert comparable(first) != comparable(other)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_ppo_learns_the_toy_task(precision):
    cfg = PPOSettings(n_steps=16, minibatch_size=64, update_epochs=4, lr=3e-3, target_kl=None, gamma=0.9)
    env = TargetEnv(num_envs=16, episode_length=8)
    history = run(cfg, total_steps=256 * 40, env=env, hidden=(64, 64), precision=precision)
    first = sum(m["episode_reward"] for m in history[:3]) / 3
    last = sum(m["episode_reward"] for m in history[-3:]) / 3
    assert last > 0.3 * first  # rewards are negative: the squared error drops by more than 70 %


def test_bf16_mixed_runs_the_encoders_in_bfloat16_and_keeps_parameters_and_adam_state_float32():
    torch.manual_seed(0)
    env = TargetEnv()
    policy = make_policy(env)
    encoder_dtypes = set()
    for encoder in (policy.actor_encoder, policy.critic_encoder):
        encoder.register_forward_hook(lambda module, args, out: encoder_dtypes.add(out.dtype))
    ppo = PPO(policy, env, SMALL, total_steps=128, precision="bf16-mixed")
    history = []
    ppo.learn(history.append)
    assert encoder_dtypes == {torch.bfloat16}
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in policy.parameters())
    assert all(v.dtype == torch.float32 for state in ppo.optimizer.state.values() for v in state.values())
    assert all(math.isfinite(v) for v in history[0].values())


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_first_minibatch_of_an_update_has_ratio_one(precision):
    """Rollout and update run the same forward (bf16 included), so before the first optimiser step
    the new log-probs equal the stored ones. One epoch of one minibatch makes every update's
    approx_kl that first minibatch's; with mismatched precisions it reaches ~1e-7 here."""
    cfg = replace(SMALL, update_epochs=1, minibatch_size=128, lr=3e-3)
    history = run(cfg, total_steps=128 * 10, hidden=(64, 64), precision=precision)
    assert all(m["approx_kl"] <= 1e-8 and m["clip_fraction"] == 0.0 for m in history)


def test_rejects_an_unknown_precision():
    env = TargetEnv()
    with pytest.raises(ValueError, match=r"precision='16-mixed' is not supported; choose one of \['32', 'bf16"):
        PPO(make_policy(env), env, SMALL, 512, precision="16-mixed")


def test_rejects_a_policy_built_for_other_sizes_and_an_oversized_minibatch():
    env = TargetEnv()
    wrong = policy_from_config(MLPEncoderConfig(hidden_sizes=[8]), -0.5, env.lookback + 1, env.n_assets, env.n_features)
    with pytest.raises(ValueError, match="built for .* but the env has"):
        PPO(wrong, env, SMALL, 512)
    with pytest.raises(ValueError, match="minibatch_size=4096 exceeds the rollout batch"):
        PPO(make_policy(env), env, replace(SMALL, minibatch_size=4096), 512)


def test_ppo_trains_on_the_real_portfolio_env():
    from cappuccino.data.tensors import MarketTensors, Segment
    from cappuccino.env import EpisodeSampling, PortfolioEnv
    from cappuccino.trading.rules import TradingRules

    def train_once():
        g = torch.Generator().manual_seed(0)
        n_bars, n_assets = 300, 3
        returns = 0.01 * torch.randn(n_bars, n_assets, generator=g, dtype=torch.float64)
        close = 100.0 * torch.exp(torch.cumsum(returns, 0))
        open_ = torch.cat([close[:1], close[:-1]])
        features = torch.randn(n_bars, n_assets, 4, generator=g)
        symbols = tuple(f"S{i}" for i in range(n_assets))
        market = MarketTensors(features, open_, close, lookback=5, symbols=symbols)
        rules = TradingRules(min_order_size=dict.fromkeys(symbols, 0.0))
        sampling = EpisodeSampling(num_envs=4, episode_length=12)
        env = PortfolioEnv(market, [Segment(0, n_bars)], rules=rules, sampling=sampling)
        return run(replace(SMALL, minibatch_size=16), total_steps=4 * 8 * 3, env=env)

    first, second = train_once(), train_once()
    assert len(first) == 3
    assert all(math.isfinite(m[k]) for m in first for k in m if k != "episode_reward")
    assert math.isnan(first[0]["episode_reward"]) and math.isfinite(first[-1]["episode_reward"])
    assert comparable(first) == comparable(second)
