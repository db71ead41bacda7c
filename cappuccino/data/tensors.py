"""A market's tensors on one device: what the env, the backtests, pre-training and the attention
probe read. Features are float32 (what the encoders take); open and close are float64, the ledger's
precision, so a backtest prices fills exactly as the training env does."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cappuccino.data.market import MarketData

LEDGER_DTYPE = torch.float64


@dataclass(frozen=True)
class Segment:
    """A contiguous range of bars [start, stop) that episodes may use; episodes never cross it."""

    start: int
    stop: int


class MarketTensors:
    """Features (T, A, F) float32 and open/close (T, A) float64 of ``symbols`` on one device.

    A window of decision bar t holds the features of bars t-L+1..t (L = ``lookback``); a segment
    [start, stop) has decision bars t in [start + L - 1, stop - 2], so a window and the fill bar
    t + 1 stay inside it.
    """

    def __init__(self, features: Tensor, open: Tensor, close: Tensor, *, lookback: int, symbols: tuple[str, ...] = ()) -> None:
        if features.dim() != 3:
            raise ValueError(f"features must be (T, A, F), got shape {tuple(features.shape)}")
        T, A, _ = features.shape
        for name, prices in (("open", open), ("close", close)):
            if prices.shape != (T, A):
                raise ValueError(f"{name} has shape {tuple(prices.shape)}, expected (T={T}, A={A}) like features")
        if lookback < 1:
            raise ValueError(f"lookback must be >= 1, got {lookback}")
        if symbols and len(symbols) != A:
            raise ValueError(f"{len(symbols)} symbols for {A} assets")
        device = features.device
        self.features = features.to(torch.float32)
        self.open = open.to(device, LEDGER_DTYPE)
        self.close = close.to(device, LEDGER_DTYPE)
        self.lookback = lookback
        self.symbols = tuple(symbols)
        self._flat = {torch.float32: self.features.flatten(1)}  # (T, A * F) per dtype that window() gathers
        self._offsets = torch.arange(1 - lookback, 1, device=device)  # (L,)

    @classmethod
    def from_market(cls, market: MarketData, lookback: int, device: torch.device | str) -> MarketTensors:
        if market.features is None:
            raise ValueError("market has no features: build them first and attach them with market.with_features(...)")
        return cls(
            torch.as_tensor(market.features, dtype=torch.float32, device=device),
            torch.as_tensor(market.field("open"), dtype=LEDGER_DTYPE, device=device),
            torch.as_tensor(market.field("close"), dtype=LEDGER_DTYPE, device=device),
            lookback=lookback,
            symbols=market.symbols,
        )

    @property
    def n_bars(self) -> int:
        return self.features.shape[0]

    @property
    def n_assets(self) -> int:
        return self.features.shape[1]

    @property
    def n_features(self) -> int:
        return self.features.shape[2]

    @property
    def device(self) -> torch.device:
        return self.features.device

    def window(self, bars: Tensor, out: Tensor | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """(N,) decision bars -> (N, L, A, F) features of bars bar-L+1..bar (one gather).

        ``out``, a contiguous (N, L, A, F) tensor of ``dtype``, receives the result: reusing one
        buffer across steps saves allocating (on CPU, page-faulting) N * L * A * F values per step.
        ``dtype=torch.bfloat16`` gathers from a bfloat16 copy of the features, made once: the same
        numbers as gathering in float32 and casting, with a quarter of the memory traffic.
        """
        shape = (bars.shape[0], self.lookback, self.n_assets, self.n_features)
        if out is not None and (out.shape != shape or out.dtype != dtype):
            raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}, expected (N, L, A, F) = {shape} and {dtype}")
        if dtype not in self._flat:
            self._flat[dtype] = self.features.to(dtype).flatten(1)
        flat_bars = self.window_bars(bars).flatten()  # (N * L,)
        flat_out = None if out is None else out.view(-1, self.n_assets * self.n_features)
        return torch.index_select(self._flat[dtype], 0, flat_bars, out=flat_out).view(shape)

    def window_bars(self, bars: Tensor) -> Tensor:
        """(N,) decision bars -> (N, L) the bars their windows read, oldest first."""
        return bars.unsqueeze(-1) + self._offsets

    def first_decision_bar(self, segment: Segment) -> int:
        return segment.start + self.lookback - 1

    def decision_steps(self, segment: Segment) -> int:
        """Decision bars an episode can use in ``segment``."""
        return segment.stop - segment.start - self.lookback

    def decision_bars(self, segment: Segment) -> Tensor:
        """(n,) long decision bars of ``segment``, on the tensors' device."""
        return torch.arange(self.first_decision_bar(segment), segment.stop - 1, device=self.device)
