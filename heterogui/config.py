"""The recipe: everything needed to repeat a merge bit for bit (docs/architecture.md).

Frozen dataclasses that round-trip through YAML and JSON. Unknown keys and out-of-range values
are rejected with a message that names the field and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from heterogui.errors import ConfigError, ModelLoadError

ALIGN_MODES = ("sma", "lma", "uniform", "head", "head_tail", "manual")
MATCHER_NAMES = ("zip", "zip_naive", "permute", "average")
DTYPES = ("float32", "float64")
OVERRIDE_KEYS = {"width", "rho", "alpha", "beta", "matcher"}
IDENTITIES = ("exact", "ls", "plain")
POOLINGS = ("mean", "cls")


@dataclass(frozen=True)
class ModelRef:
    """A model: a folder, ``zoo:PAIR/a`` / ``zoo:PAIR/b``, or ``minilm:NAME``.

    A folder is a heterogui network (config.json + model.safetensors) or a Hugging Face
    save_pretrained folder (its config.json has a ``model_type``); ``minilm:all-MiniLM-L6-v2`` and
    ``minilm:paraphrase-MiniLM-L3-v2`` name the offline MiniLM models.

    sha256: the weights file's hash; when set, loading checks it.
    """

    path: str
    sha256: str | None = None


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
        if self.size is not None and self.size < 4:
            raise ConfigError(f"data size {self.size} is too small: use at least 4 inputs")
        if self.batch_size < 4:
            raise ConfigError(f"batch_size {self.batch_size} is too small: use at least 4")


@dataclass(frozen=True)
class AlignmentSpec:
    """How layers are aligned; ``mapping`` is required for "manual", else it records the result."""

    mode: str = "sma"
    mapping: dict[str, list[list[int]]] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ALIGN_MODES:
            raise ConfigError(f"alignment.mode {self.mode!r} is unknown; use one of {ALIGN_MODES}")
        if self.mode == "manual" and not self.mapping:
            raise ConfigError(
                'alignment.mode "manual" needs alignment.mapping {a: [...], b: [...]}'
            )


@dataclass(frozen=True)
class ZipSpec:
    """Matcher and knobs; overrides: merge point -> {width | rho | alpha | beta | matcher}."""

    matcher: str = "zip"
    alpha: float = 0.5
    beta: float = 1.0
    rho: float = 1.0
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_knobs("zip", self.matcher, self.alpha, self.beta, self.rho)
        for space, knobs in self.overrides.items():
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
            width = knobs.get("width")
            if width is not None and (not isinstance(width, int) or width < 1):
                raise ConfigError(f"zip.overrides.{space}.width must be a positive integer")


def _check_knobs(where: str, matcher: str, alpha: float, beta: float, rho: float) -> None:
    if matcher not in MATCHER_NAMES:
        raise ConfigError(f"{where}.matcher {matcher!r} is unknown; use one of {MATCHER_NAMES}")
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
                f"transformer.identity {self.identity!r} is unknown; use one of {IDENTITIES}"
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(
                f"transformer.pooling {self.pooling!r} is unknown; use one of {POOLINGS}"
            )


@dataclass(frozen=True)
class Recipe:
    """A merge, completely specified."""

    model_a: ModelRef
    model_b: ModelRef
    calibration: DataRef = field(default_factory=DataRef)
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

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is unknown; use one of {DTYPES}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"device {self.device!r} is unknown; use auto, cpu, cuda or cuda:N")
        if self.stop is not None and self.stop < 0:
            raise ConfigError(f"stop = {self.stop} must be >= 0 (or null for a full zip)")

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict (JSON/YAML ready)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """Return the recipe as YAML with sorted keys."""
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    def to_json(self) -> str:
        """Return the recipe as sorted JSON."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)


def _build(cls: type, data: Any, where: str) -> Any:
    """Return ``cls(**data)`` after rejecting unknown keys and building nested dataclasses."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        nested = _NESTED.get((cls, name))
        built = nested and value is not None
        kwargs[name] = _build(nested, value, f"{where}.{name}") if built else value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


_NESTED = {
    (Recipe, "model_a"): ModelRef,
    (Recipe, "model_b"): ModelRef,
    (Recipe, "calibration"): DataRef,
    (Recipe, "evaluation"): DataRef,
    (Recipe, "alignment"): AlignmentSpec,
    (Recipe, "zip"): ZipSpec,
    (Recipe, "transformer"): TransformerSpec,
}


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Return a Recipe from a plain dict.

    Raises:
        ConfigError: unknown keys, missing models, values out of range.
    """
    for key in ("model_a", "model_b"):
        if isinstance(data, dict) and key not in data:
            raise ConfigError(f"recipe: {key} is missing; give {key}: {{path: FOLDER}}")
    return _build(Recipe, data, "recipe")


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe from a .yaml/.yml/.json file.

    Raises:
        ModelLoadError: the file does not exist.
        ConfigError: the file does not parse or the recipe is invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"recipe file {str(path)!r} does not exist")
    return parse_recipe(path.read_text(), str(path))


def parse_recipe(text: str, name: str = "the recipe") -> Recipe:
    """Return the recipe written as YAML (or JSON, a subset of YAML) in ``text``.

    Raises:
        ConfigError: the text does not parse or the recipe is invalid.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name} does not parse: {exc}") from exc
    return recipe_from_dict(data)
