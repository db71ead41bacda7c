"""encoder.pretrained / encoder.freeze: loaded weights equal the file's, frozen ones never move,
and a file that is not a fitting encoder file is refused naming the setting and the path."""

import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import cappuccino.pretrain.trainer as pretrain_trainer
from cappuccino import training
from cappuccino.config import DEFAULT_SYMBOLS, validate
from cappuccino.data.features import FEATURE_NAMES, FEATURE_VERSION
from cappuccino.errors import ConfigError
from cappuccino.models.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    encoder_schema,
    save_checkpoint,
)
from cappuccino.models.loading import PolicySchema, load_pretrained, policy_from_config
from cappuccino.pretrain import run as pretrain_run
from cappuccino.runtime import RunPaths

from .conftest import CONF_DIR, TINY
from .conftest import run_train as run

# Only FT-Transformer encoders are pre-trained (encoder=mlp refuses encoder.pretrained), so these
# runs use a small one in place of TINY's MLP.
ENCODER = ["encoder=ft_small", "encoder.patch_bars=4", "encoder.d_token=16", "encoder.out_dim=32"]
FT_TINY = [o for o in TINY if not o.startswith("encoder.")] + ENCODER
PRETRAIN = ["data.n_bars=1500", "window.lookback=8", "window.zscore_window=50", *ENCODER, "logger=none", "pretrain.progress=false"]
N_ASSETS, N_FEATURES = len(DEFAULT_SYMBOLS), len(FEATURE_NAMES)


def _compose_pretrain(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose("pretrain", overrides=list(overrides))


def _encoder_file(compose_config, tmp_path, overrides=(), schema_changes=None, name="best_encoder.pt"):
    """An encoder checkpoint as pretrain.py writes it (random weights stand in for trained ones);
    ``schema_changes`` edits its saved schema, as if another version or setting had written it."""
    cfg_dict = compose_config([*FT_TINY, *overrides])
    cfg = validate(cfg_dict)
    torch.manual_seed(123)
    encoder = policy_from_config(cfg.encoder, cfg.agent.init_log_std, cfg.window.lookback, N_ASSETS, N_FEATURES).actor_encoder
    encoder_cfg = OmegaConf.to_container(cfg_dict.encoder)
    schema = encoder_schema(
        encoder_cfg, DEFAULT_SYMBOLS, FEATURE_NAMES, FEATURE_VERSION, cfg.window.lookback, cfg.window.zscore_window
    )
    schema.update(schema_changes or {})
    path = save_checkpoint(tmp_path / name, encoder, "encoder", OmegaConf.to_yaml(cfg_dict), schema)
    return path, {k: v.clone() for k, v in encoder.state_dict().items()}


def _policy_schema(cfg, cfg_dict):
    """The schema train.py checks an encoder file against (the synthetic market's symbols and features)."""
    return PolicySchema(
        symbols=tuple(DEFAULT_SYMBOLS),
        feature_names=tuple(FEATURE_NAMES),
        feature_version=FEATURE_VERSION,
        lookback=cfg.window.lookback,
        zscore_window=cfg.window.zscore_window,
        interval=str(cfg.data.interval),
        encoder=OmegaConf.to_container(cfg_dict.encoder),
    )


def _trained_policy_state(tmp_path):
    return torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state_dict"]


def _run_paths(tmp_path):
    (tmp_path / "run").mkdir(exist_ok=True)
    return RunPaths(tmp_path / "run", tmp_path)


@pytest.fixture
def no_data(monkeypatch):
    """Loading data fails the test: what is checked "before any data" must fail first."""

    def load_market(*args, **kwargs):
        raise AssertionError("data was loaded before encoder.pretrained was checked")

    monkeypatch.setattr(training, "load_market", load_market)
    monkeypatch.setattr(pretrain_trainer, "load_market", load_market)


@pytest.mark.parametrize("shared", [False, True])
def test_frozen_pretrained_encoder_keeps_the_files_weights_through_ppo(compose_config, tmp_path, shared):
    path, weights = _encoder_file(compose_config, tmp_path, [f"encoder.shared={shared}"])
    overrides = [*FT_TINY, "logger=none", f"encoder.shared={shared}", f"encoder.pretrained={path}", "encoder.freeze=true"]
    cfg = compose_config(overrides)
    run(cfg, _run_paths(tmp_path))
    state = _trained_policy_state(tmp_path)
    for prefix in ("actor_encoder.", "critic_encoder."):
        for name, tensor in weights.items():
            if name.startswith("head."):  # an FT-Transformer's head is never pre-trained: it trains on
                continue
            assert torch.equal(state[prefix + name], tensor), prefix + name
    assert not torch.equal(state["log_std"], torch.full((N_ASSETS,), cfg.agent.init_log_std))  # the rest did train


def test_unfrozen_pretrained_encoder_starts_from_the_file_and_then_learns(compose_config, tmp_path):
    path, weights = _encoder_file(compose_config, tmp_path)
    cfg_dict = compose_config([*FT_TINY, f"encoder.pretrained={path}"])
    cfg = validate(cfg_dict)
    policy = policy_from_config(cfg.encoder, cfg.agent.init_log_std, cfg.window.lookback, N_ASSETS, N_FEATURES)
    load_pretrained(policy, str(path), _policy_schema(cfg, cfg_dict), freeze=False)
    for name, tensor in weights.items():
        assert torch.equal(policy.actor_encoder.state_dict()[name], tensor)
        assert torch.equal(policy.critic_encoder.state_dict()[name], tensor)
    assert all(p.requires_grad for p in policy.parameters())

    run(compose_config([*FT_TINY, "logger=none", f"encoder.pretrained={path}"]), _run_paths(tmp_path))
    state = _trained_policy_state(tmp_path)
    assert any(not torch.equal(state["actor_encoder." + n], t) for n, t in weights.items())


def test_pretrained_encoder_of_another_lookback_is_rejected_naming_it(compose_config, tmp_path):
    path, _ = _encoder_file(compose_config, tmp_path, ["window.lookback=6"])
    with pytest.raises(CheckpointMismatch, match=r"window\.lookback: checkpoint has 6, asked for 8"):
        run(compose_config([*FT_TINY, "logger=none", f"encoder.pretrained={path}"]), _run_paths(tmp_path))


def test_freezing_without_pretrained_weights_fails_before_work(compose_config):
    with pytest.raises(ConfigError, match="encoder.freeze"):
        validate(compose_config([*TINY, "encoder.freeze=true"]))


def test_freezing_an_ft_transformer_keeps_its_output_head_trainable(compose_config, tmp_path):
    """Pre-training never trains the [CLS]-to-policy head, so freezing must leave it learning."""
    ft = ["encoder=ft_small", "encoder.patch_bars=4", "window.lookback=8"]
    cfg_dict = compose_config(ft)
    cfg = validate(cfg_dict)
    encoder = policy_from_config(cfg.encoder, cfg.agent.init_log_std, 8, N_ASSETS, N_FEATURES).actor_encoder
    schema = encoder_schema(
        OmegaConf.to_container(cfg_dict.encoder), DEFAULT_SYMBOLS, FEATURE_NAMES, FEATURE_VERSION, 8, cfg.window.zscore_window
    )
    path = save_checkpoint(tmp_path / "best_encoder.pt", encoder, "encoder", OmegaConf.to_yaml(cfg_dict), schema)
    frozen_dict = compose_config([*ft, f"encoder.pretrained={path}", "encoder.freeze=true"])
    frozen = validate(frozen_dict)
    policy = policy_from_config(frozen.encoder, frozen.agent.init_log_std, 8, N_ASSETS, N_FEATURES)
    load_pretrained(policy, str(path), _policy_schema(frozen, frozen_dict), freeze=True)
    for name, parameter in policy.actor_encoder.named_parameters():
        assert parameter.requires_grad == name.startswith("head."), name


# ------------------------------------------------------------ a wrong encoder.pretrained file
@pytest.mark.parametrize("job", ["train", "pretrain"])
def test_a_policy_checkpoint_as_encoder_pretrained_fails_before_any_data(compose_config, tmp_path, no_data, job):
    """train.py's checkpoint.pt is the usual mix-up: its kind says it holds a whole policy."""
    cfg_dict = compose_config(FT_TINY)
    cfg = validate(cfg_dict)
    policy = policy_from_config(cfg.encoder, cfg.agent.init_log_std, cfg.window.lookback, N_ASSETS, N_FEATURES)
    schema = _policy_schema(cfg, cfg_dict).as_dict()
    path = save_checkpoint(tmp_path / "checkpoint.pt", policy, "policy", OmegaConf.to_yaml(cfg_dict), schema)
    message = (
        rf"encoder\.pretrained: {re.escape(str(path))} is a policy checkpoint from train\.py, "
        r"not an encoder file from pretrain\.py"
    )
    with pytest.raises(CheckpointError, match=message):
        if job == "train":
            run(compose_config([*FT_TINY, "logger=none", f"encoder.pretrained={path}"]), _run_paths(tmp_path))
        else:  # pretrain.py continues from earlier encoder weights with the same setting
            pretrain_run(_compose_pretrain([*PRETRAIN, f"encoder.pretrained={path}"]), _run_paths(tmp_path))
    assert not any((tmp_path / "run").iterdir())


def _missing(tmp_path):
    return tmp_path / "no_such_encoder.pt"


def _directory(tmp_path):
    folder = tmp_path / "pretrain_run"  # e.g. the pre-training run folder instead of its best_encoder.pt
    folder.mkdir()
    return folder


def _text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint\n")
    return path


@pytest.mark.parametrize(
    "make, reason",
    [(_missing, "does not exist"), (_directory, "is a directory"), (_text_file, "is not a checkpoint this project wrote")],
    ids=["missing", "directory", "text_file"],
)
def test_an_unreadable_encoder_pretrained_fails_before_any_data_naming_the_path(
    compose_config, tmp_path, no_data, make, reason
):
    path = make(tmp_path)
    with pytest.raises(CheckpointError, match=rf"^encoder\.pretrained: {re.escape(str(path))} {reason}"):
        run(compose_config([*FT_TINY, "logger=none", f"encoder.pretrained={path}"]), _run_paths(tmp_path))
    assert not any((tmp_path / "run").iterdir())


def test_an_mlp_encoder_with_pretrained_weights_fails_validation(compose_config):
    with pytest.raises(ConfigError, match=r"^encoder\.pretrained: only FT-Transformer encoders are pre-trained"):
        validate(compose_config(["encoder=mlp", "encoder.pretrained=x.pt"]))


@pytest.mark.parametrize(
    "key, saved, asked",
    [("window.zscore_window", 60, 50), ("feature_version", FEATURE_VERSION + 1, FEATURE_VERSION)],
)
def test_an_encoder_file_of_other_features_is_refused_naming_the_key(compose_config, tmp_path, key, saved, asked):
    """Weights learnt on features of another z-score window or feature version read other inputs."""
    path, _ = _encoder_file(compose_config, tmp_path, schema_changes={key: saved})
    with pytest.raises(CheckpointMismatch, match=rf"{re.escape(key)}: checkpoint has {saved!r}, asked for {asked!r}"):
        run(compose_config([*FT_TINY, "logger=none", f"encoder.pretrained={path}"]), _run_paths(tmp_path))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_checkpoint_of_an_unknown_format_version_is_refused_naming_it(compose_config, tmp_path, no_data):
    path, _ = _encoder_file(compose_config, tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99  # written by a future cappuccino
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=rf"encoder\.pretrained: {re.escape(str(path))} has checkpoint format 99"):
        run(compose_config([*FT_TINY, "logger=none", f"encoder.pretrained={path}"]), _run_paths(tmp_path))
