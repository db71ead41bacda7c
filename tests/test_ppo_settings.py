"""Every PPOSettings field pinned by a test that fails if the setting is ignored, inverted or mis-scaled.

The problems are tiny and deterministic, with answers worked out by hand: a scripted env whose
rewards do not depend on the action and a critic whose output is a constant ``c`` (head weights
zeroed), so the first minibatch's advantages, returns and losses are known in closed form; and a
zero-advantage problem on which only the entropy bonus moves the policy (its log-std, by ``lr``
per Adam step). Everything runs through ``PPO.learn`` (``on_update`` metrics). Where a number
inside an update is needed, the test observes the real code: spies that wrap (and call) the
module's ``clipped_surrogate`` / ``value_loss`` / ``approx_kl``, and a wrapper around
``optimizer.step`` that records the gradient and learning rate the optimiser actually used.

Field -> tests:
  lr                 test_entropy_bonus_raises_log_std_by_lr_per_step, test_learning_rate_used_by_the_optimiser
  anneal_lr          test_learning_rate_used_by_the_optimiser
  n_steps            test_batch_shape_and_number_of_optimiser_steps, test_one_update_matches_hand_computed_values
  gamma, gae_lambda  test_one_update_matches_hand_computed_values, test_gae_hand_numbers_tell_gamma_from_lambda
  update_epochs      test_batch_shape_and_number_of_optimiser_steps, test_target_kl_stops_after_the_epoch_whose_kl_exceeds_it
  minibatch_size     test_batch_shape_and_number_of_optimiser_steps
  clip_coef          test_policy_loss_and_clip_fraction_use_clip_coef, test_value_clipping_follows_clip_value_loss
  clip_value_loss    test_value_clipping_follows_clip_value_loss, test_value_loss_clipped_branch_hand_numbers
  vf_coef, ent_coef  test_loss_gradient_is_pg_minus_ent_coef_entropy_plus_vf_coef_value, test_vf_coef_scales_the_critic_gradient,
                     test_entropy_bonus_raises_log_std_by_lr_per_step
  max_grad_norm      test_max_grad_norm_bounds_the_step_and_the_pre_clip_norm_is_reported
  target_kl          test_target_kl_stops_after_the_epoch_whose_kl_exceeds_it
  norm_adv           test_one_update_matches_hand_computed_values, test_norm_adv_changes_the_gradient_iff_advantages_are_not_normalised
  final_log_std      test_final_log_std_sets_each_updates_exploration_on_a_line_and_adam_never_moves_it
  (validation)       test_settings_bounds

The last section holds what mutation testing (see TESTING.md) found unpinned: the episode-reward
bookkeeping across rollouts, the steps-per-second clock, precision plumbing (windows gathered in
the compute dtype, the env stepped outside autocast), buffer dtypes and full error messages.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import cappuccino.agents.ppo as ppo_module
from cappuccino.agents.ppo import PPO, PPOSettings, Rollout, clipped_surrogate, gae, normalize, trainable, value_loss
from cappuccino.config import MLPEncoderConfig
from cappuccino.env.portfolio import Observation, StepResult
from cappuccino.errors import ArgumentError
from cappuccino.models.loading import policy_from_config

LOG_2PI_E = 1.0 + math.log(2.0 * math.pi)  # entropy of N(mu, sigma) = 0.5 * LOG_2PI_E + log sigma


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine is shared and the problems are tiny."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ScriptedEnv:
    """BatchedEnv whose episodes follow a script: env ``b`` starts every episode at bar ``start[b]``
    and its reward at episode step ``t`` is ``base[b, t] - action_cost * sum((clamp(a) - aim)^2)``.
    With ``action_cost=0`` rewards, bars and dones are independent of the policy."""

    def __init__(self, num_envs=2, n_assets=2, lookback=2, n_features=2, episode_length=3, base=None, action_cost=0.0, aim=0.5):
        g = torch.Generator().manual_seed(11)
        self.num_envs, self.n_assets, self.n_features, self.lookback = num_envs, n_assets, n_features, lookback
        self.device = torch.device("cpu")
        self.episode_length = episode_length
        self.features = torch.rand(lookback + 8 * num_envs + episode_length + 1, n_assets, n_features, generator=g) * 2 - 1
        self.start = lookback - 1 + 8 * torch.arange(num_envs)
        self.base = torch.zeros(num_envs, episode_length) if base is None else torch.as_tensor(base, dtype=torch.float32)
        self.action_cost, self.aim = action_cost, aim
        self.env_steps = 0
        self.bar, self.t = self.start.clone(), torch.zeros(num_envs, dtype=torch.long)
        self.weights = torch.full((num_envs, n_assets + 1), 1.0 / (n_assets + 1))

    def reset(self) -> Observation:
        self.bar, self.t = self.start.clone(), torch.zeros(self.num_envs, dtype=torch.long)
        return Observation(self.bar.clone(), self.weights.clone())

    def step(self, action: torch.Tensor) -> StepResult:
        self.env_steps += 1
        clamped = action.clamp(-1.0, 1.0)
        reward = self.base[torch.arange(self.num_envs), self.t] - self.action_cost * ((clamped - self.aim) ** 2).sum(-1)
        self.bar, self.t = self.bar + 1, self.t + 1
        done = self.t >= self.episode_length
        final_obs = Observation(self.bar.clone(), self.weights.clone())
        self.bar = torch.where(done, self.start, self.bar)
        self.t = self.t.masked_fill(done, 0)
        zeros = torch.zeros(self.num_envs)
        return StepResult(Observation(self.bar.clone(), self.weights.clone()), reward, done, final_obs, zeros, zeros, zeros)

    def window(self, bar: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        offsets = torch.arange(-self.lookback + 1, 1)
        return self.features[bar[:, None] + offsets].to(dtype)


def make_policy(env, *, seed=0, hidden=(16,), init_log_std=-0.5, critic_value=None, shared=False):
    """A small MLP actor-critic; ``critic_value``: zero the critic head so V(s) == critic_value."""
    torch.manual_seed(seed)
    policy = policy_from_config(MLPEncoderConfig(hidden_sizes=list(hidden), shared=shared), init_log_std, env.lookback, env.n_assets, env.n_features)
    if critic_value is not None:
        with torch.no_grad():
            policy.critic_head.weight.zero_()
            policy.critic_head.bias.fill_(critic_value)
    return policy


# No clipping, no early stop, no annealing, unless a test asks for it.
BASE = PPOSettings(
    lr=1e-2, anneal_lr=False, n_steps=4, gamma=0.9, gae_lambda=0.9, update_epochs=1, minibatch_size=8,
    clip_coef=0.2, clip_value_loss=False, vf_coef=0.5, ent_coef=0.0, max_grad_norm=1e9, target_kl=None, norm_adv=False,
)  # fmt: skip


class OptimizerProbe:
    """Wraps ``ppo.optimizer.step``: records, per step, the learning rate and the gradients the step uses."""

    def __init__(self, ppo: PPO):
        self.params = trainable(ppo.policy)
        self.lrs: list[float] = []
        self.grads: list[torch.Tensor] = []  # flattened gradient of every trainable parameter
        step = ppo.optimizer.step

        def recording_step(*args, **kwargs):
            self.lrs.append(ppo.optimizer.param_groups[0]["lr"])
            self.grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in self.params]).clone())
            return step(*args, **kwargs)

        ppo.optimizer.step = recording_step

    @property
    def norms(self) -> list[float]:
        return [g.norm().item() for g in self.grads]


class Spy:
    """Replaces ``cappuccino.agents.ppo.<name>`` with a wrapper that records (args, result) and
    returns the real function's result; ``after`` (optional) then sees the live (args, result)."""

    def __init__(self, monkeypatch, name: str, after=None):
        real = getattr(ppo_module, name)
        self.calls: list[tuple[tuple, torch.Tensor]] = []

        def spy(*args):
            result = real(*args)
            self.calls.append((tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args), result.detach().clone()))
            if after is not None:
                after(args, result)
            return result

        monkeypatch.setattr(ppo_module, name, spy)


def learn(policy, env, settings, total_steps=None, probe=True):
    """(metrics per update, optimiser probe, ppo) of one ``PPO.learn`` with torch seeded."""
    torch.manual_seed(1)
    ppo = PPO(policy, env, settings, total_steps or env.num_envs * settings.n_steps)
    recorder = OptimizerProbe(ppo) if probe else None
    history: list[dict[str, float]] = []
    ppo.learn(history.append)
    return history, recorder, ppo


# ------------------------------------------------------------------- pure functions, hand numbers
def test_gae_hand_numbers_tell_gamma_from_lambda():
    # rewards (1, 2), V = 0, V(s_2) = 4, no done: delta_1 = 2 + 4 gamma, delta_0 = 1, A_0 = 1 + gamma lam A_1.
    rewards, values, dones, next_value = torch.tensor([[1.0], [2.0]]), torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.bool), torch.tensor([4.0])
    torch.testing.assert_close(gae(rewards, values, dones, next_value, gamma=0.5, lam=0.25)[:, 0], torch.tensor([1.5, 4.0]))
    torch.testing.assert_close(gae(rewards, values, dones, next_value, gamma=0.25, lam=0.5)[:, 0], torch.tensor([1.375, 3.0]))
    # a done at step 0 cuts both the bootstrap V(s_1) and the recursion: A_0 = r_0 - V(s_0)
    values = torch.tensor([[0.5], [0.0]])
    adv = gae(rewards, values, torch.tensor([[True], [False]]), next_value, gamma=0.5, lam=0.25)[:, 0]
    torch.testing.assert_close(adv, torch.tensor([0.5, 4.0]))


def test_normalize_is_population_standardisation():
    x = torch.tensor([3.0, -1.0])  # mean 1, population std 2
    torch.testing.assert_close(normalize(x), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(normalize(torch.tensor([5.0])), torch.tensor([0.0]))  # one sample stays finite
    tiny = torch.tensor([1e-9, -1e-9])  # std 1e-9 < the 1e-8 guard: shrunk towards 0, signs kept
    torch.testing.assert_close(normalize(tiny), tiny / 1.1e-8)


def test_clipped_surrogate_hand_numbers_at_two_clip_coefs():
    ratio, adv = torch.tensor([1.25, 0.6]), torch.tensor([1.0, -2.0])
    # eps 0.1: max(-1.25, -1.1) = -1.1 ; max(1.2, 1.8) = 1.8   eps 0.3: -1.25 ; max(1.2, 1.4) = 1.4
    assert clipped_surrogate(ratio, adv, 0.1).item() == pytest.approx((-1.1 + 1.8) / 2)
    assert clipped_surrogate(ratio, adv, 0.3).item() == pytest.approx((-1.25 + 1.4) / 2)


def test_value_loss_clipped_branch_hand_numbers():
    # old 1, return 3: new 2 moved 1 beyond the band [0.8, 1.2]; clipped prediction 1.2 -> error 3.24 > 1
    new = torch.tensor([2.0, 1.1], requires_grad=True)
    old, ret = torch.tensor([1.0, 1.0]), torch.tensor([3.0, 0.0])
    clipped = value_loss(new, old, ret, clip_coef=0.2)
    assert clipped.item() == pytest.approx(0.5 * (3.24 + 1.21) / 2)
    clipped.backward()
    # the clipped branch is constant in ``new``: no gradient; the in-band sample keeps 0.5 * 2 * (1.1 - 0) / 2
    torch.testing.assert_close(new.grad, torch.tensor([0.0, 0.55]))
    unclipped = value_loss(new, old, ret, clip_coef=None)
    assert unclipped.item() == pytest.approx(0.5 * (1.0 + 1.21) / 2)


# ---------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "field, bad, good, message",
    [
        ("lr", 0.0, 1e-9, "must be > 0, got 0.0"),
        ("n_steps", 0, 1, "must be >= 1, got 0"),
        ("gamma", 0.0, 1.0, "must be in (0, 1], got 0.0"),
        ("gamma", 1.01, 1e-6, "must be in (0, 1], got 1.01"),
        ("gae_lambda", -0.01, 0.0, "must be in [0, 1], got -0.01"),
        ("gae_lambda", 1.01, 1.0, "must be in [0, 1], got 1.01"),
        ("update_epochs", 0, 1, "must be >= 1, got 0"),
        ("minibatch_size", 0, 1, "must be >= 1, got 0"),
        ("clip_coef", 0.0, 1e-9, "must be > 0, got 0.0"),
        ("vf_coef", -0.01, 0.0, "must be >= 0, got -0.01"),
        ("ent_coef", -0.01, 0.0, "must be >= 0, got -0.01"),
        ("max_grad_norm", 0.0, 1e-9, "must be > 0, got 0.0"),
        ("target_kl", 0.0, None, "must be > 0 or null, got 0.0"),
        ("target_kl", -1.0, 1e-9, "must be > 0 or null, got -1.0"),
        ("micro_batch_size", 0, 1, "must be in [1, minibatch_size=8] or null (the whole minibatch), got 0"),
        ("micro_batch_size", 9, 8, "must be in [1, minibatch_size=8] or null (the whole minibatch), got 9"),
    ],
)
def test_settings_bounds(field, bad, good, message):
    assert getattr(replace(BASE, **{field: good}), field) == good
    with pytest.raises(ArgumentError) as caught:
        replace(BASE, **{field: bad})
    assert (caught.value.argument, caught.value.message) == (field, message)


# ---------------------------------------------------------------------- one update, by hand
GAMMA, LAM, C = 0.8, 0.5, 0.5
SCRIPT = [[1.0, -0.5, 2.0], [0.25, 0.0, -1.0]]  # base reward of env b at episode step t


def hand_advantages() -> torch.Tensor:
    """(T=4, B=2) GAE of the scripted rollout: steps 0-2 are one episode (truncated after step 2,
    so its reward gets gamma * V(final) = gamma * C), step 3 starts the next; V == C everywhere."""
    columns = []
    for r in SCRIPT:
        a3 = r[0] + GAMMA * C - C  # first step of episode 2, bootstrapped from next_value = C
        a2 = (r[2] + GAMMA * C) - C  # done: no V(s_3), no recursion
        a1 = r[1] + GAMMA * C - C + GAMMA * LAM * a2
        a0 = r[0] + GAMMA * C - C + GAMMA * LAM * a1
        columns.append([a0, a1, a2, a3])
    return torch.tensor(columns).T


@pytest.mark.parametrize("norm_adv", [False, True])
def test_one_update_matches_hand_computed_values(monkeypatch, norm_adv):
    env = ScriptedEnv(num_envs=2, episode_length=3, base=SCRIPT)
    settings = replace(BASE, gamma=GAMMA, gae_lambda=LAM, n_steps=4, minibatch_size=8, norm_adv=norm_adv, lr=1e-3)
    surrogate, values = Spy(monkeypatch, "clipped_surrogate"), Spy(monkeypatch, "value_loss")
    (m,), _, _ = learn(make_policy(env, critic_value=C), env, settings)

    adv = hand_advantages().flatten()
    assert adv.mean().abs() > 0.1 and abs(adv.std(correction=0) - 1) > 0.1  # not normalised already
    (ratio, seen_adv, clip), _ = surrogate.calls[0]
    expected_adv = (adv - adv.mean()) / adv.std(correction=0) if norm_adv else adv
    torch.testing.assert_close(seen_adv.sort().values, expected_adv.sort().values)
    torch.testing.assert_close(ratio, torch.ones(8))
    assert clip == settings.clip_coef
    (new_v, old_v, returns, _), _ = values.calls[0]
    torch.testing.assert_close(returns.sort().values, (adv + C).sort().values)
    torch.testing.assert_close(old_v, torch.full((8,), C))
    torch.testing.assert_close(new_v, torch.full((8,), C))

    entropy = env.n_assets * (0.5 * LOG_2PI_E - 0.5)
    assert m["policy_loss"] == pytest.approx(-expected_adv.mean().item(), abs=1e-6)
    assert m["value_loss"] == pytest.approx(0.5 * (adv**2).mean().item(), rel=1e-6)
    assert m["entropy"] == pytest.approx(entropy, rel=1e-6)
    assert (m["approx_kl"], m["clip_fraction"], m["epochs_run"]) == (0.0, 0.0, 1)
    assert m["explained_variance"] == pytest.approx(0.0, abs=1e-6)  # V is constant
    assert m["episode_reward"] == pytest.approx((sum(SCRIPT[0]) + sum(SCRIPT[1])) / 2)  # raw, unbootstrapped
    assert (m["update"], m["global_step"], m["learning_rate"]) == (1, 8, 1e-3)


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (1.0, 2.0)])
def test_norm_adv_changes_the_gradient_iff_advantages_are_not_normalised(mean, std):
    """One step, no episode end, V == 0: the advantages are the rewards ``mean + std * (1, -1)``."""
    grads = {}
    for norm_adv in (False, True):
        env = ScriptedEnv(num_envs=2, episode_length=5, base=[[mean + std] * 5, [mean - std] * 5])
        settings = replace(BASE, n_steps=1, minibatch_size=2, norm_adv=norm_adv, vf_coef=0.0)
        _, probe, _ = learn(make_policy(env, critic_value=0.0), env, settings)
        grads[norm_adv] = probe.grads[0]
    assert grads[False].norm() > 1e-4
    if (mean, std) == (0.0, 1.0):
        torch.testing.assert_close(grads[True], grads[False])
    else:
        assert (grads[True] - grads[False]).norm() > 0.1 * grads[False].norm()


# ------------------------------------------------------------------ entropy, vf_coef, lr
@pytest.mark.parametrize("ent_coef, lr", [(0.0, 1e-2), (0.05, 1e-2), (0.2, 3e-2)])
def test_entropy_bonus_raises_log_std_by_lr_per_step(ent_coef, lr):
    """Zero rewards and V == 0 make every advantage 0: only the entropy bonus has a gradient,
    d(-ent_coef * mean entropy)/d log_std = -ent_coef per asset, and Adam moves log_std by ~lr per step."""
    env = ScriptedEnv(num_envs=2, episode_length=3)
    policy = make_policy(env, critic_value=0.0, init_log_std=-0.5)
    actor_head = policy.actor_head.weight.detach().clone()
    settings = replace(BASE, ent_coef=ent_coef, lr=lr, update_epochs=2, norm_adv=True)
    (m,), probe, _ = learn(policy, env, settings)

    steps, g = 2, ent_coef  # |gradient| on each log_std; Adam (eps 1e-5) steps by lr * g / (g + eps)
    expected = -0.5 + (steps * lr * g / (g + 1e-5) if ent_coef > 0 else 0.0)
    torch.testing.assert_close(policy.log_std.detach(), torch.full((env.n_assets,), expected), rtol=0, atol=2e-7)
    torch.testing.assert_close(policy.actor_head.weight.detach(), actor_head, rtol=0, atol=0)  # no policy-gradient
    # the pre-clip gradient is exactly -ent_coef on each log_std: norm ent_coef * sqrt(A)
    assert m["grad_norm"] == pytest.approx(ent_coef * math.sqrt(env.n_assets), rel=1e-6, abs=1e-12)
    assert probe.norms == pytest.approx([ent_coef * math.sqrt(env.n_assets)] * steps, rel=1e-6, abs=1e-12)
    # mean over the two minibatches of A * (0.5 log(2 pi e) + log_std): log_std before step 1 and before step 2
    mean_log_std = -0.5 + (lr / 2 if ent_coef > 0 else 0.0)
    assert m["entropy"] == pytest.approx(env.n_assets * (0.5 * LOG_2PI_E + mean_log_std), rel=1e-5)
    assert (m["policy_loss"], m["value_loss"]) == (0.0, 0.0)


@pytest.mark.parametrize("ent_coef, vf_coef", [(0.0, 0.5), (0.1, 0.0), (0.03, 2.0)])
def test_loss_gradient_is_pg_minus_ent_coef_entropy_plus_vf_coef_value(monkeypatch, ent_coef, vf_coef):
    """At every optimiser step the gradient is that of pg_loss - ent_coef * mean(entropy) + vf_coef * v_loss,
    each piece taken from the real functions' outputs in that minibatch."""
    env = ScriptedEnv(num_envs=4, episode_length=3, base=torch.rand(4, 3, generator=torch.Generator().manual_seed(2)), action_cost=1.0)
    policy = make_policy(env)
    params = trainable(policy)
    expected: list[torch.Tensor] = []
    pieces: dict[str, torch.Tensor] = {}
    evaluate = policy.evaluate

    def recording_evaluate(*args):
        out = evaluate(*args)
        pieces["entropy"] = out[1]
        return out

    policy.evaluate = recording_evaluate
    Spy(monkeypatch, "clipped_surrogate", after=lambda args, out: pieces.__setitem__("pg", out))

    def expected_gradient(args, v_loss):
        total = pieces["pg"] - ent_coef * pieces["entropy"].mean() + vf_coef * v_loss
        grads = torch.autograd.grad(total, params, retain_graph=True, allow_unused=True)
        expected.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)]))

    Spy(monkeypatch, "value_loss", after=expected_gradient)
    settings = replace(BASE, ent_coef=ent_coef, vf_coef=vf_coef, update_epochs=2, n_steps=4, minibatch_size=8, norm_adv=True)
    _, probe, _ = learn(policy, env, settings)
    assert len(probe.grads) == len(expected) == 4
    for got, want in zip(probe.grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("vf_coef", [0.0, 0.25, 2.0])
def test_vf_coef_scales_the_critic_gradient(monkeypatch, vf_coef):
    """With the actor frozen the only gradient is the critic's: vf_coef * grad(value_loss)."""
    env = ScriptedEnv(num_envs=2, episode_length=3, base=SCRIPT)
    policy = make_policy(env)
    for module in (policy.actor_encoder, policy.actor_head):
        module.requires_grad_(False)
    policy.log_std.requires_grad_(False)
    critic = trainable(policy)
    unit: list[float] = []

    def critic_gradient_norm(args, v_loss):
        grads = torch.autograd.grad(v_loss, critic, retain_graph=True)
        unit.append(torch.cat([g.flatten() for g in grads]).norm().item())

    Spy(monkeypatch, "value_loss", after=critic_gradient_norm)
    (m,), probe, _ = learn(policy, env, replace(BASE, vf_coef=vf_coef))
    assert unit[0] > 1e-3
    assert m["grad_norm"] == pytest.approx(vf_coef * unit[0], rel=1e-5, abs=1e-12)
    assert probe.norms == pytest.approx([vf_coef * unit[0]], rel=1e-5, abs=1e-12)


# ------------------------------------------------------------------------------ max_grad_norm
def test_max_grad_norm_bounds_the_step_and_the_pre_clip_norm_is_reported():
    def one_step(max_grad_norm):
        env = ScriptedEnv(num_envs=4, episode_length=3, action_cost=1.0)
        (m,), probe, _ = learn(make_policy(env), env, replace(BASE, max_grad_norm=max_grad_norm, n_steps=4, minibatch_size=16))
        return m, probe

    free, free_probe = one_step(1e9)
    pre = free_probe.norms[0]
    assert free["grad_norm"] == pytest.approx(pre, rel=1e-6)
    clipped, clipped_probe = one_step(pre / 4)
    assert clipped_probe.norms[0] == pytest.approx(pre / 4, rel=1e-5)  # what Adam got: bounded
    torch.testing.assert_close(clipped_probe.grads[0] * 4, free_probe.grads[0], rtol=1e-4, atol=1e-7)  # same direction
    assert clipped["grad_norm"] == pytest.approx(pre, rel=1e-6)  # the reported norm is the pre-clip one

    # many steps: every step Adam takes is within the bound, though the raw gradients exceed it
    env = ScriptedEnv(num_envs=4, episode_length=3, action_cost=1.0)
    history, probe, _ = learn(make_policy(env), env, replace(BASE, max_grad_norm=0.05, n_steps=4, minibatch_size=4, update_epochs=2), total_steps=32)
    assert len(probe.norms) == 16
    assert max(probe.norms) <= 0.05 * (1 + 1e-5)
    assert all(m["grad_norm"] > 0.05 for m in history)


# ---------------------------------------------------------------------------------- clipping
def moving_settings(**overrides):
    """Big steps (lr 0.05, 4 epochs of 2 minibatches): ratios and values leave a 0.05 band."""
    return replace(BASE, lr=5e-2, clip_coef=0.05, update_epochs=4, n_steps=4, minibatch_size=8, norm_adv=True, **overrides)


def surrogate_by_hand(ratio, adv, eps):
    return torch.max(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)).mean()


def test_policy_loss_and_clip_fraction_use_clip_coef(monkeypatch):
    env = ScriptedEnv(num_envs=4, episode_length=3, action_cost=1.0, base=torch.rand(4, 3, generator=torch.Generator().manual_seed(4)))
    surrogate = Spy(monkeypatch, "clipped_surrogate")
    (m,), _, _ = learn(make_policy(env), env, moving_settings())
    eps = 0.05
    outputs, fractions, sensitive = [], [], False
    for (ratio, adv, _), out in surrogate.calls:
        torch.testing.assert_close(out, surrogate_by_hand(ratio, adv, eps))
        sensitive |= abs(surrogate_by_hand(ratio, adv, 2 * eps) - out) > 1e-4
        outputs.append(out.item())
        fractions.append(((ratio - 1).abs() > eps).float().mean().item())
    assert len(outputs) == 8 and sensitive  # some ratios left the band: a wrong clip_coef would show
    assert m["policy_loss"] == pytest.approx(sum(outputs) / 8, rel=1e-5)
    assert m["clip_fraction"] == pytest.approx(sum(fractions) / 8, rel=1e-6)
    assert 0 < m["clip_fraction"] < 1


@pytest.mark.parametrize("clip_value_loss", [False, True])
def test_value_clipping_follows_clip_value_loss(monkeypatch, clip_value_loss):
    env = ScriptedEnv(num_envs=4, episode_length=3, base=SCRIPT * 2)
    values = Spy(monkeypatch, "value_loss")
    (m,), _, _ = learn(make_policy(env), env, moving_settings(clip_value_loss=clip_value_loss))
    eps, outputs, sensitive = 0.05, [], False
    for (new, old, returns, _), out in values.calls:
        unclipped = 0.5 * ((new - returns) ** 2).mean()
        clipped = 0.5 * torch.max((new - returns) ** 2, (old + (new - old).clamp(-eps, eps) - returns) ** 2).mean()
        torch.testing.assert_close(out, clipped if clip_value_loss else unclipped)
        sensitive |= (clipped - unclipped).abs() > 1e-3 * unclipped
        outputs.append(out.item())
    assert len(outputs) == 8 and sensitive  # values left the band: the two branches differ
    assert m["value_loss"] == pytest.approx(sum(outputs) / 8, rel=1e-5)


# ------------------------------------------------------------------ optimiser steps and lr
@pytest.mark.parametrize("num_envs, n_steps, minibatch_size, update_epochs", [(3, 5, 4, 3), (2, 3, 6, 2)])
def test_batch_shape_and_number_of_optimiser_steps(monkeypatch, num_envs, n_steps, minibatch_size, update_epochs):
    env = ScriptedEnv(num_envs=num_envs, episode_length=4, action_cost=1.0)
    values = Spy(monkeypatch, "value_loss")
    settings = replace(BASE, n_steps=n_steps, minibatch_size=minibatch_size, update_epochs=update_epochs)
    batch = num_envs * n_steps
    history, probe, _ = learn(make_policy(env), env, settings, total_steps=2 * batch)
    per_epoch = -(-batch // minibatch_size)
    sizes = [minibatch_size] * (batch // minibatch_size) + ([batch % minibatch_size] if batch % minibatch_size else [])
    assert env.env_steps == 2 * n_steps  # rollout length per env, two updates
    assert [m["global_step"] for m in history] == [batch, 2 * batch]
    assert len(probe.grads) == 2 * update_epochs * per_epoch
    assert [len(new) for (new, *_), _ in values.calls] == sizes * update_epochs * 2
    assert [m["epochs_run"] for m in history] == [update_epochs] * 2


@pytest.mark.parametrize("anneal_lr", [False, True])
def test_learning_rate_used_by_the_optimiser(anneal_lr):
    env = ScriptedEnv(num_envs=2, episode_length=3, action_cost=1.0)
    settings = replace(BASE, lr=3e-3, anneal_lr=anneal_lr, update_epochs=2, minibatch_size=4)  # 2 x 2 steps per update
    history, probe, _ = learn(make_policy(env), env, settings, total_steps=3 * 8)
    per_update = [3e-3 * (1 - u / 3) for u in range(3)] if anneal_lr else [3e-3] * 3
    assert per_update[-1] == pytest.approx(3e-3 / 3 if anneal_lr else 3e-3)  # lr / num_updates at the last update
    assert probe.lrs == pytest.approx([lr for lr in per_update for _ in range(4)])
    assert [m["learning_rate"] for m in history] == pytest.approx(per_update)
    _, _, ppo = learn(make_policy(env), env, settings)
    assert (ppo.optimizer.defaults["eps"], ppo.optimizer.defaults["fused"]) == (1e-5, True)  # the docstring's Adam


# --------------------------------------------------------------------------- final_log_std
def test_final_log_std_sets_each_updates_exploration_on_a_line_and_adam_never_moves_it():
    """Four updates from -0.5 to -2: -0.5, -1, -1.5, -2, the rollout sampling with each (the
    entropy, computed under the update's std, says so), even with an entropy bonus that would raise it."""
    env = ScriptedEnv(num_envs=2, episode_length=3)
    settings = replace(BASE, final_log_std=-2.0, ent_coef=0.5, lr=1e-2, update_epochs=1, minibatch_size=4)
    policy = make_policy(env, critic_value=0.0, init_log_std=-0.5)
    history, _, ppo = learn(policy, env, settings, total_steps=4 * env.num_envs * settings.n_steps, probe=False)
    expected = [-0.5, -1.0, -1.5, -2.0]
    assert [m["entropy"] for m in history] == pytest.approx([env.n_assets * (0.5 * LOG_2PI_E + s) for s in expected], rel=1e-6)
    assert [m["log_std"] for m in history] == pytest.approx(expected)
    torch.testing.assert_close(policy.log_std.detach(), torch.full((env.n_assets,), -2.0))
    assert all(p is not policy.log_std for group in ppo.optimizer.param_groups for p in group["params"])
    learned = make_policy(env, critic_value=0.0, init_log_std=-0.5)
    learn(learned, env, replace(settings, final_log_std=None), total_steps=4 * env.num_envs * settings.n_steps, probe=False)
    assert learned.log_std.mean().item() > -0.5  # without the schedule the entropy bonus raises it
    with pytest.raises(ArgumentError, match="final_log_std"):
        PPOSettings(final_log_std=float("nan"))


# ------------------------------------------------------------------------------- target_kl
def test_target_kl_stops_after_the_epoch_whose_kl_exceeds_it(monkeypatch):
    """The check runs after each epoch on the KL of its last minibatch: with a target between the
    first and second epochs' KLs exactly two epochs run, and approx_kl reports the second's."""
    kls = Spy(monkeypatch, "approx_kl")
    env = ScriptedEnv(num_envs=4, episode_length=3, action_cost=1.0)
    settings = replace(BASE, lr=2e-2, update_epochs=4, n_steps=4, minibatch_size=8, norm_adv=True)  # 2 minibatches an epoch
    (full,), probe, _ = learn(make_policy(env), env, settings)
    epoch_kl = [out.item() for _, out in kls.calls[1::2]]
    assert full["epochs_run"] == 4 and len(probe.grads) == 8 and full["approx_kl"] == epoch_kl[-1]
    assert 0 < epoch_kl[0] < epoch_kl[1]

    for target, epochs in [((epoch_kl[0] + epoch_kl[1]) / 2, 2), (epoch_kl[0] / 2, 1), (10 * max(epoch_kl), 4)]:
        kls.calls.clear()
        env = ScriptedEnv(num_envs=4, episode_length=3, action_cost=1.0)
        (m,), probe, _ = learn(make_policy(env), env, replace(settings, target_kl=target))
        assert (m["epochs_run"], len(probe.grads)) == (epochs, 2 * epochs)
        assert m["approx_kl"] == epoch_kl[epochs - 1]
    # "exceeds": a KL equal to the target (a float32 value, so exactly equal) does not stop the loop
    env = ScriptedEnv(num_envs=4, episode_length=3, action_cost=1.0)
    (m,), _, _ = learn(make_policy(env), env, replace(settings, target_kl=epoch_kl[0]))
    assert m["epochs_run"] == 2


# ------------------------------------------------- bookkeeping and plumbing (mutation-found gaps)
def test_episode_reward_is_the_mean_raw_return_of_episodes_finished_in_each_rollout():
    """3-step episodes, 4-step rollouts: episodes straddle rollouts (returns carry over) and the
    third rollout finishes two per env; every episode's raw return is sum(SCRIPT[b])."""
    env = ScriptedEnv(num_envs=2, episode_length=3, base=SCRIPT)
    history, _, _ = learn(make_policy(env), env, replace(BASE, n_steps=4), total_steps=8 * 3)
    mean_return = (sum(SCRIPT[0]) + sum(SCRIPT[1])) / 2
    assert [m["episode_reward"] for m in history] == pytest.approx([mean_return] * 3)


def test_steps_per_second_is_the_batch_over_the_update_wall_time(monkeypatch):
    ticks = iter([10.0, 10.5, 20.0, 20.25])  # perf_counter at the start and the end of each update
    monkeypatch.setattr(ppo_module, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: next(ticks))}))
    env = ScriptedEnv(num_envs=2, episode_length=3)
    history, _, _ = learn(make_policy(env), env, BASE, total_steps=16)
    assert [m["steps_per_second"] for m in history] == [8 / 0.5, 8 / 0.25]


class PrecisionProbeEnv(ScriptedEnv):
    """Records whether autocast is on inside ``step`` and the dtype every window is gathered in."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.autocast_in_step, self.window_dtypes = set(), set()

    def step(self, action):
        self.autocast_in_step.add(torch.is_autocast_enabled("cpu"))
        return super().step(action)

    def window(self, bar, dtype=torch.float32):
        self.window_dtypes.add(dtype)
        return super().window(bar, dtype)


@pytest.mark.parametrize("precision, dtype", [("32", torch.float32), ("bf16-mixed", torch.bfloat16)])
def test_windows_are_gathered_in_the_compute_dtype_and_the_env_steps_outside_autocast(precision, dtype):
    env = PrecisionProbeEnv(num_envs=2, episode_length=3, action_cost=1.0)  # episodes end: bootstrap windows too
    torch.manual_seed(1)
    PPO(make_policy(env), env, BASE, 8, precision=precision).learn()
    assert env.window_dtypes == {dtype}  # rollout, truncation bootstrap, next value and update alike
    assert env.autocast_in_step == {False}


def test_bf16_mixed_means_bfloat16_whatever_the_default_autocast_dtype(monkeypatch):
    default = torch.get_autocast_dtype("cpu")
    torch.set_autocast_dtype("cpu", torch.float16)
    try:
        env = ScriptedEnv(num_envs=2, episode_length=3)
        policy = make_policy(env)
        seen = set()
        policy.actor_encoder.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
        torch.manual_seed(1)
        PPO(policy, env, BASE, 8, precision="bf16-mixed").learn()
    finally:
        torch.set_autocast_dtype("cpu", default)
    assert seen == {torch.bfloat16}


def test_rollout_buffers_have_the_documented_shapes_and_dtypes():
    rollout = Rollout.empty(3, 2, 4, torch.device("cpu"))
    long, f32 = torch.long, torch.float32
    expected = {
        "bars": ((3, 2), long), "weights": ((3, 2, 5), f32), "actions": ((3, 2, 4), f32), "log_probs": ((3, 2), f32),
        "values": ((3, 2), f32), "rewards": ((3, 2), f32), "dones": ((3, 2), torch.bool), "final_bars": ((3, 2), long),
        "final_weights": ((3, 2, 5), f32),
    }  # fmt: skip
    assert {k: (tuple(v.shape), v.dtype) for k, v in vars(rollout).items()} == expected
    assert all(not v.any() for v in vars(rollout).values())


def test_size_errors_name_the_settings_and_the_fix():
    env = ScriptedEnv(num_envs=2, lookback=2, n_assets=2, n_features=2)
    with pytest.raises(ValueError) as caught:
        PPO(make_policy(env), env, replace(BASE, n_steps=4, minibatch_size=9), 8)
    assert str(caught.value) == (
        "agent.minibatch_size=9 exceeds the rollout batch env.num_envs * agent.n_steps = 2 * 4 = 8; "
        "lower agent.minibatch_size or raise agent.n_steps / env.num_envs"
    )
    wrong = policy_from_config(MLPEncoderConfig(hidden_sizes=[8]), -0.5, 3, 2, 2)
    with pytest.raises(ValueError) as caught:
        PPO(wrong, env, BASE, 8)
    assert str(caught.value) == (
        "policy was built for (lookback, n_assets, n_features) = (3, 2, 2) but the env has (2, 2, 2); "
        "build the ActorCritic with the env's sizes"
    )


# -------------------------------------------------------------------------- micro-batching
@pytest.mark.parametrize("micro_batch_size", [1, 3, 8])
def test_micro_batches_take_the_same_steps_as_whole_minibatches(micro_batch_size):
    """Gradient accumulation over chunks (the last one smaller) is the same update: the same
    gradients at every step, the same parameters after two updates of two epochs, the same
    logged losses; advantages are normalised over the whole minibatch, not per chunk."""
    env_settings = dict(num_envs=4, episode_length=3, base=[[1.0, -0.5, 2.0], [0.25, 0.0, -1.0], [0.5, 0.5, 0.0], [-1.0, 2.0, 1.0]], action_cost=0.3)
    settings = replace(BASE, minibatch_size=8, update_epochs=2, norm_adv=True, clip_value_loss=True, ent_coef=0.01, max_grad_norm=0.5)
    runs = {}
    for micro in (None, micro_batch_size):
        env = ScriptedEnv(**env_settings)
        runs[micro] = learn(make_policy(env), env, replace(settings, micro_batch_size=micro), total_steps=2 * 16)
    (whole, whole_probe, whole_ppo), (chunked, chunked_probe, chunked_ppo) = runs[None], runs[micro_batch_size]
    assert len(whole_probe.grads) == len(chunked_probe.grads) == 2 * 2 * 2  # updates x epochs x minibatches
    for a, b in zip(whole_probe.grads, chunked_probe.grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for a, b in zip(trainable(whole_ppo.policy), trainable(chunked_ppo.policy)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm"):
        assert [m[key] for m in chunked] == pytest.approx([m[key] for m in whole], rel=1e-5, abs=1e-7), key


def test_micro_batching_runs_each_forward_on_one_chunk(monkeypatch):
    env = ScriptedEnv(num_envs=4, episode_length=3)
    surrogate = Spy(monkeypatch, "clipped_surrogate")
    learn(make_policy(env), env, replace(BASE, minibatch_size=8, micro_batch_size=3), total_steps=16)
    assert [len(args[0]) for args, _ in surrogate.calls] == [3, 3, 2, 3, 3, 2]  # two minibatches of 8
