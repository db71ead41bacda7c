"""README's recipe for several machines, run against real servers: a PostgreSQL server holding the
Optuna study and MLflow's backend store, an MLflow tracking server with proxied artifacts, and two
workers of one study started at once, one of them killed mid-trial and started again.

The commands are read from README.md ("Several workers, several machines") and run as written, on
one machine: db-host and mlflow-host become 127.0.0.1 with free ports, the S3 bucket a folder, and
the sweep gets tiny sizes and short heartbeats. Each worker starts in its own folder, so the two
share nothing but the servers. Every server listens on 127.0.0.1 only and is stopped by its
fixture. PostgreSQL comes from the system (.ci/run installs Debian's package); without its
binaries the test is skipped.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import Process, signal_group, tail
from .test_sweep import TINY_SWEEP

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTION = "### Several workers, several machines"
SUPERUSER = "postgres"  # the cluster's superuser (initdb -U), trusted over its Unix socket only
N_TRIALS = 4
SERVER_TIMEOUT = 180  # seconds for a server to answer
WORKER_TIMEOUT = 600  # seconds for a worker to finish


# -- PostgreSQL ---------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The folder of initdb, pg_ctl, createuser and createdb: from PATH (a symlink is followed), else
    Debian's /usr/lib/postgresql/<version>/bin, newest first (Debian puts neither initdb nor pg_ctl
    on PATH)."""
    candidates = [Path(os.path.realpath(found)).parent] if (found := shutil.which("initdb")) else []
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1, reverse=True)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "createuser", "createdb")):
            return folder
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Postgres:
    bin_dir: Path
    port: int
    socket_dir: Path

    def client_env(self) -> dict[str, str]:
        """The superuser's environment for client programs (createuser, createdb): its Unix socket."""
        return {
            **clean_env(), "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PGHOST": str(self.socket_dir),
            "PGPORT": str(self.port), "PGUSER": SUPERUSER, "PGDATABASE": "postgres",
        }  # fmt: skip

    def superuser_url(self, database: str) -> str:
        """For the test's own reads: over the socket, no password."""
        return f"postgresql+psycopg2://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"


def as_cluster_owner() -> dict:
    """Popen arguments that run initdb and pg_ctl as a user PostgreSQL accepts: it refuses root."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            owner = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
    pytest.skip("running as root, and no user 'postgres' or 'nobody' to run the PostgreSQL server as")


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[Postgres]:
    """A PostgreSQL cluster of its own, listening on 127.0.0.1:<free port> and a Unix socket in its
    folder; stopped and deleted afterwards."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed: no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin "
            "(apt-get install postgresql, as .ci/run does)"
        )
    owner = as_cluster_owner()
    # The cluster's user must reach its folder: under /tmp itself, not root's private pytest folder.
    home = Path(tempfile.mkdtemp(prefix="cappuccino-pg-"))
    data, log = home / "data", home / "server.log"
    pg = {"cwd": home, "capture_output": True, "text": True, "timeout": 120, **owner}
    try:
        if owner:
            os.chown(home, owner["user"], owner["group"])
        done = subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", SUPERUSER, "--auth-local=trust", "--auth-host=scram-sha-256",
             "-E", "UTF8", "--locale=C", "--no-sync"], **pg,
        )  # fmt: skip
        assert done.returncode == 0, f"initdb failed: {done.stdout}{done.stderr}"
        for _ in range(3):  # a free port may be taken before the server binds it: take another
            port = free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {port} -k '{home}' -c fsync=off -c synchronous_commit=off"
            done = subprocess.run([bin_dir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start"], **pg)
            if done.returncode == 0:
                break
        else:
            pytest.fail(f"PostgreSQL did not start: {done.stdout}{done.stderr}\n{tail(log)}")
        yield Postgres(bin_dir, port, home)
    finally:
        if (data / "postmaster.pid").exists():
            stopped = subprocess.run([bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "-t", "30", "stop"], **pg)
            if stopped.returncode != 0 and (data / "postmaster.pid").exists():
                os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


# -- processes ----------------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """This process's environment without settings that would point a child elsewhere, and with
    127.0.0.1 past any HTTP proxy."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MLFLOW_", "HYDRA_"))}
    return {**env, **no_proxy()}


def no_proxy() -> dict[str, str]:
    local = ",".join(filter(None, [os.environ.get("NO_PROXY") or os.environ.get("no_proxy"), "127.0.0.1,localhost"]))
    return {"NO_PROXY": local, "no_proxy": local}


def readme_recipe() -> list[list[str]]:
    """The commands of the section's bash block, one list of words each (``a && b``: two)."""
    section = README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, f"README.md: no bash block under {SECTION!r}"
    commands: list[list[str]] = []
    for line in block[1].replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            end = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:end])
            words = words[end + 1 :]
    return commands


def localize(command: Sequence[str], pg_port: int, mlflow_port: int, artifacts: Path) -> list[str]:
    """The README's hosts, ports and bucket replaced by this machine's servers."""
    out = []
    for before, word in zip(["", *command], command):
        if before == "--host":
            assert word == "0.0.0.0", f"README: --host {word}"
            word = "127.0.0.1"  # nothing here listens beyond this machine
        elif before == "--port":
            assert word == "5000", f"README: --port {word}"
            word = str(mlflow_port)
        else:
            word = word.replace("mlflow-host:5000", f"127.0.0.1:{mlflow_port}").replace("db-host", f"127.0.0.1:{pg_port}")
            word = word.replace("s3://my-bucket/mlflow", str(artifacts))
        assert not re.search(r"mlflow-host|db-host|s3://|0\.0\.0\.0", word), f"README: {word!r} left unreplaced"
        out.append(word)
    return out


def with_overrides(command: Sequence[str], overrides: Mapping[str, str]) -> list[str]:
    """``command`` with ``key=value`` words for these keys replaced, and the others appended."""
    keys = {word.split("=", 1)[0] for word in command}
    replaced = [f"{key}={overrides[key]}" if (key := word.split("=", 1)[0]) in overrides else word for word in command]
    return [*replaced, *(f"{k}={v}" for k, v in overrides.items() if k not in keys)]


def wait_until_serving(url: str, server: Process) -> None:
    deadline = time.monotonic() + SERVER_TIMEOUT
    while True:
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        assert server.popen.poll() is None, f"the MLflow server exited ({server.popen.returncode})\n{tail(server.log)}"
        assert time.monotonic() < deadline, f"the MLflow server did not answer in {SERVER_TIMEOUT} s\n{tail(server.log)}"
        time.sleep(0.5)


def study_names(postgres: Postgres, database: str) -> list[str]:
    """The studies in ``database``, read with plain SQL: an Optuna storage opened by the superuser
    would create the tables itself, owned by the superuser and so closed to the optuna role."""
    import psycopg2

    db = psycopg2.connect(host=str(postgres.socket_dir), port=postgres.port, user=SUPERUSER, dbname=database)
    try:
        with db, db.cursor() as cursor:
            cursor.execute("SELECT study_name FROM studies")
            return [name for (name,) in cursor.fetchall()]
    except psycopg2.errors.UndefinedTable:
        return []
    finally:
        db.close()


def wait_for_a_job(sweep_dir: Path, worker: Process) -> None:
    """Until the worker has started a trial's job (Hydra made its numbered folder)."""
    deadline = time.monotonic() + WORKER_TIMEOUT
    while not (sweep_dir.is_dir() and any(p.name.isdigit() for p in sweep_dir.iterdir())):
        assert worker.popen.poll() is None, f"the worker ended before its first trial\n{tail(worker.log)}"
        assert time.monotonic() < deadline, f"no trial started in {WORKER_TIMEOUT} s\n{tail(worker.log)}"
        time.sleep(0.2)


@pytest.mark.slow
def test_readme_recipe_on_postgresql_and_an_mlflow_server_two_workers_one_killed_and_restarted(
    postgres: Postgres, processes: Callable[..., Process], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna
    from mlflow import MlflowClient

    from cappuccino.hparams_search.sweeper import counted

    recipe = readme_recipe()
    mlflow_port = free_port()
    artifacts = tmp_path / "artifacts"
    recipe = [localize(c, postgres.port, mlflow_port, artifacts) for c in recipe]
    assert [c[0] for c in recipe] == ["createuser", "createdb", "createuser", "createdb", "mlflow", "python"], recipe
    setup, server_command, worker_command = recipe[:4], recipe[4], recipe[5]
    passwords = {role: secrets.token_urlsafe(16) for role in ("optuna", "mlflow")}

    # Once, on the database server: the roles (passwords typed at createuser's prompt: without a
    # terminal it reads them from stdin) and their databases.
    for command in setup:
        role = command[-1]
        typed = f"{passwords[role]}\n{passwords[role]}\n" if "--pwprompt" in command else None
        done = subprocess.run(
            command, env=postgres.client_env(), input=typed, capture_output=True, text=True, timeout=60, start_new_session=True
        )  # fmt: skip
        assert done.returncode == 0, f"{shlex.join(command)}: {done.stdout}{done.stderr}"

    # Once, on the MLflow server: the mlflow role's password in a pgpass file (~/.pgpass elsewhere).
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{postgres.port}:mlflow:mlflow:{passwords['mlflow']}\n")
    pgpass.chmod(0o600)
    mlflow = Path(sys.executable).with_name("mlflow")  # this environment's, with psycopg2
    server = processes(
        [mlflow, *server_command[1:], "--workers", "1"], tmp_path / "mlflow-server.log", {**clean_env(), "PGPASSFILE": str(pgpass)}
    )  # one worker process: the test machine is small
    tracking_uri = f"http://127.0.0.1:{mlflow_port}"
    wait_until_serving(tracking_uri, server)

    # On every worker machine, the same command; the optuna role's password in PGPASSWORD.
    assert worker_command[1] == "train.py" and "hparams_search=ppo_mlp" in worker_command
    worker_env = {**clean_env(), "PGPASSWORD": passwords["optuna"]}
    machines = [tmp_path / f"machine{w}" for w in (0, 1)]
    commands = [
        with_overrides([sys.executable, str(ROOT / "train.py"), *worker_command[2:], *TINY_SWEEP], {
            "hydra.sweeper.n_trials": str(N_TRIALS),
            "encoder.hidden_sizes": "choice([16,16],[32,32])",
            "trainer.torch_threads": "1",
            "hydra.sweeper.heartbeat_interval": "1",
            "hydra.sweeper.grace_period": "4",  # a killed trial is failed and run again 4 s after its last heartbeat
            "hydra.sweep.dir": str(machine / "multirun"),
            "logger.register_as": "ppo_mlp_best",
            "hydra.sweeper.keep_checkpoints": "2",
        })
        for machine in machines
    ]  # fmt: skip
    for machine in machines:
        machine.mkdir()
    # Both at once, on a new database: the two create Optuna's tables and the study together.
    workers = [processes(c, m.with_suffix(".log"), worker_env, cwd=m) for c, m in zip(commands, machines)]

    wait_for_a_job(machines[1] / "multirun", workers[1])
    time.sleep(1.0)
    signal_group(workers[1], signal.SIGKILL)  # no cleanup runs: like a power cut or the OOM killer
    workers[1].popen.wait()
    workers[1] = processes(commands[1], machines[1].with_suffix(".log"), worker_env, cwd=machines[1])  # the same command again
    for worker in workers:
        assert worker.wait(WORKER_TIMEOUT) == 0, tail(worker.log)

    # Optuna: exactly n_trials counted, all complete; the killed one failed and its parameters run again.
    study = optuna.load_study(study_name="ppo_mlp", storage=postgres.superuser_url("optuna"))
    trials = study.get_trials()
    kept = counted(trials)
    assert len(kept) == N_TRIALS and all(t.state == optuna.trial.TrialState.COMPLETE for t in kept), trials
    (killed,) = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    (rerun,) = [t for t in kept if killed.number in t.system_attrs.get("retry_history", [])]
    assert rerun.params == killed.params
    surplus = [t for t in trials if t not in kept and t is not killed]
    assert all(t.state == optuna.trial.TrialState.PRUNED and t.user_attrs.get("skipped") for t in surplus)  # asked in a race, never run

    # MLflow: one study run; under it one finished trial run per counted trial, each with its splits.
    for key, value in no_proxy().items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("cappuccino")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (study_run,) = [r for r in runs if r.info.run_name == "study ppo_mlp"]
    assert study.user_attrs["mlflow_run_id"] == study_run.info.run_id and study_run.info.status == "FINISHED"
    trial_runs = [r for r in runs if "optuna.trial" in r.data.tags]
    assert all(r.data.tags.get("mlflow.parentRunId") == study_run.info.run_id for r in trial_runs)
    per_trial = Counter(int(r.data.tags["optuna.trial"]) for r in trial_runs)
    assert {t.number: per_trial[t.number] for t in kept} == {t.number: 1 for t in kept}  # each ran exactly once
    assert set(per_trial) <= {t.number for t in kept} | {killed.number} and per_trial[killed.number] <= 1
    for run in trial_runs:
        if int(run.data.tags["optuna.trial"]) == killed.number:
            assert run.info.status == "KILLED"  # killed mid-trial: ended by the worker that failed the trial
            continue
        assert run.info.status == "FINISHED"
        splits = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        assert sorted(r.data.tags["cv.split"] for r in splits) == ["0", "1", "2", "3"]  # CPCV: C(4, 1) splits
    assert {"best_trial.yaml", "overfitting.json"} <= {a.path for a in client.list_artifacts(study_run.info.run_id)}
    # One objective name at every level, the bars as each trial's dataset input, and retention
    # through the server's proxied artifacts: the 2 best complete trials keep their policy models.
    finished = [r for r in trial_runs if r.info.status == "FINISHED"]
    assert "objective" in study_run.data.metrics and all("objective" in r.data.metrics for r in finished)
    assert all(r.inputs.dataset_inputs and r.inputs.dataset_inputs[0].dataset.source_type == "synthetic" for r in finished)
    kept_runs = {r.info.run_id for r in finished if "policy" in {a.path for a in client.list_artifacts(r.info.run_id)}}
    ranked = sorted(kept, key=lambda t: t.value, reverse=True)
    best_two = {r.info.run_id for r in finished if int(r.data.tags["optuna.trial"]) in {t.number for t in ranked[:2]}}
    assert kept_runs == best_two
    assert all(r.data.tags.get("checkpoints") == "deleted" for r in finished if r.info.run_id not in kept_runs)
    assert list(artifacts.rglob("overfitting.json")), "the server keeps the artifacts in --artifacts-destination"
    # The study run's description links the best trial's page; its ensemble is registered and loads through the server.
    best_run = study_run.data.tags["best.run_id"]
    best_url = f"{tracking_uri}/#/experiments/{experiment.experiment_id}/runs/{best_run}?workflowType=machine_learning"
    assert study_run.data.tags["best.run_url"] == best_url and f"[trial {study.best_trial.number}]({best_url})" in study_run.data.tags["mlflow.note.content"]
    versions = client.search_model_versions("name = 'ppo_mlp_best'")  # each worker finishing registers it, unless it is already the latest
    assert versions and {v.run_id for v in versions} == {best_run}
    import mlflow.pyfunc

    mlflow.set_tracking_uri(tracking_uri)
    inputs = mlflow.pyfunc.load_model("models:/ppo_mlp_best/latest").metadata.signature.inputs.inputs
    assert [i.name for i in inputs] == ["window", "weights"]

    # Nothing went to local stores, and no password reached a file.
    for machine in machines:
        assert not [p.name for p in machine.iterdir() if p.name in ("optuna.db", "mlflow.db", "mlruns", "mlartifacts")]
        for path in [machine.with_suffix(".log"), *(p for p in machine.rglob("*") if p.suffix in (".yaml", ".log", ".json"))]:
            text = path.read_text(errors="replace")
            assert not any(password in text for password in passwords.values()), path


def _store_long_names(uri: str, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A trial run with far more overrides than fit a name, and a split child, in the store at ``uri``."""
    from cappuccino.tracking import overrides_tags, short_run_name
    from cappuccino.tracking.mlflow_tracker import MLflowTracker

    overrides = [f"agent.param{i}=0.00012520653814999459" for i in range(400)]  # 16,000 characters
    name = short_run_name(overrides)
    with MLflowTracker(uri, "cappuccino", "trial 12", tmp_path) as trial:
        trial.set_tags(overrides_tags(overrides))
        with trial.child(f"{name} · split 0") as split:
            split.set_tags(overrides_tags(overrides))
        run = trial.client.get_run(split.run_id)
    return run.info.run_name, run.data.tags


def _check_long_names(stored_name: str, tags: dict[str, str]) -> None:
    from cappuccino.tracking import MAX_RUN_NAME_LENGTH, MAX_TAG_VALUE_LENGTH

    assert stored_name.startswith("param0=0.000125 param1=0.000125") and stored_name.endswith("· split 0")
    assert len(stored_name) <= MAX_RUN_NAME_LENGTH
    assert tags["overrides"].startswith("agent.param0=0.00012520653814999459 agent.param1=")  # in full, as typed
    assert all(len(tags[k]) <= MAX_TAG_VALUE_LENGTH for k in ("overrides", "mlflow.note.content"))


def test_run_names_and_override_tags_fit_mlflows_limits_in_sqlite(tmp_path: Path) -> None:
    """SQLite keeps any length; the names and tags are cut to what PostgreSQL and MySQL keep."""
    _check_long_names(*_store_long_names(f"sqlite:///{tmp_path}/mlflow.db", tmp_path))


@pytest.mark.slow
def test_run_names_and_override_tags_fit_mlflows_limits_in_postgresql(postgres: Postgres, tmp_path: Path) -> None:
    """PostgreSQL refuses a run name over VARCHAR(250) (StringDataRightTruncation) and a tag over its column."""
    done = subprocess.run(["createdb", "names"], env=postgres.client_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    _check_long_names(*_store_long_names(postgres.superuser_url("names"), tmp_path))


# -- a new database opened at once ---------------------------------------------------------------


@pytest.mark.slow
def test_workers_opening_a_new_database_at_once_all_open_the_one_study(postgres: Postgres) -> None:
    """The race made certain: while one creator's transaction holds Optuna's new tables, uncommitted,
    three workers open the database; none sees the tables, each blocks creating them, and each finds
    them made when the creator commits (as the loser of two workers started at once does)."""
    import sqlalchemy
    from optuna.storages._rdb import models

    done = subprocess.run(["createdb", "race"], env=postgres.client_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    engine = sqlalchemy.create_engine(postgres.superuser_url("race"), poolclass=sqlalchemy.pool.NullPool)
    openers = []
    try:
        with engine.connect() as creator, engine.connect() as watcher:
            creator.begin()
            models.BaseModel.metadata.create_all(creator)  # the first worker's tables, not yet committed
            opener = [sys.executable, "-c", OPEN, postgres.superuser_url("race")]
            pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
            openers = [subprocess.Popen(opener, cwd=ROOT, env=clean_env(), **pipes) for _ in range(3)]
            deadline = time.monotonic() + 120
            waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'race' AND wait_event_type = 'Lock'"
            while watcher.execute(sqlalchemy.text(waiting)).scalar() < len(openers):
                watcher.rollback()  # a fresh snapshot next time
                assert all(o.poll() is None for o in openers), [o.communicate()[1][-3000:] for o in openers if o.poll() is not None]
                assert time.monotonic() < deadline, "the openers did not all wait on the creator's tables"
                time.sleep(0.2)
            creator.commit()
        errors = [opener.communicate(timeout=120)[1] for opener in openers]
    finally:
        engine.dispose()
        for opener in openers:
            if opener.poll() is None:
                opener.kill()
                opener.wait()
    failed = [re.findall(r"^\S*Error: .*", error, re.MULTILINE)[-1:] or error[-500:] for opener, error in zip(openers, errors) if opener.returncode]
    assert not failed, failed
    assert study_names(postgres, "race") == ["race"]


OPEN = """
import sys
from cappuccino.hparams_search.sweeper import open_study
open_study(sys.argv[1], "race", None, "maximize", 10, 30)
"""


# -- a missing driver ---------------------------------------------------------------------------

STORAGE = "postgresql+psycopg2://optuna@127.0.0.1:1/optuna"  # never reached: the driver is missing


def test_a_missing_postgresql_driver_names_the_package_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from cappuccino.errors import ConfigError
    from cappuccino.hparams_search.sweeper import open_study

    monkeypatch.setitem(sys.modules, "psycopg2", None)  # import psycopg2 raises ModuleNotFoundError
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.storage.*pip install psycopg2-binary"):
        open_study(STORAGE, "ppo_mlp", None, "maximize", 10, 30)


def test_a_sweep_without_the_postgresql_driver_ends_with_one_line_naming_the_package(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"  # on PYTHONPATH: a psycopg2 that is not there
    blocked.mkdir()
    (blocked / "psycopg2.py").write_text("raise ModuleNotFoundError(\"No module named 'psycopg2'\", name='psycopg2')\n")
    command = [
        sys.executable, ROOT / "train.py", "-m", "hparams_search=ppo_mlp", "logger=none", f"hydra.sweeper.storage={STORAGE}",
        f"hydra.sweep.dir={tmp_path}/multirun",
    ]  # fmt: skip
    env = {**clean_env(), "PYTHONPATH": str(blocked)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert re.search(r"^error: hydra\.sweeper\.storage: .*pip install psycopg2-binary", done.stderr, re.MULTILINE), done.stderr
    assert not (tmp_path / "multirun").exists()
