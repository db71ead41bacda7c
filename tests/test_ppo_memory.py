import os
import platform
import resource

import pytest
import torch

from cappuccino.agents.memory import retained_freed_memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator settings are glibc's")


@pytest.fixture(autouse=True)
def unconfigured_malloc(monkeypatch):
    """A process whose environment leaves glibc's malloc at its defaults."""
    for name in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)


def page_faults_of_reallocating() -> int:
    """Minor page faults while ten times allocating and freeing four 4 MiB tensors (a minibatch's worth)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        [torch.ones(1024, 1024) for _ in range(4)]
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_inside_freed_tensors_are_reused_without_page_faults():
    with retained_freed_memory():
        page_faults_of_reallocating()  # the heap grows once
        assert page_faults_of_reallocating() < 100  # re-faulting would cost ~40k


def test_on_exit_the_retained_memory_goes_back_to_the_os():
    with retained_freed_memory():
        page_faults_of_reallocating()
    assert page_faults_of_reallocating() > 2048  # the 16 MiB (4096 pages) were returned: they fault in again
