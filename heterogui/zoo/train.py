"""Deterministic training of zoo models on one task (a subset of a dataset's classes).

The zoo is the material the merge is demonstrated on (docs/method.md sec. 11: A and B are trained on
disjoint class splits). Training is a pure function of (config, dataset, classes, settings):
the initialisation and the shuffling use their own seeded generators, deterministic algorithms
are switched on, the thread count is fixed and oneDNN is off (its kernels depend on the CPU)
while training, so the same call gives the same weights (``state_sha256``) on the same machine
and torch version; ``zoo.pinned`` runs it in a process whose other kernels are pinned too, so the
zoo is the same whatever kernels the CPU would pick (not across CPU vendors: docs/method.md
sec. 11).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heterogui.datasets.images import Split, batches, head_targets, load_split, sample, task_subset
from heterogui.fusion.bn import reestimate_batch_norm
from heterogui.models.family import Network, build_network

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """How a zoo model is trained.

    seed: seeds the initialisation and the order of the training samples.
    threads: torch threads while training (fixed so that runs are comparable).
    max_train: keep at most this many training samples (None: all); the tiny zoo uses it.
    """

    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1
    max_train: int | None = None


@dataclass
class TrainResult:
    """A trained network and how well it does on its own task (test split)."""

    net: Network
    task_accuracy: float
    train_accuracy: float
    seconds: float


@contextmanager
def deterministic_torch(threads: int) -> Iterator[None]:
    """Switch on deterministic algorithms and fix the thread count; restore both on exit."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(was_threads)


@contextmanager
def without_onednn() -> Iterator[None]:
    """Run torch's own CPU convolutions, not oneDNN's (whose kernels depend on the CPU)."""
    was_enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was_enabled


def seeded_network(config: Any, classes: tuple[int, ...], seed: int, label: str) -> Network:
    """Return a fresh Network initialised from ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(config, classes, label=label)


@torch.no_grad()
def task_accuracy(net: Network, split: Split, batch_size: int = 512) -> float:
    """Return the accuracy of ``net``'s head on ``split`` (labels must be among its classes).

    split.inputs: (N, ...); split.labels: (N,) global ids, mapped to head indices.
    """
    if len(split) == 0:
        return float("nan")
    targets = head_targets(split.labels, net.head_classes())
    net.module.eval()
    device = next(net.module.parameters()).device
    correct = 0
    for x, y in zip(batches(split.inputs, batch_size), batches(targets, batch_size), strict=True):
        correct += int((net.module(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / len(split)


def _epoch(
    net: Network,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    gen: torch.Generator,
) -> None:
    """Run one epoch of minibatch training in a seeded order (drops a last batch of 1)."""
    inputs, targets = data
    order = torch.randperm(len(targets), generator=gen)
    loss_fn = nn.CrossEntropyLoss()
    net.module.train()
    for idx in torch.split(order, batch_size):
        if len(idx) < 2:  # BatchNorm cannot train on a single sample
            continue
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net.module(inputs[idx]), targets[idx])
        loss.backward()
        optimizer.step()
        scheduler.step()


def train_network(
    config: Any,
    dataset: str,
    classes: tuple[int, ...],
    settings: TrainSettings = TrainSettings(),
    split_seed: int = 0,
    label: str = "model",
    progress: Callable[[float], None] | None = None,
) -> TrainResult:
    """Train a network of ``config`` on the classes ``classes`` of ``dataset`` (CPU).

    config.num_classes must equal len(classes); head output k is class classes[k].
    Uses AdamW with a cosine learning-rate decay over all steps; then re-estimates the
    BatchNorm statistics exactly on the training inputs (a short training leaves the running
    averages far from the final weights' statistics).

    Raises:
        ConfigError: unknown dataset, or labels outside ``classes``.
        ValueError: if config.num_classes != len(classes).
    """
    if config.num_classes != len(classes):
        raise ValueError(f"config has {config.num_classes} outputs for {len(classes)} classes")
    start = time.perf_counter()
    train = task_subset(load_split(dataset, "train", split_seed), classes)
    train = sample(train, settings.max_train, settings.seed)
    test = task_subset(load_split(dataset, "test", split_seed), classes)
    data = (train.inputs, head_targets(train.labels, classes))
    with deterministic_torch(settings.threads), without_onednn():
        net = seeded_network(config, classes, settings.seed, label)
        gen = torch.Generator().manual_seed(settings.seed + 1)
        optimizer = torch.optim.AdamW(
            net.module.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        steps = settings.epochs * max(1, math.ceil(len(train) / settings.batch_size))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        for epoch in range(settings.epochs):
            _epoch(net, optimizer, scheduler, data, settings.batch_size, gen)
            if progress is not None:
                progress((epoch + 1) / settings.epochs)
        # every batch weighs the same, as when the zoo's weights were first recorded: a
        # count-weighted average (the merge's) would give every model other statistics
        reestimate_batch_norm(net.module, batches(train.inputs, 256), per_batch=True)
        net.module.eval()
        result = TrainResult(
            net, task_accuracy(net, test), task_accuracy(net, train), time.perf_counter() - start
        )
    log.info(
        "trained %s on %s %s: task accuracy %.4f in %.1fs",
        label,
        dataset,
        classes,
        result.task_accuracy,
        result.seconds,
    )
    return result
