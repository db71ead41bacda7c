"""One-file checkpoints: weights, the resolved config and the data/feature schema together.

Loaded with ``torch.load(weights_only=True)``, so a checkpoint cannot execute code. A file says
what it holds (``kind``: a whole policy from train.py, or an encoder from pretrain.py) and which
format wrote it; loading checks both, then compares the schema key by key and names every
mismatch.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cappuccino.errors import UserError

FORMAT_VERSION = 2
Kind = Literal["policy", "encoder"]
KIND_NAMES = {"policy": "a policy checkpoint from train.py", "encoder": "an encoder file from pretrain.py"}

# Encoder settings that say how an encoder is used, not what its weights are.
ENCODER_USAGE_KEYS = ("pretrained", "freeze", "shared")


class CheckpointError(UserError):
    """A checkpoint file is missing, unreadable, of another kind or format, or does not fit."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint was trained under a schema that differs from the one asked for."""


def save_checkpoint(
    path: Path, model: nn.Module, kind: Kind, config_yaml: str, schema: dict[str, Any], interrupted: bool = False
) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a truncated checkpoint;
    ``interrupted`` marks weights saved when a stop was asked before training finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "state_dict": model.state_dict(),
        "config": config_yaml,
        "schema": schema,
        "interrupted": interrupted,
    }
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: Path | str, kind: Kind, key: str = "checkpoint") -> dict[str, Any]:
    """The payload of ``path``, checked to be a readable checkpoint of ``kind`` in this format;
    ``key`` (e.g. ``encoder.pretrained``) is the setting that named the file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{key}: {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{key}: {path} is a directory; name the .pt file in it")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise CheckpointError(f"{key}: {path} is not a checkpoint this project wrote ({error.__class__.__name__})") from None
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"{key}: {path} is not a checkpoint this project wrote")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{key}: {path} has checkpoint format {version!r}, and this version of cappuccino reads format "
            f"{FORMAT_VERSION} only: train (or pre-train) it again"
        )
    found = payload.get("kind")
    if found != kind:
        raise CheckpointError(f"{key}: {path} is {KIND_NAMES.get(found, repr(found))}, not {KIND_NAMES[kind]}")
    return payload


def schema_mismatches(saved: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """One line per key whose value differs: what the checkpoint has, what is asked for."""
    return [
        f"{key}: checkpoint has {saved.get(key)!r}, asked for {expected.get(key)!r}"
        for key in sorted(set(saved) | set(expected))
        if saved.get(key) != expected.get(key)
    ]


def check_schema(path: Path | str, saved: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    mismatches = schema_mismatches(saved, expected)
    if mismatches:
        raise CheckpointMismatch(f"checkpoint {path} does not fit:\n  " + "\n  ".join(mismatches))


def load_encoder_weights(path: Path | str, encoder: nn.Module, schema: dict[str, Any], key: str = "encoder.pretrained") -> None:
    """Load pretrain.py's encoder weights into ``encoder`` after checking ``schema``."""
    payload = read_checkpoint(path, "encoder", key)
    check_schema(path, payload["schema"], schema)
    encoder.load_state_dict(payload["state_dict"])


def encoder_schema(
    encoder: Mapping[str, Any],
    symbols: Sequence[str],
    feature_names: Sequence[str],
    feature_version: int,
    lookback: int,
    zscore_window: int,
) -> dict[str, Any]:
    """What encoder weights depend on. Not the bar interval: an encoder pre-trained on hourly
    bars may be fine-tuned on 5-minute bars with the same feature schema."""
    return {
        "symbols": list(symbols),
        "feature_names": list(feature_names),
        "feature_version": feature_version,
        "window.lookback": lookback,
        "window.zscore_window": zscore_window,
        **{f"encoder.{k}": v for k, v in encoder.items() if k not in ENCODER_USAGE_KEYS},
    }
