"""Classification metrics of the evaluation protocol (method.md C).

Two tasks with disjoint label sets: A's head scores A's classes, B's head scores B's classes.

- Joint: on the test inputs of both tasks, softmax per head, concatenate, argmax over the
  union of classes (a model must also tell which task an input belongs to).
- Task A / Task B: on that task's inputs, argmax of that task's head (restricted to its classes).
- Avg: the mean of Task A and Task B.

A single model ("A alone") has one head only. Its Joint uses that head alone, so it can never
predict the other task's classes (Joint <= that task's share of the inputs), and its accuracy on
the other task is undefined (a head cannot score classes it has no outputs for): Task B and Avg
are None, shown as "—". The ensemble runs both models, each head on its own task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from heterogui.errors import ConfigError
from heterogui.models.family import Network
from heterogui.zoo.datasets import Split

Heads = tuple[Tensor | None, Tensor | None]


@dataclass(frozen=True)
class Metrics:
    """Accuracies in [0, 1]; None where the model has no head for that task.

    count_a / count_b: the number of test inputs of task A / task B.
    """

    joint: float
    task_a: float | None
    task_b: float | None
    avg: float | None
    count_a: int
    count_b: int

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def _head_accuracy(logits: Tensor, labels: Tensor, classes: tuple[int, ...]) -> float | None:
    """Return the accuracy of argmax over ``logits`` (n, |classes|) against global ``labels``."""
    if labels.numel() == 0:
        return None
    pred = torch.tensor(classes, dtype=torch.int64)[logits.argmax(1).cpu()]
    return float((pred == labels).double().mean())


def classification_metrics(
    logits_a: Tensor | None,
    logits_b: Tensor | None,
    labels: Tensor,
    classes_a: tuple[int, ...],
    classes_b: tuple[int, ...],
) -> Metrics:
    """Return Joint, Task A, Task B and Avg from the head outputs on the test inputs.

    logits_a: (N, len(classes_a)) or None (no A head); logits_b: (N, len(classes_b)) or None;
    labels: (N,) global class ids, each in classes_a or classes_b. Ties go to the first class
    (A's classes come first in the joint argmax).

    Raises:
        ConfigError: if both heads are None, the classes overlap, a label is in neither task, or
            the shapes disagree.
    """
    if logits_a is None and logits_b is None:
        raise ConfigError("classification_metrics needs at least one head's logits")
    if set(classes_a) & set(classes_b):
        raise ConfigError(f"task classes overlap: {sorted(set(classes_a) & set(classes_b))}")
    labels = labels.cpu().to(torch.int64)
    in_a = torch.isin(labels, torch.tensor(classes_a, dtype=torch.int64))
    in_b = torch.isin(labels, torch.tensor(classes_b, dtype=torch.int64))
    if not bool((in_a | in_b).all()):
        raise ConfigError("some labels belong to neither task: restrict the split to A and B")
    probs, classes = [], []
    for logits, cls in ((logits_a, classes_a), (logits_b, classes_b)):
        if logits is None:
            continue
        if logits.shape != (labels.shape[0], len(cls)):
            raise ConfigError(f"logits of shape {tuple(logits.shape)} for {len(cls)} classes")
        probs.append(torch.softmax(logits.detach().cpu().double(), dim=1))
        classes.extend(cls)
    joint_pred = torch.tensor(classes, dtype=torch.int64)[torch.cat(probs, 1).argmax(1)]
    joint = float((joint_pred == labels).double().mean()) if labels.numel() else float("nan")
    task_a = None if logits_a is None else _head_accuracy(logits_a[in_a], labels[in_a], classes_a)
    task_b = None if logits_b is None else _head_accuracy(logits_b[in_b], labels[in_b], classes_b)
    avg = None if task_a is None or task_b is None else (task_a + task_b) / 2
    return Metrics(joint, task_a, task_b, avg, int(in_a.sum()), int(in_b.sum()))


@torch.no_grad()
def collect_outputs(
    fn: Callable[[Tensor], Any], inputs: Tensor, batch_size: int, device: torch.device | str
) -> list[Tensor]:
    """Run ``fn`` over ``inputs`` (N, ...) in batches; return its outputs concatenated on CPU.

    fn returns a tensor (N_batch, k) or a tuple of them; the result has one tensor per output.
    """
    parts: list[list[Tensor]] = []
    for x in torch.split(inputs, batch_size):
        out = fn(x.to(device))
        outs = out if isinstance(out, tuple | list) else (out,)
        if not parts:
            parts = [[] for _ in outs]
        for store, o in zip(parts, outs, strict=True):
            store.append(o.detach().float().cpu())
    return [torch.cat(p) for p in parts]


def _task_split(split: Split, classes_a: tuple[int, ...], classes_b: tuple[int, ...]) -> Split:
    """Return the samples of ``split`` that belong to task A or task B."""
    keep = torch.isin(split.labels, torch.tensor((*classes_a, *classes_b), dtype=torch.int64))
    return Split(
        split.inputs[keep], split.labels[keep], split.num_classes, split.class_names, split.name
    )


def evaluate_merged(
    model: nn.Module,
    test_split: Split,
    classes_a: tuple[int, ...],
    classes_b: tuple[int, ...],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> Metrics:
    """Evaluate a merged model whose forward returns (logits of A's head, logits of B's head).

    test_split.inputs: (N, ...); only samples of classes_a or classes_b are used.

    Raises:
        ConfigError: see ``classification_metrics``.
    """
    split = _task_split(test_split, classes_a, classes_b)
    model.eval()
    logits_a, logits_b = collect_outputs(model, split.inputs, batch_size, device)
    return classification_metrics(logits_a, logits_b, split.labels, classes_a, classes_b)


def evaluate_models(
    net_a: Network,
    net_b: Network,
    which: str,
    test_split: Split,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> Metrics:
    """Evaluate "a" (A alone), "b" (B alone) or "ensemble" (both, each head on its task).

    The task classes are the nets' head classes. A alone has Task B = Avg = None (and B alone
    Task A = Avg = None), and its Joint argmax covers its own classes only.

    Raises:
        ConfigError: for an unknown ``which`` (and see ``classification_metrics``).
    """
    if which not in ("a", "b", "ensemble"):
        raise ConfigError(f"unknown evaluation {which!r}: use 'a', 'b' or 'ensemble'")
    classes_a, classes_b = net_a.head_classes(), net_b.head_classes()
    split = _task_split(test_split, classes_a, classes_b)
    logits: list[Tensor | None] = [None, None]
    for m, net in enumerate((net_a, net_b)):
        if which in ("ensemble", "ab"[m]):
            net.module.eval()
            logits[m] = collect_outputs(net.module, split.inputs, batch_size, device)[0]
    return classification_metrics(logits[0], logits[1], split.labels, classes_a, classes_b)
