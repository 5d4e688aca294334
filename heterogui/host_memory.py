"""The host's memory: how much the statistics may hold, and handing freed heap back.

``stats_budget`` is the bytes of feature statistics a merge holds at once; ``check_fits``
refuses a merge the pre-flight estimates to need more memory than is free (``machine_memory``
and ``available_memory`` heed a container's or a service's cgroup limit).

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
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from heterogui.distributed import env_local_world_size
from heterogui.errors import ConfigError

try:
    import resource  # POSIX only
except ImportError:  # pragma: no cover - Windows: no address-space limit to read
    resource = None  # type: ignore[assignment]


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
            mib = float(override)
        except ValueError:
            mib = math.nan
        if not (math.isfinite(mib) and mib > 0):  # inf failed with an OverflowError
            raise ConfigError(
                f"HETEROGUI_STATS_BUDGET_MB={override!r} is not a positive number of MiB; "
                "unset it or give one such as 2048"
            )
        return max(int(mib * 2**20), 1)
    return machine_memory() // 4 // env_local_world_size()


# a cgroup's "no limit" (v1 writes the largest page-aligned 64-bit number)
_NO_LIMIT = 2**60


def _cgroup_memory() -> tuple[int | None, int]:
    """Return the memory limit of this process's cgroup or its ancestors (None: none) and
    the cgroup's usage, from cgroup v2 (memory.max) or v1 (memory.limit_in_bytes)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None, 0
    for line in lines:
        hierarchy, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hierarchy == "0" and not controllers:
            root, limit_file, usage_file = Path("/sys/fs/cgroup"), "memory.max", "memory.current"
        elif "memory" in controllers.split(","):
            root = Path("/sys/fs/cgroup/memory")
            limit_file, usage_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        own = root / path.lstrip("/")
        folders = [own, *own.parents] if own.is_relative_to(root) else [root]
        limits = [_read_bytes(f / limit_file) for f in folders if f.is_relative_to(root)]
        known = [n for n in limits if n is not None and n < _NO_LIMIT]
        usage = next((n for f in folders if (n := _read_bytes(f / usage_file)) is not None), 0)
        if known:
            return min(known), usage
    return None, 0


def _read_bytes(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() else None  # "max": no limit


def _meminfo(field: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _address_limit() -> int | None:
    """Return the process's address-space limit (ulimit -v; None: none, or not POSIX)."""
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return soft if soft != resource.RLIM_INFINITY else None


def machine_memory() -> int:
    """Return the memory this process may use at most: the machine's, or less where its
    cgroup (a container, a systemd slice) or its address-space limit caps it."""
    sizes = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    limit, _ = _cgroup_memory()
    sizes += [n for n in (limit, _address_limit()) if n is not None and 0 < n < _NO_LIMIT]
    return min(sizes)


def available_memory() -> int | None:
    """Return the memory free for this process now (None: unknown, off Linux): what the system
    can hand out (free, reclaimable and swap), less where its cgroup's limit is nearer."""
    free = _meminfo("MemAvailable")
    if free is None:
        return None
    free += _meminfo("SwapFree") or 0
    limit, usage = _cgroup_memory()
    if limit is not None:
        free = min(free, max(limit - usage, 0))
    soft = _address_limit()
    return min(free, soft) if soft is not None and 0 < soft < _NO_LIMIT else free


def check_fits(needed: int | None, what: str = "this merge") -> None:
    """Refuse work the pre-flight estimates to need more memory than is free: the system's
    out-of-memory killer would end it without a word (and, in the workbench, every session).

    $HETEROGUI_MEMORY_CHECK=off tries anyway (an estimate is rough: swap, or memory freed
    meanwhile, can make room).

    Raises:
        ConfigError: naming both figures and the fixes.
    """
    free = available_memory()
    if needed is None or free is None or needed <= free:
        return
    if os.environ.get("HETEROGUI_MEMORY_CHECK", "").lower() in ("off", "0", "no"):
        return
    raise ConfigError(
        f"{what} needs about {needed / 2**30:.1f} GiB of memory by the pre-flight's estimate "
        f"(more to export a decoder), and {free / 2**30:.1f} GiB are free here: free memory, "
        "merge smaller models, use a machine with more, or set HETEROGUI_MEMORY_CHECK=off to "
        "try anyway"
    )
