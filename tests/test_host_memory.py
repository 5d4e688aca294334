"""Tests of handing freed heap memory back to the operating system (heterogui.host_memory)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# run in a fresh interpreter: what an earlier test left in this process's heap would decide
# where the blocks go
FRAGMENTED_HEAP = """
import json
from heterogui.bench.memory import rss_mib
from heterogui.host_memory import release_freed_memory
blocks, pins = [], []
for _ in range(1_000):  # ~95 MiB in the heap, each block between two small live ones
    block = bytearray(100_000)
    for i in range(0, len(block), 4096):
        block[i] = 1  # touched: resident
    blocks.append(block)
    pins.append(bytearray(600))
del blocks, block
held = rss_mib()
done = release_freed_memory()
print(json.dumps({"held": held, "released": rss_mib(), "done": done, "pins": len(pins)}))
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_freed_heap_pages_go_back_to_the_system() -> None:
    """Blocks freed between live ones stay resident in the heap until they are released."""
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["done"] is True and figures["pins"] == 1_000
    freed = figures["held"] - figures["released"]
    assert freed > 50, f"{figures['held']:.0f} MiB resident before, {figures['released']:.0f} after"


def test_elsewhere_it_does_nothing(monkeypatch) -> None:
    import heterogui.host_memory as host

    host._malloc_trim.cache_clear()
    monkeypatch.setattr(host.sys, "platform", "darwin")
    try:
        assert host.release_freed_memory() is False
    finally:
        host._malloc_trim.cache_clear()
