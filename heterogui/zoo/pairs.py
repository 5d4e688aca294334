"""The built-in zoo: named demo pairs (A on task A, B on task B), built offline and cached.

The pairs are specified in ``zoo.registry`` (docs/method.md sec. 11: A and B trained on disjoint
halves of a dataset's classes; homogeneous, or different in depth, width or both). Each model is a
folder ``cache_dir("zoo", <pair>)/a`` and ``/b``, trained and written by a child process whose CPU
kernels are pinned (``zoo.pinned``: the same weights on one CPU type, whatever it would pick);
``pair.json`` is written last and records a fingerprint of the pair's spec, so that a folder
that is missing, incomplete, corrupt or built from another spec is rebuilt. A model shared by
several pairs (the same spec) is trained once per build and copied.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from heterogui.cache import cache_dir, cache_path
from heterogui.errors import ModelLoadError
from heterogui.folders import remove_path
from heterogui.models.family import Network, config_to_dict
from heterogui.models.io import WEIGHTS_FILE, file_sha256, load_network, read_config
from heterogui.models.resnet import ResNetConfig
from heterogui.models.vgg import VGGConfig
from heterogui.models.vit import ViTNetConfig
from heterogui.progress import Progress
from heterogui.zoo.pinned import Job, train_all, train_pinned, training_workers
from heterogui.zoo.registry import (
    PAIRS,
    TINY_PAIRS,
    ModelSpec,
    PairSpec,
    model_fingerprint,
    pair_fingerprint,
    pair_spec,
    variant_name,
)
from heterogui.zoo.train import seeded_network

__all__ = [
    "PAIRS",
    "TINY_PAIRS",
    "ModelSpec",
    "PairSpec",
    "ZooEntry",
    "ZooPair",
    "build_zoo",
    "is_built",
    "list_zoo",
    "load_pair",
    "pair_folder",
    "pair_spec",
    "variant_name",
]

log = logging.getLogger(__name__)
TRAINING = 0.95  # the share of build_zoo's progress that training the missing models takes


@dataclass
class ZooEntry:
    """What ``build_zoo`` did for one pair."""

    name: str
    folder: Path
    was_built: bool
    trained: list[str] = field(default_factory=list)
    task_accuracy: dict[str, float] = field(default_factory=dict)


@dataclass
class ZooPair:
    """A loaded pair: the two networks and what they were trained on."""

    name: str
    net_a: Network
    net_b: Network
    dataset: str
    classes_a: tuple[int, ...]
    classes_b: tuple[int, ...]
    description: str
    spec: PairSpec
    task_accuracy: dict[str, float]


def zoo_folder(name: str) -> Path:
    """Return the cache folder of pair ``name`` (it may be empty)."""
    return cache_dir("zoo", name)


def _model_ok(folder: Path, spec: PairSpec, which: str) -> bool:
    """Return whether ``folder`` holds an intact model ``which`` of ``spec``: its fingerprint,
    its weights' hash, and the classes and architecture its config.json gives (an edited
    config.json would load the right weights under wrong labels)."""
    try:
        data = read_config(folder)
        weights = folder / "model.safetensors"
        return (
            data.get("fingerprint") == model_fingerprint(spec, which)
            and data.get("classes") == list(spec.classes()[spec.task_index(which)])
            and data.get("config") == config_to_dict(spec.model(which).config)
            and weights.is_file()
            and file_sha256(weights) == data.get("weights_sha256")
        )
    except ModelLoadError:
        return False


def is_built(name: str) -> bool:
    """Return whether pair ``name`` is built, complete and up to date."""
    spec = pair_spec(name)
    folder = cache_path("zoo", name)  # looking creates nothing (zoo list on a read-only cache)
    return _pair_fingerprint_in(folder) == pair_fingerprint(spec) and all(
        _model_ok(folder / w, spec, w) for w in spec.letters
    )


def _pair_fingerprint_in(folder: Path) -> object:
    """Return the fingerprint the pair.json in ``folder`` names (None: missing or unreadable)."""
    try:
        meta = json.loads((folder / "pair.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta.get("fingerprint") if isinstance(meta, dict) else None


def outdated_weights_sha256(name: str, which: str) -> str | None:
    """Return the sha256 of model ``which`` of pair ``name`` where the cache holds it from
    another zoo build (loading it retrains it), else None. A pair that is only incomplete or
    damaged (the other model missing, a file changed) is this build's: loading rebuilds what
    is missing, and a recipe that records its models repeats (a damaged sibling made the
    intact model read as another build's, and such a recipe was refused)."""
    spec = pair_spec(name)
    folder = cache_path("zoo", spec.name)
    if not _another_build(folder, spec, which):
        return None
    weights = folder / which / WEIGHTS_FILE
    try:
        return file_sha256(weights) if weights.is_file() else None
    except OSError:
        return None


def _another_build(folder: Path, spec: PairSpec, which: str) -> bool:
    """Return whether the pair's pair.json or model ``which``'s config.json names the
    fingerprint of another zoo build (missing or unreadable files name none)."""
    try:
        data = read_config(folder / which)
    except ModelLoadError:
        data = {}
    pair_print = _pair_fingerprint_in(folder)
    model_print = data.get("fingerprint") if isinstance(data, dict) else None
    return pair_print not in (None, pair_fingerprint(spec)) or model_print not in (
        None,
        model_fingerprint(spec, which),
    )


def _find_built_model(spec: PairSpec, which: str) -> Path | None:
    """Return an intact copy of model ``which`` of ``spec`` anywhere in the zoo cache, if any."""
    for config in sorted(cache_dir("zoo").glob("*/[a-z]/config.json")):
        if _model_ok(config.parent, spec, which):
            return config.parent
    return None


def _build_pair(spec: PairSpec, force: bool, done: dict[str, Path], report: Progress) -> list[str]:
    """Write the models of one pair; return the ones trained.

    Intact copies are reused unless ``force``; ``done`` maps the fingerprints of the models
    trained in this build to their folders (copied, never retrained, even with ``force``).
    """
    folder = zoo_folder(spec.name)
    remove_path(folder / "pair.json")  # a folder there too (never written so)
    trained = []
    n_models = len(spec.letters)
    for k, which in enumerate(spec.letters):
        fingerprint = model_fingerprint(spec, which)
        target = folder / which
        if fingerprint not in done and not force and _model_ok(target, spec, which):
            continue
        source = done.get(fingerprint) or (None if force else _find_built_model(spec, which))
        if source == target:  # trained into place by this build (build_zoo)
            trained.append(which)
            continue
        if source is not None:
            _copy_model(source, target)
            continue
        train_pinned(
            spec.name,
            which,
            target,
            lambda f, w=which, k=k: report(f"{spec.name}/{w}", (k + f) / n_models),
        )
        done[fingerprint] = target
        trained.append(which)
    meta = {"name": spec.name, "fingerprint": pair_fingerprint(spec), "dataset": spec.dataset}
    tmp = Path(tempfile.mkdtemp(prefix=".pair.", dir=folder)) / "pair.json"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, folder / "pair.json")
    shutil.rmtree(tmp.parent, ignore_errors=True)
    return trained


def _copy_model(source: Path, target: Path) -> None:
    """Copy a model folder into place through a private temp folder (safe if run twice)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.copy.", dir=target.parent))
    try:
        shutil.copytree(source, tmp / "model")
        old = tmp / "old"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp / "model", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_zoo(
    names: list[str] | None = None,
    progress: Progress | None = None,
    force: bool = False,
    tiny: bool = False,
) -> list[ZooEntry]:
    """Train and cache the pairs that are missing, incomplete or out of date.

    names: pairs to build (None: all of PAIRS, or TINY_PAIRS when ``tiny``).
    progress: called with (stage, fraction in [0, 1]) while training.
    force: retrain even when an intact copy exists.

    Raises:
        ConfigError: for an unknown pair name.
    """
    registry = TINY_PAIRS if tiny else PAIRS
    specs = [pair_spec(n) for n in names] if names is not None else list(registry.values())
    report = progress or (lambda _stage, _frac: None)
    entries: list[ZooEntry] = []
    built = {spec.name: not force and is_built(spec.name) for spec in specs}  # before training
    jobs = _untrained([spec for spec in specs if not built[spec.name]], force)
    start = 0.0  # the share of the progress bar that training took
    if jobs:
        workers = training_workers(len(jobs))
        stage = f"training {len(jobs)} zoo model(s), {workers} at a time"
        train_all([job for _, job in jobs], lambda f: report(stage, TRAINING * f), workers)
        start = TRAINING
    done = {fingerprint: job.folder for fingerprint, job in jobs}

    def placed(k: float) -> float:
        return start + (1 - start) * k / len(specs)

    for k, spec in enumerate(specs):
        was_built = built[spec.name]
        trained: list[str] = []
        if not was_built:
            trained = _build_pair(
                spec, force, done, lambda stage, f, k=k: report(stage, placed(k + f))
            )
            built[spec.name] = True  # a name listed twice is built once
        folder = zoo_folder(spec.name)
        accuracy = {w: read_config(folder / w)["task_accuracy"] for w in spec.letters}
        entries.append(ZooEntry(spec.name, zoo_folder(spec.name), was_built, trained, accuracy))
        report(spec.name, placed(k + 1))
    return entries


def _untrained(specs: list[PairSpec], force: bool) -> list[tuple[str, Job]]:
    """Return (fingerprint, job) of each model of ``specs`` (pairs not built) to train, once each.

    A model is trained where it is first needed; a copy elsewhere in the cache, or in this
    build, is copied instead (unless ``force``).
    """
    jobs: list[tuple[str, Job]] = []
    seen: set[str] = set()
    for spec in specs:
        for which in spec.letters:
            fingerprint = model_fingerprint(spec, which)
            target = zoo_folder(spec.name) / which
            if fingerprint in seen:
                continue
            seen.add(fingerprint)
            if not force and (_model_ok(target, spec, which) or _find_built_model(spec, which)):
                continue
            jobs.append((fingerprint, Job(spec.name, which, target)))
    return jobs


def pair_folder(name: str, which: str) -> Path:
    """Return the folder of model ``which`` ("a", "b", ...) of pair ``name``, building it if needed.

    Raises:
        ConfigError: for an unknown pair or a model it does not have.
    """
    spec = pair_spec(name)
    spec.model(which)  # raises for a letter the pair has no model for
    if not is_built(name):
        build_zoo([name])
    return zoo_folder(spec.name) / which


def load_pair(name: str, device: str | torch.device = "cpu") -> ZooPair:
    """Return pair ``name`` loaded on ``device`` (built first when missing).

    Raises:
        ConfigError: for an unknown pair name.
        ModelLoadError: if the cached files cannot be read.
    """
    spec = pair_spec(name)
    nets = [load_network(pair_folder(name, w), device) for w in ("a", "b")]
    accuracy = {w: read_config(zoo_folder(name) / w)["task_accuracy"] for w in "ab"}
    classes_a, classes_b = spec.classes()
    return ZooPair(
        name,
        nets[0],
        nets[1],
        spec.dataset,
        classes_a,
        classes_b,
        spec.description,
        spec,
        accuracy,
    )


def load_group(name: str, device: str | torch.device = "cpu") -> list[Network]:
    """Return every model of pair or group ``name`` loaded on ``device`` (built when missing).

    Raises:
        ConfigError: for an unknown name.
        ModelLoadError: if the cached files cannot be read.
    """
    return [load_network(pair_folder(name, w), device) for w in pair_spec(name).letters]


def describe_config(config: Any) -> dict[str, Any]:
    """Return the family, blocks per stage and widths per stage of a config."""
    if isinstance(config, ResNetConfig):
        depths = [len(s) for s in config.inner_widths]
        widths = list(config.stream_widths)
        family = "resnet"
    elif isinstance(config, VGGConfig):
        depths, widths, family = (
            [len(s) for s in config.stages],
            [s[0] for s in config.stages],
            "vgg",
        )
    elif isinstance(config, ViTNetConfig):
        depths, widths, family = [config.num_layers], [config.hidden], "vit"
    else:
        depths, widths, family = [len(config.widths)], list(config.widths), "mlp"
    return {"family": family, "depths": depths, "widths": widths}


def list_zoo(tiny: bool = False) -> list[dict[str, Any]]:
    """Return one row per pair: name, description, kind, built, accuracies, sizes, shapes."""
    rows = []
    for name, spec in (TINY_PAIRS if tiny else PAIRS).items():
        built = is_built(name)
        row: dict[str, Any] = {
            "name": name,
            "description": spec.description,
            "kind": spec.kind,
            "dataset": spec.dataset,
            "built": built,
        }
        for w in ("a", "b"):
            config = spec.model(w).config
            net = seeded_network(config, spec.classes()[0 if w == "a" else 1], 0, w)
            row[f"params_{w}"] = net.parameter_count()
            row[f"shape_{w}"] = describe_config(config)
            cfg = read_config(cache_path("zoo", name) / w) if built else {}
            row[f"task_accuracy_{w}"] = cfg.get("task_accuracy")
        rows.append(row)
    return rows
