"""Writing the benchmarks' documents: strict JSON and atomic files."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """Return ``value`` with non-finite floats replaced by None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def write_document(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by all (mkstemp makes files private)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(handle, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
