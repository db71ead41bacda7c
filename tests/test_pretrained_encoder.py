"""encoder.pretrained / encoder.freeze: loaded weights equal the file's, frozen ones never move."""

import pytest
import torch
from omegaconf import OmegaConf

from cappuccino.checkpoint import CheckpointMismatch, encoder_schema, save_checkpoint
from cappuccino.config import DEFAULT_SYMBOLS, ConfigError, validate
from cappuccino.data.features import FEATURE_NAMES
from cappuccino.models.policy import ActorCritic
from cappuccino.training import RunPaths, run

from .conftest import TINY


def _encoder_file(compose_config, tmp_path, overrides=()):
    """An encoder checkpoint as pretrain.py writes it (random weights stand in for trained ones)."""
    cfg_dict = compose_config([*TINY, *overrides])
    cfg = validate(cfg_dict)
    torch.manual_seed(123)
    encoder = ActorCritic(cfg.encoder, cfg.window.lookback, 7, 14).actor_encoder
    encoder_cfg = OmegaConf.to_container(cfg_dict.encoder)
    schema = encoder_schema(encoder_cfg, DEFAULT_SYMBOLS, FEATURE_NAMES, cfg.window.lookback)
    path = save_checkpoint(tmp_path / "best_encoder.pt", encoder, OmegaConf.to_yaml(cfg_dict), schema)
    return path, {k: v.clone() for k, v in encoder.state_dict().items()}


def _trained_policy_state(tmp_path):
    return torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state_dict"]


@pytest.mark.parametrize("shared", [False, True])
def test_frozen_pretrained_encoder_keeps_the_files_weights_through_ppo(compose_config, tmp_path, shared):
    path, weights = _encoder_file(compose_config, tmp_path, [f"encoder.shared={shared}"])
    (tmp_path / "run").mkdir()
    overrides = [*TINY, "logger=none", f"encoder.shared={shared}", f"encoder.pretrained={path}", "encoder.freeze=true"]
    run(compose_config(overrides), RunPaths(tmp_path / "run", tmp_path))
    state = _trained_policy_state(tmp_path)
    for prefix in ("actor_encoder.", "critic_encoder."):
        for name, tensor in weights.items():
            assert torch.equal(state[prefix + name], tensor), prefix + name
    assert not torch.equal(state["log_std"], torch.full((7,), -0.5))  # the rest did train


def test_unfrozen_pretrained_encoder_starts_from_the_file_and_then_learns(compose_config, tmp_path):
    path, weights = _encoder_file(compose_config, tmp_path)
    cfg = validate(compose_config([*TINY, f"encoder.pretrained={path}"]))
    policy = ActorCritic(cfg.encoder, cfg.window.lookback, 7, 14)
    schema = torch.load(path, weights_only=True)["schema"]
    policy.load_pretrained_encoder(path, schema, freeze=False)
    for name, tensor in weights.items():
        assert torch.equal(policy.actor_encoder.state_dict()[name], tensor)
        assert torch.equal(policy.critic_encoder.state_dict()[name], tensor)
    assert all(p.requires_grad for p in policy.parameters())

    (tmp_path / "run").mkdir()
    run(compose_config([*TINY, "logger=none", f"encoder.pretrained={path}"]), RunPaths(tmp_path / "run", tmp_path))
    state = _trained_policy_state(tmp_path)
    assert any(not torch.equal(state["actor_encoder." + n], t) for n, t in weights.items())


def test_pretrained_encoder_of_another_lookback_is_rejected_naming_it(compose_config, tmp_path):
    path, _ = _encoder_file(compose_config, tmp_path, ["window.lookback=6"])
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointMismatch, match=r"window\.lookback: checkpoint has 6, config asks for 8"):
        run(compose_config([*TINY, "logger=none", f"encoder.pretrained={path}"]), RunPaths(tmp_path / "run", tmp_path))


def test_freezing_without_pretrained_weights_fails_before_work(compose_config):
    with pytest.raises(ConfigError, match="encoder.freeze"):
        validate(compose_config([*TINY, "encoder.freeze=true"]))


def test_freezing_an_ft_transformer_keeps_its_output_head_trainable(compose_config, tmp_path):
    """Pre-training never trains the [CLS]-to-policy head, so freezing must leave it learning."""
    ft = ["encoder=ft_small", "window.lookback=8"]
    cfg_dict = compose_config(ft)
    cfg = validate(cfg_dict)
    encoder = ActorCritic(cfg.encoder, 8, 7, 14).actor_encoder
    schema = encoder_schema(OmegaConf.to_container(cfg_dict.encoder), DEFAULT_SYMBOLS, FEATURE_NAMES, 8)
    path = save_checkpoint(tmp_path / "best_encoder.pt", encoder, OmegaConf.to_yaml(cfg_dict), schema)
    policy = ActorCritic(validate(compose_config([*ft, f"encoder.pretrained={path}", "encoder.freeze=true"])).encoder, 8, 7, 14)
    policy.load_pretrained_encoder(path, schema, freeze=True)
    for name, parameter in policy.actor_encoder.named_parameters():
        assert parameter.requires_grad == name.startswith("head."), name
