"""Writing the benchmarks' documents: strict JSON and atomic files."""

from __future__ import annotations

import math
from typing import Any

from heterogui.folders import write_document as write_document  # benchmarks write with it


def finite(value: Any) -> Any:
    """Return ``value`` with non-finite floats replaced by None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
