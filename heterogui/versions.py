"""The library versions that can change a merge's numbers, as recipes and cards record them."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

import heterogui

# Families whose models come through transformers (its configs, tokenizers and GGUF reader).
TRANSFORMERS_FAMILIES = ("bert", "vit", "decoder", "gpt2")


def versions(families: tuple[str, ...] = ()) -> dict[str, str]:
    """Return the versions that can change a merge's numbers (transformers for its models)."""
    out = {
        "heterogui": heterogui.__version__,
        "torch": installed_version("torch"),
        "python": platform.python_version(),
    }
    if any(f in TRANSFORMERS_FAMILIES for f in families):
        out["transformers"] = installed_version("transformers")
    return out


@functools.cache
def installed_version(package: str) -> str:
    """Return the installed version of ``package``, read once a process (a lookup scans the
    installed packages: milliseconds that every model card and recipe the workbench redraws
    would pay again; the modules already imported keep their version anyway)."""
    return metadata.version(package)
