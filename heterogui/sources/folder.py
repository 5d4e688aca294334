"""heterogui folders: a network (``save_network``) or a merge (``heterogui merge`` output).

A merged folder is a model too: a full zip is loaded as one network of its family whose head
holds every task head of the models it was merged from (``fusion.merged.as_network``), so
merges can be merged again.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from heterogui.errors import ModelLoadError, excerpt
from heterogui.export.causal_lm import CAUSAL_LM
from heterogui.export.hf import BERT
from heterogui.fusion.merged import (
    MergedModel,
    MergedSpec,
    as_network,
    build_merged,
    network_config,
)
from heterogui.models.family import family_of
from heterogui.models.headers import stored_dtype
from heterogui.models.io import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    check_finite,
    check_head_classes,
    check_weights_fit,
    file_sha256,
    load_network,
    load_state,
    read_config,
    saved_config,
)
from heterogui.sources.base import IMAGE_CLASSIFICATION, Header, Loaded, Source

KINDS = {"network": "folder", "merged": "merged"}


def heterogui_kind(folder: Path) -> str | None:
    """Return "network" or "merged" for a heterogui folder, else None (cheap: config.json only)."""
    try:
        data = read_config(folder)
    except ModelLoadError:
        return None
    kind = data.get("heterogui") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) and kind in KINDS else None


def load_merged(folder: str | Path, device: str | torch.device = "cpu") -> MergedModel:
    """Load a merged model folder written by ``save_merged`` (eval mode).

    In float32, or in float64 where the folder holds float64 weights (``save_merged`` of a
    float64 merge keeps its dtype): loading never rounds them. Narrower weights (a bfloat16
    or float16 export) load in float32, exactly.

    Raises:
        ModelLoadError: missing/corrupt files, or weights that do not fit the config.
    """
    folder = Path(folder)
    data = read_config(folder)
    if data.get("heterogui") != "merged":
        raise ModelLoadError(f"{folder}/{CONFIG_FILE} does not describe a heterogui merged model")
    spec = merged_spec(data, folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{str(folder)!r} has no {WEIGHTS_FILE}; re-export the merge")
    check_weights_fit(partial(build_merged, spec), weights, str(folder))
    model = build_merged(spec)
    state = load_state(weights)
    check_finite(state, folder.name)
    if any(v.dtype == torch.float64 for v in state.values()):
        model = model.double()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights in {folder} do not fit its config: {excerpt(exc)}") from exc
    return model.to(device).eval()


def merged_spec(data: dict, folder: Path) -> MergedSpec:
    """Return the MergedSpec a merged folder's config.json describes.

    Raises:
        ModelLoadError: sections missing or malformed (the config errors name the field).
    """
    raw_heads = data.get("heads")
    try:
        spec = MergedSpec.from_dict({k: v for k, v in data.items() if k != "heterogui"})
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"{folder}/{CONFIG_FILE} is not a complete merge config ({excerpt(exc, 80)}); "
            "re-export the merge"
        ) from exc
    if len(spec.heads) != len(spec.tail_configs):
        raise ModelLoadError(
            f"{folder}/{CONFIG_FILE} lists the heads of {len(spec.heads)} model(s) for "
            f"{len(spec.tail_configs)} merged models; re-export the merge"
        )
    for m, (config, heads) in enumerate(zip(spec.tail_configs, spec.heads, strict=True)):
        outputs = getattr(config, "num_classes", None)
        if outputs is None:  # a text model's tail: its outputs are not classes
            continue
        where = f"{folder}/{CONFIG_FILE} (the heads of model {m + 1})"
        # as written (from_dict reads "-1" or 2.0 as ids): every id must be a whole number
        listed = [c for head in raw_heads[m] for c in head["classes"]] if raw_heads else None
        check_head_classes(spec.classes[m] if listed is None else listed, outputs, where)
        if any(not head.classes for head in heads):
            raise ModelLoadError(f"{where} has a head without classes; re-export the merge")
    return spec


class HeteroguiFolderSource(Source):
    """A folder written by heterogui: config.json ("heterogui": "network" or "merged")."""

    kind = "folder"

    def claims(self, ref: str) -> bool:
        """Return whether ``ref`` is a folder whose config.json is a heterogui config."""
        folder = Path(ref).expanduser()
        return folder.is_dir() and heterogui_kind(folder) is not None

    def describe(self, ref: str) -> Header:
        """Return the family and config from config.json (no weights are read)."""
        folder = Path(ref).expanduser()
        data = read_config(folder)
        if data["heterogui"] == "merged":
            spec = merged_spec(data, folder)
            # text models first: their refusal names the --format to write (one network could
            # not hold an embedding model's heads either, which said less)
            _refuse_text(family_of(spec.trunk_config).name, folder)
            config = network_config(spec)
        else:
            config = saved_config(data, folder)
        family = family_of(config).name
        kind = KINDS[data["heterogui"]]
        return Header(ref, folder.name, kind, family, IMAGE_CLASSIFICATION, config)

    def load(self, ref: str, *, pooling: str | None = None, device: str = "cpu") -> Loaded:
        """Load the network (a merge: as one network with all its task heads)."""
        folder = Path(ref).expanduser()
        self.describe(ref)  # refuses text models, which this format cannot give back
        kind = heterogui_kind(folder)
        if kind == "merged":
            # merged again in float32, as every model is (a float64 folder loads rounded)
            net = as_network(load_merged(folder, device).float(), label=folder.name)
        else:
            net = load_network(folder, device)
        sha = file_sha256(folder / WEIGHTS_FILE)
        return Loaded(
            net,
            ref,
            KINDS[kind],
            folder.name,
            sha,
            IMAGE_CLASSIFICATION,
            folder=folder,
            stored_dtype=stored_dtype([folder / WEIGHTS_FILE]),
        )


# the Hugging Face formats of text models: a heterogui folder holds no tokenizer, so their merges
# are merged again from the folder these write
TEXT_EXPORTERS = (BERT, CAUSAL_LM)


def text_format(family: str) -> str | None:
    """Return the format a merge of ``family`` text models is merged again from (None: the
    family's models are no text models)."""
    return next((e.name for e in TEXT_EXPORTERS if family in e.families), None)


def _refuse_text(family: str, folder: Path) -> None:
    """Refuse a heterogui-format merge of text models as a model to merge (no tokenizer).

    Raises:
        ModelLoadError: naming the format to export instead.
    """
    fmt = text_format(family)
    if fmt is not None:
        raise ModelLoadError(
            f"{folder} holds a merge of {family} text models in the heterogui format, which "
            "keeps no tokenizer: it loads again as a merged model (heterogui.sources.folder."
            f"load_merged), not as a model to merge; export the merge in the {fmt} format "
            f"(--format {fmt}, or the Export tab's format) to merge it again (that format needs "
            "a full zip, without a stop point, and, for attention heads, a merged width the "
            "format can hold)"
        )
