"""Read recipes: from plain dicts, YAML or JSON text, and files (docs/architecture.md).

Unknown keys and values of the wrong type are rejected with a message that names the field and
the fix (the dataclasses of ``heterogui.config`` check the ranges).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from pathlib import Path
from typing import Any

from heterogui.config import (
    AlignmentSpec,
    DataRef,
    ModelRef,
    Recipe,
    TransformerSpec,
    ZipSpec,
    typed_value,
)
from heterogui.errors import ConfigError, ModelLoadError, excerpt
from heterogui.text_input import load_yaml, read_text, value_problem

MODEL_KEYS = ("model_a", "model_b")
# recipe keys that also take one text: the field it fills
SHORT_KEYS = {"model_a": "path", "model_b": "path", "calibration": "source", "evaluation": "source"}
# what an evaluation reads unless it says otherwise: every held-out input
EVALUATION_DEFAULTS = {"split": "test", "size": None}
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of text; anything bigger is not one
# the suffixes of data files a recipe may name (images, sentences or texts, scored pairs)
DATA_FILE_SUFFIXES = (".safetensors", ".txt", ".tsv")


# fields written under another key: a recipe lists models C, D, ... with A and B in "models"
_WRITTEN_AS = {"more_models": "models"}


def _build(cls: type, data: Any, where: str) -> Any:
    """Return ``cls(**data)`` after rejecting unknown keys and building nested dataclasses."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    keys = sorted({_WRITTEN_AS.get(name, name) for name in fields})  # as a recipe writes them
    if not isinstance(data, dict):
        key = where.rsplit(".", 1)[-1]
        top = key in SHORT_KEYS and where == f"recipe.{key}"
        short = f"{key}: {SHORT_KEYS[key].upper()} or " if top else ""
        raise ConfigError(
            f"{where} must be a mapping, got {type(data).__name__} {excerpt(repr(data), 60)}; "
            f"write {short}{key}: {{KEY: VALUE, ...}} with keys {keys}"
        )
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        comma = ""
        if any(isinstance(k, int | float) and not isinstance(k, bool) for k in unknown):
            # {rho: 0,5}: inside braces a comma parts two keys, "rho: 0" and "5"
            comma = " (a number as a key: a decimal comma? write 0.5, not 0,5)"
        raise ConfigError(
            excerpt(f"{where}: unknown keys {unknown}{comma}; known keys: {keys}", 400)
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        nested = _NESTED.get((cls, name))
        if nested and value is not None:
            kwargs[name] = _build(nested, value, f"{where}.{name}")
        elif nested and type(None) not in typing.get_args(hints[name]):
            inner = sorted(f.name for f in dataclasses.fields(nested))
            short = f"{name}: {SHORT_KEYS[name].upper()} or " if name in SHORT_KEYS else ""
            raise ConfigError(
                f"{where}.{name} is empty (null); write {short}{name}: {{KEY: VALUE, ...}} with "
                f"keys {inner}" + ("" if name in MODEL_KEYS else f", or leave {name} out")
            )
        else:
            required = dataclasses.MISSING is fields[name].default is fields[name].default_factory
            kwargs[name] = typed_value(value, hints[name], f"{where}.{name}", required)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # "__init__() missing 1 required positional argument: 'path'"
        missing = re.findall(r"'(\w+)'", str(exc)) if "missing" in str(exc) else []
        if missing:
            key = where.rsplit(".", 1)[-1]
            given = "{" + ", ".join(f"{m}: ..." for m in missing) + "}"
            how = f"list each as {given}" if "[" in key else f"write {key}: {given}"
            raise ConfigError(f"{where} needs {' and '.join(missing)}: {how}") from exc
        raise ConfigError(f"{where}: {excerpt(exc)}") from exc
    except ConfigError as exc:  # "size 2 is too small ...": say whose (recipe.evaluation.size)
        words = str(exc).split(" ", 1)
        if words[0] in fields:
            raise ConfigError(f"{where}.{exc}") from exc
        raise


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

    The models are ``model_a`` and ``model_b``, or a list ``models`` of two or more: A, B, then
    ``more_models``. Each is a mapping (``{path: ..., sha256: ...}``) or a plain path; the data
    (``calibration``, ``evaluation``) a mapping or a source's name or file alone. An evaluation
    without a split reads the ``test`` split (all of it without a size).

    A recipe heterogui recorded (it lists ``versions``) without ``zip.bn_units`` or
    ``zip.norm_weights`` predates that knob: it fused as the paper does, and repeats so (the
    knob false).

    Raises:
        ConfigError: unknown keys, missing models, values out of range.
    """
    data = _with_defaults(_recorded_before_knobs(data))
    if isinstance(data, dict) and "more_models" in data:
        raise ConfigError(
            "recipe: more_models is not a recipe key; list every model under models: [A, B, C]"
        )
    if isinstance(data, dict) and "models" in data:
        return _listed_models(data)
    for key in MODEL_KEYS:
        if isinstance(data, dict) and key not in data:
            raise ConfigError(f"recipe: {key} is missing; give {key}: {{path: FOLDER}}")
    return _build(Recipe, data, "recipe")


def _with_defaults(data: Any) -> Any:
    """Return ``data`` (a copy) with short entries spelt out and the evaluation's defaults.

    ``model_a: PATH`` means ``{path: PATH}``, ``calibration: NAME`` ``{source: NAME}``; an
    evaluation that gives no split reads the held-out ``test`` split, all of it unless it gives
    a size (the calibration's defaults would score the merge on the data it was fitted to).
    """
    if not isinstance(data, dict):
        return data
    out = {
        k: {SHORT_KEYS[k]: v} if k in SHORT_KEYS and isinstance(v, str) else v
        for k, v in data.items()
    }
    if isinstance(out.get("evaluation"), dict):
        out["evaluation"] = {**EVALUATION_DEFAULTS, **out["evaluation"]}
    return out


# zip knobs that default to true and were added after recipes were first recorded: a recorded
# recipe without one merged without it
LATER_KNOBS = ("bn_units", "norm_weights")


def _recorded_before_knobs(data: Any) -> Any:
    """Return ``data`` (a copy) with each of LATER_KNOBS false that its record predates."""
    if not (isinstance(data, dict) and data.get("versions") and isinstance(data.get("zip"), dict)):
        return data
    missing = {knob: False for knob in LATER_KNOBS if knob not in data["zip"]}
    return {**data, "zip": {**data["zip"], **missing}} if missing else data


def _listed_models(data: dict[str, Any]) -> Recipe:
    """Return the Recipe of a dict whose models are a list (``models: [A, B, C, ...]``).

    Raises:
        ConfigError: model_a or model_b given too, a list of fewer than two, a bad entry.
    """
    both = [k for k in ("model_a", "model_b") if k in data]
    if both:
        raise ConfigError(
            f"recipe: give the models either as models: [...] or as model_a/model_b, not both "
            f"(found models and {' and '.join(both)}); remove one"
        )
    listed = data["models"]
    if not isinstance(listed, list):
        raise ConfigError(
            f"recipe.models must be a list of models, got {excerpt(repr(listed), 80)}; write "
            "models: [{path: A}, {path: B}, ...]"
        )
    if len(listed) < 2:
        raise ConfigError(
            f"recipe.models lists {len(listed)} model{'' if len(listed) == 1 else 's'}; a merge "
            "needs two or more: give two or more models"
        )
    refs = [
        _build(ModelRef, entry if isinstance(entry, dict) else {"path": entry}, where)
        for where, entry in ((f"recipe.models[{k}]", e) for k, e in enumerate(listed))
    ]
    rest = {k: v for k, v in data.items() if k != "models"}
    alignment = rest.get("alignment")
    if len(refs) > 2 and isinstance(alignment, dict) and alignment.get("mode") == "manual":
        raise ConfigError(  # before the alignment asks for a mapping an N-way merge cannot use
            "recipe.alignment: an N-way merge aligns every model to the deepest with an "
            "automatic mode; use sma, lma, lma_first, lma_similar, uniform, head or head_tail"
        )
    first = {"model_a": dataclasses.asdict(refs[0]), "model_b": dataclasses.asdict(refs[1])}
    recipe = _build(Recipe, {**rest, **first}, "recipe")
    return dataclasses.replace(recipe, more_models=tuple(refs[2:]))


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe from a .yaml/.yml/.json file.

    Raises:
        ModelLoadError: the file does not exist.
        ConfigError: the file is not text, does not parse, or the recipe is invalid.
    """
    path = Path(path)
    if not path.is_file():
        what = (
            "is a folder, not a file"
            if path.is_dir()
            else "is not a regular file (a device or pipe?)"
            if path.exists()
            else "does not exist"
        )
        raise ModelLoadError(f"recipe file {str(path)!r} {what}; pass a .yaml or .json file")
    text = read_text(path, "recipe", MAX_RECIPE_BYTES)
    if path.suffix.lower() == ".json":  # read as JSON: YAML takes a trailing comma, not a tab
        recipe = _parse_json(text, path)
    else:
        recipe = parse_recipe(text, f"recipe {path}")
    _refuse_paths_beside_the_recipe(recipe, path.parent)
    return recipe


def _refuse_paths_beside_the_recipe(recipe: Recipe, folder: Path) -> None:
    """Raise when a relative path of the recipe is missing here but lies beside the recipe.

    Paths in a recipe are read from the current folder, as the shell reads the command's (a
    recorded recipe names its inputs as the merge was given them); a recipe run from another
    folder whose files lie beside it gets the path to write instead of "does not exist".

    Raises:
        ConfigError: such a path, with the path from here.
    """
    data = [ref.source for ref in (recipe.calibration, recipe.evaluation) if ref is not None]
    named = [m.path for m in recipe.models if ":" not in m.path]
    named += [p for p in data if Path(p).suffix.lower() in DATA_FILE_SUFFIXES]
    for given in named:
        path = Path(given).expanduser()
        if path.is_absolute() or path.exists():
            continue
        if (folder / path).exists():
            beside = folder / path
            raise ConfigError(
                f"{given!r} is not in the current folder but beside the recipe ({beside}); paths "
                f"in a recipe are read from the current folder: write "
                f"{os.path.relpath(beside)!r} or an absolute path, or run heterogui from the "
                "recipe's folder"
            )
        # a recorded recipe inside its output folder (a chain's next merge names the one
        # before, relative to the folder both merges ran in): point to that folder
        above = next((f for f in folder.resolve().parents[:3] if (f / path).exists()), None)
        if above is not None:
            raise ConfigError(
                f"{given!r} is not in the current folder but in {above}, above the recipe (a "
                "recorded recipe names its inputs from the folder its merge ran in); paths in a "
                f"recipe are read from the current folder: run heterogui from {above}, or write "
                f"{os.path.relpath(above / path)!r} or an absolute path"
            )


def _parse_json(text: str, path: Path) -> Recipe:
    """Return the recipe of a .json file, read by the JSON parser.

    Raises:
        ConfigError: text that is not JSON, or JSON that is not a mapping or not a recipe.
    """
    try:
        data = json.loads(text, object_pairs_hook=_once_each)
    except RecursionError:
        raise ConfigError(
            f"recipe {path} nests lists or mappings too deeply to read; write a flat recipe"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"recipe {path} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
            f"{exc.colno}); fix it, or save it as .yaml"
        ) from None
    except ValueError as exc:  # a key given twice, a number of more than 4,300 digits
        raise ConfigError(f"recipe {path} does not parse: {value_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"recipe {path} is a JSON {type(data).__name__}, not an object: a recipe has keys "
            'such as "model_a" and "model_b" (or "models")'
        )
    return recipe_from_dict(data)


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Return a JSON object's mapping, refusing a key given twice (as the YAML reader does;
    JSON would keep the last one without a word).

    Raises:
        ValueError: naming the key and the fix.
    """
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"key {excerpt(repr(key), 40)} is given twice; give each key once")
        data[key] = value
    return data


def parse_recipe(text: str, name: str = "the recipe") -> Recipe:
    """Return the recipe written as YAML (or JSON, a subset of YAML) in ``text``.

    Raises:
        ConfigError: the text does not parse, uses an alias, or the recipe is invalid.
    """
    if len(text) > MAX_RECIPE_BYTES:
        raise ConfigError(f"{name} is {len(text):,} characters long: not a recipe")
    data = load_yaml(text, name)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name} is a {type(data).__name__}, not a mapping: a recipe has keys such as "
            "model_a: {path: ...} and model_b: {path: ...} (or models: [...])"
        )
    return recipe_from_dict(data)
