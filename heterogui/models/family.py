"""The registry of model families and ``Network``: a family module with its config and labels."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from types import UnionType
from typing import Any

from torch import nn

from heterogui.errors import ConfigError, excerpt
from heterogui.models import bert, bert_identity, decoder, gpt2, mlp, resnet, vgg, vit
from heterogui.models.graph import BlockNet, ModelGraph


@dataclass(frozen=True)
class Family:
    """How to build, describe, pad and resize the models of one family.

    fit_identity: optional ``fn(net, blocks, batches, device)`` run after padding, for families
    whose identity blocks need more than ``init_identity`` (post-LN transformers: their
    neighbours' norms or calibration data). check_pair: optional ``fn(config_a, config_b)``
    returning one reason per property two models must share and do not. shared_outputs: the
    heads of A and B predict the same outputs (a language model's vocabulary), so one network
    holding a merge averages the heads instead of placing them side by side.
    default_fusion: the fusion a merge of this family uses when its settings say "auto": the
    one measured best on the family's benchmark pairs (docs/quality.md, docs/decoders.md,
    docs/transformers.md); the paper's "average" where least squares lost or was not measured.
    default_measure: what the alignment's CKA compares when the recipe says "auto"
    (``align.similarity``): "updates" where it aligned better on the family's pairs
    (docs/measures.md), else the paper's "outputs".
    default_heads: how a two-model merge of this family merges attention heads when its
    settings say "auto" (``zip.plan.ZipSettings.heads``): "split" where it measured better
    (the ViT pairs, docs/quality.md), the paper's "pair" elsewhere (MiniLM: docs/method.md
    sec. 8).
    attention_names: where a layer block keeps its query, key, value and attention-output
    projections, for families whose heads ``zip.heads: split`` can cut (``fusion.split_heads``:
    separate projections, no rotary positions); None for the others.
    """

    name: str
    config_cls: type
    build: Callable[[Any], BlockNet]
    graph: Callable[..., ModelGraph]
    insert_identity: Callable[[Any, int, int], Any]
    init_identity: Callable[[nn.Module], None]
    resize: Callable[[Any, dict[str, int]], Any]
    fit_identity: Callable[..., None] | None = None
    check_pair: Callable[[Any, Any], list[str]] | None = None
    shared_outputs: bool = False
    default_fusion: str = "average"
    default_measure: str = "outputs"
    default_heads: str = "pair"
    attention_names: bert.LayerNames | None = None


# Least-squares fusion beat the paper's average on every zoo pair (VGG, ResNet, ViT) at a few
# hundredths of a second a merge. The others keep the paper's average: BERT (it did not gain on
# MiniLM's sentence similarity: +0.001 on average), the decoders (better on all three decoder
# pairs, but a SmolLM2 merge takes 28-35 s instead of 5 s, a re-merge 24-31 s instead of 1-2 s),
# MLP and GPT-2 (GPT-2's one pair was trained apart: docs/decoders.md).
LEAST_SQUARES = "least_squares"
# ViT takes its sequential refit (with the tails' unmerge refit: fusion.sequential): on the zoo's
# ViT pairs it keeps 0.98-1.00 of the ensemble where one-shot least squares keeps 0.53-0.65, for
# a few more passes of A, B and the merge over the calibration data (0.2-0.4 s a zoo merge).
# The CNNs gain 0-2 points from it at 5-30 times a re-merge: they keep one-shot least squares.
# Its refit of the heads' unmerge alone after one-shot least squares ("least_squares_heads")
# gains them 0.9-3.3 points for one more pass of the merge, which costs the speed goals of the
# ResNet benchmark pair and of the workbench's slider (docs/benchmarks.md): an option too.
SEQUENTIAL_LEAST_SQUARES = "least_squares_sequential"
# CKA of what each layer adds to the residual stream places a pre-norm decoder's layers where
# they belong: SmolLM2 + its copy without 6 middle layers, SMA, rho 1: perplexity 28.7 / 21.0
# against 169 / 271 with CKA of the layer outputs (the true placement: 26.5 / 19.1; 3 draws,
# docs/measures.md). The other families' pairs align about as well either way: they keep the
# paper's.
UPDATES = "updates"

FAMILIES: dict[str, Family] = {}


def register(family: Family) -> None:
    """Add a family to the registry."""
    FAMILIES[family.name] = family


for _mod, _cls, _name, _fusion in (
    (mlp, mlp.MLPConfig, "mlp", "average"),
    (vgg, vgg.VGGConfig, "vgg", LEAST_SQUARES),
    (resnet, resnet.ResNetConfig, "resnet", LEAST_SQUARES),
):
    register(
        Family(
            _name,
            _cls,
            _mod.build,
            _mod.graph,
            _mod.insert_identity,
            _mod.init_identity,
            _mod.resize,
            default_fusion=_fusion,
        )
    )


register(
    Family(
        "bert",
        bert.BertNetConfig,
        bert.build,
        bert.graph,
        bert.insert_identity,
        bert.init_identity,
        bert.resize,
        bert_identity.fit_identity,
        bert.check_pair,
        attention_names=bert.BERT_NAMES,
    )
)
register(
    Family(
        "vit",
        vit.ViTNetConfig,
        vit.build,
        vit.graph,
        vit.insert_identity,
        vit.init_identity,
        vit.resize,
        None,
        vit.check_pair,
        default_fusion=SEQUENTIAL_LEAST_SQUARES,
        default_heads="split",
        attention_names=vit.VIT_NAMES,
    )
)
register(
    Family(
        "decoder",
        decoder.DecoderNetConfig,
        decoder.build,
        decoder.graph,
        decoder.insert_identity,
        decoder.init_identity,
        decoder.resize,
        None,
        decoder.check_pair,
        shared_outputs=True,
        default_measure=UPDATES,
    )
)
register(
    Family(
        "gpt2",
        gpt2.GPT2NetConfig,
        gpt2.build,
        gpt2.graph,
        gpt2.insert_identity,
        gpt2.init_identity,
        gpt2.resize,
        None,
        gpt2.check_pair,
        shared_outputs=True,
        attention_names=gpt2.GPT2_NAMES,
    )
)


def family_of(config: Any) -> Family:
    """Return the family whose config class ``config`` is.

    Raises:
        ConfigError: if no registered family uses this config class.
    """
    for fam in FAMILIES.values():
        if isinstance(config, fam.config_cls):
            return fam
    raise ConfigError(
        f"no model family for config {type(config).__name__}; known: {list(FAMILIES)}"
    )


def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a JSON-ready dict of a family config, with its family name."""
    body = {k: _listify(v) for k, v in dataclasses.asdict(config).items()}
    return {"family": family_of(config).name, **body}


def config_from_dict(data: dict[str, Any]) -> Any:
    """Rebuild a family config from ``config_to_dict`` output, checking every field.

    Raises:
        ConfigError: an unknown family, unknown or missing fields, or a field of the wrong type
            or out of range (sizes are positive integers).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a model config must be a mapping, got {type(data).__name__}")
    data = dict(data)
    name = data.pop("family", None)
    if not isinstance(name, str) or name not in FAMILIES:
        raise ConfigError(
            f"unknown model family {excerpt(repr(name), 60)}; expected one of {sorted(FAMILIES)}"
        )
    cls = FAMILIES[name].config_cls
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(
            excerpt(f"unknown {name} config fields {sorted(unknown)}; known: {sorted(known)}", 300)
        )
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        _check_field(f"{name} config field {key}", hints[key], value, key in _MAY_BE_ZERO)
    try:
        return cls(**{k: _tuplify(v) for k, v in data.items()})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad {name} config: {excerpt(exc)}") from exc


_MAY_BE_ZERO = {"pad_token_id"}  # an index; every other integer of a config is a size


def _check_field(where: str, hint: Any, value: Any, may_be_zero: bool = False) -> None:
    """Raise unless ``value`` fits ``hint`` (ints, floats, strings, None, tuples of them).

    Raises:
        ConfigError: naming the field, the value and what it must be.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, UnionType):
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple) or not value:
            raise ConfigError(f"{where} must be a non-empty list, got {excerpt(repr(value), 60)}")
        for item in value:
            _check_field(where, args[0], item, may_be_zero)
        return
    if hint is int:
        lowest = 0 if may_be_zero else 1
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value < 2**31:
            raise ConfigError(
                f"{where} must be an integer from {lowest} below 2**31, got "
                f"{excerpt(repr(value), 60)}"
            )
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{where} must be a positive number, got {excerpt(repr(value), 60)}")
    elif hint is str and not isinstance(value, str):
        raise ConfigError(f"{where} must be text, got {excerpt(repr(value), 60)}")


def _listify(value: Any) -> Any:
    return [_listify(v) for v in value] if isinstance(value, tuple | list) else value


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Head:
    """One task head of a network: a name and the global class ids of its outputs, in order.

    A network trained on one task has one head; a merged network has one head per task of the
    models it was merged from (their outputs side by side, in the order of ``heads``).
    """

    name: str
    classes: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"name": self.name, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Head:
        """Rebuild from ``to_dict`` output."""
        return cls(str(data["name"]), tuple(int(c) for c in data["classes"]))


@dataclass
class Network:
    """A model of a registered family, ready to merge.

    classes: the global class ids of the head's outputs (None: 0..num_classes-1).
    identity_blocks: blocks inserted by padding (they compute the identity).
    heads: the task heads the outputs are cut into (None: one head named ``label``).
    """

    config: Any
    module: BlockNet
    classes: tuple[int, ...] | None = None
    identity_blocks: frozenset[int] = field(default_factory=frozenset)
    label: str = "model"
    heads: tuple[Head, ...] | None = None

    @property
    def family(self) -> Family:
        """Return this network's family."""
        return family_of(self.config)

    def graph(self) -> ModelGraph:
        """Return the space graph of this network (identity blocks marked)."""
        return self.family.graph(self.config, self.identity_blocks)

    def head_classes(self) -> tuple[int, ...]:
        """Return the global class id of every head output."""
        n = self.config.num_classes
        return tuple(self.classes) if self.classes is not None else tuple(range(n))

    def task_heads(self) -> tuple[Head, ...]:
        """Return the task heads: ``heads``, or one head with every output."""
        return self.heads if self.heads else (Head(self.label, self.head_classes()),)

    def parameter_count(self) -> int:
        """Return the number of parameters."""
        return sum(p.numel() for p in self.module.parameters())


def build_network(
    config: Any, classes: tuple[int, ...] | None = None, label: str = "model"
) -> Network:
    """Return a freshly initialised Network for ``config`` (uses the global torch RNG)."""
    return Network(config, family_of(config).build(config), classes, frozenset(), label)
