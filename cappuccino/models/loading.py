"""Policies as trading uses them: built from a config, saved with their schema, loaded from the
checkpoint alone, and combined into ensembles.

A policy checkpoint (``checkpoint*.pt``, written by train.py) holds the weights, the resolved
training config and the schema: symbols, feature names and version, lookback, z-score window,
bar interval and the encoder's settings. :func:`load_policy` rebuilds the acting policy from that
file only; :meth:`PolicySchema.check` compares it with the market it is asked to trade and names
every mismatch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import OmegaConf
from torch import Tensor

from cappuccino.config import SCHEMAS, EncoderConfig, build
from cappuccino.data.features import FEATURE_VERSION
from cappuccino.data.market import MarketData
from cappuccino.models.checkpoint import (
    CheckpointMismatch,
    encoder_schema,
    load_encoder_weights,
    read_checkpoint,
    save_checkpoint,
    schema_mismatches,
)
from cappuccino.models.policy import ActorCritic
from cappuccino.trading.rules import target_weights


class Policy(Protocol):
    """What a backtest or a trader needs: target weights from an observation."""

    def target_weights(self, window: Tensor, weights: Tensor, cash_reserve: float) -> Tensor:
        """window (N, L, A, F), weights (N, A + 1) -> (N, A) float64 target weights."""


@dataclass(frozen=True)
class PolicySchema:
    """What a policy's weights depend on besides the encoder's settings."""

    symbols: tuple[str, ...]
    feature_names: tuple[str, ...]
    feature_version: int
    lookback: int
    zscore_window: int
    interval: str
    encoder: dict[str, Any]  # the encoder's settings, less how it is used (shared, pretrained, freeze)

    @classmethod
    def of(cls, market: MarketData, lookback: int, zscore_window: int, encoder: dict[str, Any]) -> PolicySchema:
        return cls(
            symbols=tuple(market.symbols),
            feature_names=tuple(market.feature_names),
            feature_version=FEATURE_VERSION,
            lookback=lookback,
            zscore_window=zscore_window,
            interval=str(market.interval),
            encoder=encoder,
        )

    def as_dict(self) -> dict[str, Any]:
        """The checkpoint's ``schema``: the encoder schema plus the bar interval."""
        encoder = encoder_schema(self.encoder, self.symbols, self.feature_names, self.feature_version, self.lookback, self.zscore_window)
        return {**encoder, "interval": self.interval}

    @classmethod
    def from_dict(cls, schema: dict[str, Any]) -> PolicySchema:
        return cls(
            symbols=tuple(schema["symbols"]),
            feature_names=tuple(schema["feature_names"]),
            feature_version=schema["feature_version"],
            lookback=schema["window.lookback"],
            zscore_window=schema["window.zscore_window"],
            interval=schema["interval"],
            encoder={k.removeprefix("encoder."): v for k, v in schema.items() if k.startswith("encoder.")},
        )

    def check(self, market: MarketData, lookback: int, zscore_window: int, name: str = "policy") -> None:
        """Raise ``CheckpointMismatch`` naming every key in which ``market`` (with these window
        settings) differs from what the policy was trained on; the encoder is not compared."""
        asked = PolicySchema.of(market, lookback, zscore_window, self.encoder)
        mismatches = schema_mismatches(self.as_dict(), asked.as_dict())
        if mismatches:
            raise CheckpointMismatch(f"{name} does not fit this market:\n  " + "\n  ".join(mismatches))


def policy_from_config(encoder: EncoderConfig, init_log_std: float, lookback: int, n_assets: int, n_features: int) -> ActorCritic:
    """The actor-critic the config describes, with fresh weights (actor encoder first, then the
    critic's unless shared, then the heads: one fixed order of random draws)."""

    def new_encoder() -> Any:
        return build(encoder, lookback=lookback, n_assets=n_assets, n_features=n_features)

    actor = new_encoder()
    critic = None if encoder.shared else new_encoder()
    return ActorCritic(actor_encoder=actor, critic_encoder=critic, n_assets=n_assets, init_log_std=init_log_std)


def load_pretrained(policy: ActorCritic, path: str, schema: PolicySchema, freeze: bool) -> None:
    """Load pretrain.py's encoder weights into each of the policy's encoders (after checking the
    schema); ``freeze`` keeps what pre-training learned fixed (``Encoder.freeze_pretrained``)."""
    expected = schema.as_dict()
    del expected["interval"]  # an hourly pre-trained encoder may seed a 5-minute agent
    for encoder in policy.encoders():
        load_encoder_weights(path, encoder, expected)
        if freeze:
            encoder.freeze_pretrained()


def save_policy(path: Path, policy: ActorCritic, config_yaml: str, schema: PolicySchema, interrupted: bool = False) -> Path:
    return save_checkpoint(path, policy, "policy", config_yaml, schema.as_dict(), interrupted)


class TrainedPolicy:
    """An actor-critic with the schema it was trained under, acting deterministically or not."""

    def __init__(self, module: ActorCritic, schema: PolicySchema, name: str = "policy") -> None:
        self.module = module
        self.schema = schema
        self.name = name

    @torch.no_grad()
    def act(self, window: Tensor, weights: Tensor, deterministic: bool = True) -> Tensor:
        """(N, A) actions; ``deterministic`` takes the Gaussian's mean."""
        if deterministic:
            return self.module.mean_action(window, weights)
        return self.module.act(window, weights)[0]

    def target_weights(self, window: Tensor, weights: Tensor, cash_reserve: float) -> Tensor:
        return target_weights(self.act(window, weights).to(torch.float64), cash_reserve)


def load_policy(path: Path | str, device: torch.device | str = "cpu") -> TrainedPolicy:
    """The acting policy of a train.py checkpoint, rebuilt from the file alone, in eval mode."""
    payload = read_checkpoint(path, "policy")
    schema = PolicySchema.from_dict(payload["schema"])
    stored = OmegaConf.create(payload["config"])
    encoder_cfg = _encoder_config(stored.encoder)
    with torch.device("meta"):  # no random init: the weights come from the file
        module = policy_from_config(encoder_cfg, 0.0, schema.lookback, len(schema.symbols), len(schema.feature_names))
    module.load_state_dict(payload["state_dict"], assign=True)
    return TrainedPolicy(module.to(device).eval(), schema, name=str(path))


def _encoder_config(stored: Any) -> EncoderConfig:
    """The typed encoder config of a stored one, by its ``_target_``."""
    for schema in SCHEMAS["encoder"].values():
        if stored.get("_target_") == _default_target(schema):
            return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), stored))
    raise CheckpointMismatch(f"the checkpoint's encoder {stored.get('_target_')!r} is not one this version knows")


def _default_target(schema: type) -> str:
    return next(f.default for f in fields(schema) if f.name == "_target_")


class PolicyEnsemble:
    """Several policies trading as one: the mean of their target weights. Every member must read
    the same windows (symbols, features, lookback, z-score window, interval)."""

    def __init__(self, members: Sequence[TrainedPolicy]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one policy")
        first = members[0].schema
        for member in members[1:]:
            mismatches = schema_mismatches(_window_keys(member.schema), _window_keys(first))
            if mismatches:
                raise CheckpointMismatch(
                    f"{member.name} reads other windows than {members[0].name}:\n  "
                    + "\n  ".join(mismatches)
                )
        self.members = list(members)
        self.schema = first

    def target_weights(self, window: Tensor, weights: Tensor, cash_reserve: float) -> Tensor:
        return torch.stack([m.target_weights(window, weights, cash_reserve) for m in self.members]).mean(0)

    @classmethod
    def from_files(cls, paths: Iterable[Path | str], device: torch.device | str = "cpu") -> PolicyEnsemble:
        return cls([load_policy(path, device) for path in paths])

    @classmethod
    def from_folder(cls, folder: Path | str, device: torch.device | str = "cpu") -> PolicyEnsemble:
        """Every ``checkpoint*.pt`` in ``folder`` (a run folder: one per CV split)."""
        paths = sorted(Path(folder).expanduser().glob("checkpoint*.pt"))
        if not paths:
            raise FileNotFoundError(f"{folder} holds no checkpoint*.pt file")
        return cls.from_files(paths, device)

    @classmethod
    def from_folders(cls, folders: Iterable[Path | str], device: torch.device | str = "cpu") -> PolicyEnsemble:
        """Every ``checkpoint*.pt`` of each folder: e.g. the run folders of a study's best trials
        (``cappuccino.hparams_search.best.best_trial_folders``)."""
        return cls([member for folder in folders for member in cls.from_folder(folder, device).members])


def _window_keys(schema: PolicySchema) -> dict[str, Any]:
    keys = schema.as_dict()
    return {k: v for k, v in keys.items() if not k.startswith("encoder.")}
