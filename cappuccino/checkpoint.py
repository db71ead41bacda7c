"""One-file checkpoints: weights, the resolved config and the data/feature schema together.

Loaded with ``torch.load(weights_only=True)``, so a checkpoint cannot execute code. Loading
into a config whose schema differs fails with a message naming every mismatching key, instead
of the old system's bare "dimension mismatch".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT_VERSION = 1

# Encoder settings that say how an encoder is used, not what its weights are.
ENCODER_USAGE_KEYS = ("pretrained", "freeze", "shared")


class CheckpointMismatch(ValueError):
    """The checkpoint was trained under a schema that differs from the one asked for."""


def save_checkpoint(path: Path, model: nn.Module, config_yaml: str, schema: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    payload = {
        "format_version": FORMAT_VERSION,
        "state_dict": model.state_dict(),
        "config": config_yaml,
        "schema": schema,
    }
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: Path, model: nn.Module, schema: dict[str, Any]) -> dict[str, Any]:
    """Load weights into ``model`` after checking that ``schema`` matches the saved one."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    saved = payload["schema"]
    mismatches = [
        f"{key}: checkpoint has {saved.get(key)!r}, config asks for {schema.get(key)!r}"
        for key in sorted(set(saved) | set(schema))
        if saved.get(key) != schema.get(key)
    ]
    if mismatches:
        raise CheckpointMismatch(f"checkpoint {path} does not fit this config:\n  " + "\n  ".join(mismatches))
    model.load_state_dict(payload["state_dict"])
    return payload


def encoder_schema(
    encoder: Mapping[str, Any], symbols: Sequence[str], feature_names: Sequence[str], lookback: int
) -> dict[str, Any]:
    """What pre-trained encoder weights depend on. Not the bar interval: an encoder pre-trained
    on hourly bars may be fine-tuned on 5-minute bars with the same feature schema."""
    return {
        "symbols": list(symbols),
        "feature_names": list(feature_names),
        "window.lookback": lookback,
        **{f"encoder.{k}": v for k, v in encoder.items() if k not in ENCODER_USAGE_KEYS},
    }
