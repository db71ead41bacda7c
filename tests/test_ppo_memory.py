import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator settings are glibc's")


@pytest.fixture(autouse=True)
def unconfigured_malloc(monkeypatch):
    """A process whose environment leaves glibc's malloc at its defaults."""
    for name in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)


FAULTS = """
import resource, torch
from cappuccino.agents.memory import retained_freed_memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        [torch.ones(1024, 1024) for _ in range(4)]
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""


def page_faults(scenario: str) -> int:
    """Minor page faults of ten times allocating and freeing four 4 MiB tensors (a minibatch's
    worth) in ``scenario``, run in a fresh process: the heap's state depends on everything a
    process did before, so a long test session's would decide the count."""
    done = subprocess.run([sys.executable, "-c", FAULTS + scenario], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_inside_freed_tensors_are_reused_without_page_faults():
    scenario = "with retained_freed_memory():\n    faults()  # the heap grows once\n    print(faults())"
    assert page_faults(scenario) < 100  # re-faulting would cost ~40k


def test_on_exit_the_retained_memory_goes_back_to_the_os():
    scenario = "with retained_freed_memory():\n    faults()\nprint(faults())"
    assert page_faults(scenario) > 2048  # the 16 MiB (4096 pages) were returned: they fault in again
