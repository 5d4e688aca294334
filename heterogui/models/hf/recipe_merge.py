"""Recipes whose models are Hugging Face folders (BERT, ViT, ``minilm:NAME``): the CLI's HF path.

``heterogui.api.merge_recipe`` hands such recipes here; the merge itself is ``pair.merge_hf``
(the one Hugging Face path), picked by model A's config.json ``model_type``. BERT runs on the
recipe's text calibration data (``heterogui.data.load_sentences``, tokenised with model A's
tokenizer after the pre-flight checked both share one vocabulary), and its report adds the
sentence-similarity Spearman of A, B and the merged model when the recipe names evaluation
pairs. ViT runs on image tensors (``heterogui.data.load_inputs``: a zoo dataset or a
.safetensors file); ViT recipes take no evaluation yet.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heterogui.api import DTYPES, RecipeMerge, settings_of
from heterogui.config import ModelRef, Recipe, TransformerSpec, recipe_from_dict
from heterogui.data import (
    is_text,
    load_inputs,
    load_sentence_pairs,
    load_sentences,
    pair_lines,
    tensor_data_sha256,
    text_sha256,
)
from heterogui.errors import ConfigError
from heterogui.models.hf.pair import HFMerge, family_of, merge_hf, weights_sha256
from heterogui.pipeline import Progress
from heterogui.report import merge_report

if TYPE_CHECKING:
    from heterogui.evaluate.sentences import Pair

log = logging.getLogger(__name__)
MINILM_PREFIX = "minilm:"


def is_hf_ref(ref: ModelRef) -> bool:
    """Return whether a ModelRef names a Hugging Face model (``minilm:`` or an HF folder).

    An HF folder's config.json has a ``model_type`` and is not a heterogui network config.
    """
    if ref.path.startswith(MINILM_PREFIX):
        return True
    config = Path(ref.path).expanduser() / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "model_type" in data and "heterogui" not in data


def hf_folder(ref: ModelRef) -> Path:
    """Return the local folder of a Hugging Face ModelRef (building MiniLM-L3 on first use).

    Raises:
        ConfigError: an unknown ``minilm:`` name.
        ModelLoadError: the MiniLM packages are missing.
    """
    if not ref.path.startswith(MINILM_PREFIX):
        return Path(ref.path).expanduser()
    from heterogui.models.hf import minilm

    name = ref.path[len(MINILM_PREFIX) :]
    if name == minilm.L6_NAME:
        return minilm.minilm_l6_path()
    if name == minilm.L3_NAME:
        return minilm.minilm_l3_path()
    raise ConfigError(
        f"unknown MiniLM model {ref.path!r}; use one of "
        + ", ".join(f"{MINILM_PREFIX}{n}" for n in minilm.NAMES)
    )


def _check_sha(ref: ModelRef, folder: Path) -> None:
    digest = weights_sha256(folder)
    if ref.sha256 and ref.sha256 != digest:
        raise ConfigError(
            f"the weights of {ref.path} changed: sha256 {(digest or 'none')[:12]}... but the "
            f"recipe records {ref.sha256[:12]}...; restore the model or remove sha256"
        )


def _check_kinds(recipe: Recipe) -> None:
    """Raise if a Hugging Face recipe mixes model kinds.

    Raises:
        ConfigError: one model is not a Hugging Face model.
    """
    kinds = [is_hf_ref(r) for r in (recipe.model_a, recipe.model_b)]
    if not all(kinds):
        other = recipe.model_b if kinds[0] else recipe.model_a
        raise ConfigError(
            f"{other.path!r} is not a Hugging Face model but the other one is; merge two "
            "Hugging Face folders (config.json with model_type) or two heterogui networks"
        )


def _check_data(recipe: Recipe, family: str) -> None:
    """Raise if calibration/evaluation data are of the wrong kind for the family.

    Raises:
        ConfigError: data that are not text (BERT) or not image tensors (ViT).
    """
    if family == "vit" and recipe.evaluation is not None:
        # Both heads of Hugging Face classifiers number their classes from 0: task rows would
        # mix them up, and feature models have no classes at all.
        raise ConfigError(
            "evaluation of ViT folders from a recipe is not supported yet; remove evaluation "
            "(report.json still has widths, parameters and timings) and evaluate the exported "
            "folder yourself"
        )
    for name in ("calibration", "evaluation"):
        ref = getattr(recipe, name)
        if ref is None or is_text(ref) == (family == "bert"):
            continue
        if family == "bert":
            raise ConfigError(
                f"{name}.source {ref.source!r} is not text; BERT models need "
                '"sentences" or a .txt file to calibrate, "sts" or a .tsv file to evaluate'
            )
        raise ConfigError(
            f"{name}.source {ref.source!r} is text; ViT models need images: a dataset name "
            '(such as "digits") or a .safetensors file with an "inputs" tensor (N, C, H, W)'
        )


def sts_metrics(merge: HFMerge, pairs: Sequence[Pair]) -> dict[str, float]:
    """Return the Spearman of A, B and the merged model on scored sentence pairs.

    "merged" scores the mean-pooled merged token states (what the exported folder gives).
    """
    from heterogui.evaluate.sentences import merged_embedders, network_embedder, sts_spearman

    prep, tok = merge.result.prepared, merge.tokenizer
    dev = prep.device
    return {
        "spearman A": sts_spearman(network_embedder(prep.net_a.module), tok, pairs, dev),
        "spearman B": sts_spearman(network_embedder(prep.net_b.module), tok, pairs, dev),
        "spearman merged": sts_spearman(
            merged_embedders(merge.result.model)["merged"], tok, pairs, dev
        ),
    }


def _data(recipe: Recipe, family: str) -> tuple[Any, str, Recipe, list[Pair] | None]:
    """Return (calibration data, its sha256, recipe with hashed evaluation, sentence pairs).

    Read (and hashed) before the expensive part. Calibration data: sentences (BERT) or images
    (N, C, H, W) (ViT, drawn as ``load_inputs`` draws them); sentence pairs: BERT's evaluation,
    None otherwise.
    """
    pairs = None
    if family == "vit":
        inputs, labels = load_inputs(recipe.calibration)
        return inputs, tensor_data_sha256(inputs, labels), recipe, pairs
    sentences = load_sentences(recipe.calibration)
    if recipe.evaluation is not None:
        pairs = load_sentence_pairs(recipe.evaluation)
        evaluation = dataclasses.replace(recipe.evaluation, sha256=text_sha256(pair_lines(pairs)))
        recipe = dataclasses.replace(recipe, evaluation=evaluation)
    return sentences, text_sha256(sentences), recipe, pairs


def merge_hf_recipe(recipe: Recipe, progress: Progress | None = None) -> RecipeMerge:
    """Run a recipe whose models are Hugging Face BERT or ViT models through ``merge_hf``.

    Returns a RecipeMerge whose ``hf`` holds the HFMerge (for ``export_merge``).

    Raises:
        ConfigError: mixed model kinds, data of the wrong kind, changed weights or data.
        IncompatibleModelsError: the pre-flight refuses the pair (vocabulary, patch size ...).
        HeteroguiError: any other invalid model or setting.
    """
    import torch

    _check_kinds(recipe)
    start = time.perf_counter()
    folders = (hf_folder(recipe.model_a), hf_folder(recipe.model_b))
    family = family_of(folders[0])
    _check_data(recipe, family)
    _check_sha(recipe.model_a, folders[0])
    _check_sha(recipe.model_b, folders[1])
    data, digest, recipe, pairs = _data(recipe, family)
    spec = recipe.transformer or TransformerSpec(pooling="cls" if family == "vit" else "mean")
    manual = recipe.alignment.mapping if recipe.alignment.mode == "manual" else None
    torch.manual_seed(recipe.seed)
    merge = merge_hf(
        *folders,
        data,
        settings=settings_of(recipe),
        mode=recipe.alignment.mode,
        manual=manual,
        identity=spec.identity,
        pooling=spec.pooling,
        batch_size=recipe.calibration.batch_size,
        device=recipe.device,
        dtype=DTYPES[recipe.dtype],
        progress=progress,
        base=recipe,
        data_sha256=digest,
        family=family,
    )
    done = recipe_from_dict(merge.recipe)
    if recipe.alignment.mapping and recipe.alignment.mapping != done.alignment.mapping:
        log.warning(
            "alignment gave %s, not the recorded %s",
            done.alignment.mapping,
            recipe.alignment.mapping,
        )
    merged_at = time.perf_counter() - start
    metrics = sts_metrics(merge, pairs) if pairs is not None else None
    report = merge_report(merge.result, done, merged_at, metrics=metrics)
    report["timings_seconds"]["evaluation"] = time.perf_counter() - start - merged_at
    report["calibration_sentences" if family == "bert" else "calibration_images"] = len(data)
    return RecipeMerge(merge.result, done, report, hf=merge)


def export_recipe_merge(done: RecipeMerge, out: str | Path, overwrite: bool = False) -> Path:
    """Write a Hugging Face recipe merge as a save_pretrained folder (atomically).

    Raises:
        ExportError: see ``heterogui.models.hf.pair.export_merge``.
    """
    from heterogui.models.hf.pair import export_merge

    metrics: dict[str, Any] | None = done.report.get("metrics")
    return export_merge(done.hf, out, metrics=metrics, report=done.report, overwrite=overwrite)
