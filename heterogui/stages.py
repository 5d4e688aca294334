"""Timing the stages of a merge: seconds per stage, summed when a stage runs again."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def timed(timings: dict[str, float], name: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    out = fn()
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    return out
