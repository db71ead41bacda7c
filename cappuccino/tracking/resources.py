"""Peak memory of the current process, logged with each run to size machines for a config.

Both figures are in MiB (2**20 bytes) and are peaks since the process (or, for CUDA, the last
``torch.cuda.reset_peak_memory_stats``) started, not current usage.
"""

from __future__ import annotations

import sys

import psutil
import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    ``getrusage`` reports the kernel's high-water mark, which catches short spikes that sampling
    the current RSS would miss. Its unit is KiB on Linux and bytes on macOS; Windows has no
    ``resource`` module, so psutil's peak working set stands in there.
    """
    if sys.platform == "win32":
        return psutil.Process().memory_info().peak_wset / 2**20
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def peak_vram_mb(device: torch.device) -> float | None:
    """Peak GPU memory held by PyTorch tensors on ``device`` in MiB; ``None`` off CUDA.

    This is ``torch.cuda.max_memory_allocated``: memory in live tensors, not the larger pool the
    caching allocator reserves (what ``nvidia-smi`` shows).
    """
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
