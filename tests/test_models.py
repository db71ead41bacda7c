import math

import pytest
import torch

from hydra.errors import MissingConfigException

from cappuccino.config import MLPEncoderConfig, build
from cappuccino.errors import ArgumentError
from cappuccino.models import ActorCritic, Encoder, MLPEncoder
from cappuccino.models.loading import policy_from_config

L, A, F = 5, 3, 4


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    window = torch.randn(n, L, A, F)
    weights = torch.softmax(torch.randn(n, A + 1), dim=-1)
    return window, weights


def test_mlp_encoder_output_shape_and_out_dim():
    encoder = MLPEncoder(lookback=L, n_assets=A, n_features=F, hidden_sizes=[32, 16], activation="relu")
    window, weights = batch(7)
    out = encoder(window, weights)
    assert encoder.out_dim == 16
    assert out.shape == (7, 16)
    assert (out >= 0).all()  # relu output


def test_mlp_encoder_sees_weights_and_every_window_cell():
    torch.manual_seed(0)
    encoder = MLPEncoder(lookback=L, n_assets=A, n_features=F, hidden_sizes=[8], activation="tanh")
    window, weights = batch(1)
    window.requires_grad_(True)
    weights.requires_grad_(True)
    encoder(window, weights).sum().backward()
    assert (window.grad != 0).all()
    assert (weights.grad != 0).all()


def test_mlp_encoder_hidden_layers_are_orthogonal_with_gain_sqrt2():
    encoder = MLPEncoder(lookback=L, n_assets=A, n_features=F, hidden_sizes=[16, 8], activation="tanh")
    linears = [m for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
    for layer in linears:
        w = layer.weight  # (out, in) with out <= in: rows are orthogonal
        torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(w.shape[0]), atol=1e-5, rtol=0)
        assert (layer.bias == 0).all()


def test_mlp_encoder_rejects_a_window_of_the_wrong_shape():
    encoder = MLPEncoder(lookback=L, n_assets=A, n_features=F, hidden_sizes=[8])
    with pytest.raises(ValueError, match=r"window has shape \(2, 4, 3, 4\), expected"):
        encoder(torch.randn(2, L - 1, A, F), torch.randn(2, A + 1))


def test_mlp_encoder_rejects_unknown_activation():
    with pytest.raises(ArgumentError, match=r"activation: must be one of \[.*'gelu'.*\], got 'swish'") as error:
        MLPEncoder(lookback=L, n_assets=A, n_features=F, hidden_sizes=[8], activation="swish")
    assert error.value.argument == "activation"


def test_per_asset_mlp_scores_each_asset_with_the_same_weights_from_its_own_window():
    torch.manual_seed(0)
    encoder = MLPEncoder(lookback=L, n_assets=A, n_features=F, hidden_sizes=[8, 6], per_asset=True)
    window, weights = batch(4)
    out = encoder(window, weights)
    assert encoder.out_dim == A * 6 and out.shape == (4, A * 6)
    per_asset = out.view(4, A, 6)
    # asset a's block is the one MLP applied to asset a's window, its weight and the cash weight
    for a in range(A):
        own = torch.cat([window[:, :, a].reshape(4, L * F), weights[:, 1 + a : 2 + a], weights[:, :1]], dim=-1)
        torch.testing.assert_close(per_asset[:, a], encoder.mlp(own))
    # moving another asset's bars or weight leaves asset 0's block unchanged
    moved_window, moved_weights = window.clone(), weights.clone()
    moved_window[:, :, 1:] += 1.0
    moved_weights[:, 2:] += 0.1
    torch.testing.assert_close(encoder(moved_window, moved_weights).view(4, A, 6)[:, 0], per_asset[:, 0])
    assert sum(p.numel() for p in encoder.parameters()) == (L * F + 2) * 8 + 8 + 8 * 6 + 6


def test_per_asset_mlp_is_built_from_config_and_trains_the_policy():
    policy = policy_from_config(MLPEncoderConfig(hidden_sizes=[8], per_asset=True), -0.5, L, A, F)
    assert policy.actor_encoder.per_asset and policy.critic_encoder.per_asset
    window, weights = batch(5)
    action, log_prob, value = policy.act(window, weights)
    assert action.shape == (5, A) and log_prob.shape == (5,) and value.shape == (5,)


def test_build_encoder_dispatches_on_target():
    encoder = build(MLPEncoderConfig(hidden_sizes=[12, 10], activation="gelu"), lookback=L, n_assets=A, n_features=F)
    assert isinstance(encoder, MLPEncoder)
    assert encoder.out_dim == 10
    assert encoder(*batch(3)).shape == (3, 10)


def test_unknown_encoder_option_lists_known_encoders(compose_config):
    # Encoders are chosen by config group option (conf/encoder/*.yaml): an unknown one fails to
    # compose and Hydra lists the options there are.
    with pytest.raises(MissingConfigException, match=r"(?s)encoder/transformer.*ft_default.*ft_large.*ft_small.*mlp"):
        compose_config(["encoder=transformer"])


def test_encoder_base_class_is_abstract():
    with pytest.raises(TypeError):
        Encoder()


def policy(shared: bool = False, init_log_std: float = -0.5) -> ActorCritic:
    return policy_from_config(MLPEncoderConfig(hidden_sizes=[32, 32], shared=shared), init_log_std, L, A, F)


def test_log_prob_and_entropy_match_the_gaussian_formula_by_hand():
    torch.manual_seed(0)
    model = policy(init_log_std=-0.3)
    with torch.no_grad():
        model.log_std.copy_(torch.tensor([-0.3, 0.1, 0.4]))
    window, weights = batch(5)
    action = torch.randn(5, A) * 2.0  # outside [-1, 1] too: log-probs are of the unclipped action
    log_prob, entropy, value = model.evaluate(window, weights, action)

    mean = model.distribution(window, weights).mean
    std = model.log_std.exp()
    by_hand = (-0.5 * ((action - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(log_prob, by_hand)
    torch.testing.assert_close(entropy, (0.5 + 0.5 * math.log(2 * math.pi) + std.log()).sum().expand(5))
    torch.testing.assert_close(value, model.value(window, weights))


def test_act_returns_consistent_action_log_prob_and_value():
    torch.manual_seed(1)
    model = policy()
    window, weights = batch(4)
    action, log_prob, value = model.act(window, weights)
    assert action.shape == (4, A) and log_prob.shape == (4,) and value.shape == (4,)
    evaluated_log_prob, _, evaluated_value = model.evaluate(window, weights, action)
    torch.testing.assert_close(log_prob, evaluated_log_prob)
    torch.testing.assert_close(value, evaluated_value)

    mean_action, _, _ = model.act(window, weights, deterministic=True)
    torch.testing.assert_close(mean_action, model.distribution(window, weights).mean)
    assert torch.equal(model.mean_action(window, weights), mean_action)  # the actor alone, the same numbers


def test_initial_policy_is_near_zero_mean_with_the_configured_std():
    torch.manual_seed(2)
    model = policy(init_log_std=-1.0)
    dist = model.distribution(*batch(8))
    assert dist.mean.abs().max() < 0.1  # actor head initialised with std 0.01
    torch.testing.assert_close(dist.stddev, torch.full((8, A), math.exp(-1.0)))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_shared_encoder_is_one_module_and_separate_encoders_isolate_the_critic():
    shared, separate = policy(shared=True), policy(shared=False)
    assert shared.actor_encoder is shared.critic_encoder
    assert n_params(separate) - n_params(shared) == n_params(separate.critic_encoder)

    separate.value(*batch(3)).sum().backward()
    assert all(p.grad is None for p in separate.actor_encoder.parameters())
    assert all(p.grad is not None for p in separate.critic_encoder.parameters())


@pytest.mark.parametrize("shared", [False, True])
def test_under_bfloat16_autocast_the_distribution_and_values_stay_float32(shared):
    torch.manual_seed(3)
    model = policy(shared=shared)
    window, weights = batch(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.actor_encoder(window, weights).dtype == torch.bfloat16  # autocast reaches the encoder
        action, log_prob, value = model.act(window, weights)
        evaluated = model.evaluate(window, weights, action)
        dist = model.distribution(window, weights)
        critic_value = model.value(window, weights)
    outputs = [action, log_prob, value, *evaluated, dist.mean, dist.stddev, critic_value]
    assert all(t.dtype == torch.float32 for t in outputs)
