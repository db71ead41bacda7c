"""The MLflow UI, as a user meets it: a run's printed link, opened in headless Chromium on the
`mlflow ui` command the run printed, shows that run's page with its objective.

Chromium renders the single-page app and dumps the DOM it built (``--dump-dom`` after a virtual
time budget), so no browser driver is needed. Without Chromium the test is skipped, saying how to
install it (.ci/run installs Debian's package).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TINY
from .conftest import Process
from .test_servers import clean_env, free_port, wait_until_serving

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


def rendered_text(url: str) -> str:
    """The visible text of ``url`` once its scripts have run: tags out, whitespace collapsed."""
    command = [
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--virtual-time-budget=30000", "--dump-dom", url,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=clean_env())
    assert done.returncode == 0, done.stderr[-2000:]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", done.stdout))


def printed(stdout: str, label: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith(label)]
    return line.removeprefix(label).strip()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium) to render the MLflow UI")
def test_the_printed_link_opens_the_runs_page_showing_its_objective(tmp_path: Path, processes) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *TINY, "agent.lr=1e-4", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=clean_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ui_command, link = printed(done.stdout, "browse runs:"), printed(done.stdout, "this run:")
    assert link.startswith("http://127.0.0.1:5000/#/experiments/") and link.endswith("?workflowType=machine_learning")
    objective = json.loads((tmp_path / "run" / "metrics.json").read_text())["objective"]

    port = free_port()  # the printed command, on a free port instead of the default 5000
    mlflow = Path(sys.executable).with_name("mlflow")
    server: Process = processes([mlflow, *shlex.split(ui_command)[1:], "--port", str(port)], tmp_path / "ui.log", clean_env())
    wait_until_serving(f"http://127.0.0.1:{port}", server)

    from mlflow import MlflowClient

    run_id = link.split("/runs/")[1].split("?")[0]
    run_name = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run_id).info.run_name
    text = rendered_text(link.replace("127.0.0.1:5000", f"127.0.0.1:{port}"))
    assert run_name in text  # the run's own page
    shown = re.search(r"\bobjective (-?\d[\d.e+-]*)", text)
    assert shown is not None, text[:3000]
    assert float(shown.group(1)) == pytest.approx(objective, rel=1e-9)
