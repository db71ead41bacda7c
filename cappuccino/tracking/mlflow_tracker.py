"""MLflow tracker built on ``MlflowClient`` with an explicit run id.

No ``mlflow.start_run``: MLflow's fluent API keeps one global active run per process, which would
stop several trackers (a sweep's parent run and its trials) from living side by side. Every call
here names its run, so nesting is just a ``mlflow.parentRunId`` tag on the child.

The default store (``logger.tracking_uri: null``) is the SQLite file ``<project_dir>/mlflow.db``
with artifacts under ``<project_dir>/mlartifacts/<run_id>/artifacts``: the experiment is created
with that folder as its ``file://`` artifact location. ``mlflow ui --backend-store-uri
sqlite:///<project_dir>/mlflow.db`` then shows runs, metrics and artifacts, from any working
directory: the UI reads ``file://`` artifact locations directly, so no artifact flags are needed.

Credentials never show: a tracking server's username and password in the URI
(``http://user:S3cret@host/``) are taken out of it and given to MLflow as
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (read on every request, artifact
uploads included), so the client only ever sees ``http://host/``; better, set those variables and
leave the password out of the URI. Any other store's URI (``postgresql://user:S3cret@db/mlflow``)
goes to MLflow as it is. Either way ``ui_command``, ``tracking_uri``, every logged param and tag,
and every error this tracker raises show the password as ``***``.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

# The embedded default promises a run with no network: MLflow 3 otherwise sends usage telemetry.
# A user who wants it sets MLFLOW_DISABLE_TELEMETRY=false.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Dataset, DatasetInput, LifecycleStage, Metric, Param, Run, RunTag
from mlflow.environment_variables import MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_USERNAME
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking.context.registry import resolve_tags
from mlflow.tracking.default_experiment import DEFAULT_EXPERIMENT_ID
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from cappuccino.errors import ConfigError, UserError
from cappuccino.secrets import Masker, credentials_from_url, mask_text, mask_url, url_secrets
from cappuccino.sqlite_lock import opening_lock, sqlite_file
from cappuccino.tracking import MAX_RUN_NAME_LENGTH, TrackingError, Tracker, flatten_config, truncate
from cappuccino.reporting.figures import close_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Creating or upgrading the SQLite schema logs a dozen INFO lines (alembic migrations, "Creating
# initial MLflow database tables"); Hydra's job logging sets the root logger to INFO, which would
# print them all at the start of every run.
for _name in ("alembic", "mlflow.store.db.utils", "mlflow.system_metrics"):
    logging.getLogger(_name).setLevel(logging.WARNING)

_END_STATUSES = ("FINISHED", "FAILED", "KILLED")

LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


# A tracking server must answer this fast at start-up: MLflow itself retries a refused
# connection for over a minute, and waits forever on one that never answers.
PROBE_TIMEOUT = (5.0, 10.0)  # seconds to connect, and for the first byte of the answer


def check_server_answers(uri: str, shown: str, setting: str = "logger.tracking_uri") -> None:
    """Fail fast, naming the ``setting`` that holds ``uri``, when nothing answers at an http(s)
    tracking URI; any HTTP answer (an error status too) means a server is there."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    try:
        auth = (user, password) if user and password else None  # as MLflow sends them
        requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT, allow_redirects=False, auth=auth)
    except requests.RequestException as error:
        reason = "timed out" if isinstance(error, requests.Timeout) else "connection refused or failed"
        raise TrackingError(
            f"{setting}: no MLflow server answers at {shown} ({reason}); start it "
            "(mlflow server ...), fix the URI, or use logger.tracking_uri=null for a local SQLite store"
        ) from None


def default_store(project_dir: Path) -> tuple[str, str]:
    """Tracking URI and artifact location (a file URI) of the embedded store in ``project_dir``."""
    project_dir = Path(project_dir).expanduser().resolve()
    project_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(project_dir / 'mlflow.db').as_posix()}", (project_dir / "mlartifacts").as_uri()


def _artifacts_beside(tracking_uri: str) -> str | None:
    """For a SQLite store, ``mlartifacts/`` beside the file: MLflow's own default is ``./mlruns``
    of whatever folder the process happens to run in."""
    database = sqlite_file(tracking_uri)
    return None if database is None else (database.parent / "mlartifacts").as_uri()


class MLflowTracker(Tracker):
    """One MLflow run.

    Args:
        tracking_uri: where runs are stored; ``None`` for the embedded store in ``project_dir``.
            Anything else (``http://host:5000``, another ``sqlite:///`` file, a folder) is passed
            to MLflow as it is, except a tracking server's credentials (see the module's
            docstring); a new experiment in another SQLite file keeps its artifacts in
            ``mlartifacts/`` beside that file, and other stores put them where they always do.
        experiment_name: experiment to log into; created if missing.
        run_name: display name of the run.
        project_dir: folder of the embedded store; unused when ``tracking_uri`` is given.
        parent_run_id: nest this run under that one (sets the ``mlflow.parentRunId`` tag).
        run_id: log into this existing run again (marked running) instead of starting one; a
            resumed sweep reopens its study's run this way.
        system_metrics_interval: seconds between samples of the machine's CPU, memory, disk,
            network (and GPU, with nvidia-ml-py) use, logged as ``system/*`` metrics by MLflow's
            ``SystemMetricsMonitor`` on a background thread until the run closes; None: none.
            Child runs share their parent's process and are not sampled again.

    Raises:
        TrackingError: the store cannot be opened, or the run started (server unreachable,
            credentials refused, ...); the message names ``logger.tracking_uri``, masked.

    ``tracking_uri`` (the attribute) is the store's URI as it may be shown: masked.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment_name: str,
        run_name: str,
        project_dir: Path,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        system_metrics_interval: float | None = None,
    ) -> None:
        self._monitor: Any = None
        if tracking_uri is None:
            tracking_uri, artifact_location = default_store(project_dir)
        else:
            artifact_location = _artifacts_beside(tracking_uri)
        self._mask = Masker(url_secrets(tracking_uri))
        self.tracking_uri = shown = mask_url(tracking_uri)
        # Raised after the except block, so that no traceback chains the unmasked original.
        failure = None
        try:
            client_uri = mlflow_client_uri(tracking_uri)
            self._mask += [MLFLOW_TRACKING_PASSWORD.get()]  # a server might echo it
            self.tracking_uri = mask_url(client_uri)
            check_server_answers(client_uri, shown)
            with opening_lock(client_uri):
                database = sqlite_file(client_uri)
                new_store = database is not None and not database.exists()
                self.client = MlflowClient(tracking_uri=client_uri, registry_uri=client_uri)  # the store's own registry
                self.experiment_id = self._experiment_id(experiment_name, artifact_location)
                if new_store:
                    self._drop_default_experiment()
            if run_id is None:
                self._start_run(run_name, parent_run_id)
            else:
                self.client.update_run(run_id, status="RUNNING")
                self.run_id, self._closed = run_id, False
                self.ui_command = _ui_command(self.tracking_uri, self.experiment_id, run_id)
                self.run_url = _run_url(self.tracking_uri, self.experiment_id, run_id)
            if system_metrics_interval is not None:
                self._monitor = _system_metrics_monitor(self.run_id, client_uri, system_metrics_interval, resume=run_id is not None)
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever the store raised, shown masked
            failure = _startup_failure(shown, error, self._mask)
        if failure is not None:
            raise TrackingError(failure)

    def _start_run(self, run_name: str, parent_run_id: str | None) -> None:
        # resolve_tags adds what mlflow.start_run would: user, entry-point script, git commit
        # (and the git remote's URL, which may hold a token: tags are masked like params).
        tags = resolve_tags({MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else {})
        tags = {key: mask_url(str(value)) for key, value in tags.items()}
        # MLflow's SQL stores keep 250 characters of a name; PostgreSQL and MySQL refuse a longer one.
        run_name = truncate(run_name, MAX_RUN_NAME_LENGTH)
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id: str | None = run.info.run_id
        self.ui_command: str | None = _ui_command(self.tracking_uri, self.experiment_id, run.info.run_id)
        self.run_url: str | None = _run_url(self.tracking_uri, self.experiment_id, run.info.run_id)
        self._closed = False

    def child(self, run_name: str) -> MLflowTracker:
        """A run nested under this one, in the same store and experiment (shown as a tree in the UI)."""
        child = object.__new__(MLflowTracker)
        child.client, child.tracking_uri, child.experiment_id = self.client, self.tracking_uri, self.experiment_id
        child._mask, child._monitor = self._mask, None
        with child._masked():
            child._start_run(run_name, self.run_id)
        return child

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flattened params in one batch (MLflow splits it into requests of 100 params).

        MLflow params are write-once: logging a key again with another value raises. A value
        holding a URL with a password (``logger.tracking_uri``, ``data.url_override``, ...) is
        logged with the password as ``***``.
        """
        flat = [Param(key, mask_url(value)) for key, value in flatten_config(params).items()]
        with self._masked():
            self.client.log_batch(self.run_id, params=flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log all metrics in one batch with a shared timestamp; NaN values are skipped.

        ``step=None`` records step 0, as MLflow does.
        """
        timestamp = int(time.time() * 1000)
        values = {key: _as_float(key, value) for key, value in metrics.items()}
        batch = [Metric(key, value, timestamp, step or 0) for key, value in values.items() if not math.isnan(value)]
        if batch:
            with self._masked():
                self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        with self._masked():
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path), artifact_path)
            else:
                raise FileNotFoundError(f"log_artifact: {path} does not exist")

    def log_figure(self, figure: Figure, name: str) -> None:
        artifact_file = name if name.endswith(".png") else f"{name}.png"
        try:
            with self._masked():
                self.client.log_figure(self.run_id, figure, artifact_file)
        finally:
            close_figure(figure)

    def log_policy(self, checkpoints: Sequence[Path], cash_reserve: float) -> None:
        """The checkpoints as a pyfunc model at ``runs:/<run_id>/policy`` (``tracking.policy_model``)."""
        from cappuccino.tracking.policy_model import log_policy_model  # torch and mlflow.pyfunc: only when logging one

        with self._masked():
            log_policy_model(self.client, self.run_id, checkpoints, cash_reserve)

    def log_dataset(self, name: str, digest: str, source_type: str, source: str, profile: str) -> None:
        """An MLflow dataset input: ``source`` masked, as params are (a URL may hold a password)."""
        dataset = Dataset(name=name, digest=digest, source_type=source_type, source=mask_text(source), profile=profile)
        with self._masked():
            self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset)])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        batch = [RunTag(key, mask_url(str(value))) for key, value in tags.items()]
        with self._masked():
            self.client.log_batch(self.run_id, tags=batch)

    def url_of(self, run_id: str) -> str:
        return _run_url(self.tracking_uri, self.experiment_id, run_id)

    def register_policy(self, run_id: str, name: str) -> str:
        """The run's ``policy`` artifact (a pyfunc model: a CV run's is its per-split ensemble)
        as a version of ``name`` in the store's model registry; ``models:/NAME/latest`` loads it."""
        with self._masked():
            try:
                self.client.create_registered_model(name, description="cappuccino policies: mlflow.pyfunc.load_model('models:/NAME/latest')")
            except MlflowException as error:
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
            latest = self.client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=1)
            if latest and latest[0].run_id == run_id:
                return f"models:/{name}/{latest[0].version}"
            source = f"{self.client.get_run(run_id).info.artifact_uri}/policy"
            version = self.client.create_model_version(name, source=source, run_id=run_id)
        return f"models:/{name}/{version.version}"

    def close(self, status: str = "FINISHED") -> None:
        if status not in _END_STATUSES:
            raise ValueError(f"close: unknown run status {status!r}; use FINISHED, FAILED or KILLED")
        if not self._closed:
            if self._monitor is not None:  # its last samples go in before the run ends
                self._monitor.finish()
            with self._masked():
                self.client.set_terminated(self.run_id, status)
            self._closed = True

    @contextmanager
    def _masked(self) -> Iterator[None]:
        """MLflow's errors keep their type (callers may tell them apart) with the password masked."""
        try:
            yield
        except MlflowException as error:
            masked = self._mask(error.message)
            if masked != error.message:
                error.message, error.args = masked, (masked,)
            raise

    def _drop_default_experiment(self) -> None:
        """A new SQLite store comes with MLflow's empty ``Default`` experiment (id 0), which the
        UI would open on; the store being this run's own, it is deleted unless runs go there."""
        default = self.client.get_experiment(DEFAULT_EXPERIMENT_ID)
        if default.experiment_id != self.experiment_id and not self.client.search_runs([default.experiment_id], max_results=1):
            self.client.delete_experiment(default.experiment_id)

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException as error:
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                # Created meanwhile by another process, e.g. a parallel sweep job.
                experiment = self.client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == LifecycleStage.DELETED and experiment.experiment_id == DEFAULT_EXPERIMENT_ID:
            self.client.restore_experiment(DEFAULT_EXPERIMENT_ID)  # asked for by name: MLflow's own, hidden while empty
        elif experiment.lifecycle_stage == LifecycleStage.DELETED:
            raise ConfigError(
                f"logger.experiment_name: MLflow experiment {name!r} is deleted; restore it with "
                f"`mlflow experiments restore --experiment-id {experiment.experiment_id}` "
                "or choose another name"
            )
        return experiment.experiment_id


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """Every run nested directly under ``parent_run_id``, all pages of the search."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def mlflow_client_uri(tracking_uri: str) -> str:
    """The URI MLflow's client gets: a tracking server's without its credentials, which go to
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (replacing values set there: the
    URI is the explicit setting, and its credentials were the ones used before). Other URIs
    (a database, a folder) are returned as they are: their drivers read credentials from them.

    For any code that hands a user's tracking URI to MLflow (``MlflowClient(uri)``,
    ``mlflow.artifacts.download_artifacts(tracking_uri=uri)``): MLflow's errors then quote a URI
    without the password."""
    if urlparse(tracking_uri).scheme.lower() not in ("http", "https"):
        return tracking_uri
    clean, username, password = credentials_from_url(tracking_uri)
    if username is not None:
        os.environ[MLFLOW_TRACKING_USERNAME.name] = username
    if password is not None:
        os.environ[MLFLOW_TRACKING_PASSWORD.name] = password
    return clean


def _system_metrics_monitor(run_id: str, client_uri: str, interval: float, resume: bool) -> Any:
    """MLflow's system-metrics monitor of the run, started (psutil samples; a reopened run's
    steps go on from its last)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=resume, tracking_uri=client_uri)
    monitor.start()
    return monitor


def _startup_failure(shown_uri: str, error: Exception, mask: Masker) -> str:
    """What the user reads when the store cannot be opened: the URI and MLflow's reason, masked."""
    reason = mask(f"{type(error).__name__}: {error}")
    message = f"logger.tracking_uri: cannot log to the MLflow store {shown_uri}: {reason}"
    if getattr(error, "error_code", None) in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        message += (
            f"; check the credentials ({MLFLOW_TRACKING_USERNAME.name} and {MLFLOW_TRACKING_PASSWORD.name}, "
            "or ~/.mlflow/credentials)"
        )
    return message


def _ui_command(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Shell command that serves a local store, or the run's page on a tracking server (masked)."""
    tracking_uri = mask_url(tracking_uri)
    if urlparse(tracking_uri).scheme in ("http", "https"):
        return _run_url(tracking_uri, experiment_id, run_id)
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"


def _run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page: on its tracking server, or where ``mlflow ui`` serves a local store by
    default. ``workflowType=machine_learning``: MLflow 3's UI otherwise opens experiments on
    its GenAI view (traces, token usage), empty for these runs."""
    tracking_uri = mask_url(tracking_uri)
    base = tracking_uri.rstrip("/") if urlparse(tracking_uri).scheme in ("http", "https") else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def _as_float(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"log_metrics: metric {key!r} must be a number, got {value!r}") from error
