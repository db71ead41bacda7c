"""The models an ensemble trades, from wherever they are (``trade.models``).

Each source names one or more checkpoints:

- a ``checkpoint*.pt`` file, or a run folder (every ``checkpoint*.pt`` in it: a CV run's splits);
- ``latest``: the newest run folder under ``outputs/`` of the project (what ``python train.py`` wrote);
- ``runs:/<run id>``: that MLflow run's policy model (a CV run's: every split);
- ``models:/<name>/<version or latest>``: a registered model (``logger.register_as``);
- ``study:<name>`` or ``study:<name>:<K>``: the per-split checkpoints of the study's K best trials.

A member's score, for ``trade.ensemble=score_weighted``, is its run's ``objective`` (validation),
read from the run folder's ``metrics.json``; None where there is none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cappuccino.errors import ConfigError
from cappuccino.models.loading import TrainedPolicy, load_policy


@dataclass(frozen=True)
class Member:
    name: str  # where it came from, e.g. "outputs/2026-12-02/10-00-00/checkpoint_split1.pt"
    policy: TrainedPolicy
    score: float | None


def load_members(sources: list[str], project_dir: Path, tracking_uri: str | None, study_storage: str) -> list[Member]:
    """Every checkpoint the sources name, loaded on the CPU (module docstring)."""
    if not sources:
        raise ConfigError("trade.models: name at least one model (a checkpoint, a run folder, latest, runs:/ID, models:/NAME/latest, study:NAME)")
    members = []
    for source in sources:
        for checkpoint in _checkpoints(source, project_dir, tracking_uri, study_storage):
            members.append(Member(str(checkpoint), load_policy(checkpoint), _score(checkpoint.parent)))
    return members


def _checkpoints(source: str, project_dir: Path, tracking_uri: str | None, study_storage: str) -> list[Path]:
    if source == "latest":
        return _in_folder(_latest_run(project_dir / "outputs"), source)
    if source.startswith("runs:/"):
        from cappuccino.tracking.artifacts import run_checkpoints

        return run_checkpoints(source.removeprefix("runs:/").strip("/").split("/")[0], tracking_uri)
    if source.startswith("models:/"):
        return _registered(source, tracking_uri)
    if source.startswith("study:"):
        from cappuccino.hparams_search.best import best_trial_folders

        name, _, k = source.removeprefix("study:").partition(":")
        return [c for folder in best_trial_folders(name, study_storage, int(k or 1)) for c in _in_folder(folder, source)]
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = project_dir / path
    if path.is_file():
        return [path]
    if path.is_dir():
        return _in_folder(path, source)
    raise ConfigError(f"trade.models: {source!r} is no checkpoint file, run folder, runs:/ID, models:/NAME/VERSION or study:NAME")


def _in_folder(folder: Path, source: str) -> list[Path]:
    found = sorted(folder.glob("checkpoint*.pt"))
    if not found:
        raise ConfigError(f"trade.models: {source!r} ({folder}) holds no checkpoint*.pt file")
    return found


def _latest_run(outputs: Path) -> Path:
    runs = [c.parent for c in outputs.glob("*/*/checkpoint*.pt")]
    if not runs:
        raise ConfigError(f"trade.models=latest: no run under {outputs} has a checkpoint; train one first (python train.py)")
    return max(runs, key=lambda folder: folder.stat().st_mtime)


def _registered(uri: str, tracking_uri: str | None) -> list[Path]:
    """The checkpoints in a registered model version's data folder (``models:/NAME/VERSION``,
    VERSION a number or ``latest``), downloaded. The registry is the tracking store's own."""
    import mlflow.artifacts
    from mlflow import MlflowClient

    from cappuccino.tracking.mlflow_tracker import mlflow_client_uri

    store = None if tracking_uri is None else mlflow_client_uri(tracking_uri)
    name, _, version = uri.removeprefix("models:/").strip("/").partition("/")
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    versions = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"])
    chosen = [v for v in versions if version in ("", "latest") or v.version == version][:1]
    if not chosen:
        raise ConfigError(f"trade.models: {uri}: the registry has no such model version (logger.register_as registers one)")
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=chosen[0].source, tracking_uri=store))
    found = sorted(folder.rglob("checkpoint*.pt"))
    if not found:
        raise ConfigError(f"trade.models: {uri} holds no checkpoint (is it a cappuccino policy model?)")
    return found


def _score(folder: Path) -> float | None:
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        return None
    return json.loads(metrics.read_text()).get("objective")
