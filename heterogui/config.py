"""The recipe: everything needed to repeat a merge bit for bit (docs/architecture.md).

Frozen dataclasses that round-trip through YAML and JSON. Unknown keys and out-of-range values
are rejected with a message that names the field and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from dataclasses import dataclass, field
from types import UnionType
from typing import Any

import yaml

from heterogui.errors import ConfigError, excerpt

# The names of the engine's registries (align.alignment.MODES, zip.matchers.MATCHERS), listed
# here so that reading a recipe needs no torch; tests/test_engine.py checks they agree.
ALIGN_MODES = ("sma", "lma", "lma_first", "lma_similar", "uniform", "head", "head_tail", "manual")
# what the alignment's CKA compares (align.similarity.MEASURES): each block's output or what it
# adds to its input; "auto" (the default): the family's (models.family.Family.default_measure)
SIMILARITY_MEASURES = ("auto", "outputs", "updates")
MATCHER_NAMES = ("zip", "zip_naive", "permute", "average")
DTYPES = ("float32", "float64")
# the dtypes an export writes weights in on request ("auto": the models' own, as stored:
# ``run_export.export_dtype``)
EXPORT_DTYPES = ("auto", "float32", "float16", "bfloat16")
OVERRIDE_TYPES = {
    "width": int,
    "rho": float,
    "alpha": float,
    "beta": float,
    "matcher": str,
    "heads": str,
}
OVERRIDE_KEYS = set(OVERRIDE_TYPES)
IDENTITIES = ("exact", "ls", "plain")
# how matched weights are combined (fusion.fuse; "least_squares": fusion.regression;
# "least_squares_heads": that and the heads' unmerge refit, "least_squares_sequential": both
# refit block by block, fusion.sequential) and the least-squares ridge, relative to the merged
# features' mean variance. "auto" (the default): the fusion measured best for the models' family
# (models.family.Family.default_fusion)
FUSIONS = ("auto", "average", "least_squares", "least_squares_heads", "least_squares_sequential")
DEFAULT_FUSION = "auto"
DEFAULT_RIDGE = 1e-2
POOLINGS = ("mean", "cls")
# how an attention layer reaches its width (zip.plan.ZipSettings.heads): "pair" averages a head
# of A with one of B (the paper's), "select" keeps each pair's stronger head whole (zip.select),
# "search" chooses each pair's kept head on the calibration data (head_search), "split" keeps
# every head of both models at half its dimension (fusion.split_heads; every layer at once).
# "auto" (the default): the way measured best for the models' family
# (models.family.Family.default_heads)
SPLIT_HEADS = "split"
DEFAULT_HEADS = "auto"
HEAD_MERGES = (DEFAULT_HEADS, "pair", "select", "search", SPLIT_HEADS)


MAX_SEED = 2**63 - 1  # the largest seed torch's and NumPy's generators both take


def check_device_name(device: object) -> None:
    """Refuse a device other than auto, cpu, cuda or cuda:N (in one line).

    Raises:
        ConfigError: naming the device and the ones to use.
    """
    # torch keeps a device index in 8 bits: "cuda:128" would become cuda:-128
    match = isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(?::(\d{1,3}))?", device)
    if not match or int(match.group(1) or 0) > 127:
        shown = excerpt(repr(device), 60)
        raise ConfigError(f"device {shown} is unknown; use auto, cpu, cuda or cuda:N (N < 128)")


def check_seed(seed: int, what: str) -> None:
    """Raise unless ``seed`` is a whole number from 0 to ``MAX_SEED``.

    Raises:
        ConfigError: naming ``what`` and the range.
    """
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(
            f"{what} = {seed} is out of range: use a whole number from 0 to 2**63 - 1"
        )


def check_sha256(value: Any, what: str) -> None:
    """Raise unless ``value`` is None or a sha256 as heterogui records it (64 hex digits): a
    hash typed wrong was blamed on "another version" of the model or data.

    Raises:
        ConfigError: naming ``what``.
    """
    if value is not None and not (isinstance(value, str) and SHA256.fullmatch(value)):
        raise ConfigError(
            f"{what} must be 64 lowercase hexadecimal digits (the sha256 a recorded recipe "
            "holds), got "
            f"{excerpt(repr(value), 40)}; copy it again from the recorded recipe or remove it"
        )


SHA256 = re.compile("[0-9a-f]{64}")  # as hexdigest() writes it, and as it is compared


@dataclass(frozen=True)
class ModelRef:
    """A model: a folder, ``zoo:PAIR/a`` / ``zoo:PAIR/b``, or ``minilm:NAME``.

    A folder is a heterogui network (config.json + model.safetensors) or a Hugging Face
    save_pretrained folder (its config.json has a ``model_type``); ``minilm:all-MiniLM-L6-v2`` and
    ``minilm:paraphrase-MiniLM-L3-v2`` name the offline MiniLM models.

    sha256: the weights file's hash; when set, loading checks it.
    files_sha256: the hash of the folder's config and tokenizer files (``MODEL_FILES``), which
        change what the weights compute or read; when set, loading checks it too.
    """

    path: str
    sha256: str | None = None
    files_sha256: str | None = None

    def __post_init__(self) -> None:
        # the messages start with the field's name: a recipe puts its place in front of it
        for name in ("sha256", "files_sha256"):
            check_sha256(getattr(self, name), name)


@dataclass(frozen=True)
class DataRef:
    """Inputs: a zoo dataset name (with split) or a .safetensors file with an "inputs" tensor.

    Text (for Hugging Face models): "sentences" (the built-in calibration sentences, drawn with
    ``seed``), a .txt file (one sentence per line), and for evaluation "sts" (the built-in scored
    sentence pairs) or a .tsv file of pairs (score, sentence1, sentence2).
    size: how many inputs to draw (seeded, without replacement); None: all of them.
    sha256: for text, the hash of the sentences used; when set, loading checks it.
    """

    source: str = "digits"
    split: str = "calibration"
    size: int | None = 256
    batch_size: int = 64
    seed: int = 0
    sha256: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.source, str):  # a path typed with a space around it, as a model's
            object.__setattr__(self, "source", self.source.strip())
        # the messages start with the field's name: a recipe puts its place in front of it
        check_seed(self.seed, "seed")
        check_sha256(self.sha256, "sha256")
        if self.size is not None and self.size < 4:
            raise ConfigError(f"size {self.size} is too small: use at least 4 inputs")
        if self.batch_size < 4:
            raise ConfigError(f"batch_size {self.batch_size} is too small: use at least 4")

    def has_suffix(self, suffix: str) -> bool:
        """Return whether the source is a file of that kind (".txt"; "NOTES.TXT" is one too)."""
        return self.source.lower().endswith(suffix)


@dataclass(frozen=True)
class AlignmentSpec:
    """How layers are aligned; ``mapping`` is required for "manual", else it records the result.

    measure: what the CKA the alignment reads compares ("outputs" of the blocks, the paper's;
    their "updates", what each adds to its input; "auto": the models' family's).
    """

    mode: str = "sma"
    mapping: dict[str, list[list[int]]] | None = None
    measure: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in ALIGN_MODES:
            raise ConfigError(
                f"alignment.mode {excerpt(repr(self.mode), 60)} is unknown"
                f"; use one of {ALIGN_MODES}"
            )
        if self.measure not in SIMILARITY_MEASURES:
            raise ConfigError(
                f"alignment.measure {excerpt(repr(self.measure), 60)} is unknown"
                f"; use one of {SIMILARITY_MEASURES}"
            )
        if self.mode == "manual" and not self.mapping:
            raise ConfigError(
                'alignment.mode "manual" needs alignment.mapping {a: [...], b: [...]}'
            )
        if self.mapping is not None:
            _check_mapping(self.mapping)


def _slot_list(stage: Any) -> bool:
    """Return whether ``stage`` is a list of whole numbers from 0 (one stage's slots)."""
    return isinstance(stage, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in stage
    )


def _check_mapping(mapping: Any) -> None:
    """Refuse a mapping that is not {a: [[slot, ...] per stage], b: [...]} of whole numbers.

    Whether it fits the models (stages, depths, monotone slots) is checked when they align.

    Raises:
        ConfigError: naming the field and the form it takes.
    """
    form = "{a: [[0, 1, 2], [0, 1]], b: [[0, 2], [0, 1]]}: one list of slots per stage"
    if not isinstance(mapping, dict) or set(mapping) != {"a", "b"}:
        keys = sorted(map(str, mapping)) if isinstance(mapping, dict) else None
        got = f" (it has the keys {excerpt(keys, 80)})" if keys is not None else ""
        raise ConfigError(f"alignment.mapping must look like {form}{got}")
    for key in ("a", "b"):
        stages = mapping[key]
        if not isinstance(stages, list) or not all(map(_slot_list, stages)):
            raise ConfigError(
                f"alignment.mapping.{key} is {excerpt(stages, 60)}; it must look like {form}, "
                "slots being whole numbers from 0"
            )


@dataclass(frozen=True)
class ZipSpec:
    """Matcher and knobs; overrides: merge point -> {width | rho | alpha | beta | matcher | heads}
    (a key with ``*``, ``?`` or ``[``, such as "*.qk", is a pattern of merge points:
    ``zip.plan.ZipSettings``).

    fusion: "auto" (the family's default: least squares for VGG and ResNet models, sequential
    least squares for ViT models, the paper's average otherwise),
    "average" (the paper's), "least_squares", "least_squares_heads" or
    "least_squares_sequential"; ridge: the least-squares ridge.
    renormalize: rescale the merged features to their groups' average statistics after fusion.
    heads: "auto" (the family's: split for ViT models, pair for the others), "pair" (the
    paper's: attention heads of A and B paired and averaged), "select"
    (each merged pair's stronger head, by output energy, kept whole in place of their average)
    or "search" (the kept head of each pair chosen on the calibration data, from select's
    choice: ``head_search``); an override knob too. "split": every head of both models kept,
    each cut to half its dimension (``fusion.split_heads``; BERT, ViT and GPT-2, every layer
    at once, so not an override).
    bn_units: fuse each layer that feeds a BatchNorm in that BatchNorm's units (its rows
    divided by the running std first: ``fusion.bn_units``); no effect on models without
    BatchNorm. The paper's fusion is "average" with bn_units false; "auto" fusion turns it
    off for the one-to-one baselines (permute, weight average).
    norm_weights: weigh each merged feature of a residual stream that RMSNorms read (decoder
    language models) by the features of each model it stands for (``fusion.norm_weights``);
    no effect on other models. The paper's norms weigh every merged feature alike (false).
    """

    matcher: str = "zip"
    alpha: float = 0.5
    beta: float = 1.0
    rho: float = 1.0
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    fusion: str = DEFAULT_FUSION
    ridge: float = DEFAULT_RIDGE
    renormalize: bool = False
    heads: str = DEFAULT_HEADS
    bn_units: bool = True
    norm_weights: bool = True

    def __post_init__(self) -> None:
        _check_knobs("zip", self.matcher, self.alpha, self.beta, self.rho)
        check_fusion(self.fusion, self.ridge)
        check_heads("zip.heads", self.heads)
        for space, knobs in self.overrides.items():
            if not isinstance(space, str) or not space:
                raise ConfigError(
                    f"zip.overrides has the key {excerpt(repr(space), 40)}: name a merge point "
                    "such as stage1.stream, or a pattern such as '*.qk'"
                )
            if not isinstance(knobs, dict):
                got = "null" if knobs is None else excerpt(repr(knobs), 60)
                raise ConfigError(
                    f"zip.overrides.{excerpt(space, 60)} must be a mapping such as "
                    f"{{rho: 0.5}} or {{width: 64}}, got {got}"
                )
            for key, hint in OVERRIDE_TYPES.items():
                if key in knobs:
                    typed_value(knobs[key], hint, f"zip.overrides.{excerpt(space, 60)}.{key}")
            unknown = set(knobs) - OVERRIDE_KEYS
            if unknown:
                raise ConfigError(
                    f"zip.overrides.{space}: unknown keys {sorted(unknown)}; "
                    f"use {sorted(OVERRIDE_KEYS)}"
                )
            _check_knobs(
                f"zip.overrides.{space}",
                knobs.get("matcher", self.matcher),
                knobs.get("alpha", 0.5),
                knobs.get("beta", 1.0),
                knobs.get("rho", 1.0),
            )
            if "heads" in knobs:
                check_heads(f"zip.overrides.{excerpt(space, 60)}.heads", knobs["heads"])
                check_split_override(
                    f"zip.overrides.{excerpt(space, 60)}", self.heads, knobs["heads"]
                )
            width = knobs.get("width")
            if width is not None and (not isinstance(width, int) or width < 1):
                raise ConfigError(f"zip.overrides.{space}.width must be a positive integer")
            if width is not None and "rho" in knobs:  # the width would win without a word
                raise ConfigError(
                    f"zip.overrides.{excerpt(space, 60)} sets both rho and width: give one (a "
                    "width is the merged width itself; rho sets it from the models' widths)"
                )


def check_split_override(where: str, heads: str, override: str | None) -> None:
    """Raise ConfigError when an override's heads and the global ``heads`` disagree on a split.

    A split gives the merged model one head size, so it applies to every attention layer or
    to none (``fusion.split_heads``).
    """
    if override is not None and SPLIT_HEADS in (heads, override) and override != heads:
        raise ConfigError(
            f"{where}: heads {excerpt(repr(override), 60)} with zip.heads {heads!r}: split "
            "gives every attention layer one head size, so it is set for all of them "
            "(zip.heads: split) and no layer may differ; remove the override"
        )


def check_heads(where: str, heads: str) -> None:
    """Raise ConfigError for an unknown way of merging attention heads."""
    if heads not in HEAD_MERGES:
        raise ConfigError(
            f"{where} {excerpt(repr(heads), 60)} is unknown; use one of {HEAD_MERGES}"
        )


def check_fusion(fusion: str, ridge: float) -> None:
    """Raise ConfigError for an unknown fusion or a ridge that is not a positive number."""
    if fusion not in FUSIONS:
        raise ConfigError(
            f"zip.fusion {excerpt(repr(fusion), 60)} is unknown; use one of {FUSIONS}"
        )
    if isinstance(ridge, bool) or not (isinstance(ridge, int | float) and 0 < ridge < math.inf):
        raise ConfigError(
            f"zip.ridge = {ridge!r} is out of range: use a positive number such as "
            f"{DEFAULT_RIDGE} (relative to the merged features' mean variance)"
        )


def _check_knobs(where: str, matcher: str, alpha: float, beta: float, rho: float) -> None:
    if matcher not in MATCHER_NAMES:
        raise ConfigError(
            f"{where}.matcher {excerpt(repr(matcher), 60)} is unknown; use one of {MATCHER_NAMES}"
        )
    if not 0 < alpha <= 1:
        raise ConfigError(f"{where}.alpha = {alpha} is out of range: use 0 < alpha <= 1")
    if not 0 <= beta <= 1:
        raise ConfigError(f"{where}.beta = {beta} is out of range: use 0 <= beta <= 1")
    if not 0 <= rho <= 1:
        raise ConfigError(f"{where}.rho = {rho} is out of range: use 0 <= rho <= 1")


@dataclass(frozen=True)
class TransformerSpec:
    """Options of Hugging Face (BERT-family) merges.

    identity: how the shallower model's padded layers are built ("exact", "ls", "plain").
    pooling: how an embedding model pools token states ("mean" or "cls").
    """

    identity: str = "exact"
    pooling: str = "mean"

    def __post_init__(self) -> None:
        if self.identity not in IDENTITIES:
            raise ConfigError(
                f"transformer.identity {excerpt(repr(self.identity), 60)} is unknown"
                f"; use one of {IDENTITIES}"
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(
                f"transformer.pooling {excerpt(repr(self.pooling), 60)} is unknown"
                f"; use one of {POOLINGS}"
            )


@dataclass(frozen=True)
class Recipe:
    """A merge, completely specified.

    calibration: the data the statistics are collected on; None: the models' task's own
        (``Task.default_calibration``: the zoo dataset the models were trained on, the built-in
        sentences for sentence encoders, the built-in domains for language models). A
        recorded recipe writes the data a merge used.
    more_models: models C, D, ... of an N-way merge of three or more models (written as one
    list, ``models: [A, B, C, ...]``); empty for a merge of two.
    """

    model_a: ModelRef
    model_b: ModelRef
    calibration: DataRef | None = None
    alignment: AlignmentSpec = field(default_factory=AlignmentSpec)
    zip: ZipSpec = field(default_factory=ZipSpec)
    stop: int | None = None
    evaluation: DataRef | None = None
    reset_input_bn: bool = True
    transformer: TransformerSpec | None = None
    seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    versions: dict[str, str] = field(default_factory=dict)
    more_models: tuple[ModelRef, ...] = ()

    def __post_init__(self) -> None:
        check_seed(self.seed, "recipe.seed")
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"dtype {excerpt(repr(self.dtype), 60)} is unknown; use one of {DTYPES}"
            )
        check_device_name(self.device)
        if self.stop is not None and self.stop < 0:
            raise ConfigError(f"stop = {self.stop} must be >= 0 (or null for a full zip)")

    @property
    def models(self) -> tuple[ModelRef, ...]:
        """Return every model of the merge: A, B, then C, D, ..."""
        return (self.model_a, self.model_b, *self.more_models)

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict (JSON/YAML ready); three or more models as one ``models`` list."""
        data = dataclasses.asdict(self)
        more = data.pop("more_models")
        if more:
            data["models"] = [data.pop("model_a"), data.pop("model_b"), *more]
        return data

    def to_yaml(self) -> str:
        """Return the recipe as YAML with sorted keys (names and text as written, UTF-8)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=True, allow_unicode=True)

    def to_json(self) -> str:
        """Return the recipe as sorted JSON."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)


_KINDS = {
    str: "text",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    dict: "a mapping",
}


def typed_value(value: Any, hint: Any, where: str, required: bool = False) -> Any:
    """Return ``value`` if it has the field's type (None where the field allows it).

    required: the field has no default, so an empty one cannot be left out either.

    Raises:
        ConfigError: naming the field, the value (an excerpt) and the type it needs.
    """
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, UnionType) else ()
    types = [typing.get_origin(t) or t for t in (options or (hint,))]
    if value is None and type(None) in types:
        return value
    for kind in types:
        plain = typing.get_origin(kind) or kind
        if plain is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if plain is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if plain in (str, bool, dict) and isinstance(value, plain):
            return value
    wanted = " or ".join(_KINDS.get(t, getattr(t, "__name__", str(t))) for t in types)
    wanted = wanted.replace("NoneType", "null")
    if value is None:  # not "None (NoneType)": the recipe wrote null, or nothing after the key
        fix = "fill it in" if required else "fill it in or leave it out"
        raise ConfigError(f"{where} is empty (null); it must be {wanted}: {fix}")
    fix = "fix the value in the recipe"
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+,\d+\s*", value) and float in types:
        fix = f"write a decimal point: {value.strip().replace(',', '.')}"  # 0,5 from a locale
    raise ConfigError(
        f"{where} must be {wanted}, got {excerpt(repr(value), 80)} "
        f"({_KINDS.get(type(value), type(value).__name__)}); {fix}"
    )
