"""The tracked run every job (training, pre-training) opens the same way: tags naming the data,
the whole config as params, and an end status that says how the job ended."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

from cappuccino.config import LoggerConfig
from cappuccino.data.market import MarketData
from cappuccino.tracking import Tracker, build_tracker, flatten_config


@contextmanager
def tracked_job(
    logger: LoggerConfig,
    run_name: str,
    project_dir: Path,
    market: MarketData,
    config_yaml: str,
    tags: Mapping[str, str] = {},
    parent_run_id: str | None = None,
) -> Iterator[Tracker]:
    """A run named ``run_name``; closed FINISHED, KILLED on Ctrl-C, FAILED on any error."""
    with build_tracker(logger, run_name, project_dir, parent_run_id) as tracker:
        data = {"data.source": market.source, "data.synthetic": str(market.synthetic), "data.hash": market.content_hash}
        tracker.set_tags({**data, **tags})
        tracker.log_params(flatten_config(OmegaConf.to_container(OmegaConf.create(config_yaml))))
        yield tracker
