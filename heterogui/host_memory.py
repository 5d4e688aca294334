"""The host's memory: how much the statistics may hold, and handing freed heap back.

``stats_budget`` is the bytes of feature statistics a merge holds at once.

``release_freed_memory`` hands the heap a pass freed back to the operating system (glibc's
``malloc_trim``).

A statistics or similarity pass allocates and frees a batch's activations many times over, in
sizes that change from batch to batch. glibc keeps what was freed inside its heap, where later
allocations of other sizes often cannot use it, so the process's resident memory stays at the
pass's high-water mark while the merge goes on. ``release_freed_memory`` asks the allocator to
return every free page; nothing live moves. Measured on the MiniLM pair (1 thread, three runs
each): the merge's peak resident memory over the process's start went from 669-702 MiB to
638-656 MiB (633 MiB in ``heterogui bench speed --minilm``). Elsewhere (macOS, Windows, musl)
it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable

from heterogui.errors import ConfigError


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """Return glibc's ``malloc_trim``, or None where the C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # no C library to open, or one without it (musl)
        return None


def release_freed_memory() -> bool:
    """Return the free pages of the C heap to the operating system; whether it could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def stats_budget() -> int:
    """Return the bytes of feature statistics a one-shot merge holds at once.

    A quarter of the machine's memory shared by the processes torchrun starts on it, or
    $HETEROGUI_STATS_BUDGET_MB (per process). Statistics that need more are collected part by
    part, one pass over the calibration data each (``pipeline.chunked_matches``); the merge is
    the same.
    """
    override = os.environ.get("HETEROGUI_STATS_BUDGET_MB")
    if override:
        try:
            return max(int(float(override) * 2**20), 1)
        except ValueError as exc:
            raise ConfigError(
                f"HETEROGUI_STATS_BUDGET_MB={override!r} is not a number of MiB; unset it or "
                "give one such as 2048"
            ) from exc
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4 // processes
