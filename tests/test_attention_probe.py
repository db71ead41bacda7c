"""Attention probe of the FT-Transformer: maps are the forward's attention probabilities, the
statistics stay in range, and a training run logs them, the parameter counts and the heat-map."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cappuccino.models import attention_probe
from cappuccino.models.attention_probe import attention_maps, attention_stats, cls_attention, load_attention_map, summarize_attention
from cappuccino.models.ft_transformer import FTTransformerEncoder
from cappuccino.reporting.figures import attention_figure
from cappuccino.config import validate
from cappuccino.runtime import RunPaths
from cappuccino.training import train

from .conftest import TINY

L, A, F = 5, 3, 4  # bars, assets, features per asset
FT_TINY = [o for o in TINY if not o.startswith("encoder.")] + [
    "encoder=ft_small",
    "encoder.patch_bars=4",
    "encoder.d_token=16",
    "encoder.out_dim=32",
]

pytestmark = pytest.mark.usefixtures("one_thread")


def encoder(tokens: str = "asset_time", **kwargs) -> FTTransformerEncoder:
    torch.manual_seed(0)
    sizes = dict(d_token=8, n_blocks=2, n_heads=2, out_dim=5)
    return FTTransformerEncoder(lookback=L, n_assets=A, n_features=F, tokens=tokens, **{**sizes, **kwargs})


def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    window = torch.randn(n, L, A, F, generator=generator)
    weights = torch.softmax(torch.randn(n, A + 1, generator=generator), -1)
    return window, weights


@pytest.mark.parametrize("tokens", ["feature", "asset_time", "time", "patch"])
def test_maps_are_probability_rows_over_every_token(tokens):
    model = encoder(tokens, patch_bars=2)
    maps = attention_maps(model, *inputs(6))
    assert len(maps) == 2
    for p in maps:
        assert p.shape == (6, 2, model.n_tokens, model.n_tokens)
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(6, 2, model.n_tokens))


def test_one_head_cls_attention_matches_a_hand_computation():
    model = encoder(n_blocks=1, n_heads=1)
    window, weights = inputs(4)
    (p,) = attention_maps(model, window, weights)

    # First block: no attention LayerNorm, so the queries read the raw tokens; [CLS] is last.
    tokens = torch.cat([model.tokenizer(window, weights), model.cls.expand(4, 1, -1)], dim=1)
    attention = model.blocks[0].attention
    q = tokens[:, -1] @ attention.query.weight.T + attention.query.bias  # (N, d)
    k = tokens @ attention.key_value.weight[: model.d_token].T + attention.key_value.bias[: model.d_token]
    expected = torch.softmax(torch.einsum("nd,ntd->nt", q, k) / math.sqrt(model.d_token), dim=-1)
    torch.testing.assert_close(p[:, 0, -1], expected.detach())


def test_probe_leaves_the_forward_output_and_mode_unchanged():
    model = encoder(attention_dropout=0.5)
    model.train()
    window, weights = inputs(4)
    model.eval()
    before = model(window, weights)
    model.train()
    attention_maps(model, window, weights)
    assert model.training
    model.eval()
    torch.testing.assert_close(model(window, weights), before, rtol=0, atol=0)


def test_stats_have_every_block_and_head_and_stay_in_range():
    model = encoder()
    window, weights = inputs(6)
    maps = attention_maps(model, window, weights)
    stats = attention_stats(maps, model.n_market_tokens, A + 1, model(window, weights))
    names = ("entropy", "weight_norm", "portfolio_share")
    expected = {f"attention/block{b}/head{h}/{n}" for b in range(2) for h in range(2) for n in names}
    assert set(stats) == expected | {"encoder/cls_norm"}
    T = model.n_tokens
    for key, value in stats.items():
        if key.endswith("entropy"):
            assert 0.0 <= value <= math.log(T) + 1e-6
        elif key.endswith("weight_norm"):
            assert 1 / math.sqrt(T) - 1e-6 <= value <= 1.0 + 1e-6
        elif key.endswith("portfolio_share"):
            assert 0.0 <= value <= 1.0
    assert stats["encoder/cls_norm"] > 0


def test_stats_of_a_uniform_map_are_log_t_and_the_portfolio_fraction():
    n_market, n_portfolio = 6, 4
    T = n_market + n_portfolio + 1
    stats = attention_stats([torch.full((2, 1, T, T), 1.0 / T)], n_market, n_portfolio)
    assert stats["attention/block0/head0/entropy"] == pytest.approx(math.log(T))
    assert stats["attention/block0/head0/weight_norm"] == pytest.approx(1 / math.sqrt(T))
    assert stats["attention/block0/head0/portfolio_share"] == pytest.approx(n_portfolio / T)
    with pytest.raises(ValueError, match="n_market_tokens"):
        attention_stats([torch.full((2, 1, T, T), 1.0 / T)], n_market + 1, n_portfolio)


def test_chunked_summary_equals_one_pass(monkeypatch):
    model = encoder()
    window, weights = inputs(7)
    maps = attention_maps(model, window, weights)
    monkeypatch.setattr(attention_probe, "_CHUNK_FLOATS", 3 * 2 * model.n_tokens**2)  # chunks of 3, 3, 1
    stats, cls = summarize_attention(model, window, weights)
    expected = attention_stats(maps, model.n_market_tokens, A + 1, model.eval()(window, weights))
    assert stats == pytest.approx(expected)
    np.testing.assert_allclose(cls, cls_attention(maps), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tokens", ["feature", "asset_time", "time", "patch"])
def test_heat_map_draws_every_layout_and_rejects_a_wrong_lookback(tokens):
    model = encoder(tokens, patch_bars=2)
    cls = cls_attention(attention_maps(model, *inputs(3)))
    figure = attention_figure(cls, "probe", L, ["BTC", "ETH", "SOL"], model.bars_per_token)
    assert len(figure.axes) == 2 * 2 * 2  # (market, portfolio) panels and their colour bars, per block
    with pytest.raises(ValueError, match="lookback"):
        attention_figure(cls, "probe", L + 2 * model.bars_per_token, ["BTC", "ETH", "SOL"], model.bars_per_token)


def test_training_run_logs_attention_stats_parameter_counts_and_heat_map(compose_config, tmp_path):
    from mlflow import MlflowClient

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg_dict = compose_config([*FT_TINY, f"logger.tracking_uri=sqlite:///{tmp_path}/s.db"])
    train(validate(cfg_dict), OmegaConf.to_yaml(cfg_dict, resolve=True), RunPaths(run_dir, tmp_path))
    client = MlflowClient(f"sqlite:///{tmp_path}/s.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == "cappuccino"]
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    metrics, params = mlflow_run.data.metrics, mlflow_run.data.params
    for head in range(2):  # ft_small: 1 block, 2 heads
        for name in ("entropy", "weight_norm", "portfolio_share"):
            assert math.isfinite(metrics[f"attention/block0/head{head}/{name}"])
    assert metrics["encoder/cls_norm"] > 0
    keys = ("encoder.actor_parameters", "encoder.critic_parameters", "policy.parameters")
    actor, critic, policy = (int(params[key]) for key in keys)
    assert actor > 0 and policy > actor + critic
    assert critic == (0 if params["encoder.shared"] == "True" else actor)
    artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
    assert {"attention.png", "attention.npz"} <= artifacts
    # the map a report averages over runs: the one the figure drew, with what drawing it takes
    probe = load_attention_map(Path(client.download_artifacts(mlflow_run.info.run_id, "attention.npz", str(tmp_path))))
    cfg = validate(cfg_dict)
    assert probe.cls.shape[0] == 1 and probe.lookback == cfg.window.lookback and probe.patch_bars == (4 if cfg.encoder.tokens == "patch" else 1)
    assert probe.symbols == tuple(cfg.data.symbols) and 0 < probe.windows <= 256
    np.testing.assert_allclose(probe.cls.sum(-1), 1.0, rtol=1e-5)  # each block's [CLS] row is a distribution
    attention_figure(probe.cls, "t", probe.lookback, probe.symbols, probe.patch_bars)  # and it draws
