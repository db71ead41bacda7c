"""PortfolioEnv: hand-computed fills, conservation, minimum sizes, timing, episodes, determinism."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from cappuccino.data.market import MarketData
from cappuccino.data.tensors import MarketTensors, Segment
from cappuccino.env import EpisodeSampling, PortfolioEnv, equal_weight_buy_and_hold
from cappuccino.errors import ArgumentError
from cappuccino.trading.rules import TradingRules, fill_orders, plan_orders, target_weights

RULES_YAML = Path(__file__).resolve().parents[1] / "conf" / "rules" / "default.yaml"
RULE_KEYS = ("fee", "cash_reserve", "rebalance_band")


class EnvSetup(NamedTuple):
    rules: TradingRules  # minimum sizes are filled in per env by make_env / from the market's symbols
    sampling: EpisodeSampling


def env_config(**overrides) -> EnvSetup:
    """Rules and sampling of a small hand-checkable env; ``overrides`` may name fields of either."""
    base = dict(
        num_envs=1, fee=0.01, cash_reserve=0.0, initial_cash=1000.0, reward_scale=1.0,
        reward="log_return", rebalance_band=0.0,
    )  # fmt: skip
    merged = {**base, **overrides}
    rules = TradingRules(**{key: merged.pop(key) for key in RULE_KEYS})
    return EnvSetup(rules, EpisodeSampling(**merged))


def symbols_of(n_assets: int) -> tuple[str, ...]:
    return tuple(f"S{i}" for i in range(n_assets))


def make_env(features, open_, close, segments, cfg: EnvSetup, lookback: int, min_size, **kwargs) -> PortfolioEnv:
    """An env on raw tensors: assets are symbols S0..S{A-1} whose minimum sizes are ``min_size`` (A,)."""
    symbols = symbols_of(features.shape[1])
    market = MarketTensors(features, open_, close, lookback=lookback, symbols=symbols)
    sizes = dict(zip(symbols, (float(size) for size in min_size), strict=True))
    rules = dataclasses.replace(cfg.rules, min_order_size=sizes)
    return PortfolioEnv(market, segments, rules=rules, sampling=cfg.sampling, **kwargs)


def hand_env(open_, close, cfg: EnvSetup, min_size, lookback: int = 1) -> PortfolioEnv:
    """One env running the whole market once, zero features."""
    open_t = torch.tensor(open_, dtype=torch.float64)
    features = torch.zeros(*open_t.shape, 1)
    return make_env(
        features, open_t, torch.tensor(close, dtype=torch.float64), [Segment(0, len(open_))], cfg,
        lookback, min_size, num_envs=1, random_start=False, episode_length=None,
    )  # fmt: skip


def plan_and_fill(cash, holdings, weights, price, rules: TradingRules, symbols):
    """One rebalance: the orders ``rules`` plan, filled at ``price``."""
    orders = plan_orders(cash, holdings, weights, price, rules, rules.for_symbols(symbols))
    return fill_orders(cash, holdings, orders, price, rules.fee)


def random_market(n_bars: int, n_assets: int, n_features: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Features, open, close of a geometric random walk (open = previous close with a small gap)."""
    g = torch.Generator().manual_seed(seed)
    close = 100.0 * torch.exp(0.01 * torch.randn(n_bars, n_assets, generator=g, dtype=torch.float64).cumsum(0))
    open_ = torch.cat([close[:1], close[:-1]]) * torch.exp(0.001 * torch.randn(n_bars, n_assets, generator=g, dtype=torch.float64))
    return torch.randn(n_bars, n_assets, n_features, generator=g), open_, close


def actions(n_steps: int, n_envs: int, n_assets: int, seed: int, spread: float = 1.5) -> torch.Tensor:
    """(n_steps, B, A) actions, often outside [-1, 1] so the clamp is exercised."""
    g = torch.Generator().manual_seed(seed)
    return spread * torch.randn(n_steps, n_envs, n_assets, generator=g)


# ---------------------------------------------------------------------- action mapping
def test_target_weights_mapping() -> None:
    r = 0.1
    w = target_weights(torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, -1.0], [5.0, -7.0], [0.0, -1.0]]), r)
    expected = torch.tensor([[0.0, 0.0], [0.45, 0.45], [0.9, 0.0], [0.9, 0.0], [0.45, 0.0]])
    torch.testing.assert_close(w, expected)
    # More assets than fit: (1, -1, 0) -> raw (1, 0, 0.5), normalised by 1.5.
    w3 = target_weights(torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]), r)
    torch.testing.assert_close(w3, torch.tensor([[0.6, 0.0, 0.3], [0.3, 0.3, 0.3]]))


# --------------------------------------------------------------------- hand-computed fills
def test_hand_computed_two_assets_three_bars() -> None:
    # bar:           0          1           2
    open_ = [[10.0, 20.0], [10.0, 25.0], [12.0, 20.0]]
    close = [[10.0, 20.0], [11.0, 24.0], [12.0, 22.0]]
    env = hand_env(open_, close, env_config(cash_reserve=0.1), [0.5, 0.5])
    obs = env.reset()
    assert obs.bar.tolist() == [0]
    torch.testing.assert_close(obs.weights, torch.tensor([[1.0, 0.0, 0.0]]))

    # t=0, action (0, 0): w = 0.45 each of V_open = 1000 at open[1] = (10, 25)
    # -> buy 45 A and 18 B: notional 900, fees 9, cash 1000 - 909 = 91.
    # V1 at close[1] = 91 + 45 * 11 + 18 * 24 = 1018.
    step = env.step(torch.tensor([[0.0, 0.0]]))
    torch.testing.assert_close(env.holdings, torch.tensor([[45.0, 18.0]], dtype=torch.float64))
    torch.testing.assert_close(env.cash, torch.tensor([91.0], dtype=torch.float64))
    assert step.fees.item() == pytest.approx(9.0)
    assert step.turnover.item() == pytest.approx(0.9)
    assert step.value.item() == pytest.approx(1018.0)
    assert step.reward.item() == pytest.approx(math.log(1018.0 / 1000.0), rel=1e-6)
    assert step.obs.bar.tolist() == [1] and not step.done.item()
    torch.testing.assert_close(step.obs.weights, torch.tensor([[91.0, 495.0, 432.0]]) / 1018.0)

    # t=1, action (1, -1): w = (0.9, 0). open[2] = (12, 20): V_open = 91 + 540 + 360 = 991.
    # Sell 18 B: +360 * 0.99 = 356.4 -> cash 447.4. Target A = 0.9 * 991 / 12 = 74.325,
    # buy 29.325 A: 351.9 notional, costs 355.419 -> cash 91.981. Fees 3.6 + 3.519 = 7.119.
    # V2 at close[2] = 91.981 + 74.325 * 12 = 983.881. Last step of the segment: done.
    step = env.step(torch.tensor([[1.0, -1.0]]))
    assert step.fees.item() == pytest.approx(7.119)
    assert step.turnover.item() == pytest.approx(711.9 / 991.0)
    assert step.value.item() == pytest.approx(983.881)
    assert step.reward.item() == pytest.approx(math.log(983.881 / 1018.0), rel=1e-5)
    assert step.done.item()
    assert step.final_obs.bar.tolist() == [2]
    torch.testing.assert_close(step.final_obs.weights, torch.tensor([[91.981, 891.9, 0.0]]) / 983.881)
    # Auto-reset: a new episode, all cash again.
    assert step.obs.bar.tolist() == [0]
    torch.testing.assert_close(step.obs.weights, torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(env.cash, torch.tensor([1000.0], dtype=torch.float64))


def test_buys_scaled_to_available_cash() -> None:
    # All in with no reserve: 1000 at open 10 would cost 1010 with the fee, so the buy is scaled
    # to 1000 / 1.01 = 990.0990 notional = 99.00990 units; fees 9.900990; no cash left.
    env = hand_env([[10.0], [10.0], [10.0]], [[10.0], [11.0], [11.0]], env_config(), [0.0])
    env.reset()
    step = env.step(torch.tensor([[1.0]]))
    assert env.holdings.item() == pytest.approx(99.00990099)
    assert env.cash.item() == pytest.approx(0.0, abs=1e-9)
    assert step.fees.item() == pytest.approx(9.900990099)
    assert step.turnover.item() == pytest.approx(0.9900990099)
    assert step.value.item() == pytest.approx(99.00990099 * 11.0)


@pytest.mark.parametrize(("min_size", "trades"), [(1.0, False), (0.1, True)])
def test_minimum_order_size_skips_small_trades(min_size: float, trades: bool) -> None:
    # Reserve 0.5, no fee: step 0 buys 50 units at 10. At open[2] = 10.2 the value is 1010 and
    # the target 505 / 10.2 = 49.5098 units: a sell of 0.4902 units, below a minimum of 1.
    env = hand_env(
        [[10.0], [10.0], [10.2], [10.2]], [[10.0], [10.0], [10.2], [10.2]],
        env_config(fee=0.0, cash_reserve=0.5), [min_size],
    )  # fmt: skip
    env.reset()
    env.step(torch.tensor([[1.0]]))
    assert env.holdings.item() == pytest.approx(50.0)
    step = env.step(torch.tensor([[1.0]]))
    if trades:
        assert env.holdings.item() == pytest.approx(505.0 / 10.2)
        assert step.turnover.item() == pytest.approx((50.0 - 505.0 / 10.2) * 10.2 / 1010.0)
    else:
        assert env.holdings.item() == 50.0
        assert step.turnover.item() == 0.0 and step.fees.item() == 0.0


# ------------------------------------------------------------------------ from_market sizes
def hand_market(symbols: tuple[str, ...], open_: np.ndarray, close: np.ndarray) -> MarketData:
    T, A = open_.shape
    ohlcv = np.stack([open_, np.maximum(open_, close), np.minimum(open_, close), close, np.ones((T, A))], -1)
    market = MarketData(
        timestamps=pd.date_range("2024-01-01", periods=T, freq="1h", tz="UTC"),
        symbols=symbols, ohlcv=ohlcv, interval=pd.Timedelta("1h"), source="test",
    )  # fmt: skip
    return market.with_features(np.zeros((T, A, 2), np.float32), ("a", "b"), first_valid=0)


def alpaca_min_order_size() -> dict[str, float]:
    """The per-symbol minimums of conf/rules/default.yaml, in the YAML's order."""
    return dict(OmegaConf.to_container(OmegaConf.load(RULES_YAML).min_order_size))


def market_env(market: MarketData, segments, cfg: EnvSetup, lookback: int = 1, **kwargs) -> PortfolioEnv:
    """An env on ``market``'s tensors, its minimum sizes looked up by symbol in ``cfg.rules``."""
    tensors = MarketTensors.from_market(market, lookback, "cpu")
    return PortfolioEnv(tensors, segments, rules=cfg.rules, sampling=cfg.sampling, **kwargs)


def test_from_market_matches_minimum_sizes_by_symbol() -> None:
    # LINK first although ETH precedes it in the config's mapping: a positional lookup would
    # give LINK the ETH minimum (0.0003) and ETH the LINK minimum (0.1).
    open_ = np.array([[10.0, 10.0], [10.0, 10.0], [10.02, 9.98], [10.0, 10.0]])
    market = hand_market(("LINK", "ETH"), open_, open_.copy())
    cfg = env_config(fee=0.0, cash_reserve=0.1)
    cfg = cfg._replace(rules=dataclasses.replace(cfg.rules, min_order_size=alpaca_min_order_size()))
    assert list(cfg.rules.min_order_size).index("ETH") < list(cfg.rules.min_order_size).index("LINK")
    env = market_env(market, [Segment(0, 4)], cfg, num_envs=1, random_start=False, episode_length=None)
    assert env.market.symbols == ("LINK", "ETH")
    sizes = env.rules.for_symbols(env.market.symbols).min_order_size
    torch.testing.assert_close(sizes, torch.tensor([0.1, 0.0003], dtype=torch.float64))

    env.reset()
    env.step(torch.zeros(1, 2))  # 45 units of each at 10, cash 100
    env.step(torch.zeros(1, 2))  # V_open 1000: LINK wants -0.0898 (< 0.1), ETH +0.0902 (> 0.0003)
    assert env.holdings[0, 0].item() == 45.0
    assert env.holdings[0, 1].item() == pytest.approx(450.0 / 9.98)


def test_from_market_rejects_unknown_symbol_and_warmup() -> None:
    open_ = np.full((6, 2), 10.0)
    cfg = env_config()
    cfg = cfg._replace(rules=dataclasses.replace(cfg.rules, min_order_size=alpaca_min_order_size()))
    market = hand_market(("ETH", "DOGE"), open_, open_)
    with pytest.raises(ArgumentError, match="DOGE") as error:
        market_env(market, [Segment(0, 6)], cfg)
    assert error.value.argument == "min_order_size"
    # The warm-up rows before first_valid are NaN (as with_features builds them): a segment
    # starting inside them is rejected, one starting at first_valid is not.
    warm = hand_market(("ETH", "BTC"), open_, open_)
    features = warm.features.copy()
    features[:3] = np.nan
    warm = warm.with_features(features, warm.feature_names, first_valid=3)
    with pytest.raises(ValueError, match=r"Segment\(start=1, stop=6\) has non-finite features"):
        market_env(warm, [Segment(1, 6)], cfg)
    market_env(warm, [Segment(3, 6)], cfg)


# --------------------------------------------------------------------- conservation, bounds
def test_rebalance_conserves_value_and_never_goes_short() -> None:
    g = torch.Generator().manual_seed(0)
    B, A, fee = 4096, 5, 0.003
    cash = 1000.0 * torch.rand(B, generator=g, dtype=torch.float64) * (torch.rand(B, generator=g) > 0.2)
    holdings = 10.0 * torch.rand(B, A, generator=g, dtype=torch.float64) * (torch.rand(B, A, generator=g) > 0.3)
    cash[0], holdings[0] = 1.0, 0.0  # nearly nothing to trade with
    price = torch.exp(torch.randn(B, A, generator=g, dtype=torch.float64)) * 50.0
    min_size = torch.tensor([0.0, 0.01, 0.1, 1.0, 5.0], dtype=torch.float64)
    weights = target_weights(2.0 * torch.randn(B, A, generator=g, dtype=torch.float64), cash_reserve=0.0)

    symbols = symbols_of(A)
    rules = TradingRules(
        fee=fee, cash_reserve=0.0, rebalance_band=0.0, min_order_size=dict(zip(symbols, min_size.tolist()))
    )
    fill = plan_and_fill(cash, holdings, weights, price, rules, symbols)
    before = cash + (holdings * price).sum(-1)
    after = fill.cash + (fill.holdings * price).sum(-1)
    torch.testing.assert_close(after, before - fill.fees, rtol=1e-12, atol=1e-9)
    assert (fill.cash >= 0).all() and (fill.holdings >= 0).all() and (fill.fees >= 0).all()
    traded = (fill.holdings - holdings).abs()
    assert ((traded == 0) | (traded >= min_size * (1 - 1e-12))).all()
    torch.testing.assert_close(fill.fees, fee * fill.turnover * before)


def test_env_value_after_fill_is_value_before_minus_fees() -> None:
    features, open_, close = random_market(200, 3, 2, seed=1)
    n = 6
    cfg = env_config(num_envs=n, fee=0.0025, cash_reserve=0.02)
    env = make_env(
        features, open_, close, [Segment(0, 200)] * n, cfg, 5, torch.tensor([0.01, 0.1, 1.0]),
        random_start=False, episode_length=None,
    )  # fmt: skip
    obs = env.reset()
    for action in actions(150, n, 3, seed=2):
        price = open_[obs.bar + 1]
        before = env.cash + (env.holdings * price).sum(-1)
        step = env.step(action)
        after = env.cash + (env.holdings * price).sum(-1)
        torch.testing.assert_close(after, before - step.fees, rtol=1e-12, atol=1e-8)
        assert not step.done.any()
        obs = step.obs


def test_cash_and_holdings_never_negative_under_random_actions() -> None:
    features, open_, close = random_market(300, 4, 2, seed=3)
    cfg = env_config(num_envs=64, fee=0.0025, cash_reserve=0.0, episode_length=40)
    env = make_env(features, open_, close, [Segment(0, 300)], cfg, 8, torch.tensor([0.01, 0.5, 1.0, 3.0]))
    env.reset()
    for action in actions(200, 64, 4, seed=4, spread=3.0):
        step = env.step(action)
        assert (env.cash >= 0).all() and (env.holdings >= 0).all()
        assert (step.value > 0).all()
        for weights in (step.obs.weights, step.final_obs.weights):
            assert (weights >= 0).all()
            torch.testing.assert_close(weights.sum(-1), torch.ones(64))


# ---------------------------------------------------------------------------- no look-ahead
def run_fixed(features, open_, close, acts) -> list[tuple[int, torch.Tensor, torch.Tensor, float]]:
    """(decision bar, weights, window, reward of the step taken there) for each step."""
    env = make_env(
        features, open_, close, [Segment(0, len(open_))], env_config(fee=0.0025), 4, torch.full((2,), 0.01),
        random_start=False, episode_length=None,
    )  # fmt: skip
    obs, out = env.reset(), []
    for action in acts:
        step = env.step(action)
        out.append((int(obs.bar), obs.weights.clone(), env.window(obs.bar).clone(), float(step.reward)))
        obs = step.obs
    return out


def test_observation_at_t_and_reward_of_step_t_ignore_later_bars() -> None:
    features, open_, close = random_market(40, 2, 3, seed=5)
    acts = actions(36, 1, 2, seed=6)  # decision bars 3..38
    base = run_fixed(features, open_, close, acts)
    g = torch.Generator().manual_seed(7)
    for k in (10, 21):
        f, o, c = features.clone(), open_.clone(), close.clone()
        f[k + 1 :] = torch.randn(f[k + 1 :].shape, generator=g)
        o[k + 1 :] *= torch.exp(0.05 * torch.randn(o[k + 1 :].shape, generator=g, dtype=torch.float64))
        c[k + 1 :] *= torch.exp(0.05 * torch.randn(c[k + 1 :].shape, generator=g, dtype=torch.float64))
        changed = run_fixed(f, o, c, acts)
        for (t, w, win, r), (_, w2, win2, r2) in zip(base, changed):
            if t <= k:  # everything the agent sees at t is unchanged...
                assert torch.equal(w, w2) and torch.equal(win, win2)
            if t + 1 <= k:  # ...and so is every reward that uses bars up to k
                assert r == r2
            if t == k:  # the step taken at k fills at open[k+1] and is valued at close[k+1]
                assert r != r2


def test_fill_uses_next_open_not_seen_prices() -> None:
    features, open_, close = random_market(30, 2, 3, seed=8)
    acts = actions(26, 1, 2, seed=9)
    base = run_fixed(features, open_, close, acts)
    k = 12
    moved = open_.clone()
    moved[k + 1] *= torch.tensor([1.05, 0.97], dtype=torch.float64)  # only the fill of the step at k
    changed = run_fixed(features, moved, close, acts)
    for (t, w, _, r), (_, w2, _, r2) in zip(base, changed):
        if t < k:
            assert r == r2 and torch.equal(w, w2)
        if t == k:  # seen at k: nothing moved; paid at k: the new fill price
            assert r != r2 and torch.equal(w, w2)
        if t == k + 1:  # the units bought at open[k+1] show in the next weights
            assert not torch.equal(w, w2)


# --------------------------------------------------------------------------------- episodes
def test_episodes_never_cross_segment_boundaries() -> None:
    features, open_, close = random_market(80, 2, 3, seed=10)
    features[30:45] = float("nan")  # the gap: any read of it would show up as NaN
    open_[30:45] = float("nan")
    close[30:45] = float("nan")
    segments, L, E = [Segment(0, 30), Segment(45, 80)], 5, 8
    cfg = env_config(num_envs=16, episode_length=E, reward="excess_log_return")
    env = make_env(features, open_, close, segments, cfg, L, torch.full((2,), 0.01))

    def inside(bar: torch.Tensor, last: int) -> torch.Tensor:
        """Window start and ``bar + last`` both in one segment."""
        return sum((bar - L + 1 >= s.start) & (bar + last <= s.stop - 1) for s in segments).bool()

    obs = env.reset()
    steps_in_episode = torch.zeros(16, dtype=torch.long)
    starts = set(obs.bar.tolist())
    for action in actions(300, 16, 2, seed=11):
        step = env.step(action)
        assert inside(step.obs.bar, 1).all() and inside(step.final_obs.bar, 0).all()
        assert torch.isfinite(step.reward).all() and torch.isfinite(env.window(step.final_obs.bar)).all()
        steps_in_episode += 1
        assert (steps_in_episode <= E).all()  # episodes at a segment's edge are clipped shorter
        steps_in_episode[step.done] = 0
        starts.update(step.obs.bar[step.done].tolist())
    # Starts cover both segments, from the first decision bar to the last one.
    assert min(starts) == 4 and max(starts) == 80 - 2
    assert any(s < 30 for s in starts) and any(s >= 45 for s in starts)


def test_segment_choice_proportional_to_its_episode_windows() -> None:
    features, open_, close = random_market(300, 2, 1, seed=12)
    L, E = 4, 10
    segments = [Segment(0, 123), Segment(150, 173)]  # 119 + 9 = 128 and 19 + 9 = 28 windows
    env = make_env(features, open_, close, segments, env_config(num_envs=8192, episode_length=E), L, torch.zeros(2))
    in_first = (env.reset().bar < 150).double().mean().item()
    assert in_first == pytest.approx(128 / 156, abs=0.015)


def test_every_training_bar_is_visited_equally_often_however_short_its_segment() -> None:
    """A segment shorter than an episode (CPCV's training pieces can be a few hundred bars) gets
    the same visits per bar as a long one, and a long segment's edges as many as its middle."""
    features, open_, close = random_market(700, 2, 1, seed=15)
    L, E = 4, 64
    segments = [Segment(0, 400), Segment(450, 474), Segment(500, 700)]  # 396, 20 and 196 decision bars
    env = make_env(features, open_, close, segments, env_config(num_envs=256, episode_length=E), L, torch.zeros(2))
    visits = torch.zeros(700)
    obs = env.reset()
    for _ in range(1500):
        visits += torch.bincount(obs.bar, minlength=700)
        obs = env.step(torch.zeros(256, 2)).obs
    decision = torch.cat([torch.arange(s.start + L - 1, s.stop - 1) for s in segments])
    rate = visits[decision] / visits[decision].mean()
    assert rate.min() > 0.85 and rate.max() < 1.15, (rate.min(), rate.max())
    assert visits.sum() == visits[decision].sum()  # no visit outside a decision bar


def test_short_segment_runs_what_fits_and_too_short_is_rejected() -> None:
    features, open_, close = random_market(40, 2, 1, seed=13)
    cfg = env_config(num_envs=4, episode_length=20)
    env = make_env(features, open_, close, [Segment(0, 8)], cfg, 3, torch.zeros(2))  # decision bars 2..6
    obs, lengths, length = env.reset(), [], torch.zeros(4, dtype=torch.long)
    for _ in range(60):
        assert ((obs.bar >= 2) & (obs.bar <= 6)).all()
        step = env.step(torch.zeros(4, 2))
        length += 1
        lengths += length[step.done].tolist()
        length[step.done] = 0
        obs = step.obs
    assert max(lengths) == 5 and min(lengths) >= 1  # never past the segment, whatever episode_length
    with pytest.raises(ValueError, match=r"Segment\(start=10, stop=13\).*lookback=3"):
        make_env(features, open_, close, [Segment(0, 8), Segment(10, 13)], cfg, 3, torch.zeros(2))


def test_bad_inputs_are_rejected_with_a_reason() -> None:
    features, open_, close = random_market(40, 2, 1, seed=14)
    cfg = env_config(num_envs=3)
    with pytest.raises(ValueError, match="num_envs"):
        make_env(features, open_, close, [Segment(0, 40)], cfg, 3, torch.zeros(2), random_start=False)
    # Every asset needs a minimum order size: rules that lack one for S1 are rejected, naming it.
    market = MarketTensors(features, open_, close, lookback=3, symbols=symbols_of(2))
    rules = dataclasses.replace(cfg.rules, min_order_size={"S0": 0.0})
    with pytest.raises(ArgumentError, match=r"min_order_size: .*\['S1'\]"):
        PortfolioEnv(market, [Segment(0, 40)], rules=rules, sampling=cfg.sampling)
    env = make_env(features, open_, close, [Segment(0, 40)], cfg, 3, torch.zeros(2))
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(3, 2))
    env.reset()
    with pytest.raises(ValueError, match="action"):
        env.step(torch.zeros(2, 3))


def test_window_gathers_the_last_lookback_bars() -> None:
    features, open_, close = random_market(50, 3, 4, seed=15)
    env = make_env(features, open_, close, [Segment(0, 50)], env_config(), 6, torch.zeros(3))
    bars = torch.tensor([5, 17, 48])
    expected = torch.stack([features[b - 5 : b + 1] for b in bars.tolist()])
    torch.testing.assert_close(env.window(bars), expected)
    buffer = torch.empty(3, 6, 3, 4)
    assert env.window(bars, out=buffer) is not None and torch.equal(buffer, expected)
    with pytest.raises(ValueError, match="out has shape"):
        env.window(bars, out=torch.empty(3, 5, 3, 4))
    # bf16-mixed PPO gathers in bfloat16: the same numbers as casting the float32 window.
    assert torch.equal(env.window(bars, dtype=torch.bfloat16), expected.to(torch.bfloat16))


# ------------------------------------------------------------------------------- rewards
def test_equal_weight_buy_and_hold_by_hand() -> None:
    # 500 per asset at open (10, 20) with fee 1%: 500 / 10.1 and 500 / 20.2 units.
    values = equal_weight_buy_and_hold(
        torch.tensor([10.0, 20.0], dtype=torch.float64),
        torch.tensor([[11.0, 18.0], [12.0, 22.0]], dtype=torch.float64), 1000.0, 0.01,
    )  # fmt: skip
    torch.testing.assert_close(values, torch.tensor([990.0990099, 1138.6138614], dtype=torch.float64))


def test_excess_rewards_sum_to_log_growth_over_benchmark() -> None:
    features, open_, close = random_market(120, 3, 2, seed=16)
    cfg = env_config(fee=0.0025, reward="excess_log_return", reward_scale=100.0)
    env = make_env(
        features, open_, close, [Segment(10, 120)], cfg, 5, torch.full((3,), 0.01),
        num_envs=1, random_start=False, episode_length=None,
    )  # fmt: skip
    first = int(env.reset().bar)
    total = 0.0
    for action in actions(200, 1, 3, seed=17):
        step = env.step(action)
        total += float(step.reward)
        if step.done.item():
            break
    last_fill = int(step.final_obs.bar)
    assert last_fill == 119 and first == 14
    cash = cfg.sampling.initial_cash
    bench = equal_weight_buy_and_hold(open_[first + 1], close[first + 1 : last_fill + 1], cash, cfg.rules.fee)
    expected = math.log(float(step.value) / cash) - math.log(float(bench[-1]) / cash)
    assert total / 100.0 == pytest.approx(expected, abs=1e-5)


def test_the_turnover_penalty_charges_each_steps_turnover_in_the_reward_only() -> None:
    features, open_, close = random_market(60, 3, 2, seed=26)

    def rollout(penalty: float) -> list:
        cfg = env_config(fee=0.0025, reward="excess_log_return", reward_scale=100.0, turnover_penalty=penalty)
        env = make_env(
            features, open_, close, [Segment(0, 60)], cfg, 5, torch.full((3,), 0.01),
            num_envs=1, random_start=False, episode_length=None,
        )  # fmt: skip
        env.reset()
        return [env.step(action) for action in actions(20, 1, 3, seed=27)]

    plain, penalised = rollout(0.0), rollout(0.004)
    for a, b in zip(plain, penalised):
        assert torch.equal(a.value, b.value) and torch.equal(a.fees, b.fees)  # the same trades, the same money
        expected = a.reward.double() - 100.0 * 0.004 * a.turnover
        torch.testing.assert_close(b.reward.double(), expected, rtol=0, atol=1e-4)
    assert sum(float(s.turnover) for s in plain) > 1.0  # the actions do trade: the penalty is not vacuous
    with pytest.raises(ArgumentError, match="turnover_penalty: must be >= 0, got -0.1"):
        EpisodeSampling(turnover_penalty=-0.1)


# ------------------------------------------------------------------ reset, determinism
def test_reset_leaves_no_state_behind() -> None:
    features, open_, close = random_market(200, 3, 2, seed=18)
    cfg = env_config(num_envs=8, fee=0.0025, episode_length=30, reward="excess_log_return")
    used = make_env(features, open_, close, [Segment(0, 200)], cfg, 5, torch.full((3,), 0.01), seed=1)
    used.reset()
    for action in actions(47, 8, 3, seed=19):  # stop mid-episode, holdings and benchmark live
        used.step(action)
    fresh = make_env(features, open_, close, [Segment(0, 200)], cfg, 5, torch.full((3,), 0.01), seed=2)
    a, b = used.reset(seed=3), fresh.reset(seed=3)
    assert torch.equal(a.bar, b.bar) and torch.equal(a.weights, b.weights)
    for action in actions(70, 8, 3, seed=20):
        sa, sb = used.step(action), fresh.step(action)
        for x, y in zip((sa.reward, sa.value, sa.fees, sa.obs.bar), (sb.reward, sb.value, sb.fees, sb.obs.bar)):
            assert torch.equal(x, y)


def test_same_seed_same_numbers() -> None:
    features, open_, close = random_market(300, 3, 2, seed=21)
    cfg = env_config(num_envs=16, episode_length=25)

    def rollout(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        env = make_env(features, open_, close, [Segment(0, 140), Segment(160, 300)], cfg, 5, torch.zeros(3), seed=seed)
        env.reset()
        steps = [env.step(action) for action in actions(60, 16, 3, seed=22)]
        return torch.stack([s.obs.bar for s in steps]), torch.stack([s.reward for s in steps])

    bars, rewards = rollout(0)
    bars_again, rewards_again = rollout(0)
    assert torch.equal(bars, bars_again) and torch.equal(rewards, rewards_again)
    assert not torch.equal(bars, rollout(1)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_host_syncs() -> None:
    features, open_, close = random_market(200, 3, 2, seed=23)
    cfg = env_config(num_envs=2, fee=0.0025, reward="excess_log_return")
    segments, min_size = [Segment(0, 200), Segment(50, 200)], torch.full((3,), 0.01)
    kwargs = dict(random_start=False, episode_length=None)
    cpu = make_env(features, open_, close, segments, cfg, 5, min_size, **kwargs)
    gpu = make_env(features.cuda(), open_.cuda(), close.cuda(), segments, cfg, 5, min_size, **kwargs)
    cpu.reset(), gpu.reset()
    for action in actions(100, 2, 3, seed=24):
        on_device = action.cuda()
        torch.cuda.set_sync_debug_mode("error")
        try:
            on_gpu = gpu.step(on_device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        torch.testing.assert_close(on_gpu.value.cpu(), cpu.step(action).value)


def test_rebalance_band_skips_orders_smaller_than_the_band():
    cash = torch.tensor([50.0], dtype=torch.float64)
    holdings = torch.tensor([[0.5, 0.25]], dtype=torch.float64)  # worth 50 and 25 at price 100
    price = torch.tensor([[100.0, 100.0]], dtype=torch.float64)
    weights = torch.tensor([[0.42, 0.40]], dtype=torch.float64)  # value 125: +2.5 and +25 to trade
    symbols = symbols_of(2)
    no_min = TradingRules(fee=0.0, cash_reserve=0.0, rebalance_band=0.0, min_order_size=dict.fromkeys(symbols, 0.0))
    banded = plan_and_fill(cash, holdings, weights, price, dataclasses.replace(no_min, rebalance_band=0.05), symbols)
    assert banded.holdings[0, 0] == 0.5  # a 2% order is inside the 5% band: not traded
    assert banded.holdings[0, 1] == pytest.approx(0.5)  # a 20% order is outside it: traded
    unbanded = plan_and_fill(cash, holdings, weights, price, no_min, symbols)
    assert unbanded.holdings[0, 0] == pytest.approx(0.525)


# ------------------------------------------------- gaps closed after mutation testing (mutmut)
def test_episode_sampling_validation_in_full_and_its_edges() -> None:
    cases = [
        ({"num_envs": 0}, "num_envs", "must be >= 1, got 0"),
        ({"episode_length": 1}, "episode_length", "must be >= 2, got 1"),
        ({"initial_cash": 0.0}, "initial_cash", "must be > 0, got 0.0"),
        ({"reward": "x"}, "reward", "must be one of ['log_return', 'excess_log_return'], got 'x'"),
        ({"reward_scale": 0.0}, "reward_scale", "must be > 0, got 0.0"),
    ]
    for kwargs, argument, message in cases:
        with pytest.raises(ArgumentError, match=f"^{re.escape(f'{argument}: {message}')}$") as error:
            EpisodeSampling(**kwargs)
        assert error.value.argument == argument
    edges = EpisodeSampling(num_envs=1, episode_length=2, initial_cash=0.5, reward="log_return", reward_scale=1e-3)
    assert (edges.num_envs, edges.episode_length, edges.initial_cash, edges.reward_scale) == (1, 2, 0.5, 1e-3)


def test_env_input_errors_in_full() -> None:
    features, open_, close = random_market(40, 2, 1, seed=30)
    cfg = env_config(num_envs=2)

    def env(segments=None, o=open_, c=close, **kwargs) -> PortfolioEnv:
        segments = [Segment(0, 40)] if segments is None else segments
        return make_env(features, o, c, segments, cfg, 3, torch.zeros(2), **kwargs)

    cases = [
        (dict(num_envs=0), "num_envs must be >= 1, got 0"),
        (dict(episode_length=0), "episode_length must be >= 1 or None, got 0"),
        (dict(segments=[]), "segments is empty: pass at least one Segment(start, stop)"),
        (dict(segments=[Segment(5, 5)]), "Segment(start=5, stop=5) is not a bar range inside [0, 40)"),
        (dict(segments=[Segment(-1, 10)]), "Segment(start=-1, stop=10) is not a bar range inside [0, 40)"),
        (dict(segments=[Segment(0, 41)]), "Segment(start=0, stop=41) is not a bar range inside [0, 40)"),
        (
            dict(segments=[Segment(10, 13)]),
            "Segment(start=10, stop=13) has 3 bars, too few for lookback=3: one step needs lookback + 1 = 4 bars",
        ),
    ]
    bad = "Segment(start=0, stop=40) has non-finite or non-positive open/close prices"
    for bar, value in ((7, 0.0), (8, -1.0), (9, math.inf)):
        o = open_.clone()
        o[bar, 1] = value
        cases += [(dict(o=o), bad)]
        cases += [(dict(c=o), bad)]  # the same bad value as a close
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            env(**kwargs)

    unnamed = MarketTensors(features, open_, close, lookback=3)  # no symbols
    message = (
        "market has 0 symbols for 2 assets: build it with MarketTensors(..., symbols=...) or "
        "MarketTensors.from_market, so the rules find each asset's minimum order size"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        PortfolioEnv(unnamed, [Segment(0, 40)], rules=cfg.rules, sampling=cfg.sampling)
    with pytest.raises(RuntimeError, match=r"^call reset\(\) before step\(\) or reading the portfolio$"):
        _ = env().cash


def test_smallest_valid_inputs_are_accepted() -> None:
    features, open_, close = random_market(40, 2, 1, seed=31)
    cfg = env_config(num_envs=4)
    # A segment of lookback + 1 bars is one decision step; episodes of one step end every step.
    for kwargs in (dict(segments=[Segment(0, 4)]), dict(segments=[Segment(0, 40)], episode_length=1)):
        segments = kwargs.pop("segments")
        env = make_env(features, open_, close, segments, cfg, 3, torch.zeros(2), **kwargs)
        obs = env.reset()
        for action in actions(5, 4, 2, seed=32):
            step = env.step(action)
            assert step.done.all() and torch.equal(step.final_obs.bar, obs.bar + 1)
            obs = step.obs
    # Prices below 1 (a cheap token) are prices like any other.
    cheap = make_env(features, 1e-3 * open_, 1e-3 * close, [Segment(0, 40)], cfg, 3, torch.zeros(2))
    cheap.reset()
    assert torch.isfinite(cheap.step(torch.zeros(4, 2)).reward).all()


def test_num_envs_overrides_the_sampling_config() -> None:
    features, open_, close = random_market(40, 2, 1, seed=33)
    cfg = env_config(num_envs=3)
    default = make_env(features, open_, close, [Segment(0, 40)], cfg, 3, torch.zeros(2))
    override = make_env(features, open_, close, [Segment(0, 40)], cfg, 3, torch.zeros(2), num_envs=5)
    assert default.num_envs == 3 and default.reset().bar.shape == (3,)
    assert override.num_envs == 5 and override.reset().bar.shape == (5,)
    assert override.step(torch.zeros(5, 2)).reward.shape == (5,)


def test_default_seed_is_zero() -> None:
    features, open_, close = random_market(300, 2, 1, seed=34)
    cfg = env_config(num_envs=64, episode_length=10)
    bars = {
        seed: make_env(features, open_, close, [Segment(0, 300)], cfg, 3, torch.zeros(2), **kw).reset().bar
        for seed, kw in (("default", {}), (0, dict(seed=0)), (1, dict(seed=1)))
    }
    assert torch.equal(bars["default"], bars[0]) and not torch.equal(bars[0], bars[1])


def test_whole_segment_episodes_pick_each_segment_equally_and_reproducibly() -> None:
    """random_start with episode_length=None: each episode runs one whole segment, from its first
    decision bar to its last, and every segment is equally likely whatever its length."""
    features, open_, close = random_market(80, 2, 1, seed=35)
    segments = [Segment(0, 10), Segment(20, 60), Segment(70, 75)]  # 7, 37 and 2 decision steps
    first_bar, steps = {2: 0, 22: 1, 72: 2}, [7, 37, 2]
    cfg = env_config(num_envs=3000)

    def env(seed: int) -> PortfolioEnv:
        return make_env(features, open_, close, segments, cfg, 3, torch.zeros(2), episode_length=None, seed=seed)

    a, b = env(5), env(5)
    for _ in range(3):  # the env's own generator: interleaved resets of two same-seed envs agree
        assert torch.equal(a.reset().bar, b.reset().bar)
    obs = a.reset()
    assert set(obs.bar.tolist()) == set(first_bar)
    share = torch.bincount(torch.tensor([first_bar[bar] for bar in obs.bar.tolist()]), minlength=3) / 3000
    assert (share - 1 / 3).abs().max() < 0.04, share
    segment = torch.tensor([first_bar[bar] for bar in obs.bar.tolist()])
    stop = torch.tensor([s.stop for s in segments])[segment]
    length, ended = torch.zeros(3000, dtype=torch.long), torch.zeros(3000, dtype=torch.bool)
    action = torch.zeros(3000, 2)
    for _ in range(37):
        step = a.step(action)
        length += ~ended
        newly = step.done & ~ended
        assert torch.equal(step.final_obs.bar[newly], stop[newly] - 1)  # the segment's last fill bar
        ended |= step.done
    assert ended.all() and torch.equal(length, torch.tensor(steps)[segment])


def test_a_fresh_episode_is_all_cash_in_float64() -> None:
    features, open_, close = random_market(40, 3, 1, seed=36)
    cfg = env_config(num_envs=4, initial_cash=1234.5)
    env = make_env(features, open_, close, [Segment(0, 40)], cfg, 3, torch.zeros(3))
    env.reset()
    assert env.cash.dtype == env.holdings.dtype == torch.float64
    assert env.cash.tolist() == [1234.5] * 4
    assert env.holdings.shape == (4, 3) and (env.holdings == 0).all()


def test_excess_reward_of_each_env_is_minus_its_own_benchmark_when_holding_cash() -> None:
    # Two envs on different segments stay all cash (action -1: weight 0), so their value stays
    # 1000 and the excess reward is -scale * log(B[t+1] / B[t]) of each env's own benchmark:
    # 500 / (1.01 * open) units of each asset, bought at the open after its first decision bar.
    open_ = [[10.0, 20.0], [10.0, 20.0], [11.0, 18.0], [12.0, 22.0]]
    close = [[10.0, 20.0], [11.0, 18.0], [12.0, 22.0], [13.0, 21.0]]
    open_t, close_t = torch.tensor(open_, dtype=torch.float64), torch.tensor(close, dtype=torch.float64)
    cfg = env_config(num_envs=2, reward="excess_log_return", reward_scale=10.0)
    env = make_env(
        torch.zeros(4, 2, 1), open_t, close_t, [Segment(0, 3), Segment(1, 4)], cfg, 1, [0.0, 0.0],
        random_start=False, episode_length=None,
    )  # fmt: skip
    assert env.reset().bar.tolist() == [0, 1]
    units = [[500 / (1.01 * 10.0), 500 / (1.01 * 20.0)], [500 / (1.01 * 11.0), 500 / (1.01 * 18.0)]]
    bench = [[1000.0] + [units[0][0] * close[t][0] + units[0][1] * close[t][1] for t in (1, 2)],
             [1000.0] + [units[1][0] * close[t][0] + units[1][1] * close[t][1] for t in (2, 3)]]  # fmt: skip
    for k in range(2):
        step = env.step(-torch.ones(2, 2))
        assert step.value.tolist() == [1000.0, 1000.0] and step.fees.tolist() == [0.0, 0.0]
        expected = [-10.0 * math.log(bench[b][k + 1] / bench[b][k]) for b in range(2)]
        torch.testing.assert_close(step.reward, torch.tensor(expected, dtype=torch.float32), rtol=1e-6, atol=1e-6)
    assert step.done.all()


def test_equal_weight_buy_and_hold_on_batched_inputs() -> None:
    # (E, A) first opens and (E, N, A) closes: each batch row is its own benchmark.
    g = torch.Generator().manual_seed(37)
    open_first = 10.0 + torch.rand(3, 2, generator=g, dtype=torch.float64)
    close = 10.0 + torch.rand(3, 5, 2, generator=g, dtype=torch.float64)
    batched = equal_weight_buy_and_hold(open_first, close, 1000.0, 0.01)
    assert batched.shape == (3, 5)
    for e in range(3):
        units = 500.0 / (1.01 * open_first[e])
        torch.testing.assert_close(batched[e], (units * close[e]).sum(-1), rtol=1e-15, atol=0.0)


def test_observations_are_float32_whatever_the_default_dtype() -> None:
    features, open_, close = random_market(40, 2, 1, seed=38)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        cfg = env_config(num_envs=2, episode_length=2)
        env = make_env(features, open_, close, [Segment(0, 40)], cfg, 3, torch.zeros(2))
        reset = env.reset()
        steps = [env.step(torch.zeros(2, 2)) for _ in range(3)]
    finally:
        torch.set_default_dtype(default)
    weights = [reset.weights] + [w for s in steps for w in (s.obs.weights, s.final_obs.weights)]
    assert {w.dtype for w in weights} == {torch.float32}
    assert {s.reward.dtype for s in steps} == {torch.float32}
    assert env.cash.dtype == torch.float64


def test_a_training_band_replaces_the_rules_band_in_training_episodes_only() -> None:
    rules = TradingRules(fee=0.0025, cash_reserve=0.02, rebalance_band=0.05, min_order_size={"S0": 0.1})
    assert EpisodeSampling().training_rules(rules) is rules  # null: the rules' own band
    training = EpisodeSampling(rebalance_band=0.0).training_rules(rules)
    assert training == dataclasses.replace(rules, rebalance_band=0.0)  # nothing else changes
    with pytest.raises(ArgumentError, match=re.escape("rebalance_band: must be in [0, 1) or null, got 1.0")):
        EpisodeSampling(rebalance_band=1.0)
