"""Offline datasets, deterministic training and the zoo cache (tiny setting: seconds)."""

from __future__ import annotations

import json
import os
import platform
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import heterogui
from heterogui.datasets import images as datasets
from heterogui.datasets.images import (
    SPLITS,
    batches,
    head_targets,
    load_split,
    split_indices,
    task_classes,
    task_subset,
)
from heterogui.errors import ConfigError, ModelLoadError
from heterogui.models.io import load_network, read_config, state_sha256
from heterogui.models.mlp import MLPConfig
from heterogui.zoo.pairs import (
    PAIRS,
    TINY_PAIRS,
    build_zoo,
    is_built,
    list_zoo,
    load_pair,
    pair_folder,
    zoo_folder,
)
from heterogui.zoo.pinned import PINNED_KERNELS, Job, pinned_environment, train_all, train_pinned
from heterogui.zoo.registry import model_fingerprint, pair_spec, variant_name
from heterogui.zoo.train import TrainSettings, train_network

TINY = "tiny-digits-vgg-homogeneous"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty heterogui cache for the test."""
    monkeypatch.setenv("HETEROGUI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_split_indices_are_disjoint_stratified_and_seeded() -> None:
    labels = np.repeat(np.arange(4), 25)
    parts = split_indices(labels, (0.6, 0.2, 0.2), seed=3)
    joined = np.concatenate(parts)
    assert len(joined) == len(labels) == len(set(joined.tolist()))
    assert [np.bincount(labels[p]).tolist() for p in parts] == [[15] * 4, [5] * 4, [5] * 4]
    again = split_indices(labels, (0.6, 0.2, 0.2), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = split_indices(labels, (0.6, 0.2, 0.2), seed=4)
    assert not np.array_equal(parts[0], other[0])


def test_digits_splits() -> None:
    splits = {s: load_split("digits", s, seed=0) for s in SPLITS}
    assert sum(len(s) for s in splits.values()) == 1797
    train = splits["train"]
    assert train.inputs.shape[1:] == (1, 8, 8) and train.inputs.dtype == torch.float32
    assert float(train.inputs.min()) >= 0.0 and float(train.inputs.max()) <= 1.0
    assert train.labels.dtype == torch.int64 and train.num_classes == 10
    # Disjoint: no image of the test split is also a training image (digits has no duplicates
    # across these splits at this seed; compare the raw bytes).
    seen = {bytes(x.numpy().tobytes()) for x in train.inputs}
    assert not any(bytes(x.numpy().tobytes()) in seen for x in splits["test"].inputs)
    again = load_split("digits", "train", seed=0)
    assert torch.equal(again.inputs, train.inputs) and torch.equal(again.labels, train.labels)


def test_mnist1d_is_generated_offline_cached_and_leaves_global_rngs(cache, monkeypatch) -> None:
    monkeypatch.setattr(datasets, "MNIST1D_SAMPLES", 400)
    np.random.seed(7)
    random.seed(7)
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    test = load_split("mnist1d", "test", seed=0)
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before
    assert test.inputs.shape[1:] == (1, 40) and len(test) == 80
    assert list((cache / "datasets").glob("mnist1d-n400-*.npz"))
    cached = load_split("mnist1d", "test", seed=0)
    assert torch.equal(cached.inputs, test.inputs)
    # Generated and cached inputs have the same, canonical strides: torch's CPU convolutions
    # take another kernel for odd strides of the size-1 channel axis (other last bits).
    canonical = torch.empty(test.inputs.shape).stride()
    assert test.inputs.stride() == cached.inputs.stride() == canonical
    # a cached file cut short (a full disk, a copy stopped halfway) is regenerated, not a crash
    (path,) = (cache / "datasets").glob("mnist1d-n400-*.npz")
    path.write_bytes(path.read_bytes()[:1000])
    again = load_split("mnist1d", "test", seed=0)
    assert torch.equal(again.inputs, test.inputs) and path.stat().st_size > 1000


def test_task_classes_and_subsets() -> None:
    a, b = task_classes("digits", seed=0)
    assert len(a) == len(b) == 5 and not set(a) & set(b) and set(a) | set(b) == set(range(10))
    assert task_classes("digits", seed=0) == (a, b)
    split = task_subset(load_split("digits", "test"), a)
    assert set(split.labels.tolist()) == set(a)  # labels stay global ids
    targets = head_targets(split.labels, a)
    assert torch.equal(torch.tensor(a)[targets], split.labels)
    with pytest.raises(ConfigError):
        head_targets(torch.tensor([b[0]]), a)
    assert [len(x) for x in batches(torch.zeros(7, 2), 3)] == [3, 3, 1]
    with pytest.raises(ConfigError):
        load_split("nope", "train")
    with pytest.raises(ConfigError):
        load_split("digits", "validation")


def test_task_classes_in_three_tasks_and_the_zoo_groups() -> None:
    halves = task_classes("digits", seed=4)
    assert task_classes("digits", seed=4, parts=2) == halves  # the pairs' tasks do not move
    thirds = task_classes("digits", seed=4, parts=3)
    assert [len(t) for t in thirds] == [4, 3, 3]
    assert sorted(c for t in thirds for c in t) == list(range(10))
    with pytest.raises(ConfigError, match="into 2 to 10 tasks"):
        task_classes("digits", parts=11)
    spec = pair_spec("digits-resnet-trio")
    assert spec.letters == "abc" and spec.classes() == task_classes("digits", 0, 3)
    assert [m.config.num_classes for m in spec.models] == [4, 3, 3]
    variant = pair_spec("digits-resnet-trio@2")
    assert [m.train.seed for m in variant.models] == [6, 7, 8]  # model k: seed k + 3v
    assert [m.train.seed for m in pair_spec("digits-resnet-depth@2").models] == [4, 5]
    with pytest.raises(ConfigError, match="does not exist: use 'a', 'b', 'c'"):
        spec.model("d")
    with pytest.raises(ConfigError, match="does not exist: use 'a', 'b'"):
        pair_spec("digits-resnet-depth").model("c")


def test_training_is_deterministic() -> None:
    config = MLPConfig(64, (32,), 5)
    classes = task_classes("digits", 0)[0]
    settings = TrainSettings(epochs=5, batch_size=32, max_train=200, seed=3)
    first = train_network(config, "digits", classes, settings)
    second = train_network(config, "digits", classes, settings)
    assert state_sha256(first.net.module.state_dict()) == state_sha256(
        second.net.module.state_dict()
    )
    assert first.task_accuracy > 0.6
    with pytest.raises(ValueError):
        train_network(MLPConfig(64, (8,), 3), "digits", classes, settings)


def kernels_of(env: dict[str, str]) -> dict[str, str]:
    return {k: env.get(k, "") for k in PINNED_KERNELS}


def _hashes(name: str) -> list[str]:
    pair = load_pair(name)
    return [state_sha256(n.module.state_dict()) for n in (pair.net_a, pair.net_b)]


def test_tiny_zoo_builds_deterministically_and_is_cached(cache, tmp_path, monkeypatch) -> None:
    entries = build_zoo([TINY], tiny=True)
    assert entries[0].trained == ["a", "b"] and is_built(TINY)
    pair = load_pair(TINY)
    assert pair.classes_a == pair.net_a.head_classes()
    assert min(pair.task_accuracy.values()) > 0.6
    first = _hashes(TINY)
    assert build_zoo([TINY], tiny=True)[0].was_built  # cached: nothing trained
    # A second cache, built from scratch, gives the same weights, even where MKL and ATen would
    # pick other kernels (SSE4.2 ones, as on an older CPU): the training child pins them.
    monkeypatch.setenv("HETEROGUI_CACHE", str(tmp_path / "other"))
    if platform.machine().lower() in ("x86_64", "amd64"):
        monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "SSE4_2")
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
        monkeypatch.setenv("MKL_CBWR", "AUTO")
    assert not is_built(TINY)
    build_zoo([TINY], tiny=True, force=True)
    assert _hashes(TINY) == first
    config = read_config(zoo_folder(TINY) / "a")
    assert config["kernels"] == kernels_of(pinned_environment())


def test_a_failed_training_child_is_one_line_and_leaves_no_model(cache, tmp_path) -> None:
    folder = tmp_path / "model"
    reports: list[float] = []
    with pytest.raises(ModelLoadError, match=r"training zoo model no-such-pair/a failed: Co"):
        train_pinned("no-such-pair", "a", folder, reports.append)
    assert not folder.exists() and reports == []
    reports.clear()
    train_pinned(TINY, "a", folder, reports.append)
    assert reports[-1] == 1.0 and reports == sorted(reports) and len(reports) > 1
    assert read_config(folder)["fingerprint"] == model_fingerprint(TINY_PAIRS[TINY], "a")
    # The child imports the heterogui this process runs, installed or not.
    first = pinned_environment({"PYTHONPATH": "elsewhere"})["PYTHONPATH"].split(os.pathsep)
    assert Path(first[0]) / "heterogui" == Path(heterogui.__file__).resolve().parent
    assert first[1:] == ["elsewhere"]


def test_models_trained_side_by_side_equal_those_trained_one_by_one(cache, tmp_path) -> None:
    def trained(workers: int) -> tuple[list[str], list[float]]:
        jobs = [Job(TINY, w, tmp_path / f"{workers}-{w}") for w in ("a", "b")]
        reports: list[float] = []
        train_all(jobs, reports.append, workers)
        states = [load_network(job.folder).module.state_dict() for job in jobs]
        return [state_sha256(state) for state in states], reports

    together, reports = trained(2)
    alone, _ = trained(1)
    assert together == alone and together[0] != together[1]
    assert reports == sorted(reports) and reports[-1] == 1.0
    # One failing child stops the other and the build says which model failed.
    jobs = [Job(TINY, "a", tmp_path / "x"), Job("no-such-pair", "b", tmp_path / "y")]
    with pytest.raises(ModelLoadError, match="no-such-pair/b failed"):
        train_all(jobs, lambda _f: None, 2)
    assert not (tmp_path / "y").exists()


def test_incomplete_or_corrupt_pairs_are_rebuilt(cache) -> None:
    build_zoo([TINY, "tiny-digits-vgg-depth"], tiny=True)
    # The shared model A is trained once and copied.
    assert model_fingerprint(TINY_PAIRS[TINY], "a") == model_fingerprint(
        TINY_PAIRS["tiny-digits-vgg-depth"], "a"
    )
    weights = zoo_folder(TINY) / "b" / "model.safetensors"
    before = weights.read_bytes()
    weights.write_bytes(b"broken")
    assert not is_built(TINY)
    entry = build_zoo([TINY], tiny=True)[0]
    assert entry.trained == ["b"] and weights.read_bytes() == before
    (zoo_folder(TINY) / "pair.json").unlink()
    assert not is_built(TINY)
    assert pair_folder(TINY, "a").is_dir() and is_built(TINY)
    # an edited config.json (other labels for the same weights) is no intact model either
    config_a = zoo_folder(TINY) / "a" / "config.json"
    data = json.loads(config_a.read_text())
    config_a.write_text(json.dumps({**data, "classes": data["classes"][::-1]}))
    assert not is_built(TINY)
    assert build_zoo([TINY], tiny=True)[0].trained == []  # copied from the other pair's A
    assert json.loads(config_a.read_text())["classes"] == data["classes"]
    # a pair.json that is no JSON object, or a folder, means: not built (then rebuilt)
    for bad in ("[]", "null", '"x"'):
        (zoo_folder(TINY) / "pair.json").write_text(bad)
        assert not is_built(TINY)
    (zoo_folder(TINY) / "pair.json").unlink()
    (zoo_folder(TINY) / "pair.json").mkdir()
    assert not is_built(TINY)
    build_zoo([TINY], tiny=True)
    assert is_built(TINY)
    with pytest.raises(ConfigError):
        pair_folder(TINY, "c")
    with pytest.raises(ConfigError):
        load_pair("no-such-pair")


def test_registry_covers_the_heterogeneity_kinds() -> None:
    kinds = {spec.kind for spec in PAIRS.values()}
    assert {"homogeneous", "depth", "width", "depth+width"} <= kinds
    for spec in PAIRS.values():
        classes_a, classes_b = spec.classes()
        assert not set(classes_a) & set(classes_b)
        if spec.kind == "homogeneous":
            assert spec.model_a.config == spec.model_b.config
            assert spec.model_a.train.seed != spec.model_b.train.seed
        else:
            assert PAIRS[spec.reference].kind == "homogeneous"
            assert PAIRS[spec.reference].model_a == spec.model_a


def test_list_zoo_reports_shapes_without_building(cache) -> None:
    rows = {r["name"]: r for r in list_zoo()}
    assert set(rows) == set(PAIRS)
    depth = rows["digits-resnet-depth"]
    assert not depth["built"] and depth["task_accuracy_a"] is None
    assert depth["shape_a"]["depths"] == [3, 3] and depth["shape_b"]["depths"] == [5, 5]
    assert depth["params_b"] > depth["params_a"] > 0


def test_training_variants_change_the_seeds_only() -> None:
    base = PAIRS["digits-resnet-depth"]
    variant = pair_spec(variant_name("digits-resnet-depth", 2))
    assert variant.name == "digits-resnet-depth@2"
    assert (variant.model_a.train.seed, variant.model_b.train.seed) == (4, 5)
    assert variant.reference == "digits-resnet-homogeneous@2"
    assert variant.model_a.config == base.model_a.config and variant.classes() == base.classes()
    assert model_fingerprint(variant, "a") != model_fingerprint(base, "a")
    assert variant_name("digits-resnet-depth", 0) == "digits-resnet-depth"
    with pytest.raises(ConfigError):
        pair_spec("digits-resnet-depth@x")
