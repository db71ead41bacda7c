"""Masked-feature pre-training (pretrain.py): the losses, the corruptions, the time-ordered
windows, a short run whose validation loss falls, and its encoder loading into train.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cappuccino.config import build
from cappuccino.data import load_market
from cappuccino.data.tensors import MarketTensors, Segment
from cappuccino.env import EpisodeSampling, PortfolioEnv
from cappuccino.errors import ConfigError
from cappuccino.evaluation.splits import select_splits
from cappuccino.models.ft_transformer import FTTransformerEncoder
from cappuccino.pretrain import (
    masked_mse,
    pretrain,
    random_token_mask,
    replace_features,
    run,
    split_decision_bars,
    validate,
)
from cappuccino.pretrain.trainer import training_segments, training_windows
from cappuccino.runtime import RunPaths
from cappuccino.trading.rules import TradingRules

from .config_reads import record_reads, unread_leaves
from .conftest import CONF_DIR, TINY
from .conftest import run_train as train_run

ENCODER = ["encoder=ft_small", "encoder.patch_bars=4", "encoder.d_token=16", "encoder.out_dim=32"]
PRETRAIN_TINY = [
    "data.n_bars=1500",
    "window.lookback=8",
    "window.zscore_window=50",
    *ENCODER,
    "cv.embargo_bars=4",
    "pretrain.batch_size=32",
    "pretrain.max_steps=60",
    "pretrain.warmup_steps=5",
    "pretrain.eval_every=15",
    "pretrain.val_fraction=0.2",
    "pretrain.progress=false",
]
# train.py at TINY sizes with the same encoder and window as PRETRAIN_TINY.
TRAIN_TINY = [o for o in TINY if not o.startswith("encoder.")] + ENCODER + ["logger=none"]
A, F = 3, 4


pytestmark = pytest.mark.usefixtures("one_thread")


def compose_pretrain(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose("pretrain", overrides=list(overrides))


def paths(tmp_path, name="run"):
    (tmp_path / name).mkdir(parents=True, exist_ok=True)
    return RunPaths(run_dir=tmp_path / name, project_dir=tmp_path)


def bar_tensors(n_bars, lookback):
    """Market tensors of ``n_bars`` bars (values unused): what split_decision_bars reads is the
    lookback and the bar range."""
    return MarketTensors(torch.zeros(n_bars, A, F), torch.ones(n_bars, A), torch.ones(n_bars, A), lookback=lookback)


# ----------------------------------------------------------------------------------- objectives
def test_masked_mse_counts_masked_positions_only():
    target = torch.zeros(1, 3, 2)
    prediction = torch.tensor([[[1.0, 3.0], [100.0, 100.0], [-100.0, 7.0]]])  # (N=1, n=3 tokens, V=2)
    mask = torch.tensor([[True, False, False]])
    assert masked_mse(prediction, target, mask).item() == pytest.approx((1 + 9) / 2)
    mask = torch.tensor([[True, False, True]])
    assert masked_mse(prediction, target, mask).item() == pytest.approx((1 + 9 + 10_000 + 49) / 4)


def test_token_mask_masks_the_same_share_of_every_window():
    mask = random_token_mask(50, 40, 0.15, torch.Generator().manual_seed(0))
    assert mask.shape == (50, 40) and (mask.sum(1) == 6).all()
    assert mask.float().mean(0).min() > 0  # every position gets masked somewhere
    assert random_token_mask(4, 3, 0.01, torch.Generator()).sum(1).eq(1).all()  # never none


def test_rfd_replaces_about_p_of_values_from_the_same_feature_of_other_windows():
    n, shape = 64, (6, A, F)
    window = torch.randperm(n * 6 * A * F).float().view(n, *shape)  # distinct values: a donor is unique
    corrupted, replaced = replace_features(window, 0.3, torch.Generator().manual_seed(0))
    assert replaced.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert torch.equal(corrupted[~replaced], window[~replaced])
    assert torch.equal(replaced, corrupted != window)  # the labels are right
    same_position = corrupted.unsqueeze(1) == window.unsqueeze(0)  # (i, j, L, A, F): corrupted[i] from window[j]
    assert same_position.any(1).all()  # every value comes from the same (bar, asset, feature) slot
    from_itself = same_position.diagonal(dim1=0, dim2=1).movedim(-1, 0)  # (i, L, A, F)
    assert not (from_itself & replaced).any()  # ... of another window


@pytest.mark.parametrize("tokens", ["feature", "asset_time", "time", "patch"])
def test_each_token_is_made_of_its_token_values_and_a_mask_keeps_its_position(tokens):
    torch.manual_seed(0)
    model = FTTransformerEncoder(
        lookback=5, n_assets=A, n_features=F, d_token=8, n_blocks=2, n_heads=2, out_dim=4, tokens=tokens, patch_bars=2
    )
    window, weights = torch.randn(2, 5, A, F), torch.softmax(torch.randn(2, A + 1), -1)
    n = model.n_market_tokens
    k = n // 2
    # Which window values token k is made of: label every value by its position (+1; padding is 0).
    labels = model.token_values(torch.arange(1, window[0].numel() + 1.0).reshape(1, *window.shape[1:]))
    assert labels.shape == (1, n, model.values_per_token)
    assert torch.equal(labels[labels > 0].sort().values, torch.arange(1, window[0].numel() + 1.0))  # each value once
    own = labels[0, k][labels[0, k] > 0].long() - 1
    assert len(own) > 0
    changed = window.clone()
    changed.view(2, -1)[:, own] += 1.0  # edits the values of market token k only
    before, after = model.tokenizer(window, weights), model.tokenizer(changed, weights)
    differs = (before != after).any(-1).any(0)  # (T - 1,)
    assert differs.nonzero().flatten().tolist() == [k]

    mask = torch.zeros(2, n, dtype=torch.bool)
    mask[:, k] = True
    mask_token = torch.randn(8)
    masked = model.tokenizer(window, weights, mask, mask_token)
    assert torch.equal(masked, model.tokenizer(changed, weights, mask, mask_token))  # values hidden
    assert torch.equal(masked[:, :k], before[:, :k]) and torch.equal(masked[:, k + 1 :], before[:, k + 1 :])
    assert not torch.allclose(masked[0, k], masked[0, (k + 1) % n])  # the position is kept


@pytest.mark.parametrize("tokens", ["feature", "asset_time", "time"])
def test_encode_tokens_cls_embedding_is_what_forward_reads(tokens):
    torch.manual_seed(0)
    model = FTTransformerEncoder(lookback=4, n_assets=A, n_features=F, d_token=8, n_blocks=2, n_heads=2, out_dim=4, tokens=tokens)
    window, weights = torch.randn(3, 4, A, F), torch.softmax(torch.randn(3, A + 1), -1)
    tokens_out = model.encode_tokens(window, weights)
    assert tokens_out.shape == (3, model.n_tokens, 8)
    torch.testing.assert_close(model.head(tokens_out[:, -1]), model(window, weights))


# -------------------------------------------------------------------------------------- windows
def test_validation_windows_follow_training_windows_inside_the_training_segment():
    cfg = validate(compose_pretrain([*PRETRAIN_TINY, "logger=none"]))
    market, _ = load_market(cfg.data, cfg.window.zscore_window)
    ((_, split),) = select_splits(build(cfg.cv), None, market.first_valid, market.n_bars)
    (segment,) = split.train
    lookback = cfg.window.lookback
    tensors = MarketTensors.from_market(market, lookback, "cpu")
    bars = split_decision_bars(tensors, split.train, 0.2)

    def window_bars(decision_bars):
        return decision_bars.unsqueeze(-1) + torch.arange(1 - lookback, 1)  # (N, L)

    train, val = window_bars(bars.train), window_bars(bars.validation)
    assert train.max() < val.min()  # strictly later, no shared bar
    assert bars.validation.min() - bars.train.max() == lookback
    assert segment.start <= train.min() and bars.validation.max() <= segment.stop - 2  # the agent's decision bars
    n_decision = segment.stop - segment.start - lookback
    assert len(bars.validation) == int(0.2 * n_decision)
    assert len(bars.train) + len(bars.validation) + lookback - 1 == n_decision
    assert val.max() < split.validation[0].start  # never a bar of the holdout validation or test split

    windows = training_windows(tensors, split.train, 0.2)  # what pre-training reads
    assert torch.equal(windows.bars.train, bars.train) and torch.equal(windows.bars.validation, bars.validation)
    agent_market = MarketTensors.from_market(market, lookback, "cpu")  # as train.py builds it
    rules = TradingRules(min_order_size=dict.fromkeys(market.symbols, 0.0))  # trading plays no part here
    env = PortfolioEnv(agent_market, split.train, rules=rules, sampling=EpisodeSampling(num_envs=8))
    some = torch.cat([bars.train[:3], bars.validation[-3:]])
    assert torch.equal(windows.market.window(some), env.window(some))  # the agent's windows
    features = torch.as_tensor(market.features, dtype=torch.float32)
    expected = torch.stack([features[bar - lookback + 1 : bar + 1] for bar in some.tolist()])
    assert torch.equal(windows.market.window(some), expected)  # bars t-L+1..t


def test_a_cv_scheme_with_several_splits_needs_cv_split(tmp_path):
    cpcv = ["cv=cpcv", "cv.n_groups=3", "cv.n_test_groups=1", "cv.purge_bars=8"]
    overrides = [o for o in PRETRAIN_TINY if not o.startswith("cv.")] + cpcv + ["logger=none"]
    with pytest.raises(ConfigError, match="cv.split: cv=cpcv has 3 splits"):
        run(compose_pretrain(overrides), paths(tmp_path))
    cfg = validate(compose_pretrain([*overrides, "cv.split=1"]))
    segments = training_segments(cfg.cv, 50, 1500)
    assert len(segments) == 2  # the groups before and after split 1's test group
    bars = split_decision_bars(bar_tensors(1500, 8), segments, 0.2)
    assert bars.validation.min() - bars.train.max() >= 8


def test_too_short_a_training_segment_names_the_settings():
    with pytest.raises(ConfigError, match="pretrain.val_fraction"):
        split_decision_bars(bar_tensors(30, 20), (Segment(0, 30),), val_fraction=0.1)


# ------------------------------------------------------------------------------------------ runs
def test_short_run_lowers_validation_loss_and_its_encoder_loads_into_train_py(tmp_path):
    # (bar, asset) tokens: a masked one is 4 values its neighbours' bars tell much about, so 60
    # steps beat mean imputation; a masked patch of 4 bars x 4 features takes longer.
    best = run(compose_pretrain([*PRETRAIN_TINY, "encoder.tokens=asset_time", "logger=none"]), paths(tmp_path))
    run_dir = tmp_path / "run"
    for name in ("best_encoder.pt", "final_encoder.pt", "training_history.json", "config.yaml"):
        assert (run_dir / name).is_file(), name
    history = json.loads((run_dir / "training_history.json").read_text())
    evals = history["evals"]
    assert [e["step"] for e in evals] == [15, 30, 45, 60]
    assert evals[0]["val_loss"] > best == min(e["val_loss"] for e in evals)
    assert evals[-1]["reconstruction_ratio"] < 1.0  # better than per-feature mean imputation
    assert {"train_loss", "val_loss", "lr", "epoch"} <= set(evals[0])

    encoder_file = run_dir / "best_encoder.pt"
    weights = torch.load(encoder_file, weights_only=True)["state_dict"]
    overrides = [*TRAIN_TINY, "encoder.tokens=asset_time", f"encoder.pretrained={encoder_file}", "encoder.freeze=true"]
    train_run(train_compose(overrides), paths(tmp_path, "train"))
    policy = torch.load(tmp_path / "train" / "checkpoint.pt", weights_only=True)["state_dict"]
    for name, tensor in weights.items():  # frozen, except the head pre-training never trained
        if not name.startswith("head."):
            assert torch.equal(policy["actor_encoder." + name], tensor), name


def train_compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose("config", overrides=list(overrides))


def test_rfd_run_starts_at_the_constant_guess_learns_and_is_reproducible(tmp_path):
    overrides = [*PRETRAIN_TINY, "encoder.tokens=asset_time", "logger=none", "pretrain.objective=rfd", "pretrain.eval_every=1"]
    run(compose_pretrain([*overrides, "pretrain.max_steps=1", "pretrain.warmup_steps=0"]), paths(tmp_path, "one"))
    (one,) = json.loads((tmp_path / "one" / "training_history.json").read_text())["evals"]
    assert one["detection_ratio"] == pytest.approx(1.0, abs=1e-3)  # one small step from the guess

    overrides = [*PRETRAIN_TINY, "encoder.tokens=asset_time", "logger=none", "pretrain.objective=rfd"]
    run(compose_pretrain(overrides), paths(tmp_path, "a"))
    run(compose_pretrain(overrides), paths(tmp_path, "b"))
    first, second = (json.loads((tmp_path / d / "training_history.json").read_text()) for d in "ab")
    assert first == second
    assert first["evals"][0]["val_loss"] > first["evals"][-1]["val_loss"]


def test_every_config_leaf_is_read_and_mlflow_gets_the_curves(tmp_path):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path}/store.db"
    cfg_dict = compose_pretrain([*PRETRAIN_TINY, "pretrain.max_steps=30", f"logger.tracking_uri={store}"])
    with record_reads() as validation_reads:
        cfg = validate(cfg_dict)
    with record_reads() as reads:
        pretrain(cfg, OmegaConf.to_yaml(cfg_dict), paths(tmp_path))
    # How train.py uses the encoder, and registering a policy, are checked by validation only
    # (PretrainJobConfig: they must be off).
    checked_only = ["encoder.shared", "encoder.freeze", "logger.register_as"]
    assert unread_leaves(cfg, reads) == checked_only
    assert not set(checked_only) & set(unread_leaves(cfg, validation_reads))

    client = MlflowClient(store)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("cappuccino").experiment_id])
    assert len(client.get_metric_history(mlflow_run.info.run_id, "val/loss")) == 2
    history = json.loads((tmp_path / "run" / "training_history.json").read_text())
    best = min(history["evals"], key=lambda e: e["val_loss"])
    assert mlflow_run.data.metrics["best/reconstruction_ratio"] == pytest.approx(best["reconstruction_ratio"])
    artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
    assert {"best_encoder.pt", "final_encoder.pt", "training_history.json", "config.yaml"} <= artifacts


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override, key",
    [
        ("pretrain.objective=mae", "pretrain.objective"),
        ("pretrain.mask_ratio=0", "pretrain.mask_ratio"),
        ("pretrain.mask_ratio=1", "pretrain.mask_ratio"),
        ("pretrain.lr=0", "pretrain.lr"),
        ("pretrain.weight_decay=-1", "pretrain.weight_decay"),
        ("pretrain.batch_size=1", "pretrain.batch_size"),
        ("pretrain.max_steps=0", "pretrain.max_steps"),
        ("pretrain.warmup_steps=60", "pretrain.warmup_steps"),
        ("pretrain.eval_every=0", "pretrain.eval_every"),
        ("pretrain.patience=0", "pretrain.patience"),
        ("pretrain.val_fraction=1", "pretrain.val_fraction"),
        ("pretrain.device=tpu", "pretrain.device"),
    ],
)
def test_bad_settings_fail_validation_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose_pretrain([*PRETRAIN_TINY, override]))


def test_an_encoder_without_token_outputs_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="encoder=mlp has none: use encoder=ft_small, ft_default or ft_large"):
        validate(compose_pretrain(["encoder=mlp"]))


@pytest.mark.parametrize("override", ["encoder.shared=true", "encoder.freeze=true", "logger.register_as=x"])
def test_train_py_only_encoder_settings_are_refused_before_work(tmp_path, override):
    key = override.split("=")[0]
    extra = ["encoder.pretrained=missing.pt"] if key == "encoder.freeze" else []
    logger = [] if key.startswith("logger") else ["logger=none"]
    with pytest.raises(ConfigError, match=key):
        run(compose_pretrain([*PRETRAIN_TINY, *logger, override, *extra]), paths(tmp_path))
    assert not any((tmp_path / "run").iterdir())


def test_an_encoder_pretrained_on_hourly_bars_fine_tunes_on_five_minute_bars(tmp_path):
    """The transfer path: the encoder file records features and sizes, not the bar interval."""
    run(compose_pretrain([*PRETRAIN_TINY, "logger=none", "pretrain.max_steps=15", "data.interval=1h"]), paths(tmp_path))
    encoder_file = tmp_path / "run" / "best_encoder.pt"
    overrides = [*TRAIN_TINY, "data.interval=5min", f"encoder.pretrained={encoder_file}"]
    objective = train_run(train_compose(overrides), paths(tmp_path, "train_5m"))
    assert math.isfinite(objective)
    checkpoint = torch.load(tmp_path / "train_5m" / "checkpoint.pt", weights_only=True)
    assert checkpoint["schema"]["interval"] == "0 days 00:05:00"


def test_rfd_survives_a_validation_set_one_window_longer_than_whole_batches(tmp_path):
    """Valid configs must not crash on the data's length: with n validation windows and
    n % pretrain.batch_size == 1, the last chunk held one window, and replacing its features
    from "the other windows of the batch" raised."""
    from cappuccino.pretrain.trainer import validation_chunks

    def n_validation(n_bars: int) -> int:
        cfg = validate(compose_pretrain([*PRETRAIN_TINY, f"data.n_bars={n_bars}"]))
        market, _ = load_market(cfg.data, cfg.window.zscore_window)
        segments = training_segments(cfg.cv, market.first_valid, market.n_bars, market.feature_memory)
        tensors = MarketTensors.from_market(market, cfg.window.lookback, "cpu")
        return len(split_decision_bars(tensors, segments, cfg.pretrain.val_fraction).validation)

    n_bars = next(n for n in range(1500, 1800) if n_validation(n) % 32 == 1)
    run(compose_pretrain([*PRETRAIN_TINY, "logger=none", "pretrain.objective=rfd", f"data.n_bars={n_bars}"]), paths(tmp_path, "r"))
    assert [len(c) for c in validation_chunks(torch.arange(65), 32)] == [32, 33]
    assert [len(c) for c in validation_chunks(torch.arange(64), 32)] == [32, 32]


def test_the_printed_fine_tune_command_works_as_printed(tmp_path, capsys):
    """pretrain.py ends with the train.py command that loads its encoder: the encoder option,
    the window settings and the encoder overrides the encoder was trained with."""
    import shlex

    overrides = [*PRETRAIN_TINY, "logger=none"]
    run(compose_pretrain(overrides), paths(tmp_path, "pre"), overrides, encoder_option="ft_small")
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("fine-tune it: ")]
    command = shlex.split(line.removeprefix("fine-tune it: "))
    assert command[:2] == ["python", "train.py"] and "encoder=ft_small" in command
    printed = command[2:]
    keys = {o.split("=")[0] for o in printed}
    sizes = [o for o in TINY if o.split("=")[0] not in keys and not o.startswith("encoder.")]
    train_run(train_compose([*sizes, "logger=none", *printed]), paths(tmp_path, "tuned"))
    assert (tmp_path / "tuned" / "checkpoint.pt").is_file()
