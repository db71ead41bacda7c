"""The one value type for market data that every later stage consumes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

OHLCV = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class MarketData:
    """Aligned bars of A symbols over T timestamps.

    timestamps: (T,) tz-aware UTC, strictly increasing, evenly spaced by ``interval``.
    ohlcv:      (T, A, 5) float64, columns in ``OHLCV`` order; prices > 0, volume >= 0, no NaN.
    features:   (T, A, F) float32 or None until ``with_features``; rows before ``first_valid``
                are warm-up (NaN) and never observed by an agent.
    """

    timestamps: pd.DatetimeIndex
    symbols: tuple[str, ...]
    ohlcv: np.ndarray
    interval: pd.Timedelta
    source: str
    synthetic: bool = False
    features: np.ndarray | None = None
    feature_names: tuple[str, ...] = ()
    first_valid: int = 0
    feature_memory: int = 0  # bars back a feature reads (cappuccino.data.features.feature_memory)
    content_hash: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        T, A = len(self.timestamps), len(self.symbols)
        if self.ohlcv.shape != (T, A, 5):
            raise ValueError(f"ohlcv has shape {self.ohlcv.shape}, expected (T={T}, A={A}, 5)")
        if self.features is not None and self.features.shape[:2] != (T, A):
            raise ValueError(f"features have shape {self.features.shape}, expected ({T}, {A}, F)")
        if not self.content_hash:
            object.__setattr__(self, "content_hash", self._hash())

    @property
    def n_bars(self) -> int:
        return len(self.timestamps)

    @property
    def n_assets(self) -> int:
        return len(self.symbols)

    def field(self, name: str) -> np.ndarray:
        """(T, A) view of one OHLCV column."""
        return self.ohlcv[:, :, OHLCV.index(name)]

    def with_features(
        self, features: np.ndarray, names: tuple[str, ...], first_valid: int, feature_memory: int = 0
    ) -> "MarketData":
        return MarketData(
            timestamps=self.timestamps,
            symbols=self.symbols,
            ohlcv=self.ohlcv,
            interval=self.interval,
            source=self.source,
            synthetic=self.synthetic,
            features=features.astype(np.float32, copy=False),
            feature_names=tuple(names),
            first_valid=first_valid,
            feature_memory=feature_memory,
            content_hash=self.content_hash,
        )

    def _hash(self) -> str:
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.timestamps.asi8).tobytes())
        digest.update(",".join(self.symbols).encode())
        digest.update(np.ascontiguousarray(self.ohlcv, dtype=np.float64).tobytes())
        return digest.hexdigest()[:16]
