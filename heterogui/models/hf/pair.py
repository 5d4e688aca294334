"""Merge two Hugging Face folders (BERT or ViT) end to end through the generic pipeline.

``merge_hf`` runs the pre-flight (config and safetensors headers only), loads both models with
their family's loader (``FAMILIES``, by config.json ``model_type``) and calls the same
``prepare`` / ``zip_prepared`` as every other family. ``merge_bert`` tokenises calibration
sentences with A's tokenizer first; ``merge_vit`` batches calibration images. ``export_merge``
writes the result as a save_pretrained folder with a recipe and a model card (method.md sec. 0).
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
from heterogui.data import make_batches, tensor_data_sha256, text_sha256
from heterogui.errors import ConfigError, IncompatibleModelsError
from heterogui.evaluate.sentences import tokenize
from heterogui.models.family import Network
from heterogui.models.hf.bert_io import load_bert
from heterogui.models.hf.common import folder_config
from heterogui.models.hf.preflight import check_pair, inspect_model
from heterogui.models.hf.vit_io import load_vit
from heterogui.models.io import file_sha256
from heterogui.pipeline import MergeResult, Progress, ZipSettings, prepare, zip_prepared


@dataclass
class HFMerge:
    """A merged Hugging Face pair with what is needed to evaluate, export and repeat it.

    tokenizer: model A's tokenizer (BERT), None for ViT; family: "bert" or "vit".
    """

    result: MergeResult
    tokenizer: Any
    recipe: dict[str, Any]
    paths: tuple[Path, Path]
    family: str = "bert"


BertMerge = HFMerge  # the name the workbench and older notebooks use


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


IN_MEMORY = "(data passed to merge_bert / merge_vit)"
_DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}
# model_type -> loader(path, pooling=, label=) -> (Network, tokenizer or None)
FAMILIES = {"bert": load_bert, "vit": load_vit}
DEFAULT_POOLING = {"bert": "mean", "vit": "cls"}


def family_of(path: str | Path) -> str:
    """Return the heterogui family ("bert", "vit") of a folder from its config.json model_type.

    Raises:
        ConfigError: a model type no Hugging Face adapter supports.
    """
    kind = folder_config(Path(path).expanduser()).get("model_type")
    if kind not in FAMILIES:
        raise ConfigError(
            f"model_type {kind!r} of {path} is not supported by the command line; use "
            f"Hugging Face folders of model_type {' or '.join(sorted(FAMILIES))}"
        )
    return str(kind)


def hf_recipe(
    paths: tuple[Path, Path],
    data: tuple[str, int],
    result: MergeResult,
    *,
    identity: str,
    batch_size: int,
    pooling: str,
    dtype: torch.dtype = torch.float32,
    base: Recipe | None = None,
) -> dict[str, Any]:
    """Return the completed recipe of a Hugging Face merge as a dict (``Recipe`` form).

    data: (sha256, count) of the calibration data (sentences or images). base: the recipe the
    merge ran from (its model references, calibration source, evaluation, seed and device are
    kept); None for a merge called from Python, whose calibration source is recorded as
    in-memory data (its sha256 and count still identify it).
    """
    s = result.settings
    digest, count = data
    base = base or Recipe(
        ModelRef(str(paths[0])),
        ModelRef(str(paths[1])),
        DataRef(IN_MEMORY, size=count if count >= 4 else None),
    )
    done = dataclasses.replace(
        base,
        model_a=dataclasses.replace(base.model_a, sha256=weights_sha256(paths[0])),
        model_b=dataclasses.replace(base.model_b, sha256=weights_sha256(paths[1])),
        calibration=dataclasses.replace(base.calibration, batch_size=batch_size, sha256=digest),
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


def bert_recipe(
    paths: tuple[Path, Path], sentences: Sequence[str], result: MergeResult, **fields: Any
) -> dict[str, Any]:
    """Return the completed recipe of a BERT merge on ``sentences`` (see ``hf_recipe``)."""
    return hf_recipe(paths, (text_sha256(sentences), len(sentences)), result, **fields)


def _with_identity(net: Network, identity: str) -> Network:
    config = dataclasses.replace(net.config, identity=identity)
    return dataclasses.replace(net, config=config)


def load_pair(
    paths: tuple[Path, Path], family: str, pooling: str, identity: str
) -> tuple[Network, Network, Any]:
    """Run the pre-flight, then load both folders with the family's loader.

    Raises:
        IncompatibleModelsError: the pre-flight refuses the pair.
        ConfigError: an identity construction the family does not have.
        ModelLoadError: a folder the loader cannot read.
    """
    if all(p.is_dir() for p in paths):
        preflight(*paths)
    if family == "vit" and identity != "exact":
        raise ConfigError(
            f"transformer.identity {identity!r} is for BERT; a pre-LN ViT pads with exact "
            'identity layers: use "exact" or leave transformer.identity out'
        )
    net_a, tokenizer = FAMILIES[family](paths[0], pooling=pooling, label="A")
    net_b, _ = FAMILIES[family](paths[1], pooling=pooling, label="B")
    if family == "bert":
        net_a, net_b = _with_identity(net_a, identity), _with_identity(net_b, identity)
    return net_a, net_b, tokenizer


def merge_hf(
    path_a: str | Path,
    path_b: str | Path,
    calibration: Sequence[str] | torch.Tensor,
    *,
    settings: ZipSettings | None = None,
    mode: str = "sma",
    manual: dict[str, list[list[int]]] | None = None,
    identity: str = "exact",
    pooling: str | None = None,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
    base: Recipe | None = None,
    data_sha256: str | None = None,
    family: str | None = None,
) -> HFMerge:
    """Merge two Hugging Face folders of one family on calibration data (method.md sec. 0).

    The one Hugging Face path (``heterogui merge`` runs it). calibration: sentences (BERT,
    tokenised with A's tokenizer) or images (N, C, H, W) (ViT). identity: how the shallower
    BERT's padded layers are built ("exact", "ls", "plain"; ViT padding is always exact).
    pooling: None for the family's default. base: the recipe being run, recorded completed in
    ``HFMerge.recipe``; data_sha256: the calibration hash to record (default: of the data);
    family: "bert" or "vit" (default: from A's config.json model_type).

    Raises:
        IncompatibleModelsError: the pre-flight or the pipeline finds the pair unmergeable.
        ModelLoadError: a folder cannot be loaded by its family's adapter.
        HeteroguiError: invalid alignment or zip settings, or an unsupported model type.
    """
    paths = (Path(path_a).expanduser(), Path(path_b).expanduser())
    family = family or family_of(paths[0])
    pooling = pooling or DEFAULT_POOLING[family]
    net_a, net_b, tokenizer = load_pair(paths, family, pooling, identity)
    if isinstance(calibration, torch.Tensor):
        batches = make_batches(calibration, batch_size)
        digest = data_sha256 or tensor_data_sha256(calibration)
    else:
        batches = tokenize(tokenizer, calibration, batch_size)
        digest = data_sha256 or text_sha256(calibration)
    prepared = prepare(
        net_a, net_b, batches, mode=mode, manual=manual, device=device, progress=progress
    )
    result = zip_prepared(prepared, settings or ZipSettings(), dtype, progress)
    fields = {"identity": identity, "batch_size": batch_size, "pooling": pooling, "dtype": dtype}
    recipe = hf_recipe(paths, (digest, len(calibration)), result, base=base, **fields)
    return HFMerge(result, tokenizer, recipe, paths, family)


def merge_bert(
    path_a: str | Path, path_b: str | Path, sentences: Sequence[str], **options: Any
) -> HFMerge:
    """Merge two BERT folders on calibration sentences (keywords as ``merge_hf``).

    Raises:
        IncompatibleModelsError, ModelLoadError, HeteroguiError: see ``merge_hf``.
    """
    options.setdefault("pooling", "mean")
    return merge_hf(path_a, path_b, list(sentences), family="bert", **options)


def merge_vit(
    path_a: str | Path, path_b: str | Path, images: torch.Tensor, **options: Any
) -> HFMerge:
    """Merge two ViT folders on calibration images (N, C, H, W) (keywords as ``merge_hf``).

    Raises:
        IncompatibleModelsError, ModelLoadError, HeteroguiError: see ``merge_hf``.
    """
    return merge_hf(path_a, path_b, images, family="vit", **options)


def export_merge(
    merge: HFMerge,
    out: str | Path,
    metrics: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the merge as a save_pretrained folder (BERT: with model A's tokenizer files).

    Raises:
        ExportError: see ``heterogui.export.hf.export_bert`` / ``vit_io.export_vit``.
    """
    from heterogui.models.hf.card import model_card

    card = model_card(merge, metrics)
    if merge.family == "vit":
        from heterogui.models.hf.vit_io import export_vit

        return export_vit(
            merge.result.model,
            out,
            recipe=merge.recipe,
            report=report,
            card=card,
            overwrite=overwrite,
        )
    from heterogui.export.hf import export_bert

    tokenizer_dir = merge.paths[0] if merge.paths[0].is_dir() else None
    return export_bert(
        merge.result.model,
        out,
        tokenizer_dir=tokenizer_dir,
        recipe=merge.recipe,
        report=report,
        card=card,
        overwrite=overwrite,
    )
