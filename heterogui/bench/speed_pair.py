"""One pair of ``heterogui bench speed``, measured in a process of its own.

``heterogui bench speed`` starts ``heterogui bench speed-pair OPTIONS`` once per pair (OPTIONS:
a JSON object), so that each pair's peak memory is its own and not the largest of the run. That
command prints the pair's figures as one JSON line.
"""

from __future__ import annotations

from typing import Any

from heterogui.bench.bert_speed import bench_minilm
from heterogui.bench.speed import bench_merge


def run_pair(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Measure pair ``name`` ("resnet" or "minilm") in this process."""
    quick, device = options.get("quick", False), options.get("device", "auto")
    if name == "resnet":
        if quick:
            return bench_merge(1, (2, 2, 2), (1, 1, 1), 64, 32, device)
        return bench_merge(options.get("width", 2), n_inputs=options["inputs"], device=device)
    if name == "minilm":
        return bench_minilm(64 if quick else options["inputs"], device=device)
    raise ValueError(f"unknown speed pair {name!r}; known: ['resnet', 'minilm']")
