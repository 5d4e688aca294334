"""Where heterogui keeps what it builds (zoo models, converted checkpoints): never in the repo."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the heterogui cache.

    The root is $HETEROGUI_CACHE when set, else ~/.cache/heterogui.
    """
    root = Path(os.environ.get("HETEROGUI_CACHE") or Path.home() / ".cache" / "heterogui")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
