"""Merge two Hugging Face BERT folders end to end through the generic pipeline.

``merge_bert`` runs the pre-flight (config and safetensors headers only), loads both models as
bert-family Networks, tokenises the calibration sentences with A's tokenizer, and calls the
same ``prepare`` / ``zip_prepared`` as every other family. ``export_merge`` writes the result as
a save_pretrained folder with a recipe and a model card (``heterogui.export.hf``).
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import heterogui
from heterogui.config import AlignmentSpec, DataRef, ModelRef, Recipe, TransformerSpec, ZipSpec
from heterogui.data import text_sha256
from heterogui.errors import IncompatibleModelsError
from heterogui.evaluate.sentences import tokenize
from heterogui.export.hf import export_bert
from heterogui.models.family import Network
from heterogui.models.hf.bert_io import load_bert
from heterogui.models.hf.preflight import check_pair, inspect_model
from heterogui.models.io import file_sha256
from heterogui.pipeline import MergeResult, Progress, ZipSettings, prepare, zip_prepared


@dataclass
class BertMerge:
    """A merged BERT pair with what is needed to evaluate, export and repeat it."""

    result: MergeResult
    tokenizer: Any
    recipe: dict[str, Any]
    paths: tuple[Path, Path]


def preflight(path_a: str | Path, path_b: str | Path) -> None:
    """Raise if two local folders cannot be merged (header-only checks).

    Raises:
        IncompatibleModelsError: with every blocking reason of the pre-flight verdict.
        ModelLoadError: a folder without config.json or safetensors weights.
    """
    verdict = check_pair(inspect_model(path_a), inspect_model(path_b))
    if not verdict.ok:
        raise IncompatibleModelsError("; ".join(verdict.reasons))


def weights_sha256(path: Path) -> str | None:
    """Return the sha256 of a folder's model.safetensors, or None when it has none."""
    weights = path / "model.safetensors"
    return file_sha256(weights) if weights.is_file() else None


IN_MEMORY = "(sentences passed to merge_bert)"
_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


def bert_recipe(
    paths: tuple[Path, Path],
    sentences: Sequence[str],
    result: MergeResult,
    *,
    identity: str,
    batch_size: int,
    pooling: str,
    dtype: torch.dtype = torch.float32,
    base: Recipe | None = None,
) -> dict[str, Any]:
    """Return the completed recipe of a BERT merge as a dict (``heterogui.config.Recipe`` form).

    base: the recipe the merge ran from (its model references, calibration source, evaluation,
    seed and device are kept); None for a merge called from Python, whose calibration source is
    recorded as in-memory sentences (their sha256 and count still identify them).
    """
    s = result.settings
    base = base or Recipe(
        ModelRef(str(paths[0])),
        ModelRef(str(paths[1])),
        DataRef(IN_MEMORY, size=len(sentences) if len(sentences) >= 4 else None),
    )
    done = dataclasses.replace(
        base,
        model_a=dataclasses.replace(base.model_a, sha256=weights_sha256(paths[0])),
        model_b=dataclasses.replace(base.model_b, sha256=weights_sha256(paths[1])),
        calibration=dataclasses.replace(
            base.calibration, batch_size=batch_size, sha256=text_sha256(sentences)
        ),
        alignment=AlignmentSpec(result.alignment.mode, result.alignment.mapping()),
        zip=ZipSpec(
            s.matcher, s.alpha, s.beta, s.rho, {k: dict(v) for k, v in s.overrides.items()}
        ),
        stop=s.stop,
        transformer=TransformerSpec(identity, pooling),
        dtype=_DTYPE_NAMES[dtype],
        versions={
            "heterogui": heterogui.__version__,
            "torch": metadata.version("torch"),
            "transformers": metadata.version("transformers"),
            "python": platform.python_version(),
        },
    )
    return done.to_dict()


def _with_identity(net: Network, identity: str) -> Network:
    config = dataclasses.replace(net.config, identity=identity)
    return dataclasses.replace(net, config=config)


def merge_bert(
    path_a: str | Path,
    path_b: str | Path,
    sentences: Sequence[str],
    *,
    settings: ZipSettings | None = None,
    mode: str = "sma",
    manual: dict[str, list[list[int]]] | None = None,
    identity: str = "exact",
    pooling: str = "mean",
    batch_size: int = 32,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
    base: Recipe | None = None,
) -> BertMerge:
    """Merge two BERT folders on calibration sentences (method.md section 0).

    The one BERT path: ``heterogui.api.merge_recipe`` (and so ``heterogui merge``) calls it for
    Hugging Face recipes. identity: how the shallower model's padded layers are built ("exact",
    "ls", "plain"). base: the recipe being run, recorded completed in ``BertMerge.recipe``.

    Raises:
        IncompatibleModelsError: the pre-flight or the pipeline finds the pair unmergeable.
        ModelLoadError: a folder cannot be loaded as a BERT.
        HeteroguiError: invalid alignment or zip settings.
    """
    paths = (Path(path_a).expanduser(), Path(path_b).expanduser())
    if all(p.is_dir() for p in paths):
        preflight(*paths)
    net_a, tokenizer = load_bert(paths[0], pooling=pooling, label="A")
    net_b, _ = load_bert(paths[1], pooling=pooling, label="B")
    net_b = _with_identity(net_b, identity)
    net_a = _with_identity(net_a, identity)
    batches = tokenize(tokenizer, sentences, batch_size)
    prepared = prepare(
        net_a, net_b, batches, mode=mode, manual=manual, device=device, progress=progress
    )
    result = zip_prepared(prepared, settings or ZipSettings(), dtype, progress)
    recipe = bert_recipe(
        paths,
        sentences,
        result,
        identity=identity,
        batch_size=batch_size,
        pooling=pooling,
        dtype=dtype,
        base=base,
    )
    return BertMerge(result, tokenizer, recipe, paths)


def model_card(merge: BertMerge, metrics: dict[str, float] | None = None) -> str:
    """Return a README.md model card: sources, merged shape, alignment, figures, usage."""
    result = merge.result
    config = result.spec.trunk_config
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in (metrics or {}).items())
    widths = "\n".join(
        f"| {space} | {a} | {b} | {r} |" for space, (a, b, r) in sorted(result.widths().items())
    )
    return f"""---
library_name: transformers
tags: [heterogui, model-merging, bert]
---
# Merged BERT (heterogui)

Training-free heterogeneous merge of two BERT encoders (layer alignment + elastic neuron zip).

- Model A: `{merge.paths[0]}`
- Model B: `{merge.paths[1]}`
- Merged shape: {config.num_layers} layers, hidden {config.hidden}, heads per layer
  {list(config.heads)}, intermediate per layer {list(config.intermediate)} (padded to one size
  with zero neurons/heads in config.json, which changes nothing)
- Alignment: {result.alignment.mode}, mapping {result.alignment.mapping()}
- Identity layers of the shallower model: `{merge.recipe["transformer"]["identity"]}`
  construction

## Figures

| metric | value |
|---|---|
{rows or "| (not evaluated) | |"}

## Widths per merge point

| space | A | B | merged |
|---|---|---|---|
{widths}

## Use

```python
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(DIR)
tokenizer = AutoTokenizer.from_pretrained(DIR)
batch = tokenizer(["a sentence"], return_tensors="pt")
states = model(**batch).last_hidden_state  # merged token states; mean-pool for embeddings
```

The states live in the merged feature space. `unmerge.safetensors` holds `unmerge_a` and
`unmerge_b`: `states @ unmerge_a.T` maps them into model A's own space (and B's likewise), and
for classifiers each model's head (`head_a.*`, `head_b.*`). Post-LayerNorm blocks normalise over
merged features, so the merge is an approximation of both models; `recipe.yaml` repeats it.
"""


def export_merge(
    merge: BertMerge,
    out: str | Path,
    metrics: dict[str, float] | None = None,
    report: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the merge as a save_pretrained folder (tokenizer from model A's folder).

    Raises:
        ExportError: see ``heterogui.export.hf.export_bert``.
    """
    tokenizer_dir = merge.paths[0] if merge.paths[0].is_dir() else None
    return export_bert(
        merge.result.model,
        out,
        tokenizer_dir=tokenizer_dir,
        recipe=merge.recipe,
        report=report,
        card=model_card(merge, metrics),
        overwrite=overwrite,
    )
