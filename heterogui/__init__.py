"""heterogui: training-free heterogeneous model merging, as a library and a workbench.

``heterogui.merge(net_a, net_b, batches)`` or ``heterogui.merge("recipe.yaml")`` returns a
MergeResult with the merged model, the alignment, the per-merge-point matches and transforms.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["merge", "__version__"]


def merge(*args: Any, **kwargs: Any) -> Any:
    """Merge two networks or run a recipe; see ``heterogui.api.merge``."""
    from heterogui.api import merge as _merge

    return _merge(*args, **kwargs)
