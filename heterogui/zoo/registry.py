"""The registry of demo pairs of the built-in zoo (specs only; ``zoo.pairs`` builds them).

Every pair follows the evaluation protocol (docs/method.md sec. 11): model A is trained on one half
of a dataset's classes and model B on the other half (disjoint tasks, ``task_classes``). A pair is
homogeneous (same architecture, different seeds) or differs in depth, in width, or in both. Widths
are x2 (32/64 channels) or more: much narrower models merge badly, and these still train in seconds
on a CPU.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from heterogui.datasets.images import task_classes
from heterogui.errors import ConfigError
from heterogui.models.family import config_to_dict
from heterogui.models.resnet import ResNetConfig, cifar_resnet
from heterogui.models.vgg import VGGConfig
from heterogui.models.vit import ViTNetConfig
from heterogui.zoo.train import TrainSettings

ZOO_VERSION = 4  # bump to rebuild every cached pair after a change in training or data


@dataclass(frozen=True)
class ModelSpec:
    """One zoo model: its architecture, its task ("a", "b", "c", ...) and how it is trained."""

    config: Any
    task: str
    train: TrainSettings


@dataclass(frozen=True)
class PairSpec:
    """A demo pair (or group). kind: "homogeneous", "depth", "width" or "depth+width".

    reference: the homogeneous pair (same A, B of A's architecture) whose zip is this pair's
    "homogeneous zip" row in the benchmark (None for a homogeneous pair).
    split_seed: seeds the train/calibration/test split and the class halves.
    more: models C, D, ... of a group (an N-way merge): the classes are then cut into as many
        tasks as there are models.
    """

    name: str
    description: str
    dataset: str
    kind: str
    model_a: ModelSpec
    model_b: ModelSpec
    reference: str | None = None
    split_seed: int = 0
    more: tuple[ModelSpec, ...] = ()

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        """Return the specs of all models, A first."""
        return (self.model_a, self.model_b, *self.more)

    @property
    def letters(self) -> str:
        """Return the models' names in order: "ab", or "abc" for a group of three."""
        return "abcdefghijklmnopqrstuvwxyz"[: len(self.models)]

    def classes(self) -> tuple[tuple[int, ...], ...]:
        """Return each task's classes (task A, task B, ...)."""
        return task_classes(self.dataset, self.split_seed, len(self.models))

    def task_index(self, which: str) -> int:
        """Return the task of model ``which`` as an index into ``classes``."""
        return self.letters.index(self.model(which).task)

    def model(self, which: str) -> ModelSpec:
        """Return the spec of model "a", "b", ...

        Raises:
            ConfigError: a letter this pair or group has no model for.
        """
        if len(which) != 1 or which not in self.letters:
            known = ", ".join(repr(w) for w in self.letters)
            raise ConfigError(f"zoo model {which!r} of {self.name} does not exist: use {known}")
        return self.models[self.letters.index(which)]


DIGITS_TRAIN = TrainSettings(epochs=6, batch_size=64, lr=3e-3)
MNIST1D_TRAIN = TrainSettings(epochs=5, batch_size=64, lr=3e-3)


def _resnet(depths: tuple[int, ...], width: int, dims: int) -> ResNetConfig:
    return cifar_resnet(depths, width, num_classes=5, in_channels=1, spatial_dims=dims)


def _pair(name, description, dataset, kind, config_a, config_b, train, reference=None):
    """Return a PairSpec whose A has seed 0 and B seed 1 (a different init and data order)."""
    return PairSpec(
        name,
        description,
        dataset,
        kind,
        ModelSpec(config_a, "a", replace(train, seed=0)),
        ModelSpec(config_b, "b", replace(train, seed=1)),
        reference,
    )


_TINY_TRAIN = TrainSettings(epochs=3, batch_size=32, lr=3e-3, max_train=400)
_TINY_A = VGGConfig(1, ((8, 8), (16, 16)), 5)
_TINY_REF = "tiny-digits-vgg-homogeneous"
# Small, quickly trained versions for tests (seconds to build).
_TINY = (
    _pair(
        _TINY_REF,
        "tiny VGG x1, two seeds (tests)",
        "digits",
        "homogeneous",
        _TINY_A,
        _TINY_A,
        _TINY_TRAIN,
    ),
    _pair(
        "tiny-digits-vgg-depth",
        "tiny VGG 2+2 vs 3+3 blocks (tests)",
        "digits",
        "depth",
        _TINY_A,
        VGGConfig(1, ((8, 8, 8), (16, 16, 16)), 5),
        _TINY_TRAIN,
        _TINY_REF,
    ),
    _pair(
        "tiny-digits-vgg-width",
        "tiny VGG x1 vs x2 (tests)",
        "digits",
        "width",
        _TINY_A,
        VGGConfig(1, ((16, 16), (32, 32)), 5),
        _TINY_TRAIN,
        _TINY_REF,
    ),
)

_R33 = _resnet((3, 3), 2, 2)
_VGG = VGGConfig(1, ((32, 32), (64, 64)), 5)
_M1D = _resnet((2, 2, 2), 2, 1)
_DIG_REF = "digits-resnet-homogeneous"
_VGG_REF = "digits-vgg-homogeneous"
_M1D_REF = "mnist1d-resnet-homogeneous"
# The first pair is the workbench's default demo: heterogeneous and quick to build.
_FULL = (
    _pair(
        "digits-resnet-depth",
        "digits ResNet 3+3 blocks (A) vs 5+5 blocks (B), width x2",
        "digits",
        "depth",
        _R33,
        _resnet((5, 5), 2, 2),
        DIGITS_TRAIN,
        _DIG_REF,
    ),
    _pair(
        _DIG_REF,
        "digits ResNet 3+3 x2, two seeds (the homogeneous reference)",
        "digits",
        "homogeneous",
        _R33,
        _R33,
        DIGITS_TRAIN,
    ),
    _pair(
        "digits-resnet-width",
        "digits ResNet 3+3 x2 (A) vs 3+3 x4 (B, 64/128 channels)",
        "digits",
        "width",
        _R33,
        _resnet((3, 3), 4, 2),
        DIGITS_TRAIN,
        _DIG_REF,
    ),
    _pair(
        "digits-resnet-depth-width",
        "digits ResNet 3+3 x2 (A) vs 5+5 x4 (B)",
        "digits",
        "depth+width",
        _R33,
        _resnet((5, 5), 4, 2),
        DIGITS_TRAIN,
        _DIG_REF,
    ),
    _pair(
        _VGG_REF,
        "digits VGG 2+2 convs, 32/64 channels, two seeds (homogeneous)",
        "digits",
        "homogeneous",
        _VGG,
        _VGG,
        DIGITS_TRAIN,
    ),
    _pair(
        "digits-vgg-depth",
        "digits VGG 2+2 convs (A) vs 3+3 convs (B): plain chains, identity convs as padding",
        "digits",
        "depth",
        _VGG,
        VGGConfig(1, ((32, 32, 32), (64, 64, 64)), 5),
        DIGITS_TRAIN,
        _VGG_REF,
    ),
    _pair(
        _M1D_REF,
        "MNIST-1D 1-D ResNet 2+2+2 x2, two seeds (homogeneous)",
        "mnist1d",
        "homogeneous",
        _M1D,
        _M1D,
        MNIST1D_TRAIN,
    ),
    _pair(
        "mnist1d-resnet-depth",
        "MNIST-1D 1-D ResNet 2+2+2 (A) vs 3+3+3 (B), width x2",
        "mnist1d",
        "depth",
        _M1D,
        _resnet((3, 3, 3), 2, 1),
        MNIST1D_TRAIN,
        _M1D_REF,
    ),
)


def _vit(layers: int, hidden: int) -> ViTNetConfig:
    """Return a ViT of 8x8 grey digits: 2x2 patches, heads of 8 features, MLP ratio 2."""
    heads = (hidden // 8,) * layers
    return ViTNetConfig(8, 2, 1, hidden, 8, heads, (2 * hidden,) * layers, 5, layer_norm_eps=1e-6)


# Transformer pairs of the zoo (pre-LN ViTs: exact identity layers); 20 epochs reach ~95 %.
_VIT_REF = "digits-vit-homogeneous"
_VIT_TRAIN = replace(DIGITS_TRAIN, epochs=20)
_VIT_PAIRS = (
    _pair(
        "digits-vit-depth-width",
        "digits ViT 2 layers, width 32 (A) vs 4 layers, width 48 (B): attention heads merge whole",
        "digits",
        "depth+width",
        _vit(2, 32),
        _vit(4, 48),
        _VIT_TRAIN,
        _VIT_REF,
    ),
    _pair(
        _VIT_REF,
        "digits ViT 2 layers, width 32, two seeds (homogeneous)",
        "digits",
        "homogeneous",
        _vit(2, 32),
        _vit(2, 32),
        _VIT_TRAIN,
    ),
)
_TINY_VIT = _pair(
    "tiny-digits-vit-depth",
    "tiny ViT 1 vs 2 layers, width 16 (tests)",
    "digits",
    "depth",
    _vit(1, 16),
    _vit(2, 16),
    replace(_TINY_TRAIN, epochs=15),
)


def _group(name, description, dataset, configs, train):
    """Return a group of models on as many tasks (digits in three: 4, 3, 3 classes).

    Model k is trained on task k with seed k; its head gets the task's number of classes.
    """
    tasks = task_classes(dataset, 0, len(configs))
    models = [
        ModelSpec(replace(config, num_classes=len(tasks[k])), letter, replace(train, seed=k))
        for k, (letter, config) in enumerate(zip("abcdefgh", configs, strict=False))
    ]
    return PairSpec(name, description, dataset, "depth", *models[:2], more=tuple(models[2:]))


# Groups of three models for N-way merges (three tasks, three depths). Not listed in PAIRS:
# the workbench merges two models; the quality benchmark and recipes with a list of models
# use them.
GROUPS: dict[str, PairSpec] = {
    g.name: g
    for g in (
        _group(
            "digits-resnet-trio",
            "digits ResNet 2+2 (A), 3+3 (B) and 5+5 (C) blocks, width x2, on three tasks",
            "digits",
            (_resnet((2, 2), 2, 2), _R33, _resnet((5, 5), 2, 2)),
            DIGITS_TRAIN,
        ),
        _group(
            "digits-resnet-trio-homogeneous",
            "digits ResNet 3+3 x2 three times (seeds 0, 1, 2), on three tasks",
            "digits",
            (_R33, _R33, _R33),
            DIGITS_TRAIN,
        ),
        _group(
            "tiny-digits-vgg-trio",
            "tiny VGG 1+1, 2+2 and 3+3 convs on three tasks (tests)",
            "digits",
            (
                VGGConfig(1, ((8,), (16,)), 5),
                _TINY_A,
                VGGConfig(1, ((8, 8, 8), (16, 16, 16)), 5),
            ),
            _TINY_TRAIN,
        ),
    )
}
PAIRS: dict[str, PairSpec] = {p.name: p for p in (*_FULL, *_VIT_PAIRS)}
TINY_PAIRS: dict[str, PairSpec] = {p.name: p for p in (*_TINY, _TINY_VIT)}


def variant_name(name: str, variant: int) -> str:
    """Return the name of training variant ``variant`` of pair ``name`` (0: the pair itself).

    Variant v trains A with seed 2v and B with seed 2v + 1 (the benchmark's training seeds);
    in a group of N models, model k with seed k + N v.
    """
    return name if variant == 0 else f"{name}@{variant}"


def pair_spec(name: str) -> PairSpec:
    """Return the spec of a pair of PAIRS or TINY_PAIRS, or of a variant "NAME@v".

    Raises:
        ConfigError: for an unknown pair name or a malformed variant.
    """
    base, _, variant = name.partition("@")
    spec = PAIRS.get(base) or TINY_PAIRS.get(base) or GROUPS.get(base)
    if spec is None or (variant and not (variant.isascii() and variant.isdigit())):
        raise ConfigError(
            f"unknown zoo pair {name!r}; known: {sorted(PAIRS)}, groups {sorted(GROUPS)} (a "
            "training variant is NAME@1, NAME@2, ...)"
        )
    v = int(variant or 0)
    if v == 0:
        return spec
    n = len(spec.models)
    seeded = [replace(m, train=replace(m.train, seed=m.train.seed + n * v)) for m in spec.models]
    return replace(
        spec,
        name=name,
        model_a=seeded[0],
        model_b=seeded[1],
        more=tuple(seeded[2:]),
        reference=None if spec.reference is None else variant_name(spec.reference, v),
    )


def model_fingerprint(spec: PairSpec, which: str) -> str:
    """Return a sha256 of everything that determines the weights of model ``which``."""
    model = spec.model(which)
    classes = spec.classes()[spec.task_index(which)]
    body = {
        "zoo_version": ZOO_VERSION,
        "dataset": spec.dataset,
        "split_seed": spec.split_seed,
        "classes": list(classes),
        "config": config_to_dict(model.config),
        "train": asdict(model.train),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def pair_fingerprint(spec: PairSpec) -> str:
    """Return a sha256 of every model's fingerprint."""
    every = "".join(model_fingerprint(spec, w) for w in spec.letters)
    return hashlib.sha256(every.encode()).hexdigest()
