"""Files back from an MLflow run: its checkpoints (to trade or ensemble them) or named artifacts.

The tracking URI is the user's, passwords included (``http://user:S3cret@host/``): as for the
tracker, the credentials go to MLflow through ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``,
an http(s) server must answer within seconds, and every error is a ``TrackingError`` that shows
the URI and MLflow's reason with the password as ``***``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.environment_variables import MLFLOW_TRACKING_PASSWORD

from cappuccino.errors import UserError
from cappuccino.secrets import Masker, mask_url, url_secrets
from cappuccino.tracking import TrackingError
from cappuccino.tracking.mlflow_tracker import check_server_answers, mlflow_client_uri

CHECKPOINT_PREFIX, CHECKPOINT_SUFFIX = "checkpoint", ".pt"
# Where the run's policy model keeps its checkpoint files (tracking.policy_model: MLflow puts a
# pyfunc model's data folder, "policy", under "data/"); an interrupted run's is at the top level.
CHECKPOINT_FOLDERS = ("policy/data/policy", "")
T = TypeVar("T")


def run_checkpoints(run_id: str, tracking_uri: str | None = None, into: Path | None = None) -> list[Path]:
    """The checkpoints of the run's policy model (a CV run's: one per split), downloaded into
    ``into`` (default: a fresh temporary folder), in name order; a run without a model (it was
    interrupted) gives its ``checkpoint*.pt`` artifacts.

    Raises:
        TrackingError: the store cannot be reached, the run does not exist, or it has no checkpoint.
    """

    def download(uri: str | None) -> list[Path]:
        client = MlflowClient(uri)
        for folder in CHECKPOINT_FOLDERS:
            listed = client.list_artifacts(run_id, folder or None)
            names = sorted(a.path for a in listed if Path(a.path).name.startswith(CHECKPOINT_PREFIX) and a.path.endswith(CHECKPOINT_SUFFIX))
            if names:
                return _download(run_id, names, uri, into)
        raise TrackingError(f"MLflow run {run_id} has no policy model and no {CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX} artifact")

    return _from_store(tracking_uri, download)


def run_artifacts(run_id: str, names: Sequence[str], tracking_uri: str | None = None, into: Path | None = None) -> list[Path]:
    """The run's artifacts ``names``, downloaded into ``into`` (default: a temporary folder).

    Raises:
        TrackingError: the store cannot be reached, or the run or an artifact does not exist.
    """
    return _from_store(tracking_uri, lambda uri: _download(run_id, names, uri, into))


def _download(run_id: str, names: Sequence[str], uri: str | None, into: Path | None) -> list[Path]:
    destination = None if into is None else str(into)
    return [
        Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=destination, tracking_uri=uri))
        for name in names
    ]


def _from_store(tracking_uri: str | None, read: Callable[[str | None], T]) -> T:
    """``read(uri)`` with the URI MLflow's client gets (credentials out of it); any failure
    becomes one masked ``TrackingError`` naming the store."""
    if tracking_uri is None:
        shown, mask, uri = "MLflow's default store", Masker(), None
    else:
        shown, mask = mask_url(tracking_uri), Masker(url_secrets(tracking_uri))
        uri = mlflow_client_uri(tracking_uri)
        mask += [MLFLOW_TRACKING_PASSWORD.get()]
    try:
        if uri is not None:
            check_server_answers(uri, shown, setting="the tracking URI")
        return read(uri)
    except UserError as error:
        failure = mask(str(error))
    except Exception as error:  # noqa: BLE001 - whatever the store raised, shown masked
        failure = f"cannot read from the MLflow store {shown}: {mask(f'{type(error).__name__}: {error}')}"
    raise TrackingError(failure)  # outside the except blocks: no traceback chains the unmasked original


__all__ = ["run_artifacts", "run_checkpoints"]
