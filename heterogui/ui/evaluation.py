"""Evaluation for the workbench: metrics of A, B, ensemble and merged; per-sample predictions.

Wraps ``heterogui.evaluate.classification`` (method.md C) on the test split of the pair's
dataset, restricted to the classes of A and B. Models trained on overlapping classes have no
Joint/Task metrics (the protocol needs disjoint tasks); then the metrics are empty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from heterogui.errors import HeteroguiError
from heterogui.pipeline import MergeResult, Prepared, ZipSettings, zip_prepared
from heterogui.ui.resources import Resources

log = logging.getLogger(__name__)
METRIC_NAMES = (("joint", "Joint"), ("task_a", "Task A"), ("task_b", "Task B"), ("avg", "Avg"))
EVAL_BATCH = 512


def _classes(prepared: Prepared) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return prepared.net_a.head_classes(), prepared.net_b.head_classes()


def disjoint(prepared: Prepared) -> bool:
    """Return True when A's and B's classes are disjoint (the protocol's setting)."""
    ca, cb = _classes(prepared)
    return not set(ca) & set(cb)


def test_split(res: Resources, dataset: str | None, prepared: Prepared) -> Any | None:
    """Return the test samples of A's and B's classes (None without a dataset or tasks)."""
    if not dataset or dataset == "sentences" or not disjoint(prepared):
        return None  # "sentences": a transformer pair, scored by heterogui.ui.text
    from heterogui.zoo.datasets import task_subset

    ca, cb = _classes(prepared)
    return task_subset(res.split(dataset, "test"), (*ca, *cb))


def baseline_metrics(prepared: Prepared, res: Resources, dataset: str | None) -> dict[str, Any]:
    """Return Metrics of "a", "b" and "ensemble" on the test split ({} when not applicable)."""
    split = test_split(res, dataset, prepared)
    if split is None:
        return {}
    from heterogui.evaluate.classification import evaluate_models

    return {
        which: evaluate_models(
            prepared.net_a, prepared.net_b, which, split, EVAL_BATCH, prepared.device
        )
        for which in ("a", "b", "ensemble")
    }


def merged_metrics(result: MergeResult, res: Resources, dataset: str | None) -> Any | None:
    """Return the Metrics of the merged model (None when not applicable)."""
    split = test_split(res, dataset, result.prepared)
    if split is None:
        return None
    from heterogui.evaluate.classification import evaluate_merged

    ca, cb = _classes(result.prepared)
    return evaluate_merged(result.model, split, ca, cb, EVAL_BATCH, result.prepared.device)


def metric_columns(metrics: Any | None) -> dict[str, float | None]:
    """Return {"Joint": %, "Task A": %, "Task B": %, "Avg": %} (None where undefined)."""
    out: dict[str, float | None] = {}
    for key, label in METRIC_NAMES:
        value = getattr(metrics, key, None) if metrics is not None else None
        out[label] = None if value is None else round(100 * value, 2)
    return out


def _single(logits: torch.Tensor, classes: tuple[int, ...]) -> list[tuple[int, float]]:
    """Return (predicted class, confidence) per row of one head's logits (n, k)."""
    probs = torch.softmax(logits.double(), dim=1)
    conf, idx = probs.max(dim=1)
    return [(classes[int(i)], float(c)) for i, c in zip(idx, conf, strict=True)]


def _joint(
    logits_a: torch.Tensor, logits_b: torch.Tensor, classes: tuple[tuple[int, ...], ...]
) -> list[tuple[int, float]]:
    """Return (class, confidence) by argmax over both heads' softmax (the Joint protocol)."""
    probs = torch.cat([torch.softmax(x.double(), 1) for x in (logits_a, logits_b)], 1)
    conf, idx = probs.max(dim=1)
    flat = (*classes[0], *classes[1])
    return [(flat[int(i)], float(c)) for i, c in zip(idx, conf, strict=True)]


@torch.no_grad()
def predictions(
    prepared: Prepared, result: MergeResult | None, inputs: torch.Tensor
) -> dict[str, list[tuple[int, float]]]:
    """Return each model's (class, confidence) on ``inputs`` (k, ...).

    Keys: "A", "B", "ensemble" and, with a result, "merged".
    """
    ca, cb = _classes(prepared)
    x = inputs.to(prepared.device)
    la = prepared.net_a.module(x).float().cpu()
    lb = prepared.net_b.module(x).float().cpu()
    out = {"A": _single(la, ca), "B": _single(lb, cb), "ensemble": _joint(la, lb, (ca, cb))}
    if result is not None:
        ma, mb = result.model(x)
        out["merged"] = _joint(ma.float().cpu(), mb.float().cpu(), (ca, cb))
    return out


def sweep(
    prepared: Prepared,
    settings: ZipSettings,
    res: Resources,
    dataset: str | None,
    rhos: list[float],
    report: Callable[[str, float], None] | None = None,
) -> list[dict[str, Any]]:
    """Re-merge at every zip ratio in ``rhos`` (other settings kept); return size and metrics.

    Raises:
        HeteroguiError: settings a matcher cannot use, or Cancelled (through ``report``).
    """
    from heterogui.ui.sizes import parameters_and_flops

    points = []
    for k, rho in enumerate(rhos):
        if report is not None:
            report("sweep", k / len(rhos))
        try:
            result = zip_prepared(prepared, replace(settings, rho=float(rho)))
        except HeteroguiError as exc:
            log.info("sweep point rho=%s skipped: %s", rho, exc)
            continue
        metrics = merged_metrics(result, res, dataset)
        point = {"rho": float(rho), **parameters_and_flops(result.model, prepared)}
        point.update(metric_columns(metrics))
        points.append(point)
    if report is not None:
        report("sweep", 1.0)
    return points
