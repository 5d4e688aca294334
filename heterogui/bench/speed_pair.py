"""One pair of ``heterogui bench speed``, measured in a process of its own.

``heterogui bench speed`` starts ``python -m heterogui.bench.speed_pair OPTIONS`` once per pair
(OPTIONS: a JSON object), so that each pair's peak memory is its own and not the largest of the
run. The last line printed is the pair's figures as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch

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


def main(argv: list[str] | None = None) -> None:
    """Measure the pair the JSON options name and print its figures as one JSON line."""
    options = json.loads((argv if argv is not None else sys.argv[1:])[0])
    if options.get("threads"):
        torch.set_num_threads(int(options["threads"]))
    print(json.dumps(run_pair(options["pair"], options)))


if __name__ == "__main__":
    main()
