"""A trained policy as an MLflow ``pyfunc`` model, beside its checkpoint (the format of record).

``mlflow.pyfunc.load_model("runs:/<run_id>/policy").predict({"window": w, "weights": p})`` acts
as ``load_policy(checkpoint).target_weights(w, p, cash_reserve)`` does: windows (N, L, A, F) and
portfolio weights (N, A + 1, cash first) in, target weights (N, A) out, under the run's cash
reserve. The model's data folder holds the checkpoint itself, so it loads from the run alone.
This module is the model's ``loader_module`` (MLflow calls ``_load_pyfunc``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from cappuccino.models.loading import TrainedPolicy, load_policy

CHECKPOINT_FILE, SETTINGS_FILE = "checkpoint.pt", "settings.json"  # in the model's data folder


class PolicyPredictor:
    """What ``mlflow.pyfunc.load_model`` returns inside its wrapper: deterministic target weights."""

    def __init__(self, policy: TrainedPolicy, cash_reserve: float) -> None:
        self.policy, self.cash_reserve = policy, cash_reserve

    def predict(self, model_input: dict[str, np.ndarray], params: dict | None = None) -> np.ndarray:
        """{"window": (N, L, A, F), "weights": (N, A + 1)} arrays -> (N, A) target weights."""
        window = torch.as_tensor(np.asarray(model_input["window"]), dtype=torch.float32)
        weights = torch.as_tensor(np.asarray(model_input["weights"]), dtype=torch.float32)
        return self.policy.target_weights(window, weights, self.cash_reserve).cpu().numpy()


def _load_pyfunc(data_path: str) -> PolicyPredictor:
    folder = Path(data_path)
    settings = json.loads((folder / SETTINGS_FILE).read_text())
    return PolicyPredictor(load_policy(folder / CHECKPOINT_FILE), float(settings["cash_reserve"]))


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


def save_policy_model(checkpoint: Path, cash_reserve: float, folder: Path) -> Path:
    """The pyfunc model of ``checkpoint`` in ``folder`` (which must not exist yet)."""
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "policy"
        data.mkdir()
        shutil.copyfile(checkpoint, data / CHECKPOINT_FILE)
        (data / SETTINGS_FILE).write_text(json.dumps({"cash_reserve": cash_reserve}))
        policy = load_policy(checkpoint)
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


def log_policy_model(client: mlflow.MlflowClient, run_id: str, checkpoint: Path, cash_reserve: float, name: str = "policy") -> None:
    """Save the pyfunc model of ``checkpoint`` and log it as the run's ``name`` artifact folder."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_policy_model(checkpoint, cash_reserve, Path(scratch) / name)
        client.log_artifacts(run_id, str(folder), name)
