"""Proximal Policy Optimisation, CleanRL style, on the batched torch portfolio env.

One readable algorithm; every equation appears once, in the small functions below:

- GAE(lambda) advantages (:func:`gae`), where ``done`` cuts the recursion. Every episode end in
  this env is a time-limit truncation, so the reward of a step that ended an episode first gets
  ``gamma * V(final_obs)`` added (the value the episode would have continued with).
- The clipped surrogate (:func:`clipped_surrogate`) clips the probability ratio inside a
  ``max`` of the two negated objectives (the ElegantRL code this project family derives from
  scaled the ratio instead, which does not bound the update).
- Optionally clipped value loss (:func:`value_loss`), approximate KL (:func:`approx_kl`).

Choices: Adam(eps=1e-5, fused); learning rate annealed linearly over updates (CleanRL: update
``u`` of ``U`` uses ``lr * (1 - (u - 1) / U)``, so the last one uses ``lr / U``); each epoch
draws minibatches without replacement from one permutation and keeps the last, smaller
minibatch, so every sample is used exactly once per epoch; the target-KL check runs after each
epoch on the KL of that epoch's last minibatch (the most recent policy) and stops the epoch loop.
``micro_batch_size`` runs a minibatch's forward and backward passes in chunks whose weighted
gradients add up to the minibatch's (gradient accumulation; advantages are normalised over the
whole minibatch first): the same step up to float rounding, with the activations of one chunk.
``final_log_std`` schedules exploration instead of learning it: update ``u`` of ``U`` samples
with ``log_std = start + (final - start) * (u - 1) / (U - 1)``. PPO's clip bounds each update's
move of the Gaussian's mean to a fraction of its std, so a small std learns slowly; a large one
learns fast but trades on noise. A schedule explores widely early and acts precisely late.

The rollout buffer keeps bar indices and portfolio weights, never feature windows: windows are
gathered from the env per forward pass, so a 60-bar lookback costs no rollout memory. All
tensors live on ``env.device``; the rollout loop makes no host syncs except one ``nonzero``
per rollout to find the truncated steps.

Precision (``precision``, Lightning's names): ``"32"`` runs everything in float32.
``"bf16-mixed"`` runs the policy's forward passes under ``torch.autocast`` with bfloat16, which
on CPUs with AMX / AVX512-BF16 (and on GPUs) makes the update's large-batch matmuls 2-3x
cheaper. The rollout runs under it too: acting and updating then compute the same function,
so the first minibatch's probability ratio is 1 (one autocast context spans the whole rollout,
so the parameters are cast to bfloat16 once per rollout, not once per step), and both read the
observation windows gathered in bfloat16 (``PortfolioEnv.window(..., dtype=)``). As
in standard AMP the parameters, their gradients and the Adam state stay float32, and the
policy returns float32 distribution parameters and values, so log-probs, ratios, advantages
and losses are float32 too. bfloat16 has float32's exponent range: no loss scaling is needed.
"""

from __future__ import annotations

import math
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import torch
from torch import Tensor, nn

from cappuccino.agents.memory import retained_freed_memory
from cappuccino.env.portfolio import Observation, StepResult
from cappuccino.errors import require
from cappuccino.models.policy import ActorCritic

PRECISIONS = ("32", "bf16-mixed")  # Lightning's names; see the module docstring


@dataclass(frozen=True, kw_only=True)
class PPOSettings:
    """PPO's hyperparameters (the ``agent`` config group), checked once."""

    lr: float = 3e-4
    anneal_lr: bool = True  # linearly to lr / num_updates at the last update
    n_steps: int = 128  # rollout length per environment
    gamma: float = 0.99
    gae_lambda: float = 0.95
    update_epochs: int = 4
    minibatch_size: int = 1024
    micro_batch_size: Optional[int] = None  # samples per forward/backward pass of a minibatch; None: the whole minibatch
    clip_coef: float = 0.2
    clip_value_loss: bool = True
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    target_kl: Optional[float] = 0.03  # stop the epoch loop once the approximate KL exceeds this
    norm_adv: bool = True
    # The policy's log std moves linearly from its value at the start (the policy's init_log_std)
    # to this at the last update, set rather than learned; None: learned like any parameter.
    final_log_std: Optional[float] = None

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.n_steps >= 1, "n_steps", f"must be >= 1, got {self.n_steps}")
        require(0.0 < self.gamma <= 1.0, "gamma", f"must be in (0, 1], got {self.gamma}")
        require(0.0 <= self.gae_lambda <= 1.0, "gae_lambda", f"must be in [0, 1], got {self.gae_lambda}")
        require(self.update_epochs >= 1, "update_epochs", f"must be >= 1, got {self.update_epochs}")
        require(self.minibatch_size >= 1, "minibatch_size", f"must be >= 1, got {self.minibatch_size}")
        require(
            self.micro_batch_size is None or 1 <= self.micro_batch_size <= self.minibatch_size,
            "micro_batch_size",
            f"must be in [1, minibatch_size={self.minibatch_size}] or null (the whole minibatch), got {self.micro_batch_size}",
        )
        require(self.clip_coef > 0, "clip_coef", f"must be > 0, got {self.clip_coef}")
        require(self.vf_coef >= 0, "vf_coef", f"must be >= 0, got {self.vf_coef}")
        require(self.ent_coef >= 0, "ent_coef", f"must be >= 0, got {self.ent_coef}")
        require(self.max_grad_norm > 0, "max_grad_norm", f"must be > 0, got {self.max_grad_norm}")
        final = self.final_log_std
        require(final is None or math.isfinite(final), "final_log_std", f"must be a finite number or null, got {final}")
        require(self.target_kl is None or self.target_kl > 0, "target_kl", f"must be > 0 or null, got {self.target_kl}")


class BatchedEnv(Protocol):
    """What PPO needs from an env (``PortfolioEnv`` provides it)."""

    @property
    def num_envs(self) -> int: ...

    @property
    def n_assets(self) -> int: ...

    @property
    def n_features(self) -> int: ...

    @property
    def lookback(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def reset(self) -> Observation: ...

    def step(self, action: Tensor) -> StepResult: ...

    def window(self, bar: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """(N,) decision bars -> (N, L, A, F) observation windows in ``dtype``."""


# ------------------------------------------------------------------------- loss pieces
def trainable(module: nn.Module) -> list[nn.Parameter]:
    """Parameters PPO optimises: a frozen pre-trained encoder's are left out."""
    return [p for p in module.parameters() if p.requires_grad]


def gae(rewards: Tensor, values: Tensor, dones: Tensor, next_value: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates, (T, B).

    rewards, values, dones: (T, B); ``dones[t]`` means the transition at step t ended its
    episode, so ``V(s_{t+1})`` is not used and the recursion restarts. next_value: (B,), the
    value of the observation after the last step.
        delta_t = r_t + gamma * V(s_{t+1}) * (1 - d_t) - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - d_t) * A_{t+1}
    """
    not_done = 1.0 - dones.to(rewards.dtype)
    next_values = torch.cat([values[1:], next_value.unsqueeze(0)])  # (T, B): V(s_{t+1})
    deltas = rewards + gamma * next_values * not_done - values
    advantages = torch.empty_like(rewards)
    running = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages


def normalize(x: Tensor) -> Tensor:
    """Zero mean, unit (population) std; the population std keeps a 1-sample minibatch finite."""
    return (x - x.mean()) / (x.std(correction=0) + 1e-8)


def clipped_surrogate(ratio: Tensor, advantages: Tensor, clip_coef: float) -> Tensor:
    """PPO-clip policy loss: mean of max(-A * r, -A * clamp(r, 1 - eps, 1 + eps))."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    return torch.max(unclipped, clipped).mean()


def value_loss(new_values: Tensor, old_values: Tensor, returns: Tensor, clip_coef: Optional[float]) -> Tensor:
    """0.5 * mean squared error; with ``clip_coef``, the max of the unclipped error and the error
    of the prediction clipped to ``old_values +- clip_coef``."""
    squared = (new_values - returns) ** 2
    if clip_coef is not None:
        clipped_values = old_values + (new_values - old_values).clamp(-clip_coef, clip_coef)
        squared = torch.max(squared, (clipped_values - returns) ** 2)
    return 0.5 * squared.mean()


def approx_kl(log_ratio: Tensor) -> Tensor:
    """Low-variance estimator of KL(old || new): mean((r - 1) - log r) (Schulman's k3)."""
    return ((log_ratio.exp() - 1.0) - log_ratio).mean()


def explained_variance(predictions: Tensor, targets: Tensor) -> float:
    """1 - Var(targets - predictions) / Var(targets); NaN when the targets are constant."""
    variance = targets.var()
    return float("nan") if variance == 0 else (1.0 - (targets - predictions).var() / variance).item()


# ------------------------------------------------------------------------------ rollout
@dataclass
class Rollout:
    """One rollout of T steps of B envs, every field (T, B, ...) on the env's device."""

    bars: Tensor  # (T, B) long: decision bar of each observation
    weights: Tensor  # (T, B, A + 1)
    actions: Tensor  # (T, B, A) unclipped Gaussian samples
    log_probs: Tensor  # (T, B)
    values: Tensor  # (T, B)
    rewards: Tensor  # (T, B) scaled env rewards (+ gamma * V(final_obs) on truncation, added later)
    dones: Tensor  # (T, B) bool
    final_bars: Tensor  # (T, B) long: bar an ended episode stopped at (== next bar where not done)
    final_weights: Tensor  # (T, B, A + 1)

    @classmethod
    def empty(cls, n_steps: int, num_envs: int, n_assets: int, device: torch.device) -> "Rollout":
        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.zeros((n_steps, num_envs, *shape), dtype=dtype, device=device)

        return cls(
            bars=zeros(dtype=torch.long),
            weights=zeros(n_assets + 1),
            actions=zeros(n_assets),
            log_probs=zeros(),
            values=zeros(),
            rewards=zeros(),
            dones=zeros(dtype=torch.bool),
            final_bars=zeros(dtype=torch.long),
            final_weights=zeros(n_assets + 1),
        )


# ---------------------------------------------------------------------------------- PPO
class PPO:
    """Train ``policy`` on ``env`` for ``total_steps`` env steps (summed over envs).

    ``total_steps`` is rounded down to whole updates of ``num_envs * n_steps`` steps (at least
    one); ``self.total_steps`` is the number that will actually run. The caller seeds torch
    (``torch.manual_seed``); with the same seed two CPU runs produce bit-identical metrics. The
    policy is moved to ``env.device``. ``precision``: ``"32"`` or ``"bf16-mixed"`` (see the
    module docstring).
    """

    def __init__(
        self, policy: ActorCritic, env: BatchedEnv, settings: PPOSettings, total_steps: int, precision: str = "32"
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not supported; choose one of {list(PRECISIONS)}")
        _check_compatible(policy, env)
        self.policy = policy.to(env.device)
        self.env = env
        self.settings = settings
        self.precision = precision
        # bf16-mixed: windows are gathered in bfloat16, the dtype the first layer computes in anyway,
        # by rollout and update alike (both must compute the same function).
        self._window_dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
        self.batch_size = env.num_envs * settings.n_steps
        if settings.minibatch_size > self.batch_size:
            raise ValueError(
                f"agent.minibatch_size={settings.minibatch_size} exceeds the rollout batch "
                f"env.num_envs * agent.n_steps = {env.num_envs} * {settings.n_steps} = {self.batch_size}; "
                "lower agent.minibatch_size or raise agent.n_steps / env.num_envs"
            )
        self.num_updates = max(1, total_steps // self.batch_size)
        self.total_steps = self.num_updates * self.batch_size
        self._start_log_std = policy.log_std.detach().clone()
        if settings.final_log_std is not None:
            self.policy.log_std.requires_grad_(False)  # scheduled, not learned (and not in Adam)
        # fused: the whole Adam step in one pass over the parameters (CPU and GPU), ~5x faster on
        # CPU than the per-operation foreach kernels; the same update up to float rounding.
        self.optimizer = torch.optim.Adam(trainable(self.policy), lr=settings.lr, eps=1e-5, fused=True)
        self.global_step = 0

    @retained_freed_memory()
    def learn(self, on_update: Callable[[dict[str, float]], None] | None = None) -> None:
        """Run ``num_updates`` rollout + optimisation rounds, calling ``on_update(metrics)`` after each.

        Runs inside :func:`retained_freed_memory` (no page faults for re-allocated tensors).

        metrics: global_step, update (1-based), learning_rate (used in this update), log_std (the
        policy's mean over assets after the update), epochs_run;
        policy_loss, value_loss, entropy, clip_fraction, grad_norm (pre-clip): means over the
        minibatches run; approx_kl: the value the target-KL check last saw; explained_variance of
        the rollout values against the returns; episode_reward: mean undiscounted (scaled) reward
        sum of the episodes that ended in this rollout, NaN if none did; step_reward: mean (scaled)
        reward per environment step of this rollout, defined from the first update; steps_per_second of this
        update (rollout + optimisation).
        """
        obs = self.env.reset()
        episode_return = torch.zeros(self.env.num_envs, device=self.env.device)
        for update in range(1, self.num_updates + 1):
            start = time.perf_counter()
            learning_rate = self.settings.lr
            if self.settings.anneal_lr:
                learning_rate *= 1.0 - (update - 1) / self.num_updates
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate
            if self.settings.final_log_std is not None:
                self._schedule_log_std(update)

            rollout, obs, episode_return, episode_reward, step_reward = self._collect(obs, episode_return)
            self.global_step += self.batch_size
            advantages, returns = self._advantages(rollout, obs)
            metrics = self._optimise(rollout, advantages, returns)

            metrics.update(
                global_step=self.global_step,
                update=update,
                explained_variance=explained_variance(rollout.values.flatten(), returns.flatten()),
                episode_reward=episode_reward.item(),
                step_reward=step_reward.item(),
                learning_rate=learning_rate,
                log_std=self.policy.log_std.mean().item(),
            )
            metrics["steps_per_second"] = self.batch_size / (time.perf_counter() - start)
            if on_update is not None:
                on_update(metrics)

    def _schedule_log_std(self, update: int) -> None:
        """Set the log std of ``update`` (1-based) on ``final_log_std``'s linear schedule."""
        progress = (update - 1) / max(1, self.num_updates - 1)
        final = torch.full_like(self._start_log_std, self.settings.final_log_std)
        self.policy.log_std.data.copy_(torch.lerp(self._start_log_std, final, progress))

    def _autocast(self) -> AbstractContextManager:
        """Context for the policy's forward passes: bfloat16 autocast under "bf16-mixed", else a no-op.

        The env's own arithmetic (float64 prices) must not be cast: env calls made inside it run
        under a nested ``torch.autocast(..., enabled=False)``.
        """
        return torch.autocast(self.env.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed")

    @torch.no_grad()
    def _collect(self, obs: Observation, episode_return: Tensor) -> tuple[Rollout, Observation, Tensor, Tensor, Tensor]:
        """Run ``n_steps`` in every env. Returns the rollout (truncations already bootstrapped),
        the next observation, the running per-env episode returns, the mean return of the
        episodes that ended in this rollout (a 0-d tensor, NaN if none ended) and the mean reward
        per step (0-d)."""
        env, policy = self.env, self.policy
        policy.eval()  # no dropout while acting: the stored log-probs are the policy's own
        rollout = Rollout.empty(self.settings.n_steps, env.num_envs, env.n_assets, env.device)
        finished_sum = torch.zeros((), device=env.device)
        finished_count = torch.zeros((), device=env.device)
        # One autocast context for the whole rollout: it caches the low-precision copies of the
        # parameters (unchanged while acting), so they are cast once per rollout, not per step.
        with self._autocast():
            for t in range(self.settings.n_steps):
                action, log_prob, value = policy.act(env.window(obs.bar, dtype=self._window_dtype), obs.weights)
                with torch.autocast(env.device.type, enabled=False):
                    step = env.step(action)  # the env clamps the action to [-1, 1]
                rollout.bars[t], rollout.weights[t] = obs.bar, obs.weights
                rollout.actions[t], rollout.log_probs[t], rollout.values[t] = action, log_prob, value
                rollout.rewards[t], rollout.dones[t] = step.reward, step.done
                rollout.final_bars[t], rollout.final_weights[t] = step.final_obs.bar, step.final_obs.weights

                episode_return += step.reward
                finished_sum += (episode_return * step.done).sum()  # no boolean indexing: it syncs
                finished_count += step.done.sum()
                episode_return = episode_return.masked_fill(step.done, 0.0)
                obs = step.obs
        step_reward = rollout.rewards.mean()  # before truncations add their bootstrapped values
        self._bootstrap_truncations(rollout)
        return rollout, obs, episode_return, finished_sum / finished_count, step_reward

    def _bootstrap_truncations(self, rollout: Rollout) -> None:
        """rewards += gamma * V(final_obs) where the episode was cut by the time limit."""
        steps, envs = rollout.dones.nonzero(as_tuple=True)  # the one host sync of the rollout
        for chunk in torch.arange(len(steps), device=steps.device).split(self.settings.minibatch_size):
            t, b = steps[chunk], envs[chunk]
            with self._autocast():
                final_value = self.policy.value(self.env.window(rollout.final_bars[t, b], dtype=self._window_dtype), rollout.final_weights[t, b])
            rollout.rewards[t, b] += self.settings.gamma * final_value

    @torch.no_grad()
    def _advantages(self, rollout: Rollout, next_obs: Observation) -> tuple[Tensor, Tensor]:
        """(advantages, returns), each (T, B); returns = advantages + values (the value targets)."""
        with self._autocast():
            next_value = self.policy.value(self.env.window(next_obs.bar, dtype=self._window_dtype), next_obs.weights)
        hp = self.settings
        advantages = gae(rollout.rewards, rollout.values, rollout.dones, next_value, hp.gamma, hp.gae_lambda)
        return advantages, advantages + rollout.values

    def _optimise(self, rollout: Rollout, advantages: Tensor, returns: Tensor) -> dict[str, float]:
        """``update_epochs`` passes of minibatch gradient steps; returns the loss metrics."""
        hp, policy = self.settings, self.policy
        policy.train()
        bars, weights = rollout.bars.flatten(), rollout.weights.flatten(0, 1)  # (N,), (N, A + 1)
        actions, old_log_probs = rollout.actions.flatten(0, 1), rollout.log_probs.flatten()
        old_values, advantages, returns = rollout.values.flatten(), advantages.flatten(), returns.flatten()
        value_clip = hp.clip_coef if hp.clip_value_loss else None

        # Summed over minibatches on the device: policy, value, entropy, clip fraction, grad norm.
        totals = torch.zeros(5, device=bars.device)
        n_minibatches, epochs_run = 0, 0
        kl = torch.zeros((), device=bars.device)
        for _ in range(hp.update_epochs):
            epochs_run += 1
            for idx in torch.randperm(self.batch_size, device=bars.device).split(hp.minibatch_size):
                adv = normalize(advantages[idx]) if hp.norm_adv else advantages[idx]  # over the whole minibatch
                self.optimizer.zero_grad()
                # The minibatch's losses are means, so the chunks' losses weighted by their share
                # of it sum to them, and so do their gradients: one step, as one pass would take.
                means = torch.zeros(5, device=bars.device)  # policy, value, entropy, clip fraction, KL
                for chunk in torch.arange(len(idx), device=bars.device).split(hp.micro_batch_size or len(idx)):
                    rows, share = idx[chunk], len(chunk) / len(idx)
                    with self._autocast():  # the forward only: backward and losses run in float32
                        log_prob, entropy, value = policy.evaluate(self.env.window(bars[rows], dtype=self._window_dtype), weights[rows], actions[rows])
                    log_ratio = log_prob - old_log_probs[rows]
                    ratio = log_ratio.exp()

                    pg_loss = clipped_surrogate(ratio, adv[chunk], hp.clip_coef)
                    v_loss = value_loss(value, old_values[rows], returns[rows], value_clip)
                    mean_entropy = entropy.mean()
                    loss = pg_loss - hp.ent_coef * mean_entropy + hp.vf_coef * v_loss
                    (share * loss).backward()

                    with torch.no_grad():
                        clip_fraction = ((ratio - 1.0).abs() > hp.clip_coef).float().mean()
                        means += share * torch.stack([pg_loss, v_loss, mean_entropy, clip_fraction, approx_kl(log_ratio)])
                grad_norm = nn.utils.clip_grad_norm_(trainable(policy), hp.max_grad_norm)
                self.optimizer.step()
                kl = means[4]
                totals += torch.cat([means[:4], grad_norm.reshape(1)])
                n_minibatches += 1
            if hp.target_kl is not None and kl > hp.target_kl:
                break

        policy_loss, v_loss_mean, entropy_mean, clip_fraction_mean, grad_norm_mean = (totals / n_minibatches).tolist()
        return {
            "policy_loss": policy_loss,
            "value_loss": v_loss_mean,
            "entropy": entropy_mean,
            "approx_kl": kl.item(),  # the value the target-KL check saw last
            "clip_fraction": clip_fraction_mean,
            "grad_norm": grad_norm_mean,
            "epochs_run": epochs_run,
        }


def _check_compatible(policy: ActorCritic, env: BatchedEnv) -> None:
    expected = (env.lookback, env.n_assets, env.n_features)
    for got in {encoder.input_shape for encoder in policy.encoders()}:
        if got != expected:
            raise ValueError(
                f"policy was built for (lookback, n_assets, n_features) = {got} but the env has {expected}; "
                "build the ActorCritic with the env's sizes"
            )
