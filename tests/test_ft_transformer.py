"""FT-Transformer encoder: shapes per token layout, no look-ahead, equality with the paper's
reference implementation (rtdl_revisiting_models), config validation and end-to-end runs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from cappuccino.config import FTTransformerEncoderConfig, validate
from cappuccino.data.tensors import MarketTensors
from cappuccino.errors import ArgumentError, ConfigError
from cappuccino.models.ft_transformer import FTTransformerEncoder
from cappuccino.models.loading import load_policy, policy_from_config
from cappuccino.runtime import RunPaths
from cappuccino.training import train

from .config_reads import record_reads, unread_leaves
from .conftest import TINY

A, F = 3, 4  # assets, features per asset
FT_TINY = [o for o in TINY if not o.startswith("encoder.")] + [
    "encoder=ft_small",
    "encoder.patch_bars=4",
    "encoder.d_token=16",
    "encoder.out_dim=32",
    "logger=none",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def encoder(lookback: int, tokens: str, **kwargs) -> FTTransformerEncoder:
    torch.manual_seed(0)
    sizes = dict(d_token=8, n_blocks=2, n_heads=2, out_dim=5)
    return FTTransformerEncoder(lookback=lookback, n_assets=A, n_features=F, tokens=tokens, **{**sizes, **kwargs})


def inputs(n: int, lookback: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    window = torch.randn(n, lookback, A, F, generator=generator)
    weights = torch.softmax(torch.randn(n, A + 1, generator=generator), -1)
    return window, weights


@pytest.mark.parametrize("lookback", [1, 10, 60])
@pytest.mark.parametrize(
    "tokens, n_tokens",
    [
        ("feature", lambda L: L * A * F + A + 1),
        ("asset_time", lambda L: L * A + A + 1),
        ("time", lambda L: L + A + 1),
        ("patch", lambda L: math.ceil(L / min(4, L)) * A + A + 1),
    ],
)
def test_every_layout_maps_to_out_dim_and_trains_every_parameter(lookback, tokens, n_tokens):
    model = encoder(lookback, tokens, patch_bars=min(4, lookback))
    assert model.n_tokens == n_tokens(lookback) + 1  # + [CLS]
    out = model(*inputs(2, lookback))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().sum().backward()
    untrained = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert untrained == []


@pytest.mark.parametrize("tokens", ["feature", "asset_time", "time", "patch"])
def test_output_at_bar_t_does_not_depend_on_later_bars(tokens):
    lookback, n_bars = 6, 30
    features = torch.randn(n_bars, A, F, generator=torch.Generator().manual_seed(2))
    model = encoder(lookback, tokens, patch_bars=4).eval()  # patch: the oldest patch is half padding
    bars = torch.tensor([10, 20])  # decision bars t
    weights = torch.softmax(torch.randn(2, A + 1), -1)

    def encode(feats: torch.Tensor) -> torch.Tensor:
        prices = torch.ones(n_bars, A, dtype=torch.float64)
        market = MarketTensors(feats, prices, prices, lookback=lookback)  # the env's windows come from here
        with torch.no_grad():
            return model(market.window(bars), weights)

    before = encode(features)
    future_changed = features.clone()
    future_changed[21:] += 10.0
    assert torch.equal(encode(future_changed), before)
    bar_20_changed = features.clone()
    bar_20_changed[20] += 10.0
    after = encode(bar_20_changed)
    assert torch.equal(after[0], before[0]) and not torch.allclose(after[1], before[1])


@pytest.mark.parametrize("lookback, patch_bars", [(6, 3), (7, 3)])
def test_patch_token_is_its_assets_bars_projected_plus_patch_and_asset_embeddings(lookback, patch_bars):
    model = encoder(lookback, "patch", patch_bars=patch_bars)
    tokenizer = model.tokenizer
    window, weights = inputs(2, lookback)
    padded = torch.cat([torch.zeros(2, tokenizer.padding, A, F), window], dim=1)  # zeros before the oldest bar
    tokens = tokenizer(window, weights)
    for p in range(tokenizer.n_patches):
        for a in range(A):
            bars = padded[:, p * patch_bars : (p + 1) * patch_bars, a, :].flatten(1)  # (N, patch_bars * F), bar-major
            expected = tokenizer.project(bars) + tokenizer.patch_embedding[p] + tokenizer.asset_embedding[a]
            torch.testing.assert_close(tokens[:, p * A + a], expected)
    assert tokenizer.padding == -lookback % patch_bars
    torch.testing.assert_close(tokens[:, tokenizer.n_market_tokens :], tokenizer.portfolio(weights))


def test_patch_bars_longer_than_the_window_is_refused():
    with pytest.raises(ArgumentError, match="patch_bars"):
        encoder(5, "patch", patch_bars=6)
    encoder(5, "asset_time", patch_bars=6)  # other layouts ignore it


@pytest.mark.parametrize("dropout", ["attention_dropout", "ffn_dropout", "residual_dropout"])
def test_each_dropout_acts_in_train_mode_only(dropout):
    model = encoder(4, "asset_time", **{dropout: 0.5})
    window, weights = inputs(3, 4)
    assert not torch.equal(model(window, weights), model(window, weights))
    model.eval()
    assert torch.equal(model(window, weights), model(window, weights))


def test_runs_under_bfloat16_autocast_close_to_float32():
    """trainer.precision=bf16-mixed runs the encoders under autocast: the kernels must accept it."""
    model = encoder(10, "asset_time")
    window, weights = inputs(4, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(window, weights)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), model(window, weights), rtol=0.05, atol=0.05)


def _rtdl(n_cont_features: int, n_blocks: int, d_token: int, n_heads: int, activation: str, out_dim: int):
    import rtdl_revisiting_models as rtdl  # a dev dependency: CI fails, not skips, without it
    return rtdl.FTTransformer(
        n_cont_features=n_cont_features,
        cat_cardinalities=[],
        d_out=out_dim,
        n_blocks=n_blocks,
        d_block=d_token,
        attention_n_heads=n_heads,
        attention_dropout=0.0,
        ffn_d_hidden=None,
        ffn_d_hidden_multiplier=4 / 3,
        ffn_dropout=0.0,
        ffn_activation={"reglu": "ReGLU", "gelu": "ReLU"}[activation],
        residual_dropout=0.0,
    )


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("n_blocks, n_heads, activation", [(1, 1, "reglu"), (2, 4, "reglu"), (3, 2, "gelu")])
def test_feature_tokens_have_exactly_the_reference_parameter_count(n_blocks, n_heads, activation):
    """rtdl's FTTransformer with d_out=out_dim has the same parts: per-feature tokenizer, [CLS],
    blocks (no attention norm in the first, no W_out with one head) and the LayerNorm-ReLU-Linear
    output, so whole-model counts must match. Its ReLU FFN counts as our GELU one."""
    lookback, d_token, out_dim = 2, 16, 5
    ours = encoder(lookback, "feature", d_token=d_token, n_blocks=n_blocks, n_heads=n_heads, activation=activation)
    reference = _rtdl(lookback * A * F + A + 1, n_blocks, d_token, n_heads, activation, out_dim)
    assert _count(ours) == _count(reference)


def _load_reference_weights(ours: FTTransformerEncoder, reference: torch.nn.Module) -> None:
    ref = reference.state_dict()
    state = {
        "cls": ref["cls_embedding.weight"],
        "tokenizer.tokenizer.weight": ref["cont_embeddings.weight"],
        "tokenizer.tokenizer.bias": ref["cont_embeddings.bias"],
        "head.0.weight": ref["backbone.output.normalization.weight"],
        "head.0.bias": ref["backbone.output.normalization.bias"],
        "head.2.weight": ref["backbone.output.linear.weight"],
        "head.2.bias": ref["backbone.output.linear.bias"],
    }
    for i in range(len(ours.blocks)):
        b = f"backbone.blocks.{i}."
        for kind in ("weight", "bias"):
            state[f"blocks.{i}.attention.query.{kind}"] = ref[f"{b}attention.W_q.{kind}"]
            state[f"blocks.{i}.attention.key_value.{kind}"] = torch.cat(
                [ref[f"{b}attention.W_k.{kind}"], ref[f"{b}attention.W_v.{kind}"]]
            )
            state[f"blocks.{i}.attention.out.{kind}"] = ref[f"{b}attention.W_out.{kind}"]
            if i > 0:
                state[f"blocks.{i}.attention_norm.{kind}"] = ref[f"{b}attention_normalization.{kind}"]
            state[f"blocks.{i}.ffn_norm.{kind}"] = ref[f"{b}ffn_normalization.{kind}"]
            state[f"blocks.{i}.ffn.0.{kind}"] = ref[f"{b}ffn.linear1.{kind}"]
            state[f"blocks.{i}.ffn.3.{kind}"] = ref[f"{b}ffn.linear2.{kind}"]
    ours.load_state_dict(state)  # strict: every parameter of ours is mapped


def test_feature_tokens_compute_the_reference_function():
    """With rtdl's weights loaded, the same flat input gives the same output: [CLS] first (rtdl)
    or last (ours) is the same model, since tokens carry no position."""
    lookback, d_token, n_blocks, n_heads, out_dim = 2, 16, 3, 4, 5
    ours = encoder(lookback, "feature", d_token=d_token, n_blocks=n_blocks, n_heads=n_heads).eval()
    reference = _rtdl(lookback * A * F + A + 1, n_blocks, d_token, n_heads, "reglu", out_dim).eval()
    _load_reference_weights(ours, reference)
    window, weights = inputs(4, lookback)
    flat = torch.cat([window.flatten(1), weights], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(ours(window, weights), reference(flat, None), rtol=1e-5, atol=1e-5)


def test_wrong_window_shape_names_the_expected_shape():
    with pytest.raises(ValueError, match=r"\(L, A, F\) = \(4, 3, 4\)"):
        encoder(4, "asset_time")(*inputs(2, 5))


@pytest.mark.parametrize(
    "kwargs, argument, message",
    [
        (dict(tokens="bar"), "tokens", "got 'bar'"),
        (dict(activation="relu"), "activation", "got 'relu'"),
        (dict(d_token=8, n_heads=3), "d_token", "multiple of n_heads=3"),
        (dict(n_blocks=0), "n_blocks", "got 0"),
        (dict(ffn_factor=0.01), "ffn_factor", "got 0.01"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, argument, message):
    with pytest.raises(ArgumentError, match=f"^{argument}: .*{message}") as error:
        encoder(4, **{"tokens": "asset_time", **kwargs})
    assert error.value.argument == argument


@pytest.mark.parametrize(
    "override, key",
    [
        ("encoder.n_heads=3", "encoder.d_token"),
        ("encoder.tokens=bar", "encoder.tokens"),
        ("encoder.activation=relu", "encoder.activation"),
        ("encoder.attention_dropout=1.0", "encoder.attention_dropout"),
        ("encoder.residual_dropout=-0.1", "encoder.residual_dropout"),
        ("encoder.ffn_factor=0.01", "encoder.ffn_factor"),
        ("encoder.n_blocks=0", "encoder.n_blocks"),
    ],
)
def test_bad_settings_fail_validation_naming_the_key(compose_config, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose_config(["encoder=ft_small", override]))


@pytest.mark.parametrize(
    "name, d_token, n_blocks, n_heads", [("ft_small", 32, 1, 2), ("ft_default", 64, 2, 4), ("ft_large", 96, 3, 8)]
)
def test_shipped_sizes_build_a_policy_reading_429_tokens_at_lookback_60(
    compose_config, name, d_token, n_blocks, n_heads
):
    cfg = validate(compose_config([f"encoder={name}", "window.lookback=60"]))
    assert isinstance(cfg.encoder, FTTransformerEncoderConfig)
    assert (cfg.encoder.d_token, cfg.encoder.n_blocks, cfg.encoder.n_heads) == (d_token, n_blocks, n_heads)
    policy = policy_from_config(cfg.encoder, cfg.agent.init_log_std, cfg.window.lookback, 7, 14)
    assert isinstance(policy.actor_encoder, FTTransformerEncoder)
    assert policy.actor_encoder.n_tokens == 7 * 60 + 8 + 1
    patched = validate(compose_config([f"encoder={name}", "window.lookback=60", "encoder.tokens=patch"]))
    policy = policy_from_config(patched.encoder, patched.agent.init_log_std, 60, 7, 14)
    assert policy.actor_encoder.n_tokens == 7 * 12 + 8 + 1  # 12 patches of encoder.patch_bars=5 bars per asset
    assert len(policy.actor_encoder.blocks) == n_blocks


def _paths(tmp_path) -> RunPaths:
    (tmp_path / "run").mkdir(parents=True, exist_ok=True)
    return RunPaths(run_dir=tmp_path / "run", project_dir=tmp_path)


def test_smoke_run_with_ft_small_returns_a_finite_objective(compose_config, tmp_path):
    cfg_dict = compose_config(FT_TINY)
    objective = train(validate(cfg_dict), OmegaConf.to_yaml(cfg_dict, resolve=True), _paths(tmp_path))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert math.isfinite(objective) and objective == metrics["objective"] == metrics["val/excess_sharpe"]
    policy = load_policy(tmp_path / "run" / "checkpoint.pt")
    assert isinstance(policy.module.actor_encoder, FTTransformerEncoder)  # the FT-Transformer really trained


def test_every_ft_transformer_setting_is_read_during_a_run(compose_config, tmp_path):
    cfg_dict = compose_config(FT_TINY)
    cfg = validate(cfg_dict)
    with record_reads() as reads:
        train(cfg, OmegaConf.to_yaml(cfg_dict), _paths(tmp_path))
    assert unread_leaves(cfg, reads) == []
