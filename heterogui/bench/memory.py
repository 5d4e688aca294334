"""Memory figures of the benchmarks: this process's resident memory now and at its peak."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

MIB = 2**20


def peak_rss_mib() -> float:
    """Return this process's peak resident set size so far, in MiB.

    Linux's VmHWM, which starts afresh in a new program; ru_maxrss (the fallback elsewhere)
    carries over on Linux the peak of the process that started this one, so a benchmark that
    measures in a child process would report its parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return max_rss_mib()


def max_rss_mib() -> float:
    """Return ru_maxrss in MiB: the peak of this process, or of the one that started it."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else KiB


def rss_mib() -> float:
    """Return this process's resident memory now, in MiB (the peak so far off Linux)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    except OSError:
        return peak_rss_mib()
