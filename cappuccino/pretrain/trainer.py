"""The pre-training job behind ``pretrain.py``: data -> windows -> pretext task -> encoder files.

Windows
    Exactly the agent's: the same data, features, lookback and cv split as train.py, and a
    window of decision bar t holds the features of bars t-L+1..t (what ``PortfolioEnv.window``
    gathers). Only the split's TRAINING segments are used; a cv scheme with several splits
    needs ``cv.split=K``, since an encoder pre-trained on one split's training bars has seen
    the test bars of others. The decision bars (t in [start + L - 1, stop - 2] per segment)
    are split by time: the last ``val_fraction`` are
    validation windows, and training windows end ``lookback`` bars before the first of them,
    so no bar is in both a training and a validation window.

Portfolio weights
    Each window gets random portfolio weights, uniform on the simplex (a flat Dirichlet): the
    agent sees every allocation, and with one fixed state (all cash) the weight tokens would be
    constants whose tokenizer weights never learn. They are never masked or predicted.

Optimisation
    AdamW, with no weight decay on tokenizers (embeddings), biases, LayerNorms and [MASK]
    (the FT-Transformer paper's choice), a linear warmup and a cosine decay to 0 over
    ``max_steps``. Every ``eval_every`` steps the loss over the validation windows (one fixed
    corruption, drawn once) is measured; the best encoder so far is written to
    ``best_encoder.pt`` and the run stops after ``patience`` evaluations without improvement.

Outputs (in the run folder)
    ``best_encoder.pt`` / ``final_encoder.pt``: encoder-only checkpoints that train.py loads
    with ``encoder.pretrained=PATH`` (same encoder and window settings); ``training_history.json``
    (every evaluation: step, epoch, train loss, validation loss, learning rate, loss ratio);
    ``config.yaml``. The MLflow run holds the curves, the files and the loss ratio: for mfm the
    masked-value MSE over the per-feature-mean imputation's (means over the training windows'
    bars), below 1 when the encoder has learnt more than each feature's average.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from cappuccino.config import CVConfig, PretrainConfig, PretrainJobConfig, build, check_buildable, check_encoder, to_typed
from cappuccino.data import load_market
from cappuccino.data.features import FEATURE_VERSION
from cappuccino.data.tensors import MarketTensors, Segment
from cappuccino.errors import ConfigError
from cappuccino.evaluation.splits import select_splits
from cappuccino.models.checkpoint import encoder_schema, load_encoder_weights, read_checkpoint, save_checkpoint
from cappuccino.models.ft_transformer import FTTransformerEncoder
from cappuccino.pretrain.objectives import Corruption, PretextModel, build_pretext
from cappuccino.progress import console, print_line, progress_bar
from cappuccino.reporting.console import print_data_report, print_outputs
from cappuccino.runtime import Interrupted, RunPaths, deferred_interrupts, pending_interrupt, resolve_device, seed_everything
from cappuccino.tracking import Tracker, overrides_tags, short_run_name
from cappuccino.tracking.job import tracked_job
from cappuccino.tracking.resources import peak_rss_mb


@dataclass(frozen=True)
class WindowBars:
    train: Tensor  # (n_train,) long decision bars of the training windows
    validation: Tensor  # (n_val,) long decision bars of the validation windows, all later


@dataclass(frozen=True)
class Windows:
    """Where pre-training windows come from."""

    market: MarketTensors
    bars: WindowBars
    feature_mean: Tensor  # (A, F) mean over the bars the training windows cover


def run(cfg: DictConfig, paths: RunPaths, overrides: Sequence[str] = (), encoder_option: str = "ft_default") -> float:
    """Validate ``cfg`` (before any work), pre-train, and return the best validation loss;
    ``encoder_option`` is the ``encoder`` group's choice, for the fine-tune command printed."""
    typed = validate(cfg)
    best = pretrain(typed, OmegaConf.to_yaml(cfg, resolve=True), paths, overrides)
    print_line(f"fine-tune it: {fine_tune_command(typed, encoder_option, overrides, paths.run_dir / 'best_encoder.pt')}")
    return best


def fine_tune_command(cfg: PretrainJobConfig, encoder_option: str, overrides: Sequence[str], encoder_file: Path) -> str:
    """The train.py command whose encoder, window and symbols are the ones the encoder was
    pre-trained with (what its schema checks), on the same cv split (whose test bars it has not
    seen), loading it."""
    keep = [o for o in overrides if o.lstrip("+").startswith(("encoder.", "data.symbols", "cv=", "cv."))]
    window = [f"window.lookback={cfg.window.lookback}", f"window.zscore_window={cfg.window.zscore_window}"]
    return shlex.join(["python", "train.py", f"encoder={encoder_option}", *window, *keep, f"encoder.pretrained={encoder_file}"])


def validate(cfg: DictConfig) -> PretrainJobConfig:
    """Build the typed config and every object that needs no data: all checks run before any work."""
    typed: PretrainJobConfig = to_typed(cfg, PretrainJobConfig)
    check_buildable(typed.data, typed.cv)
    check_encoder(typed.encoder, typed.window, len(typed.data.symbols))
    return typed


def pretrain(
    cfg: PretrainJobConfig,
    config_yaml: str,
    paths: RunPaths,
    overrides: Sequence[str] = (),
    parent_run_id: str | None = None,
) -> float:
    """Pre-train, write the encoder files to ``paths.run_dir``, and return the best validation
    loss. ``parent_run_id`` nests the run under another tracked run (an experiment)."""
    device = resolve_device(cfg.pretrain.device, key="pretrain.device")
    seed_everything(cfg.pretrain.seed, None)
    if cfg.encoder.pretrained is not None:  # a wrong file fails before any data is loaded
        read_checkpoint(cfg.encoder.pretrained, "encoder", "encoder.pretrained")

    market, report = load_market(cfg.data, cfg.window.zscore_window)
    print_data_report(report)
    segments = training_segments(cfg.cv, market.first_valid, market.n_bars, market.feature_memory)
    lookback = cfg.window.lookback
    tensors = MarketTensors.from_market(market, lookback, device)
    windows = training_windows(tensors, segments, cfg.pretrain.val_fraction)
    encoder_settings = OmegaConf.to_container(OmegaConf.create(config_yaml).encoder)
    schema = encoder_schema(encoder_settings, market.symbols, market.feature_names, FEATURE_VERSION, lookback, cfg.window.zscore_window)
    model = build_model(cfg, market.n_assets, len(market.feature_names), schema).to(device)

    run_dir = paths.run_dir
    tags = {"job": "pretrain", **overrides_tags(overrides)}
    with tracked_job(cfg.logger, short_run_name(overrides), paths.project_dir, market, config_yaml, tags, parent_run_id) as tracker:

        def save_best() -> None:
            save_checkpoint(run_dir / "best_encoder.pt", model.encoder, "encoder", config_yaml, schema)

        history = {"objective": cfg.pretrain.objective, **fit(model, windows, cfg.pretrain, tracker, save_best)}
        stop = history["interrupted"]
        save_checkpoint(run_dir / "final_encoder.pt", model.encoder, "encoder", config_yaml, schema, stop is not None)
        best = write_outputs(history, model.ratio_name, config_yaml, run_dir, tracker)
        if stop is not None:  # the files are written; now the run ends as KILLED
            raise Interrupted(stop)
    print_summary(history, model.ratio_name, run_dir, tracker)
    return best["val_loss"]


def build_model(cfg: PretrainJobConfig, n_assets: int, n_features: int, schema: dict[str, Any]) -> PretextModel:
    """The configured encoder (from ``encoder.pretrained`` weights if set, checked against
    ``schema``) inside the configured pretext task."""
    encoder = build(cfg.encoder, lookback=cfg.window.lookback, n_assets=n_assets, n_features=n_features)
    assert isinstance(encoder, FTTransformerEncoder)  # PretrainJobConfig accepts no other encoder
    if cfg.encoder.pretrained is not None:  # continue from earlier pre-trained weights
        load_encoder_weights(cfg.encoder.pretrained, encoder, schema)
    return build_pretext(cfg.pretrain.objective, encoder, cfg.pretrain.mask_ratio)


def write_outputs(
    history: dict[str, Any], ratio_name: str, config_yaml: str, run_dir: Path, tracker: Tracker
) -> dict[str, Any]:
    """Write the history and the config, log the best evaluation and the files; return the best record."""
    best = best_record(history)
    tracker.log_metrics(
        {
            "best/val_loss": best["val_loss"],
            "best/step": best["step"],
            f"best/{ratio_name}": best[ratio_name],
            "val/baseline_loss": history["baseline_val_loss"],
            "peak_rss_mb": peak_rss_mb(),
        }
    )
    (run_dir / "training_history.json").write_text(json.dumps(history, indent=2))
    (run_dir / "config.yaml").write_text(config_yaml)
    for name in ("best_encoder.pt", "final_encoder.pt", "training_history.json", "config.yaml"):
        tracker.log_artifact(run_dir / name)
    return best


# ------------------------------------------------------------------------------------ windows
def training_segments(cv: CVConfig, first_valid: int, n_bars: int, feature_memory: int = 0) -> tuple[Segment, ...]:
    """The training part of the one cv split to pre-train for: holdout's, or split ``cv.split``."""
    splits = select_splits(build(cv), getattr(cv, "split", None), first_valid, n_bars, feature_memory)
    if len(splits) > 1:
        raise ConfigError(
            f"cv.split: cv={cv.name} has {len(splits)} splits, and an encoder pre-trained on the training "
            "bars of one has seen test bars of others; pre-train one encoder per split with cv.split=K "
            "and fine-tune it with the same cv.split"
        )
    return splits[0][1].train


def split_decision_bars(tensors: MarketTensors, segments: Sequence[Segment], val_fraction: float) -> WindowBars:
    """Time-ordered train / validation decision bars with no bar in windows of both (module docstring)."""
    lookback = tensors.lookback
    bars = torch.cat([tensors.decision_bars(s) for s in segments])  # (n,)
    n_val = int(len(bars) * val_fraction)
    train = bars[bars <= bars[-max(n_val, 1)] - lookback]  # windows end before the first validation window starts
    if n_val < 2 or len(train) < 2:  # rfd replaces a window's values with another window's
        raise ConfigError(
            f"the training segment has {len(bars)} decision bars at window.lookback={lookback}: too few "
            f"to hold out pretrain.val_fraction={val_fraction} of them after a gap of {lookback} bars; "
            "use more data (e.g. data.n_bars), another pretrain.val_fraction or a shorter lookback"
        )
    return WindowBars(train, bars[-n_val:])


def training_windows(tensors: MarketTensors, segments: Sequence[Segment], val_fraction: float) -> Windows:
    """The windows of ``segments`` (the cv training part), split for validation."""
    bars = split_decision_bars(tensors, segments, val_fraction)
    covered = torch.unique(tensors.window_bars(bars.train))
    return Windows(tensors, bars, tensors.features[covered].mean(0))


def random_weights(n: int, size: int, generator: torch.Generator) -> Tensor:
    """(n, size) portfolio weights uniform on the simplex: normalised Exp(1) draws (flat Dirichlet)."""
    draws = torch.empty(n, size, device=generator.device).exponential_(generator=generator)
    return draws / draws.sum(-1, keepdim=True)


def training_batches(bars: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless (batch_size,) batches of ``bars``, reshuffled every epoch; a short last batch is dropped
    unless an epoch holds fewer bars than a batch."""
    full = max(1, len(bars) // batch_size)
    while True:
        order = bars[torch.randperm(len(bars), generator=generator, device=generator.device)]
        yield from order[: full * batch_size].split(batch_size)


# ---------------------------------------------------------------------------------- training
def fit(
    model: PretextModel,
    windows: Windows,
    cfg: PretrainConfig,
    tracker: Tracker,
    on_best: Callable[[], None],
) -> dict[str, Any]:
    """Train ``model`` with early stopping; call ``on_best`` on every new best evaluation.

    Returns the history: every evaluation's record, the baseline's validation loss, whether the
    run stopped early, and the signal that interrupted it (SIGINT or SIGTERM, ending the run after
    the step in progress and one last evaluation), if any.
    """
    device = windows.market.device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    validation = validation_batches(model, windows, cfg.batch_size, generator)
    baseline = mean_loss(lambda corruption, _: model.baseline_losses(corruption, windows.feature_mean), validation)

    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, cfg.max_steps))
    batches = training_batches(windows.bars.train, cfg.batch_size, generator)
    evals: list[dict[str, Any]] = []
    best, stale = math.inf, 0
    loss_sum, n_losses = torch.zeros((), device=device), 0  # summed on device: no host sync per step

    stop = None  # the signal that asked to stop, if one did
    with progress_bar("pretrain", cfg.max_steps, cfg.progress) as advance, deferred_interrupts():
        for step in range(1, cfg.max_steps + 1):
            loss = train_step(model, optimizer, windows, next(batches), generator)
            scheduler.step()
            loss_sum, n_losses = loss_sum + loss, n_losses + 1
            stop = pending_interrupt()
            if step % cfg.eval_every and step < cfg.max_steps and stop is None:
                advance(step, None)
                continue

            model.eval()
            val_loss = mean_loss(model.value_losses, validation)
            if not math.isfinite(val_loss):
                raise FloatingPointError(
                    f"the validation loss is {val_loss} at step {step}: lower pretrain.lr or raise pretrain.warmup_steps"
                )
            record = {
                "step": step,
                "epoch": step * cfg.batch_size / len(windows.bars.train),
                "train_loss": loss_sum.item() / n_losses,
                "val_loss": val_loss,
                "lr": scheduler.get_last_lr()[0],
                model.ratio_name: val_loss / baseline,
            }
            evals.append(record)
            loss_sum, n_losses = torch.zeros((), device=device), 0
            tracker.log_metrics(eval_metrics(record, model.ratio_name), step=step)
            advance(step, f"train {record['train_loss']:.4f}  val {record['val_loss']:.4f}  lr {record['lr']:.2e}")
            if val_loss < best:
                best, stale = val_loss, 0
                on_best()
            else:
                stale += 1
            if stale >= cfg.patience or stop is not None:  # a stop is evaluated first, so its weights are scored
                break
    return {"baseline_val_loss": baseline, "stopped_early": step < cfg.max_steps, "evals": evals, "interrupted": stop}


def train_step(
    model: PretextModel, optimizer: torch.optim.Optimizer, windows: Windows, bars: Tensor, generator: torch.Generator
) -> Tensor:
    """One optimizer step on the windows of decision ``bars`` (B,); returns the detached batch loss."""
    model.train()
    window = windows.market.window(bars)  # (B, L, A, F)
    weights = random_weights(len(bars), windows.market.n_assets + 1, generator)  # (B, A + 1)
    loss = model.value_losses(model.corrupt(window, generator), weights).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def validation_batches(
    model: PretextModel, windows: Windows, batch_size: int, generator: torch.Generator
) -> list[tuple[Corruption, Tensor]]:
    """The validation windows, corrupted once, with their portfolio weights: (corruption, (B, A + 1))."""
    n_weights = windows.market.n_assets + 1
    batches = []
    for bars in validation_chunks(windows.bars.validation, batch_size):
        window = windows.market.window(bars)
        batches.append((model.corrupt(window, generator), random_weights(len(bars), n_weights, generator)))
    return batches


def validation_chunks(bars: Tensor, batch_size: int) -> list[Tensor]:
    """``bars`` in chunks of ``batch_size``; a last chunk of one window joins the one before it,
    since replaced feature detection draws each window's replacements from the others."""
    chunks = list(bars.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


@torch.no_grad()
def mean_loss(losses: Callable[[Corruption, Tensor], Tensor], batches: list[tuple[Corruption, Tensor]]) -> float:
    """Mean of ``losses(corruption, weights)`` over every scored value of every batch."""
    return torch.cat([losses(corruption, weights) for corruption, weights in batches]).mean().item()


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on the Transformer's and the head's weight matrices only (module docstring)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        is_matrix = parameter.ndim >= 2 and not name.startswith("encoder.tokenizer.")
        (decay if is_matrix else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor of optimizer step s: linear warmup to 1, then cosine decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# ---------------------------------------------------------------------------------- reporting
def eval_metrics(record: dict[str, Any], ratio_name: str) -> dict[str, float]:
    """One evaluation's record under its MLflow names."""
    return {
        "train/loss": record["train_loss"],
        "train/lr": record["lr"],
        "train/epoch": record["epoch"],
        "val/loss": record["val_loss"],
        f"val/{ratio_name}": record[ratio_name],
    }


def best_record(history: dict[str, Any]) -> dict[str, Any]:
    return min(history["evals"], key=lambda record: record["val_loss"])


def print_summary(history: dict[str, Any], ratio_name: str, run_dir: Path, tracker: Tracker) -> None:
    best = best_record(history)
    stopped = "stopped early" if history["stopped_early"] else "ran every step"
    console.print(
        f"pre-training ({history['objective']}) {stopped}; best validation loss {best['val_loss']:.4f} "
        f"at step {best['step']:,} (baseline {history['baseline_val_loss']:.4f})"
    )
    console.print(f"{ratio_name} = {best[ratio_name]:.4f} (validation loss / baseline loss, on held-out windows)")
    print_outputs(run_dir, tracker.ui_command, tracker.run_url)
