"""``python -m cappuccino.report TARGET``: the report of an experiment or a study, from its MLflow runs.

TARGET is the run id of an experiment's run (``python train.py experiment=ablation_encoder``
prints its link) or of a study's run (``python train.py -m hparams_search=...``), or the name of
the MLflow experiment that holds them, whose newest experiment or study run is reported. The
report (``cappuccino.reporting.experiment_report``, ``cappuccino.reporting.study_report``) goes
to ``--out`` (default: ``report-<run id>/``) and to that run, under ``report/``.

    python -m cappuccino.report 8347193e6ffe4ad39d3f2326ac74bb0a
    python -m cappuccino.report cappuccino --tracking-uri sqlite:///mlflow.db
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from cappuccino.errors import UserError
from cappuccino.progress import print_line
from cappuccino.reporting.experiment_report import ReportError, write_report
from cappuccino.reporting.study_report import is_study, write_study_report
from cappuccino.secrets import mask_text
from cappuccino.tracking import STUDY_TAG
from cappuccino.tracking.mlflow_tracker import default_store, mlflow_client_uri


def report_run(client: MlflowClient, target: str) -> str:
    """The run id TARGET names: a run id, or an MLflow experiment's newest experiment or study run."""
    experiment = client.get_experiment_by_name(target)
    if experiment is None:
        try:
            return client.get_run(target).info.run_id
        except Exception:  # noqa: BLE001 - MLflow raises its own errors for an unknown id
            raise ReportError(f"{target!r} is neither a run id nor an MLflow experiment name in this store (--tracking-uri)") from None
    newest = [
        run
        for tag in ("experiment", STUDY_TAG)
        for run in client.search_runs([experiment.experiment_id], f"tags.`{tag}` != ''", order_by=["attributes.start_time DESC"], max_results=1)
    ]
    if not newest:
        raise ReportError(
            f"the MLflow experiment {target!r} holds no experiment or study run (python train.py experiment=ablation_encoder, "
            "or python train.py -m hparams_search=ppo_mlp, makes one)"
        )
    return max(newest, key=lambda run: run.info.start_time).info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cappuccino.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="an experiment's or a study's run id, or an MLflow experiment name")
    parser.add_argument("--tracking-uri", help="the MLflow store (default: ./mlflow.db, train.py's default)")
    parser.add_argument("--out", type=Path, help="the report's folder (default: report-<run id>)")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's seed (default 0; experiments only)")
    args = parser.parse_args(argv)
    uri = mlflow_client_uri(args.tracking_uri or default_store(Path.cwd())[0])
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        run_id = report_run(client, args.target)
        out = args.out or Path(f"report-{run_id}")
        report = write_study_report(client, run_id, out) if is_study(client.get_run(run_id)) else write_report(client, run_id, out, args.seed)
    except UserError as error:
        print(f"error: {mask_text(str(error))}", file=sys.stderr)
        return 2
    for line in report.verdicts:
        print_line(line)
    print_line(f"report: {report.files[0].parent / 'report.md'} (also in run {run_id}, artifacts report/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
