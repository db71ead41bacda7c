"""The tracked run every job (training, pre-training) opens the same way: tags naming the data,
the whole config as params, and an end status that says how the job ended."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
        config = OmegaConf.to_container(OmegaConf.create(config_yaml))
        tracker.log_params(flatten_config(config))
        log_market_dataset(tracker, market, config.get("data", {}))  # type: ignore[union-attr]
        yield tracker


def log_market_dataset(tracker: Tracker, market: MarketData, data_config: Mapping[str, Any]) -> None:
    """The bars as the run's input dataset: named by source, interval and symbols, its digest the
    bars' content hash, its source the data settings that produce them (a synthetic seed, a CSV
    path, an Alpaca query), its profile the span."""
    profile = {
        "bars": market.n_bars, "symbols": list(market.symbols), "interval": str(market.interval),
        "start": str(market.timestamps[0]), "end": str(market.timestamps[-1]), "synthetic": market.synthetic,
    }  # fmt: skip
    tracker.log_dataset(
        name=f"{market.source} {market.interval} {','.join(market.symbols)}"[:500],
        digest=market.content_hash,
        source_type=market.source,
        source=json.dumps(data_config, default=str),
        profile=json.dumps(profile),
    )

