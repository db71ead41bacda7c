"""A trained policy, or a run's per-split ensemble, as an MLflow ``pyfunc`` model.

``mlflow.pyfunc.load_model("runs:/<run_id>/policy").predict({"window": w, "weights": p})`` acts
as ``load_policy(checkpoint).target_weights(w, p, cash_reserve)`` does (one checkpoint), or as
``PolicyEnsemble.from_files(checkpoints)`` does (a CV run's split checkpoints): windows
(N, L, A, F) and portfolio weights (N, A + 1, cash first) in, target weights (N, A) out, under
the run's cash reserve. The model's data folder holds the checkpoint files themselves, unchanged
(the format of record, read by ``load_policy``), so it loads from the run alone and a registered
version (``models:/NAME/latest``) is the whole ensemble. This module is the model's
``loader_module`` (MLflow calls ``_load_pyfunc``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from cappuccino.models.loading import Policy, PolicyEnsemble, TrainedPolicy, load_policy

DATA_FOLDER, SETTINGS_FILE = "policy", "settings.json"  # the model's data folder, and its settings there


class PolicyPredictor:
    """What ``mlflow.pyfunc.load_model`` returns inside its wrapper: deterministic target weights."""

    def __init__(self, policy: Policy, cash_reserve: float) -> None:
        self.policy, self.cash_reserve = policy, cash_reserve

    def predict(self, model_input: dict[str, np.ndarray], params: dict | None = None) -> np.ndarray:
        """{"window": (N, L, A, F), "weights": (N, A + 1)} arrays -> (N, A) target weights."""
        window = torch.as_tensor(np.asarray(model_input["window"]), dtype=torch.float32)
        weights = torch.as_tensor(np.asarray(model_input["weights"]), dtype=torch.float32)
        return self.policy.target_weights(window, weights, self.cash_reserve).cpu().numpy()


def _load_pyfunc(data_path: str) -> PolicyPredictor:
    return PolicyPredictor(load_model_data(Path(data_path)), read_cash_reserve(Path(data_path)))


def load_model_data(folder: Path) -> Policy:
    """The policy of a model's data folder: its one checkpoint, or the ensemble of several."""
    checkpoints = sorted(folder.glob("checkpoint*.pt"))
    return load_policy(checkpoints[0]) if len(checkpoints) == 1 else PolicyEnsemble.from_files(checkpoints)


def read_cash_reserve(folder: Path) -> float:
    """The cash reserve the model's run traded under (its ``rules.cash_reserve``)."""
    return float(json.loads((folder / SETTINGS_FILE).read_text())["cash_reserve"])


def policy_signature(policy: TrainedPolicy) -> ModelSignature:
    schema = policy.schema
    n_assets, n_features = len(schema.symbols), len(schema.feature_names)
    inputs = Schema([
        TensorSpec(np.dtype(np.float32), (-1, schema.lookback, n_assets, n_features), "window"),
        TensorSpec(np.dtype(np.float32), (-1, n_assets + 1), "weights"),
    ])  # fmt: skip
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float64), (-1, n_assets), "target_weights")]))


def all_cash_example(policy: TrainedPolicy) -> dict[str, np.ndarray]:
    """One input: a window of mean features (zeros: they are z-scores) and an all-cash portfolio."""
    schema = policy.schema
    n_assets = len(schema.symbols)
    weights = np.zeros((1, n_assets + 1), dtype=np.float32)
    weights[:, 0] = 1.0
    return {"window": np.zeros((1, schema.lookback, n_assets, len(schema.feature_names)), dtype=np.float32), "weights": weights}


def save_policy_model(checkpoints: Sequence[Path], cash_reserve: float, folder: Path) -> Path:
    """The pyfunc model of ``checkpoints`` (``checkpoint*.pt`` files: one, or a run's splits) in
    ``folder`` (which must not exist yet)."""
    names = [Path(c).name for c in checkpoints]
    if not names or len(set(names)) != len(names) or not all(n.startswith("checkpoint") and n.endswith(".pt") for n in names):
        raise ValueError(f"save_policy_model needs distinct checkpoint*.pt files, got {names}")
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / DATA_FOLDER
        data.mkdir()
        for checkpoint in checkpoints:
            shutil.copyfile(checkpoint, data / Path(checkpoint).name)
        (data / SETTINGS_FILE).write_text(json.dumps({"cash_reserve": cash_reserve}))
        policy = load_policy(checkpoints[0])  # an ensemble's members read the same windows
        mlflow.pyfunc.save_model(
            path=str(folder),
            loader_module=__name__,
            data_path=str(data),
            signature=policy_signature(policy),
            input_example=all_cash_example(policy),
            # Stated, not inferred: inference imports the model in a subprocess, seconds per run.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "cappuccino"],
        )
    return folder


def log_policy_model(
    client: mlflow.MlflowClient, run_id: str, checkpoints: Sequence[Path], cash_reserve: float, name: str = "policy"
) -> None:
    """Save the pyfunc model of ``checkpoints`` and log it as the run's ``name`` artifact folder."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_policy_model(checkpoints, cash_reserve, Path(scratch) / name)
        client.log_artifacts(run_id, str(folder), name)
