"""ecgtrace.allocator: freed page-sized blocks stay in the process (and do not with ECGTRACE_MALLOC=system)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Allocates and frees a 200 MB block, then prints whether the thresholds were raised and how many MB of
# resident memory the freed block left behind.
PROBE = """
import numpy as np
from ecgtrace.allocator import keep_freed_memory
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
applied = keep_freed_memory()
before = rss_mb()
a = np.ones(200 * 2**20 // 8)
del a
print(applied, round(rss_mb() - before))
"""


def _probe(env_value: str | None) -> tuple[bool, int]:
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("ECGTRACE_MALLOC", None)
    if env_value is not None:
        env["ECGTRACE_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    applied, kept = out.stdout.split()
    return applied == "True", int(kept)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_block_is_kept_for_reuse_unless_the_system_allocator_is_asked_for():
    applied, kept = _probe(None)
    assert applied and kept >= 150  # the 200 MB stay resident, ready for the next picture
    applied, kept = _probe("system")
    assert not applied and kept < 50  # glibc's default: a block that size is unmapped when freed
