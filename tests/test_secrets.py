"""Passwords in URL settings are never shown or stored: ``cappuccino.secrets`` and the MLflow tracker.

The tracker tests talk to a recording fake of MLflow's REST API on 127.0.0.1 (an ephemeral port,
stopped by its fixture and, failing that, by a watchdog timer): it answers the few endpoints a run
uses, records every request (its Authorization header included) and can refuse them all.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cappuccino.config import MLflowLoggerConfig
from cappuccino.errors import ConfigError, UserError
from cappuccino.secrets import (
    MASK,
    credentials_from_url,
    exit_on_url_passwords,
    has_password,
    mask_text,
    mask_url,
    refuse_passwords,
    url_secrets,
)

SECRET = "S3cret"
EXPERIMENT = "secrets-test"
SERVER_LIFETIME_S = 120  # the fake server stops itself after this, whatever the tests do


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("http://user:S3cret@host/", "http://user:***@host/"),
        ("https://user:S3cret@mlflow.example.com:5000/base", "https://user:***@mlflow.example.com:5000/base"),
        ("postgresql+psycopg2://optuna:S3cret@db:5432/optuna?sslmode=require", "postgresql+psycopg2://optuna:***@db:5432/optuna?sslmode=require"),
        ("mysql://root:S3cret@localhost/optuna", "mysql://root:***@localhost/optuna"),
        ("redis://:S3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("http://user:p%40ss@host/", "http://user:***@host/"),  # percent-encoded "@"
        ("http://user:p@ss@host/", "http://user:***@host/"),  # a raw "@" (invalid, yet seen): all of it hidden
        ("postgresql://u:pa/ss@db/x", "postgresql://u:***@db/x"),  # SQLAlchemy takes a raw "/"
    ],
)
def test_mask_url_hides_the_password_and_keeps_the_rest(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert has_password(url)
    assert not has_password(masked.replace(MASK, ""))


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///relative/mlflow.db",
        "sqlite:////abs/mlflow.db",
        "sqlite:///:memory:",
        "/home/me/mlruns",
        "mlruns",
        "file:///home/me/mlruns",
        "http://mlflow-host:5000",
        "http://user@mlflow-host:5000/",  # a username alone is no secret
        "http://user:@host/",  # nor an empty password
        "databricks://scope:prefix",
        "C:\\Users\\me\\mlruns",
        "",
    ],
)
def test_mask_url_leaves_urls_without_password_alone(url: str) -> None:
    assert mask_url(url) == url
    assert not has_password(url)


def test_mask_text_masks_urls_in_prose_and_the_given_secrets() -> None:
    text = (
        "API request to http://user:S3cret@host/api/2.0/x failed; "
        "storage 'postgresql://o:Pg%21pw@db/optuna', server said: bad password S3cret"
    )
    masked = mask_text(text, [SECRET, None, ""])
    assert SECRET not in masked and "Pg%21pw" not in masked
    assert "http://user:***@host/api/2.0/x" in masked and "'postgresql://o:***@db/optuna'" in masked
    assert masked.endswith("bad password ***")
    # Several URLs on one line (a Hydra sweep over stores): none shows its password.
    swept = mask_text("logger.tracking_uri=http://a:pw1@h1/,http://b:pw2@h2/")
    assert "pw1" not in swept and "pw2" not in swept


def test_credentials_from_url_splits_userinfo_off() -> None:
    assert credentials_from_url("http://user:S3cret@127.0.0.1:5000/") == ("http://127.0.0.1:5000/", "user", SECRET)
    assert credentials_from_url("https://u%40corp:p%40ss@h/x?y=1") == ("https://h/x?y=1", "u@corp", "p@ss")
    assert credentials_from_url("http://user@h/") == ("http://h/", "user", None)
    assert credentials_from_url("http://:tok@h/") == ("http://h/", None, "tok")
    assert credentials_from_url("postgresql+psycopg2://o:S3cret@db/optuna") == ("postgresql+psycopg2://db/optuna", "o", SECRET)
    for plain in ("http://h:5000", "sqlite:///x.db", "/tmp/mlruns", "mlruns"):
        assert credentials_from_url(plain) == (plain, None, None)


def test_url_secrets_lists_the_written_and_the_decoded_password() -> None:
    assert sorted(url_secrets("http://u:p%40ss@h/")) == ["p%40ss", "p@ss"]
    assert url_secrets("http://h/") == []
    assert url_secrets("http://[broken") == []


def test_refuse_passwords_names_the_setting_and_shows_it_masked() -> None:
    config = {"logger": {"tracking_uri": f"http://user:{SECRET}@host/"}, "data": {"symbols": ["BTC", "ETH"]}}
    with pytest.raises(ConfigError, match=r"^logger\.tracking_uri: .*http://user:\*\*\*@host/.*MLFLOW_TRACKING_PASSWORD") as caught:
        refuse_passwords(config)
    assert SECRET not in str(caught.value) and isinstance(caught.value, UserError)
    arguments = ["encoder=mlp", f"hydra.sweeper.storage=postgresql://optuna:{SECRET}@db/optuna"]
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.storage=postgresql://optuna:\*\*\*@db/optuna.*PGPASSWORD") as caught:
        refuse_passwords(arguments)
    assert SECRET not in str(caught.value)
    refuse_passwords({"logger": {"tracking_uri": "http://user@host/"}, "n": 3, "x": None})  # nothing to refuse
    refuse_passwords(["logger.tracking_uri=sqlite:///mlflow.db", "-m"])


def test_exit_on_url_passwords_ends_the_program_with_a_masked_line(capsys: pytest.CaptureFixture[str]) -> None:
    exit_on_url_passwords(["encoder=mlp", "logger.tracking_uri=http://mlflow-host:5000"])  # returns
    with pytest.raises(SystemExit) as caught:
        exit_on_url_passwords(["-m", f"logger.tracking_uri=http://user:{SECRET}@mlflow-host:5000"])
    assert caught.value.code == 2 and caught.value.__suppress_context__
    err = capsys.readouterr().err
    assert err.startswith("error: a password in a URL (logger.tracking_uri=http://user:***@mlflow-host:5000)")
    assert SECRET not in err and err.count("\n") == 1


def test_secrets_is_the_bottom_layer() -> None:
    source = Path(__file__).parents[1].joinpath("cappuccino", "secrets.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from ")) and "cappuccino" in line]
    assert imports == ["from cappuccino.errors import ConfigError"]


# ------------------------------------------------------------------ a fake tracking server


class FakeMlflowServer:
    """MLflow's REST API, just enough for a run; ``refuse`` answers every request with it instead:
    ``(status, body)``. ``requests`` holds (method, path, Authorization header, JSON body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None, Any]] = []
        self.refuse: tuple[int, str] | None = None
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet: captured output is under test
                pass

            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

            def do_PUT(self) -> None:
                fake.handle(self, "PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.watchdog = threading.Timer(SERVER_LIFETIME_S, self.server.shutdown)
        self.watchdog.daemon = True

    def __enter__(self) -> FakeMlflowServer:
        self.thread.start()
        self.watchdog.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.watchdog.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw and method != "PUT" else raw
        except ValueError:
            body = raw
        if method == "GET":
            body = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append((method, url.path, request.headers.get("Authorization"), body))
        if self.refuse is not None:
            status, text = self.refuse
            return self.reply(request, status, text)
        status, answer = self.answer(method, url.path, body)
        self.reply(request, status, json.dumps(answer))

    def answer(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        api = "/api/2.0/mlflow/"
        if path == api + "experiments/get-by-name":
            experiment = self.experiments.get(body.get("experiment_name"))
            if experiment is None:
                return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such experiment"}
            return 200, {"experiment": experiment}
        if path == api + "experiments/create":
            experiment_id = str(len(self.experiments) + 1)
            self.experiments[body["name"]] = {
                "experiment_id": experiment_id, "name": body["name"], "lifecycle_stage": "active",
                "artifact_location": f"mlflow-artifacts:/{experiment_id}",
            }  # fmt: skip
            return 200, {"experiment_id": experiment_id}
        if path == api + "runs/create":
            run_id = uuid.uuid4().hex
            info = {
                "run_id": run_id, "run_uuid": run_id, "experiment_id": body["experiment_id"],
                "run_name": body.get("run_name", ""), "status": "RUNNING", "start_time": body.get("start_time", 0),
                "artifact_uri": f"mlflow-artifacts:/{body['experiment_id']}/{run_id}/artifacts", "lifecycle_stage": "active",
            }  # fmt: skip
            self.runs[run_id] = {"info": info, "data": {"params": [], "tags": list(body.get("tags", [])), "metrics": []}}
            return 200, {"run": self.runs[run_id]}
        if path == api + "runs/get":
            return 200, {"run": self.runs[body["run_id"]]}
        if path == api + "runs/log-batch":
            data = self.runs[body["run_id"]]["data"]
            for key in ("params", "tags", "metrics"):
                data[key].extend(body.get(key, []))
            return 200, {}
        if path == api + "runs/update":
            info = self.runs[body["run_id"]]["info"]
            info["status"] = body.get("status", info["status"])
            return 200, {"run_info": info}
        if method == "PUT" and path.startswith("/api/2.0/mlflow-artifacts/artifacts/"):
            return 200, {}
        return 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"fake server: no {method} {path}"}

    @staticmethod
    def reply(request: BaseHTTPRequestHandler, status: int, text: str) -> None:
        payload = text.encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json" if text.startswith("{") else "text/plain")
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)

    def run_data(self, run_id: str) -> dict[str, Any]:
        return self.runs[run_id]["data"]


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMlflowServer]:
    # The tracker puts the URI's credentials into these: undone after each test.
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused request fails at once
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.setenv("HOME", "/nonexistent-home")  # no ~/.mlflow/credentials of the machine
    with FakeMlflowServer() as fake:
        yield fake


def _uri(server: FakeMlflowServer, password: str = SECRET) -> str:
    return f"http://user:{password}@127.0.0.1:{server.port}/"


def _tracker(uri: str, tmp_path: Path, **kwargs: Any) -> Any:
    from cappuccino.tracking.mlflow_tracker import MLflowTracker

    return MLflowTracker(uri, EXPERIMENT, "run", tmp_path / "project", **kwargs)


def test_tracker_sends_the_credentials_as_basic_auth_and_never_shows_them(
    server: FakeMlflowServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    artifact = tmp_path / "summary.json"
    artifact.write_text("{}")
    uri = _uri(server)
    with _tracker(uri, tmp_path) as tracker:
        tracker.log_params({"logger": {"tracking_uri": uri, "name": "mlflow"}, "data": {"url_override": f"https://k:{SECRET}@api/"}})
        tracker.set_tags({"remote": f"https://token:{SECRET}@github.com/me/repo.git"})
        tracker.log_metrics({"loss": 1.0}, step=1)
        tracker.log_artifact(artifact)
        with tracker.child("split0") as child:
            child.log_params({"cv": {"split": 0}})
    run_id = tracker.run_id

    # Every request, artifact upload included, carried the credentials as HTTP basic auth.
    assert server.requests and all(auth == _basic("user", SECRET) for _, _, auth, _ in server.requests)
    assert any(method == "PUT" for method, *_ in server.requests)
    # What the tracker shows: the credential-free URL.
    assert tracker.ui_command == f"http://127.0.0.1:{server.port}/#/experiments/1/runs/{run_id}?workflowType=machine_learning"
    assert tracker.tracking_uri == f"http://127.0.0.1:{server.port}/" and SECRET not in repr(vars(tracker))
    # What it logged: masked params and tags; the username kept; other values untouched.
    params = {p["key"]: p["value"] for p in server.run_data(run_id)["params"]}
    assert params["logger.tracking_uri"] == f"http://user:***@127.0.0.1:{server.port}/"
    assert params["data.url_override"] == "https://k:***@api/" and params["logger.name"] == "mlflow"
    tags = {t["key"]: t["value"] for t in server.run_data(run_id)["tags"]}
    assert tags["remote"] == "https://token:***@github.com/me/repo.git"
    # Nothing that reached the server, or the terminal, holds the password (but the auth header).
    bodies = json.dumps([body for *_, body in server.requests if not isinstance(body, bytes)])
    assert SECRET not in bodies and SECRET not in json.dumps(server.runs)
    out, err = capfd.readouterr()
    assert SECRET not in out and SECRET not in err


def test_credentials_set_in_the_environment_are_used_with_a_clean_uri(
    server: FakeMlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "env-user")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    with _tracker(f"http://127.0.0.1:{server.port}", tmp_path) as tracker:
        pass
    assert {auth for _, _, auth, _ in server.requests} == {_basic("env-user", SECRET)}
    assert tracker.ui_command.startswith(f"http://127.0.0.1:{server.port}/#/experiments/")


@pytest.mark.parametrize(
    ("status", "body", "hint"),
    [
        (401, "Unauthorized", "check the credentials"),
        (403, json.dumps({"error_code": "PERMISSION_DENIED", "message": f"user:{SECRET} may not"}), "check the credentials"),
        (500, json.dumps({"error_code": "INTERNAL_ERROR", "message": f"failed for http://user:{SECRET}@db/ ({SECRET})"}), ""),
        (502, "<html>Bad gateway</html>", ""),
    ],
)
def test_a_refusing_server_raises_a_masked_error_naming_the_setting(
    server: FakeMlflowServer, tmp_path: Path, capfd: pytest.CaptureFixture[str], status: int, body: str, hint: str
) -> None:
    from cappuccino.tracking import TrackingError

    server.refuse = (status, body)
    with pytest.raises(TrackingError) as caught:
        _tracker(_uri(server), tmp_path)
    message = str(caught.value)
    assert message.startswith(f"logger.tracking_uri: cannot log to the MLflow store http://user:***@127.0.0.1:{server.port}/: ")
    assert hint in message and SECRET not in message
    # No chained original to print the password in a traceback.
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert server.requests[0][2] == _basic("user", SECRET)
    out, err = capfd.readouterr()
    assert SECRET not in out and SECRET not in err


def test_an_unreachable_server_raises_a_masked_error(server: FakeMlflowServer, tmp_path: Path) -> None:
    from cappuccino.tracking import TrackingError

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TrackingError, match=r"127\.0\.0\.1") as caught:
        _tracker(f"http://user:{SECRET}@127.0.0.1:{port}/", tmp_path)
    assert SECRET not in str(caught.value) and "http://user:***@127.0.0.1" in str(caught.value)


def test_errors_after_start_up_keep_their_type_and_are_masked(server: FakeMlflowServer, tmp_path: Path) -> None:
    from mlflow.exceptions import MlflowException

    tracker = _tracker(_uri(server), tmp_path)
    server.refuse = (400, json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": f"param echoes {SECRET}"}))
    with pytest.raises(MlflowException) as caught:
        tracker.log_params({"a": 1})
    assert SECRET not in str(caught.value) and "param echoes ***" in str(caught.value)
    server.refuse = None
    tracker.close()


def test_build_tracker_from_a_logger_config(
    server: FakeMlflowServer, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from cappuccino.tracking import build_tracker

    cfg = MLflowLoggerConfig(tracking_uri=_uri(server), experiment_name=EXPERIMENT)
    with build_tracker(cfg, "encoder=mlp", tmp_path / "project") as tracker:
        tracker.log_params({"logger": {"tracking_uri": cfg.tracking_uri}})
    assert tracker.ui_command is not None and SECRET not in tracker.ui_command
    assert server.run_data(tracker.run_id)["params"] == [
        {"key": "logger.tracking_uri", "value": f"http://user:***@127.0.0.1:{server.port}/"}
    ]
    assert {auth for _, _, auth, _ in server.requests} == {_basic("user", SECRET)}
    assert not (tmp_path / "project").exists()  # a given store: nothing in the project folder
    out, err = capfd.readouterr()
    assert SECRET not in out + err


def test_a_database_store_keeps_its_url_but_shows_it_masked(tmp_path: Path) -> None:
    """A SQL store reads its credentials from the URL (or ~/.pgpass): it gets the URL as it is;
    what the tracker shows is masked. (SQLite has no password: the mask shows on a user's URL.)"""
    from cappuccino.tracking.mlflow_tracker import _ui_command

    assert _ui_command(f"postgresql://mlflow:{SECRET}@db/mlflow", "1", "abc") == (
        "mlflow ui --backend-store-uri 'postgresql://mlflow:***@db/mlflow'"
    )
    with _tracker(f"sqlite:///{tmp_path}/store.db", tmp_path) as tracker:
        tracker.log_params({"storage": f"postgresql://optuna:{SECRET}@db/optuna"})
    from mlflow import MlflowClient

    params = MlflowClient(f"sqlite:///{tmp_path}/store.db").get_run(tracker.run_id).data.params
    assert params == {"storage": "postgresql://optuna:***@db/optuna"}


# ------------------------------------------------------------------ reading runs back


def test_downloading_a_runs_checkpoints_sends_the_credentials_and_masks_the_servers_answer(
    server: FakeMlflowServer, capfd: pytest.CaptureFixture[str]
) -> None:
    from cappuccino.tracking import TrackingError
    from cappuccino.tracking.artifacts import run_checkpoints

    server.refuse = (400, json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": f"no artifacts for user:{SECRET}"}))
    with pytest.raises(TrackingError) as caught:
        run_checkpoints("0123abcd", _uri(server))
    message = str(caught.value)
    assert message.startswith(f"cannot read from the MLflow store http://user:***@127.0.0.1:{server.port}/: ")
    assert "no artifacts for user:***" in message and SECRET not in message
    assert caught.value.__cause__ is None and caught.value.__context__ is None
    assert {auth for _, _, auth, _ in server.requests} == {_basic("user", SECRET)}
    out, err = capfd.readouterr()
    assert SECRET not in out + err


def test_a_run_without_checkpoints_is_named(server: FakeMlflowServer) -> None:
    from cappuccino.tracking import TrackingError
    from cappuccino.tracking.artifacts import run_checkpoints

    server.refuse = (200, json.dumps({"files": [{"path": "config.yaml", "is_dir": False, "file_size": 3}]}))
    with pytest.raises(TrackingError, match="MLflow run 0123abcd has no policy model and no checkpoint\\*.pt artifact"):
        run_checkpoints("0123abcd", _uri(server))


def test_gather_from_an_unreachable_server_exits_with_a_masked_line(
    server: FakeMlflowServer, capfd: pytest.CaptureFixture[str]
) -> None:
    from cappuccino.hparams_search.gather import main

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SystemExit) as caught:
        main(["--run-ids", "0123abcd", "--tracking-uri", f"http://user:{SECRET}@127.0.0.1:{port}/"])
    assert caught.value.code == 2
    out, err = capfd.readouterr()
    assert err.startswith(f"error: the tracking URI: no MLflow server answers at http://user:***@127.0.0.1:{port}/")
    assert SECRET not in out + err and err.count("\n") == 1


def test_a_study_storage_that_refuses_is_named_masked(tmp_path: Path) -> None:
    from cappuccino.errors import ConfigError
    from cappuccino.hparams_search.best import best_trial_folders

    storage = f"postgresql+psycopg2://optuna:{SECRET}@127.0.0.1:9/optuna"  # nobody listens on port 9
    with pytest.raises(ConfigError) as caught:
        best_trial_folders("s", storage)
    message = str(caught.value)
    assert message.startswith("cannot open study 's' in postgresql+psycopg2://optuna:***@127.0.0.1:9/optuna: ")
    assert SECRET not in message and caught.value.__context__ is None
