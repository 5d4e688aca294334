"""Recipes whose models are Hugging Face BERT folders (or ``minilm:NAME``): the CLI's HF path.

``heterogui.api.merge_recipe`` hands such recipes here; the merge itself is ``merge_bert`` (the
one BERT path), run on the recipe's text calibration data (``heterogui.data.load_sentences``,
tokenised with model A's tokenizer after the pre-flight checked both share one vocabulary). The
report adds the sentence-similarity Spearman of A, B and the merged model when the recipe names
evaluation pairs.
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
from heterogui.data import is_text, load_sentence_pairs, load_sentences, pair_lines, text_sha256
from heterogui.errors import ConfigError
from heterogui.models.hf.pair import BertMerge, merge_bert, weights_sha256
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


def _check_recipe(recipe: Recipe) -> None:
    """Raise if a Hugging Face recipe mixes model kinds or names non-text data.

    Raises:
        ConfigError: one model is not a Hugging Face model, or calibration/evaluation is not text.
    """
    kinds = [is_hf_ref(r) for r in (recipe.model_a, recipe.model_b)]
    if not all(kinds):
        other = recipe.model_b if kinds[0] else recipe.model_a
        raise ConfigError(
            f"{other.path!r} is not a Hugging Face model but the other one is; merge two "
            "Hugging Face folders (config.json with model_type) or two heterogui networks"
        )
    for name in ("calibration", "evaluation"):
        ref = getattr(recipe, name)
        if ref is not None and not is_text(ref):
            raise ConfigError(
                f"{name}.source {ref.source!r} is not text; Hugging Face models need "
                '"sentences" or a .txt file to calibrate, "sts" or a .tsv file to evaluate'
            )


def sts_metrics(merge: BertMerge, pairs: Sequence[Pair]) -> dict[str, float]:
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


def merge_hf_recipe(recipe: Recipe, progress: Progress | None = None) -> RecipeMerge:
    """Run a recipe whose models are Hugging Face BERT models through ``merge_bert``.

    Returns a RecipeMerge whose ``bert`` holds the BertMerge (for ``export_merge``).

    Raises:
        ConfigError: mixed model kinds, non-text data, changed weights or sentences.
        IncompatibleModelsError: the pre-flight refuses the pair (vocabulary, head size ...).
        HeteroguiError: any other invalid model or setting.
    """
    import torch

    _check_recipe(recipe)
    start = time.perf_counter()
    folders = (hf_folder(recipe.model_a), hf_folder(recipe.model_b))
    _check_sha(recipe.model_a, folders[0])
    _check_sha(recipe.model_b, folders[1])
    sentences = load_sentences(recipe.calibration)
    pairs = None
    if recipe.evaluation is not None:  # read (and hashed) before the expensive part
        pairs = load_sentence_pairs(recipe.evaluation)
        evaluation = dataclasses.replace(recipe.evaluation, sha256=text_sha256(pair_lines(pairs)))
        recipe = dataclasses.replace(recipe, evaluation=evaluation)
    spec = recipe.transformer or TransformerSpec()
    manual = recipe.alignment.mapping if recipe.alignment.mode == "manual" else None
    torch.manual_seed(recipe.seed)
    merge = merge_bert(
        *folders,
        sentences,
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
    report["calibration_sentences"] = len(sentences)
    return RecipeMerge(merge.result, done, report, bert=merge)


def export_recipe_merge(done: RecipeMerge, out: str | Path, overwrite: bool = False) -> Path:
    """Write a Hugging Face recipe merge as a save_pretrained folder (atomically).

    Raises:
        ExportError: see ``heterogui.export.hf.export_bert``.
    """
    from heterogui.models.hf.pair import export_merge

    metrics: dict[str, Any] | None = done.report.get("metrics")
    return export_merge(done.bert, out, metrics=metrics, report=done.report, overwrite=overwrite)
