"""Metrics rows for a merge report: A, B, their ensemble and the merged model (method.md C)."""

from __future__ import annotations

from typing import Any

import torch

from heterogui.evaluate.classification import evaluate_merged, evaluate_models
from heterogui.pipeline import MergeResult
from heterogui.zoo.datasets import Split


def labelled_split(inputs: torch.Tensor, labels: torch.Tensor | None, source: str) -> Split:
    """Return drawn inputs (N, ...) and labels (N,) as a Split for the classification metrics.

    Raises:
        ConfigError: the data has no labels.
    """
    from heterogui.errors import ConfigError

    if labels is None:
        raise ConfigError(f"evaluation data {source} has no 'labels' tensor; add one")
    num = int(labels.max()) + 1
    return Split(inputs, labels.long(), num, tuple(str(i) for i in range(num)), source)


def evaluation_rows(result: MergeResult, split: Split, batch_size: int) -> dict[str, Any]:
    """Return Joint / Task A / Task B / Avg for A, B, the ensemble and the merged model.

    A and B are the models the merge started from (after BatchNorm re-estimation on the
    calibration data when the recipe asks for it).
    """
    prep = result.prepared
    dev = prep.device
    classes_a, classes_b = result.spec.classes
    rows = {
        which: evaluate_models(prep.net_a, prep.net_b, which, split, batch_size, dev).as_dict()
        for which in ("a", "b", "ensemble")
    }
    with torch.no_grad():
        merged = evaluate_merged(result.model, split, classes_a, classes_b, batch_size, dev)
    rows["merged"] = merged.as_dict()
    return rows
