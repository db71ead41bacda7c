"""Host memory for PyTorch on glibc: keep freed blocks mapped while a training loop runs."""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (<malloc.h>)
_MMAP_THRESHOLD_MAX = 32 * 2**20  # the highest value glibc's dynamic mmap threshold reaches (64-bit)


@contextmanager
def retained_freed_memory() -> Iterator[None]:
    """Inside, freed heap memory stays mapped in the process (glibc; elsewhere a no-op).

    glibc serves large allocations with fresh mmaps and hands freed memory at the top of the heap
    back to the OS, so every minibatch's activations, casts and gradients (1-8 MiB each at
    typical sizes) are page-faulted and zero-filled again: ~100k faults per PPO update at the
    throughput benchmark's sizes, a quarter of a bfloat16 update on 2 cores. Inside, blocks up to
    32 MiB come from the heap and the heap is never trimmed, so freed blocks are reused without
    faults. PyTorch's CPU performance guide gets the same by preloading jemalloc or tcmalloc;
    this does it in-process. The arithmetic is untouched and the peak resident memory too (each
    minibatch reaches the same peak anyway). On exit the thresholds are those glibc's dynamic
    rule reaches after freeing a 32 MiB block (mmap 32 MiB, trim 64 MiB) and ``malloc_trim``
    returns the retained memory to the OS. A process that configures malloc through its
    environment (``MALLOC_*`` variables, ``GLIBC_TUNABLES``) is left as configured.
    """
    configured = any(k.startswith("MALLOC_") for k in os.environ) or "glibc.malloc" in os.environ.get(
        "GLIBC_TUNABLES", ""
    )
    if platform.libc_ver()[0] != "glibc" or configured:
        yield
        return
    libc = ctypes.CDLL(None)  # the process's own C library
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)  # never trim
    try:
        yield
    finally:
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)
        libc.malloc_trim(0)


