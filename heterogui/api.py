"""Merge from a recipe: the one path the CLI, the workbench and notebooks share."""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import heterogui
from heterogui.config import DataRef, ModelRef, Recipe, load_recipe
from heterogui.data import load_inputs, make_batches, tensor_data_sha256
from heterogui.errors import ConfigError
from heterogui.models.family import Network
from heterogui.models.io import WEIGHTS_FILE, file_sha256, load_network
from heterogui.pipeline import MergeResult, Progress, ZipSettings, prepare, zip_prepared

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class RecipeMerge:
    """A merge run from a recipe: the result, the completed recipe and the report.

    hf: for Hugging Face models (BERT or ViT folders), the ``heterogui.models.hf.pair.HFMerge``
    (family, tokenizer and folders: what ``export_merge`` needs); None otherwise.
    """

    result: MergeResult
    recipe: Recipe
    report: dict[str, Any]
    hf: Any = None


def model_folder(ref: ModelRef) -> Path:
    """Return the folder a ModelRef points to (building a zoo pair first if needed).

    Raises:
        ConfigError: a malformed zoo reference.
    """
    if ref.path.startswith("zoo:"):
        from heterogui.zoo.pairs import pair_folder

        name, _, which = ref.path[4:].partition("/")
        if which not in ("a", "b"):
            raise ConfigError(f"zoo reference {ref.path!r} must look like zoo:PAIR/a or zoo:PAIR/b")
        return pair_folder(name, which)
    return Path(ref.path).expanduser()


def load_model(ref: ModelRef, device: str | torch.device = "cpu") -> tuple[Network, str]:
    """Load the model a ModelRef names and return it with its weights' sha256.

    Raises:
        ConfigError: the weights' hash differs from the one the recipe records.
        ModelLoadError: missing or corrupt files.
    """
    folder = model_folder(ref)
    net = load_network(folder, device)
    digest = file_sha256(folder / WEIGHTS_FILE)
    if ref.sha256 and ref.sha256 != digest:
        raise ConfigError(
            f"the weights of {ref.path} changed: sha256 {digest[:12]}... but the recipe records "
            f"{ref.sha256[:12]}...; restore the original model or remove sha256 from the recipe"
        )
    return net, digest


def versions() -> dict[str, str]:
    """Return the versions that can change a merge's numbers."""
    return {
        "heterogui": heterogui.__version__,
        "torch": metadata.version("torch"),
        "python": platform.python_version(),
    }


def settings_of(recipe: Recipe) -> ZipSettings:
    """Return the ZipSettings a recipe asks for."""
    z = recipe.zip
    return ZipSettings(z.matcher, z.alpha, z.beta, z.rho, z.overrides, recipe.stop)


def merge_recipe(recipe: Recipe | str | Path, progress: Progress | None = None) -> RecipeMerge:
    """Run the merge a recipe describes and return the result, completed recipe and report.

    Recipes naming Hugging Face models (folders with a ``model_type`` config, ``minilm:NAME``)
    run through ``heterogui.models.hf.recipe_merge``: BERT on text, ViT on image tensors.

    Raises:
        HeteroguiError: any invalid recipe field, model or data (see the subclasses).
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    from heterogui.models.hf.recipe_merge import is_hf_ref, merge_hf_recipe

    if is_hf_ref(recipe.model_a) or is_hf_ref(recipe.model_b):
        return merge_hf_recipe(recipe, progress)
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    net_a, sha_a = load_model(recipe.model_a)
    net_b, sha_b = load_model(recipe.model_b)
    inputs, labels = load_inputs(recipe.calibration)
    calibration = dataclasses.replace(recipe.calibration, sha256=tensor_data_sha256(inputs, labels))
    batches = make_batches(inputs, recipe.calibration.batch_size)
    manual = recipe.alignment.mapping if recipe.alignment.mode == "manual" else None
    prepared = prepare(
        net_a,
        net_b,
        batches,
        mode=recipe.alignment.mode,
        manual=manual,
        device=recipe.device,
        reset_input_bn=recipe.reset_input_bn,
        progress=progress,
    )
    result = zip_prepared(prepared, settings_of(recipe), DTYPES[recipe.dtype], progress)
    merge_seconds = time.perf_counter() - start  # the report's total leaves evaluation out
    mapping = result.alignment.mapping()
    if recipe.alignment.mapping and recipe.alignment.mapping != mapping:
        log.warning(
            "alignment %s gave %s, not the recorded %s",
            recipe.alignment.mode,
            mapping,
            recipe.alignment.mapping,
        )
    evaluation, metrics = _evaluate(result, recipe.evaluation)
    done = dataclasses.replace(
        recipe,
        model_a=dataclasses.replace(recipe.model_a, sha256=sha_a),
        model_b=dataclasses.replace(recipe.model_b, sha256=sha_b),
        alignment=dataclasses.replace(recipe.alignment, mapping=mapping),
        calibration=calibration,
        evaluation=evaluation,
        versions=versions(),
    )
    from heterogui.report import merge_report

    report = merge_report(result, done, merge_seconds, metrics)
    return RecipeMerge(result, done, report)


def _evaluate(result: MergeResult, ref: DataRef | None) -> tuple[DataRef | None, Any]:
    """Return the evaluation DataRef with its data's sha256, and the metrics on that data.

    The data is drawn once: the hash and the metrics come from the same tensors.
    """
    if ref is None:
        return None, None
    from heterogui.evaluate.report import evaluation_rows, labelled_split

    inputs, labels = load_inputs(ref)
    split = labelled_split(inputs, labels, ref.source)
    rows = evaluation_rows(result, split, ref.batch_size)
    return dataclasses.replace(ref, sha256=tensor_data_sha256(inputs, labels)), rows


def merge(
    model_a: Network | Recipe | str | Path,
    model_b: Network | None = None,
    batches: list[torch.Tensor] | None = None,
    *,
    mode: str = "sma",
    manual: dict[str, list[list[int]]] | None = None,
    settings: ZipSettings | None = None,
    device: str | torch.device = "auto",
    reset_input_bn: bool = True,
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
) -> MergeResult:
    """Merge two networks on calibration batches, or run a recipe (a Recipe or its file).

    batches: list of input tensors (B, ...) drawn from both tasks.

    Raises:
        ConfigError: networks given without batches, or invalid settings.
        HeteroguiError: any other invalid input (see the subclasses).
    """
    if isinstance(model_a, Recipe | str | Path):
        return merge_recipe(model_a, progress).result
    if model_b is None or not batches:
        raise ConfigError(
            "merge(net_a, net_b, batches): give both networks and calibration batches"
        )
    prepared = prepare(
        model_a,
        model_b,
        batches,
        mode=mode,
        manual=manual,
        device=device,
        reset_input_bn=reset_input_bn,
        progress=progress,
    )
    return zip_prepared(prepared, settings or ZipSettings(), dtype, progress)
