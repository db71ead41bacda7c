"""benchmarks/reference_lines.py: the lines an agent's excess Sharpe is read against."""

import sys
from pathlib import Path

import numpy as np

from cappuccino.data.features import with_features
from cappuccino.data.synthetic import SyntheticSource, planted_signal, synthetic_market
from cappuccino.evaluation.references import oracle_gain

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from reference_lines import filtered_gain  # noqa: E402


def test_the_planted_signal_is_recovered_from_past_closes_alone() -> None:
    source = SyntheticSource(n_bars=3000, signal_strength=0.2, signal_half_life=6.0, seed=3)
    market = with_features(synthetic_market(source), 100)
    signal = planted_signal(source)
    true = oracle_gain(signal, market, "cpu").numpy()
    estimate = filtered_gain(market, signal, 0.2)
    observed = slice(market.first_valid, None)
    for a in range(market.n_assets):
        assert np.corrcoef(estimate[observed, a], true[observed, a])[0, 1] > 0.99
    # Causal: a later bar's close changes no earlier estimate.
    moved = market.ohlcv.copy()
    moved[2000:, :, :4] *= 1.5
    shifted = filtered_gain(type(market)(**{**market.__dict__, "ohlcv": moved}), signal, 0.2)
    assert np.array_equal(shifted[:2000], estimate[:2000]) and not np.array_equal(shifted[2000:], estimate[2000:])
