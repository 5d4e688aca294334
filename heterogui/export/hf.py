"""Export a merged BERT as a Hugging Face ``save_pretrained`` folder (design.md, CLI contract).

The folder loads with ``AutoModel.from_pretrained(DIR)`` and its ``last_hidden_state`` equals
the merged trunk's token states (``MergedModel.features``), which live in the *merged* feature
space. Next to the standard files:

- ``unmerge.safetensors``: ``unmerge_a`` (n_A, r) and ``unmerge_b`` (n_B, r), which map a merged
  state back into each source model's space (x_m = U_m x*), and, for classifiers, each model's
  head (``head_a.*`` / ``head_b.*``: pooler and classifier reading the unmerged state);
- tokenizer files copied from model A's folder; ``recipe.yaml``; ``report.json``; ``README.md``.

A Hugging Face BertModel has one head count and one intermediate size for all layers. Merged
layers may be narrower (a layer kept from one model where the other had an identity layer, or
per-layer overrides): they are padded with zero heads (zero Q/K/V rows and zero output columns:
the head outputs exactly 0) and zero FFN neurons (zero input rows, zero output columns), which
changes nothing. A merged head count above hidden / head_dim cannot be expressed and is refused.
The pooler is stored as zeros (pooler_output is exactly 0): embedding models pool token states.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from heterogui.errors import ExportError
from heterogui.fusion.merged import MergedModel
from heterogui.models.bert import BERT_NAMES, BertNetConfig, LayerNames
from heterogui.models.hf.bert_io import state_to_hf
from heterogui.models.io import atomic_output

TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
UNMERGE_FILE = "unmerge.safetensors"


def check_exportable(
    model: MergedModel, cls: type = BertNetConfig, closing: int = 1, kind: str = "BertModel"
) -> Any:
    """Return the trunk config of a fully merged transformer of config class ``cls``, or raise.

    closing: trunk blocks after the last layer (ViT's final LayerNorm: 1 more than BERT).

    Raises:
        ExportError: another family, a partial zip, or head counts HF cannot express.
    """
    config = model.spec.trunk_config
    if not isinstance(config, cls):
        raise ExportError(
            f"save_pretrained export as {kind} is for {cls.__name__} merges, not "
            f"{type(config).__name__}; use save_merged for other families"
        )
    full = config.num_layers + closing
    if model.spec.stop != full:
        raise ExportError(
            f"the merge stops at block {model.spec.stop}, but a single {kind} needs every "
            f"layer merged: merge with stop={full} (full zip) or use save_merged"
        )
    slots = config.hidden // config.head_dim
    if config.hidden % config.head_dim or max(config.heads) > slots:
        raise ExportError(
            f"merged width {config.hidden} holds {slots} heads of {config.head_dim} but a layer "
            f"has {max(config.heads)}; a {kind} ties heads to hidden_size / heads: merge with "
            "a smaller rho on the attention spaces or a larger stream width"
        )
    return config


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])]) if rows > t.shape[0] else t


def _pad_cols(t: torch.Tensor, cols: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(t.shape[0], cols - t.shape[1])], 1) if cols > t.shape[1] else t


def pad_layers(
    state: dict[str, torch.Tensor], names: LayerNames, attn: int, width: int
) -> dict[str, torch.Tensor]:
    """Return a block-named trunk state with every layer padded to ``attn`` / ``width`` features.

    attn: heads x head size of the widest layer; width: the largest intermediate size. Padding is
    zero rows of Q/K/V and FFN input, zero columns of the attention and FFN output projections.
    """
    out = {}
    for name, value in state.items():
        value = value.detach().cpu().float()
        if any(f".{proj}." in name for proj in (names.query, names.key, names.value)):
            value = _pad_rows(value, attn)
        elif name.endswith(f".{names.attn_out}.weight"):
            value = _pad_cols(value, attn)
        elif f".{names.ffn_in}." in name:
            value = _pad_rows(value, width)
        elif name.endswith(f".{names.ffn_out}.weight"):
            value = _pad_cols(value, width)
        out[name] = value.contiguous()
    return out


def trunk_state(model: MergedModel) -> dict[str, torch.Tensor]:
    """Return the merged trunk's state with block names (``blocks.k.*``)."""
    return {
        "blocks." + key[len("trunk.") :]: value
        for key, value in model.state_dict().items()
        if key.startswith("trunk.")
    }


def padded_trunk_state(model: MergedModel) -> tuple[dict[str, torch.Tensor], int, int]:
    """Return (BertModel state dict, heads, intermediate size), widths padded to uniform.

    Raises:
        ExportError: see ``check_exportable``.
    """
    config = check_exportable(model)
    heads = config.hidden // config.head_dim
    width = max(config.intermediate)
    state = pad_layers(trunk_state(model), BERT_NAMES, heads * config.head_dim, width)
    hf_state = state_to_hf(state, config.num_layers)
    hf_state["pooler.dense.weight"] = torch.zeros(config.hidden, config.hidden)
    hf_state["pooler.dense.bias"] = torch.zeros(config.hidden)
    return hf_state, heads, width


def bert_config(config: BertNetConfig, heads: int, intermediate: int) -> dict[str, Any]:
    """Return the transformers BertConfig fields of the merged shape."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_positions,
        "type_vocab_size": config.type_vocab_size,
        "layer_norm_eps": config.layer_norm_eps,
        "pad_token_id": config.pad_token_id,
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
    }


def unmerge_tensors(model: MergedModel) -> dict[str, torch.Tensor]:
    """Return the unmerge matrices and, for classifiers, both heads."""
    out = {
        "unmerge_a": model.unmerge_a.detach().cpu().float().contiguous(),
        "unmerge_b": model.unmerge_b.detach().cpu().float().contiguous(),
    }
    for m, tail in enumerate(model.tails):
        for key, value in tail.state_dict().items():
            out[f"head_{'ab'[m]}.{key.split('.', 1)[1]}"] = value.detach().cpu().contiguous()
    return out


def export_bert(
    model: MergedModel,
    out: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    recipe: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
    card: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a merged BERT as a save_pretrained folder, atomically (module docstring).

    Raises:
        ExportError: the model cannot be expressed as a BertModel, ``out`` exists and
            ``overwrite`` is False, or writing failed.
    """
    from transformers import BertConfig, BertModel

    out = Path(out)
    if out.exists() and not overwrite:  # fail before building the model
        raise ExportError(f"output folder {str(out)!r} already exists; choose another or overwrite")
    state, heads, width = padded_trunk_state(model)
    fields = bert_config(model.spec.trunk_config, heads, width)
    with torch.random.fork_rng(devices=[]):
        hf = BertModel(BertConfig(**fields))
    hf.load_state_dict(state, strict=True)
    extras = {UNMERGE_FILE: unmerge_tensors(model)}
    return write_folder(hf, out, extras, tokenizer_dir, recipe, report, card, overwrite)


def write_folder(
    hf: Any,
    out: Path,
    extras: dict[str, dict[str, torch.Tensor]],
    tokenizer_dir: str | Path | None = None,
    recipe: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
    card: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a transformers model and its side files to ``out`` atomically.

    extras: file name -> tensors saved as safetensors next to the model.

    Raises:
        ExportError: ``out`` appeared meanwhile, or writing failed (nothing is left behind).
    """
    with atomic_output(out, overwrite) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        for file, tensors in extras.items():
            save_file(tensors, str(tmp / file), metadata={"format": "heterogui-unmerge"})
        for name in TOKENIZER_FILES if tokenizer_dir else ():
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, tmp / name)
        if recipe is not None:
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=True))
        if report is not None:
            (tmp / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        if card is not None:
            (tmp / "README.md").write_text(card)
    return out
