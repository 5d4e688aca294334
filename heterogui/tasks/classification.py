"""Classification metrics with one head per task (docs/method.md sec. 11).

Tasks have disjoint label sets and each task has one head (a model trained on one task has one
head; a merged model has the heads of every model it was merged from).

- Joint: on the test inputs of every task, softmax per head, concatenate, argmax over the
  union of classes (a model must also tell which task an input belongs to).
- Per task: on that task's inputs, argmax of that task's head (restricted to its classes).
- Avg: the mean of the per-task accuracies.

A model that lacks some heads ("A alone" next to B's tasks) is scored with the heads it has:
its Joint argmax covers its own classes only, and its accuracy on a task it has no head for is
undefined (None, shown as "—"). The ensemble runs both models, each head on its own task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from heterogui.datasets.images import Split
from heterogui.errors import ConfigError
from heterogui.models.capture import to_device
from heterogui.models.conv import channels_last_weights
from heterogui.models.family import Head, Network


@dataclass(frozen=True)
class Metrics:
    """Accuracies in [0, 1] per task (head); None where the model has no head for a task.

    names: the task (head) names; counts: the number of test inputs of each task.
    """

    joint: float
    tasks: tuple[float | None, ...]
    counts: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def avg(self) -> float | None:
        """Return the mean per-task accuracy (None when a task has no head)."""
        if any(t is None for t in self.tasks):
            return None
        return sum(self.tasks) / len(self.tasks)

    @property
    def task_a(self) -> float | None:
        """Return the accuracy on the first task."""
        return self.tasks[0]

    @property
    def task_b(self) -> float | None:
        """Return the accuracy on the second task (None with a single task)."""
        return self.tasks[1] if len(self.tasks) > 1 else None

    @property
    def count_a(self) -> int:
        """Return the number of test inputs of the first task."""
        return self.counts[0]

    @property
    def count_b(self) -> int:
        """Return the number of test inputs of the second task (0 with a single task)."""
        return self.counts[1] if len(self.counts) > 1 else 0

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: joint, avg, per-task rows; with two tasks also task_a ..."""
        out: dict[str, Any] = {
            "joint": self.joint,
            "avg": self.avg,
            "tasks": [
                {"name": n, "accuracy": t, "count": c}
                for n, t, c in zip(self.names, self.tasks, self.counts, strict=True)
            ],
        }
        if len(self.tasks) == 2:
            out.update(
                task_a=self.task_a, task_b=self.task_b, count_a=self.count_a, count_b=self.count_b
            )
        return out


def _head_accuracy(logits: Tensor, labels: Tensor, classes: tuple[int, ...]) -> float | None:
    """Return the accuracy of argmax over ``logits`` (n, |classes|) against global ``labels``."""
    if labels.numel() == 0:
        return None
    pred = torch.tensor(classes, dtype=torch.int64)[logits.argmax(1).cpu()]
    return float((pred == labels).double().mean())


def joint_argmax(
    logits: Sequence[Tensor | None], heads: Sequence[tuple[int, ...]]
) -> tuple[Tensor, Tensor]:
    """Return the Joint protocol's prediction and confidence per input.

    logits: per head, (N, len(heads[k])) or None (a head the model lacks). Each head's logits
    go through their own softmax; the prediction is the class of the largest probability over
    all heads (ties: the first), the confidence that probability.
    Returns: (classes (N,) int64, confidences (N,) float64).
    """
    probs, classes = [], []
    for x, cls in zip(logits, heads, strict=True):
        if x is not None:
            probs.append(torch.softmax(x.detach().cpu().double(), dim=1))
            classes.extend(cls)
    conf, idx = torch.cat(probs, 1).max(dim=1)
    return torch.tensor(classes, dtype=torch.int64)[idx], conf


def head_metrics(
    logits: Sequence[Tensor | None],
    labels: Tensor,
    heads: Sequence[tuple[int, ...]],
    names: Sequence[str] | None = None,
) -> Metrics:
    """Return Joint, per-task and Avg accuracy from each head's outputs on the test inputs.

    logits: per task, (N, len(heads[k])) or None (no head for that task); labels: (N,) global
    class ids, each in one task's classes. Ties go to the first class (earlier heads first).

    Raises:
        ConfigError: no head at all, overlapping classes, a label in no task, or shapes that
            disagree.
    """
    if all(x is None for x in logits):
        raise ConfigError("classification metrics need at least one head's logits")
    flat = [c for h in heads for c in h]
    if len(set(flat)) != len(flat):
        seen, dup = set(), set()
        for c in flat:
            (dup if c in seen else seen).add(c)
        raise ConfigError(f"task classes overlap: {sorted(dup)}")
    labels = labels.cpu().to(torch.int64)
    members = [torch.isin(labels, torch.tensor(h, dtype=torch.int64)) for h in heads]
    if not bool(torch.stack(members).any(0).all()):
        raise ConfigError("some labels belong to no task: restrict the split to the tasks' classes")
    for x, cls in zip(logits, heads, strict=True):
        if x is not None and x.shape != (labels.shape[0], len(cls)):
            raise ConfigError(f"logits of shape {tuple(x.shape)} for {len(cls)} classes")
    joint_pred, _ = joint_argmax(logits, heads)
    joint = float((joint_pred == labels).double().mean()) if labels.numel() else float("nan")
    tasks = tuple(
        None if x is None else _head_accuracy(x[m], labels[m], cls)
        for x, m, cls in zip(logits, members, heads, strict=True)
    )
    counts = tuple(int(m.sum()) for m in members)
    names = tuple(names) if names is not None else tuple(f"task {k}" for k in range(len(heads)))
    return Metrics(joint, tasks, counts, names)


def classification_metrics(
    logits_a: Tensor | None,
    logits_b: Tensor | None,
    labels: Tensor,
    classes_a: tuple[int, ...],
    classes_b: tuple[int, ...],
) -> Metrics:
    """Return the metrics of two single-head tasks A and B (see ``head_metrics``).

    Raises:
        ConfigError: see ``head_metrics``.
    """
    return head_metrics((logits_a, logits_b), labels, (classes_a, classes_b), ("A", "B"))


@torch.no_grad()
def collect_outputs(
    fn: Callable[[Tensor], Any], inputs: Tensor, batch_size: int, device: torch.device | str
) -> list[Tensor]:
    """Run ``fn`` over ``inputs`` (N, ...) in batches; return its outputs concatenated on CPU.

    fn returns a tensor (N_batch, k) or a tuple of them; the result has one tensor per output.
    """
    parts: list[list[Tensor]] = []
    if isinstance(fn, nn.Module):
        channels_last_weights(fn)
    for x in torch.split(inputs, batch_size):
        out = fn(to_device(x, device))  # images channels-last, as in every pass
        outs = out if isinstance(out, tuple | list) else (out,)
        if not parts:
            parts = [[] for _ in outs]
        for store, o in zip(parts, outs, strict=True):
            store.append(o.detach().float().cpu())
    return [torch.cat(p) for p in parts]


def _task_split(split: Split, heads: Sequence[Head]) -> Split:
    """Return the samples of ``split`` that belong to one of the heads' tasks."""
    classes = tuple(c for h in heads for c in h.classes)
    keep = torch.isin(split.labels, torch.tensor(classes, dtype=torch.int64))
    return Split(
        split.inputs[keep], split.labels[keep], split.num_classes, split.class_names, split.name
    )


def split_heads(logits: Tensor, heads: Sequence[Head]) -> list[Tensor]:
    """Cut a model's outputs (N, sum of head sizes) into one (N, k) tensor per head."""
    return list(torch.split(logits, [len(h.classes) for h in heads], dim=1))


def score_outputs(
    outputs: Sequence[Tensor | None], heads: Sequence[Sequence[Head]], labels: Tensor
) -> Metrics:
    """Return the metrics of per-model outputs (N, sum of its head sizes); None: not run."""
    logits: list[Tensor | None] = []
    for out, model_heads in zip(outputs, heads, strict=True):
        parts = split_heads(out, model_heads) if out is not None else [None] * len(model_heads)
        logits.extend(parts)
    flat = [h for model_heads in heads for h in model_heads]
    return head_metrics(logits, labels, [h.classes for h in flat], [h.name for h in flat])


def scores_alone_and_together(
    outputs: Sequence[Tensor],
    heads: Sequence[Sequence[Head]],
    labels: Tensor,
    keys: Sequence[str],
) -> dict[str, Metrics]:
    """Return each model's metrics alone (under its key) and the ensemble's ("ensemble").

    outputs: every model's outputs, each model run once; the scores only choose which to read.
    """
    scores = {
        key: score_outputs([o if m == k else None for m, o in enumerate(outputs)], heads, labels)
        for k, key in enumerate(keys)
    }
    scores["ensemble"] = score_outputs(outputs, heads, labels)
    return scores


def evaluate_merged(
    model: nn.Module,
    test_split: Split,
    heads: Sequence[Sequence[Head]],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> Metrics:
    """Evaluate a merged model whose forward returns one output per model (heads: per model).

    test_split.inputs: (N, ...); only samples of the heads' classes are used.

    Raises:
        ConfigError: see ``head_metrics``.
    """
    split = _task_split(test_split, [h for model_heads in heads for h in model_heads])
    model.eval()
    outputs = collect_outputs(model, split.inputs, batch_size, device)
    return score_outputs(outputs, heads, split.labels)


def evaluate_models(
    net_a: Network,
    net_b: Network,
    which: str,
    test_split: Split,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> Metrics:
    """Evaluate "a" (A alone), "b" (B alone) or "ensemble" (both, each head on its task).

    The tasks are the nets' heads. A alone has no accuracy on B's tasks (None), and its Joint
    argmax covers its own classes only.

    Raises:
        ConfigError: for an unknown ``which`` (and see ``head_metrics``).
    """
    if which not in ("a", "b", "ensemble"):
        raise ConfigError(f"unknown evaluation {which!r}: use 'a', 'b' or 'ensemble'")
    runs = [which in ("ensemble", key) for key in "ab"]
    return evaluate_nets((net_a, net_b), runs, test_split, batch_size, device)


def evaluate_nets(
    nets: Sequence[Network],
    runs: Sequence[bool],
    test_split: Split,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> Metrics:
    """Evaluate the nets marked in ``runs`` side by side, each head on its task.

    The tasks are every net's heads: one net alone (one True) has no accuracy on the others'
    tasks (None) and its Joint argmax covers its own classes; all of them is their ensemble.

    Raises:
        ConfigError: see ``head_metrics``.
    """
    heads, split = nets_split(nets, test_split)
    outputs = [
        net_outputs(net, split, batch_size, device) if chosen else None
        for net, chosen in zip(nets, runs, strict=True)
    ]
    return score_outputs(outputs, heads, split.labels)


def nets_split(nets: Sequence[Network], test_split: Split) -> tuple[list[list[Head]], Split]:
    """Return every net's task heads and the test samples of their classes."""
    heads = [net.task_heads() for net in nets]
    return heads, _task_split(test_split, [h for net_heads in heads for h in net_heads])


def net_outputs(
    net: Network, split: Split, batch_size: int = 512, device: torch.device | str = "cpu"
) -> Tensor:
    """Return one net's outputs (eval mode) on ``split`` (``nets_split``'s samples)."""
    net.module.eval()
    return collect_outputs(net.module, split.inputs, batch_size, device)[0]
