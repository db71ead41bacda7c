"""benchmarks/ppo_flops.py counts attention, the FLOPs that make long windows slow."""

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from cappuccino.models.ft_transformer import FTTransformerEncoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from ppo_flops import count_flops  # noqa: E402


def test_attention_is_counted_as_two_token_by_token_products_per_block() -> None:
    """q k^T and probabilities @ v, 2 * tokens * d each per query; the last block's only query is [CLS]."""
    lookback, n_assets, d_token, n_blocks = 6, 3, 16, 2
    encoder = FTTransformerEncoder(
        lookback=lookback, n_assets=n_assets, n_features=4, d_token=d_token, n_blocks=n_blocks, n_heads=4, out_dim=8
    )
    window, weights = torch.randn(5, lookback, n_assets, 4), torch.full((5, n_assets + 1), 0.25)
    with torch.no_grad(), FlopCounterMode(display=False) as fused:  # the fused CPU kernel has no formula
        encoder(window, weights)
    with torch.no_grad():
        counted = count_flops(lambda: encoder(window, weights))
    tokens = lookback * n_assets + (n_assets + 1) + 1  # (bar, asset) + portfolio + [CLS]
    per_query = 2 * (2 * tokens * d_token)
    attention = (n_blocks - 1) * tokens * per_query + 1 * per_query
    assert counted - fused.get_total_flops() == 5 * attention
