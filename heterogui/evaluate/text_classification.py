"""Joint and per-task accuracy of text classifiers and their merges (method.md C).

The test inputs are the test splits of both template tasks (``heterogui.zoo.text_tasks``) with
global class ids; heads are scored with ``heterogui.evaluate.classification`` (softmax per
head, argmax over the union for Joint; each head on its own task for Task A / Task B).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from heterogui.evaluate.classification import Metrics, classification_metrics
from heterogui.evaluate.sentences import tokenize
from heterogui.models.capture import to_device
from heterogui.zoo.text_tasks import TASK_CLASSES, make_task

Heads = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor | None, torch.Tensor | None]]
CLASSES_A, CLASSES_B = TASK_CLASSES["topics"], TASK_CLASSES["sentiment"]


def test_set(seed: int = 0) -> tuple[list[str], torch.Tensor]:
    """Return the test sentences of both tasks and their global labels (N,) int64."""
    sentences: list[str] = []
    labels: list[int] = []
    for task in TASK_CLASSES:
        split = make_task(task, seed=seed)["test"]
        sentences += split.sentences
        labels += split.labels
    return sentences, torch.tensor(labels, dtype=torch.int64)


@torch.no_grad()
def head_logits(
    heads: Heads,
    tokenizer: Any,
    sentences: Sequence[str],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Run ``heads`` over the sentences; return each head's logits (N, k) on CPU, or None."""
    parts: list[list[torch.Tensor]] = [[], []]
    present = [False, False]
    for batch in tokenize(tokenizer, sentences, batch_size):
        for m, out in enumerate(heads(to_device(batch, device))):
            if out is not None:
                parts[m].append(out.float().cpu())
                present[m] = True
    return tuple(torch.cat(p) if ok else None for p, ok in zip(parts, present, strict=True))


def evaluate_heads(
    heads: Heads, tokenizer: Any, seed: int = 0, device: torch.device | str = "cpu"
) -> Metrics:
    """Return Joint / Task A / Task B / Avg of a two-head function on the test set."""
    sentences, labels = test_set(seed)
    logits_a, logits_b = head_logits(heads, tokenizer, sentences, device=device)
    return classification_metrics(logits_a, logits_b, labels, CLASSES_A, CLASSES_B)


def single(module: torch.nn.Module, which: int) -> Heads:
    """Return the heads of one model alone (``which`` 0: it is A, 1: it is B)."""
    if which == 0:
        return lambda batch: (module(**batch), None)
    return lambda batch: (None, module(**batch))


def ensemble(first: torch.nn.Module, second: torch.nn.Module) -> Heads:
    """Return both models side by side, each with its own head."""
    return lambda batch: (first(**batch), second(**batch))


def merged(model: torch.nn.Module) -> Heads:
    """Return the two heads of a merged model."""
    return lambda batch: model(**batch)
