"""Offline datasets of the built-in zoo, with seeded disjoint splits (docs/method.md sec. 11).

Nothing is downloaded: scikit-learn's bundled 8x8 digits, and MNIST-1D generated locally by the
``mnist1d`` package's ``make_dataset`` (never its ``get_dataset``, which downloads). Every split
is stratified per class and a pure function of (dataset, seed); train, calibration and test
never share a sample.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from heterogui.cache import cache_dir
from heterogui.errors import ConfigError, excerpt

log = logging.getLogger(__name__)

SPLITS = ("train", "calibration", "test")
# MNIST-1D: 10,000 signals (twice the package default) so that each 5-class task has ~3,500
# training signals; generating them takes ~2 s, so they are cached as .npz.
MNIST1D_SAMPLES = 10_000
MNIST1D_SEED = 42
MNIST1D_CACHE_VERSION = 1


@dataclass(frozen=True)
class Split:
    """One split of a dataset.

    inputs: (N, C, L) or (N, C, H, W) float32; labels: (N,) int64 global class ids.
    """

    inputs: Tensor
    labels: Tensor
    num_classes: int
    class_names: tuple[str, ...]
    name: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: how to load all samples, and how to split them.

    load: returns (inputs (N, ...) float32, labels (N,) int64) for the whole dataset.
    fractions: the shares of train, calibration and test (they sum to 1).
    """

    name: str
    description: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...]
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    fractions: tuple[float, float, float]


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's bundled digits: (1797, 1, 8, 8) in [0, 1] and (1797,) labels."""
    from sklearn.datasets import load_digits  # imported here: sklearn takes ~1.5 s to import

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    return images, data.target.astype(np.int64)


def _generate_mnist1d(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate MNIST-1D with ``make_dataset``; restore the global RNGs it reseeds."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    inputs = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)[:, None]
    labels = np.concatenate([data["y"], data["y_test"]]).astype(np.int64)
    return inputs, labels


def _load_mnist1d() -> tuple[np.ndarray, np.ndarray]:
    """Return MNIST-1D signals (N, 1, 40) and labels (N,), from the cache when present."""
    name = f"mnist1d-n{MNIST1D_SAMPLES}-s{MNIST1D_SEED}-v{MNIST1D_CACHE_VERSION}.npz"
    path = cache_dir("datasets") / name
    if path.is_file():
        try:
            with np.load(path) as data:
                return data["inputs"], data["labels"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("cached %s is unreadable (%s); regenerating it", path, exc)
    start = time.perf_counter()
    inputs, labels = _generate_mnist1d(MNIST1D_SAMPLES, MNIST1D_SEED)
    log.info("generated MNIST-1D (%d signals) in %.1fs", len(labels), time.perf_counter() - start)
    _save_npz(path, inputs=inputs, labels=labels)
    return inputs, labels


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz atomically (a temp file beside it, then a rename)."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(handle)
    try:
        np.savez(tmp, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits",
        "scikit-learn's bundled 8x8 handwritten digits (1,797 images), as (1, 8, 8) in [0, 1]",
        (1, 8, 8),
        10,
        tuple(str(i) for i in range(10)),
        _load_digits,
        (0.6, 0.15, 0.25),
    ),
    "mnist1d": DatasetInfo(
        "mnist1d",
        f"MNIST-1D made offline by mnist1d's make_dataset ({MNIST1D_SAMPLES:,} signals of "
        "length 40), as (1, 40), standardised",
        (1, 40),
        10,
        tuple(str(i) for i in range(10)),
        _load_mnist1d,
        (0.7, 0.1, 0.2),
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    """Return the registered dataset ``name``.

    Raises:
        ConfigError: for an unknown dataset name.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {excerpt(repr(name), 60)}; known: {sorted(DATASETS)}")
    return DATASETS[name]


def split_indices(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Return one sorted index array per fraction: stratified per class, disjoint, seeded.

    labels: (N,) int class ids. Each class is shuffled with ``seed`` and cut by the fractions.
    """
    rng = np.random.default_rng(seed)
    cuts: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum((0.0, *fractions))
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        ends = np.round(bounds * len(idx)).astype(int)
        ends[-1] = len(idx)
        for k in range(len(fractions)):
            cuts[k].append(idx[ends[k] : ends[k + 1]])
    return [np.sort(np.concatenate(parts)) for parts in cuts]


def load_split(name: str, split: str, seed: int = 0) -> Split:
    """Return split ``split`` ("train", "calibration" or "test") of dataset ``name``.

    The partition is stratified per class and depends only on (name, seed).

    Raises:
        ConfigError: for an unknown dataset or split name.
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {excerpt(repr(split), 60)}; use one of {SPLITS}")
    inputs, labels = info.load()
    idx = split_indices(labels, info.fractions, seed)[SPLITS.index(split)]
    return Split(
        _canonical(inputs[idx]),
        torch.from_numpy(labels[idx].astype(np.int64)),
        info.num_classes,
        info.class_names,
        f"{name}/{split}",
    )


def _canonical(array: np.ndarray) -> Tensor:
    """Return a tensor copy of ``array`` with the default (row-major) strides.

    numpy may give size-1 axes (the channel axis here) odd strides, and torch's CPU convolutions
    pick a different kernel for such inputs (channels-last-like), which changes results in the
    last bits and so breaks bit-for-bit reproducible training. A fresh tensor has the canonical
    strides whatever the source.
    """
    out = torch.empty(array.shape, dtype=torch.float32)
    out.copy_(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))
    return out


def task_classes(name: str, seed: int = 0, parts: int = 2) -> tuple[tuple[int, ...], ...]:
    """Return seeded disjoint parts of the classes of ``name`` (task A, task B, ...), each sorted.

    parts 2: the halves (the first n // 2 classes of a seeded order, then the rest); more
    parts: that order cut into ``parts`` nearly equal runs, larger ones first (digits in
    three: 4, 3 and 3 classes).

    Raises:
        ConfigError: for an unknown dataset name, or more parts than classes.
    """
    n = dataset_info(name).num_classes
    if not 2 <= parts <= n:
        raise ConfigError(f"{name} has {n} classes: split them into 2 to {n} tasks, not {parts}")
    order = np.random.default_rng(seed).permutation(n)
    cuts = [order[: n // 2], order[n // 2 :]] if parts == 2 else np.array_split(order, parts)
    return tuple(tuple(sorted(int(c) for c in cut)) for cut in cuts)


def task_subset(split: Split, classes: tuple[int, ...]) -> Split:
    """Return the samples of ``split`` whose label is in ``classes`` (labels stay global ids)."""
    keep = torch.isin(split.labels, torch.tensor(classes, dtype=torch.int64))
    return replace(split, inputs=split.inputs[keep], labels=split.labels[keep])


def head_targets(labels: Tensor, classes: tuple[int, ...]) -> Tensor:
    """Map global labels (N,) to head indices (N,): the position of each label in ``classes``.

    Raises:
        ConfigError: if a label is not one of ``classes``.
    """
    top = int(labels.max()) if labels.numel() else 0
    lookup = torch.full((max(max(classes), top) + 1,), -1)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    targets = lookup[labels]
    if (targets < 0).any():
        bad = sorted(set(labels[targets < 0].tolist()))
        raise ConfigError(f"labels {bad} are not among the head's classes {classes}")
    return targets


def sample(split: Split, count: int | None, seed: int) -> Split:
    """Return ``count`` samples of ``split`` drawn without replacement in a seeded order.

    count None (or >= len) keeps every sample, shuffled.
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=gen)
    if count is not None:
        order = order[: max(0, count)]
    return replace(split, inputs=split.inputs[order], labels=split.labels[order])


def refuse_nonfinite_rows(inputs: Tensor, where: str) -> None:
    """Raise if any row of ``inputs`` (N, ...) holds NaN or inf, naming how many and the first.

    where: what holds them ("'inputs' in FILE", "calibration batch 2").

    Raises:
        ConfigError: "``where``: NaN or inf in ... input(s), the first at row R".
    """
    if not inputs.is_floating_point() or inputs.dim() == 0 or inputs.numel() == 0:
        return
    bad = (~torch.isfinite(inputs)).reshape(len(inputs), -1).any(1).nonzero().flatten()
    if len(bad):
        raise ConfigError(
            f"{where}: NaN or inf in {len(bad)} input(s), the first at row {int(bad[0])}; "
            "remove or repair those inputs"
        )


def batches(tensor: Tensor, batch_size: int) -> list[Tensor]:
    """Cut ``tensor`` (N, ...) into consecutive batches of at most ``batch_size`` rows.

    Raises:
        ConfigError: if batch_size is not positive.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    return list(torch.split(tensor, batch_size))
