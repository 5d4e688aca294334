"""The floor of a merge and the figures every pair of ``heterogui bench speed`` reports.

The floor is what a merge cannot do without (docs/method.md sec. 1): the forward passes over the
calibration data. ``contract`` turns a pair's measurements into the keys of the JSON line of
``heterogui bench speed --json``.
"""

from __future__ import annotations

from typing import Any

import torch


def floor_seconds(t_a: float, t_b: float, t_merged: float, batch_norm: bool) -> float:
    """Return the least time a merge can take: the forward passes it cannot do without.

    One pass of A and of B for the statistics (CKA Grams and feature moments can share it);
    with BatchNorm, one more pass of each to re-estimate it first and one of the merged model
    afterwards.
    """
    return 2 * (t_a + t_b) + t_merged if batch_norm else t_a + t_b


def weights_mib(modules: list[torch.nn.Module]) -> float:
    """Return the bytes of the parameters and buffers of ``modules``, in MiB."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def memory_goal_mib(m: dict[str, Any]) -> float:
    """Return the memory a merge may take: twice the weights of A, B and the merge, plus the
    statistics kept (compared with the peak RSS over the process's start, ``merge_rss_mib``)."""
    return 2 * m["weights_mib"] + m["statistics_mib"]


def contract(m: dict[str, Any]) -> dict[str, Any]:
    """Return a pair's figures under the keys of the ``--json`` line (seconds and MiB)."""
    return {
        "merge_s": m["total"],
        "floor_s": m["floor"],
        "ratio_to_floor": m["total"] / m["floor"],
        "remerge_s": m["remerge_from_cache"],
        "remerge_repeated_s": m["remerge_repeated"],
        "realign_s": m["realign"],
        "neurons_point_s": m["neurons_point_s"],
        "precision": m["precision"],
        "peak_rss_mib": m["peak_rss_mib"],
        "start_rss_mib": m["start_rss_mib"],
        "merge_rss_mib": m["peak_rss_mib"] - m["start_rss_mib"],
        "memory_goal_mib": memory_goal_mib(m),
        "weights_mib": m["weights_mib"],
        "stats_mib": m["statistics_mib"],
        "products_gmac": m["products_gmac"],
        "forward_gmac": m["forward_gmac"],
        "stages": m["stages"],
        "peak_cuda_mib": m.get("peak_cuda_mib"),
        "device": m["device"],
        "threads": m["threads"],
    }
