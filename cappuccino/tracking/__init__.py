"""Experiment tracking: one small ``Tracker`` interface, an MLflow implementation and a no-op one.

The training loop only talks to ``Tracker``; ``build_tracker`` builds the implementation the
``logger`` config group names in its ``_target_``. ``logger=none`` never imports MLflow, so runs without tracking neither pay
for the import nor need a working MLflow install.

Both trackers are context managers: leaving the block closes the run as ``FINISHED``, ``KILLED``
on Ctrl-C, or ``FAILED`` on any other exception.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from cappuccino.config import LoggerConfig, build
from cappuccino.errors import UserError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# MLflow's storage limits (mlflow.utils.validation and the SQL schema), copied so that
# flattening a config or naming a run does not import MLflow.
STUDY_TAG = "optuna.study"  # tag of a study's MLflow run: the study's name
TRIAL_TAG = "optuna.trial"  # tag of each trial's MLflow run: the trial's number
MAX_PARAM_VALUE_LENGTH = 6000
MAX_RUN_NAME_LENGTH = 250
MAX_TAG_VALUE_LENGTH = 5000  # the SQL stores' tag column of older MLflow schemas; newer ones keep 8000
SHORT_NAME_LENGTH = 80  # what the runs table and chart legends show without cutting
_TRUNCATION_MARK = "..."


class TrackingError(UserError):
    """The tracking store cannot be opened or the run started (a server unreachable, credentials
    refused, ...): the message names ``logger.tracking_uri`` and shows any password as ``***``."""


class Tracker(Protocol):
    """What the training loop needs from an experiment tracker.

    ``ui_command`` tells the user how to look at the run: a shell command for a local store, the
    run's page for a tracking server, ``None`` when nothing is tracked; a password in the store's
    URI shows as ``***`` (``cappuccino.secrets``), there and in everything a tracker logs.
    """

    ui_command: str | None
    run_url: str | None  # the run's page in the UI that ui_command opens
    run_id: str | None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log hyper-parameters; nested mappings are flattened with ``flatten_config``."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics at ``step``; NaN values are skipped."""

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a file or folder into the run's artifacts, under ``artifact_path`` if given."""

    def log_figure(self, figure: Figure, name: str) -> None:
        """Save a matplotlib figure as a PNG artifact, then close it."""

    def log_dataset(self, name: str, digest: str, source_type: str, source: str, profile: str) -> None:
        """Record the data the run read as an input dataset (the UI's Dataset column)."""

    def log_policy(self, checkpoints: Sequence[Path], cash_reserve: float) -> None:
        """Log train.py checkpoints (one, or a CV run's splits: an ensemble) as the run's
        ``policy`` model (``tracking.policy_model``), which holds the checkpoint files."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set string tags on the run."""

    def url_of(self, run_id: str) -> str | None:
        """The UI page of run ``run_id`` of this run's experiment (None when nothing is tracked)."""

    def register_policy(self, run_id: str, name: str) -> str | None:
        """Register run ``run_id``'s ``policy`` model as a new version of the registered model
        ``name`` (created when missing), unless that run already is its latest version; the
        version's URI (``models:/NAME/VERSION``), None when nothing is tracked."""

    def child(self, run_name: str) -> Tracker:
        """Start a run nested under this one (a CV split under its trial, a trial under its study)."""

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` ("FINISHED", "FAILED" or "KILLED"); later calls do nothing."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("KILLED")
        else:
            self.close("FAILED")


class NullTracker(Tracker):
    """Tracks nothing and writes nothing (``logger=none``)."""

    def __init__(self, **_: Any) -> None:  # takes build_tracker's run arguments, and needs none
        self.ui_command: str | None = None
        self.run_url: str | None = None
        self.run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        pass

    def log_figure(self, figure: Figure, name: str) -> None:
        from cappuccino.reporting.figures import close_figure

        close_figure(figure)  # as MLflowTracker does, so no logger leaks figures

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def url_of(self, run_id: str) -> str | None:
        return None

    def register_policy(self, run_id: str, name: str) -> str | None:
        return None

    def log_dataset(self, name: str, digest: str, source_type: str, source: str, profile: str) -> None:
        pass

    def log_policy(self, checkpoints: Sequence[Path], cash_reserve: float) -> None:
        pass

    def child(self, run_name: str) -> Tracker:
        return self

    def close(self, status: str = "FINISHED") -> None:
        pass


def build_tracker(
    cfg: LoggerConfig,
    run_name: str,
    project_dir: Path,
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Tracker:
    """Start a run for the configured logger.

    ``project_dir`` is where the default MLflow store lives (``mlflow.db`` and ``mlartifacts/``)
    when ``logger.tracking_uri`` is null. ``parent_run_id`` nests the run under another one (sweeps);
    ``run_id`` reopens an existing run instead of starting one.
    """
    return build(cfg, run_name=run_name, project_dir=project_dir, parent_run_id=parent_run_id, run_id=run_id)


def flatten_config(config: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings (or config dataclasses) into dotted keys with string values.

    ``{"agent": {"lr": 3e-4}, "encoder": {"hidden_sizes": [256, 256]}}`` becomes
    ``{"agent.lr": "0.0003", "encoder.hidden_sizes": "[256, 256]"}``. Every other value is
    logged as its ``str`` (a list's is its ``repr``; a float's is its shortest round-trip form),
    so one parameter holds one config key and runs compare key by key. Values longer than MLflow's 6000-character
    limit are truncated, ending in "...", rather than failing the run.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"flatten_config expects a mapping or a dataclass instance, got {type(config).__name__}")
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        else:
            flat[name] = truncate(str(value), MAX_PARAM_VALUE_LENGTH)
    return flat


def short_run_name(overrides: Sequence[str]) -> str:
    """A short, readable run name from the command-line overrides, e.g. ``ft_default lr=3e-4 seed=1``.

    A config group's choice shows as its option (``encoder=ft_default`` -> ``ft_default``), a
    setting as its last key with numbers rounded to 3 significant digits (``agent.lr=0.00031234``
    -> ``lr=0.000312``; integers below a million as they are); ``logger``
    overrides say where a run is stored, not what ran, and are left out. No overrides give
    ``"default"``. Whitespace runs collapse to one space and other control characters are dropped,
    so the name shows on one line; it is cut to ``SHORT_NAME_LENGTH`` characters. The overrides
    in full are in the run's tags (``overrides_tags``).
    """
    words = []
    for override in overrides:
        key, equals, value = override.strip().lstrip("+~").partition("=")
        if not key or key.split(".")[0] in ("logger", "hydra"):
            continue
        if not equals:  # a bare word (a job's own name)
            words.append(key)
        else:
            words.append(value if "." not in key else f"{key.rsplit('.', 1)[-1]}={_rounded(value)}")
    name = "".join(ch for ch in re.sub(r"\s+", " ", " ".join(words)) if ch.isprintable()).strip()
    return truncate(name, SHORT_NAME_LENGTH) or "default"


def _rounded(value: str) -> str:
    """A number to 3 significant digits (an integer as it is below 10^6); anything else as given."""
    try:
        number = float(value)
    except ValueError:
        return value
    if number.is_integer() and abs(number) < 1e6:
        return str(int(number))
    return f"{number:.3g}"


def overrides_tags(overrides: Sequence[str]) -> dict[str, str]:
    """The overrides in full: an ``overrides`` tag (searchable) and the run's description
    (``mlflow.note.content``, shown on the run's page), within MLflow's tag-value limit."""
    joined = " ".join(o.strip() for o in overrides if o.strip())
    if not joined:
        return {"overrides": "(none: the defaults)"}
    return {
        "overrides": truncate(joined, MAX_TAG_VALUE_LENGTH),
        "mlflow.note.content": truncate(f"python train.py {joined}", MAX_TAG_VALUE_LENGTH),
    }


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in "..." when cut."""
    return text if len(text) <= limit else text[: limit - len(_TRUNCATION_MARK)] + _TRUNCATION_MARK


__all__ = [
    "MAX_PARAM_VALUE_LENGTH",
    "MAX_RUN_NAME_LENGTH",
    "MAX_TAG_VALUE_LENGTH",
    "NullTracker",
    "Tracker",
    "TrackingError",
    "build_tracker",
    "flatten_config",
    "overrides_tags",
    "short_run_name",
    "truncate",
]
