"""Hugging Face formats: a merged BERT or ViT as a ``save_pretrained`` folder.

The folder loads with ``AutoModel.from_pretrained(DIR)`` and its ``last_hidden_state`` equals
the merged trunk's token states (``MergedModel.features``), which live in the *merged* feature
space. Next to the standard files:

- ``unmerge.safetensors``: ``unmerge_a`` (n_A, r) and ``unmerge_b`` (n_B, r), which map a merged
  state back into each source model's space (x_m = U_m x*), and, for classifiers, each model's
  head (``head_a.*`` / ``head_b.*``: pooler and classifier reading the unmerged state);
- tokenizer files (and a ViT's ``preprocessor_config.json``) copied from model A's folder;
  ``recipe.yaml``; ``report.json``; ``README.md``;
- for classifiers, ``head_a/`` and ``head_b/``: each model's classifier on the merged trunk,
  with its label names (``heterogui.export.hf_heads``);
- when model A is a sentence-transformers model (the MiniLM models are), its modules
  (``modules.json``, pooling with the merged width, normalisation), so that
  ``SentenceTransformer(DIR)`` loads the merge as it loads its parents.

A Hugging Face BertModel has one head count and one intermediate size for all layers. Merged
layers may be narrower (a layer kept from one model where the other had an identity layer, or
per-layer overrides): they are padded with zero heads (zero Q/K/V rows and zero output columns:
the head outputs exactly 0) and zero FFN neurons (zero input rows, zero output columns), which
changes nothing. A merged head count above hidden / head_dim cannot be expressed and is refused.
The pooler is stored as zeros (pooler_output is exactly 0): embedding models pool token states.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from heterogui.errors import ExportError
from heterogui.export.hf_heads import INPUT_FILES, write_heads
from heterogui.export.job import (
    HF_BERT_FORMAT,
    HF_VIT_FORMAT,
    OR_HETEROGUI,
    UNMERGE_FILE,
    Exporter,
    ExportJob,
    as_stored,
    copy_present,
)
from heterogui.fusion.merged import MergedModel
from heterogui.models.bert import BERT_NAMES, BertNetConfig, LayerNames
from heterogui.models.hf.bert_io import state_to_hf
from heterogui.models.hf.common import check_stream, holding, quiet_transformers
from heterogui.models.hf.vit_io import state_to_hf as vit_state_to_hf
from heterogui.models.vit import VIT_NAMES, ViTNetConfig

# sentence-transformers files copied from model A when it is a sentence-transformers model.
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def check_exportable(model: MergedModel, closing: int = 1, kind: str = "BertModel") -> Any:
    """Return the trunk config of a fully merged BERT or ViT (``kind``), or raise.

    The merge is of that family (``Exporter.check`` refused others). closing: trunk blocks after
    the last layer (ViT's final LayerNorm: 1 more than BERT).

    Raises:
        ExportError: a partial zip, or head counts HF cannot express.
    """
    config = model.spec.trunk_config
    full = config.num_layers + closing
    if model.spec.stop != full:
        raise ExportError(
            f"the merge stops at block {model.spec.stop}, but a single {kind} needs every "
            f"layer merged: merge every layer (stop: null){OR_HETEROGUI}"
        )
    check_stream(config.hidden, config.head_dim, max(config.heads), kind, "hidden_size")
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
    config = check_exportable(model, closing=BertExporter.closing)
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


def unmerge_tensors(
    model: MergedModel, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Return the unmerge matrices and, for classifiers, both heads (floats in ``dtype``, the
    dtype of the folder's weights)."""
    out = {
        "unmerge_a": model.unmerge_a.detach().cpu(),
        "unmerge_b": model.unmerge_b.detach().cpu(),
    }
    for m, tail in enumerate(model.tails):
        for key, value in tail.state_dict().items():
            out[f"head_{'ab'[m]}.{key.split('.', 1)[1]}"] = value.detach().cpu()
    return {k: as_stored(v, dtype).contiguous() for k, v in out.items()}


def vit_config(config: ViTNetConfig, heads: int, intermediate: int) -> dict[str, Any]:
    """Return the transformers ViTConfig fields of the merged shape."""
    return {
        "architectures": ["ViTModel"],
        "hidden_size": config.hidden,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": heads,
        "intermediate_size": intermediate,
        "hidden_act": config.hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
        "image_size": config.image_size,
        "patch_size": config.patch_size,
        "num_channels": config.num_channels,
        "qkv_bias": True,
    }


def _bert_model(model: MergedModel, dtype: torch.dtype) -> Any:
    """Return the transformers BertModel of a merged BERT trunk (widths padded to uniform), its
    weights in ``dtype``, for writing (``common.holding``)."""
    from transformers import BertConfig, BertModel

    state, heads, width = padded_trunk_state(model)
    fields = bert_config(model.spec.trunk_config, heads, width)
    return holding(lambda: BertModel(BertConfig(**fields)), state, dtype)


def _vit_model(model: MergedModel, dtype: torch.dtype) -> Any:
    """Return the transformers ViTModel of a merged ViT trunk (widths padded to uniform), its
    weights in ``dtype``, for writing (``common.holding``)."""
    from transformers import ViTConfig, ViTModel

    config = check_exportable(model, closing=ViTExporter.closing, kind="ViTModel")
    heads, width = config.hidden // config.head_dim, max(config.intermediate)
    state = pad_layers(trunk_state(model), VIT_NAMES, heads * config.head_dim, width)
    hf_state = vit_state_to_hf(state, config.num_layers)
    hf_state["pooler.dense.weight"] = torch.zeros(config.hidden, config.hidden)
    hf_state["pooler.dense.bias"] = torch.zeros(config.hidden)
    return holding(lambda: ViTModel(ViTConfig(**vit_config(config, heads, width))), hf_state, dtype)


# why a Hugging Face folder holds more parameters than the merge (the card's and report's count)
PADDED_NOTE = (
    "its config holds one width per layer kind, so any narrower merged layer is padded with "
    "zero rows and columns, which never change an output"
)


# the BertModel / ViTModel pooler heterogui never uses (it pools the token states itself)
POOLER_NOTE = (
    "and its pooler, which heterogui does not use, is written as zeros (pooler_output means "
    "nothing: pool last_hidden_state)"
)


def write_transformer(hf: Any, job: ExportJob, folder: Path) -> None:
    """Write a transformers model (in ``job.hf_dtype``), the unmerge file, the tokenizer and
    the side files."""
    dtype = job.hf_dtype
    with quiet_transformers():  # its "Writing model shards" bar: the export is one stage
        hf.save_pretrained(folder, safe_serialization=True)
    save_file(
        unmerge_tensors(job.model, dtype),
        str(folder / UNMERGE_FILE),
        metadata={"format": "heterogui-unmerge"},
    )
    copy_present(INPUT_FILES, job.source_folder, folder)
    heads = " and ".join(f"{h}/" for h in write_heads(hf, job.model, folder, job.labels))
    again = f"; {heads} hold them again, each with one model's classifier" if heads else ""
    job.write_side_files(folder, note=f"{PADDED_NOTE}; {POOLER_NOTE}{again}")


def write_sentence_transformer(job: ExportJob, folder: Path, hidden: int) -> None:
    """Copy model A's sentence-transformers modules, with the merged width and pooling.

    Only when A is a sentence-transformers model (its folder has modules.json); the Pooling
    module's config gets the merged hidden size and the recipe's pooling, so that
    ``SentenceTransformer(folder)`` embeds with the merged trunk as heterogui scores it.
    """
    source = job.source_folder
    if source is None or not (source / "modules.json").is_file():
        return
    modules = json.loads((source / "modules.json").read_text("utf-8"))
    copy_present(ST_FILES, source, folder)
    _cut_as_scored(folder, job.text_limit)
    for module in modules:
        if not module.get("type", "").endswith("Pooling"):
            continue
        sub = folder / module["path"]
        sub.mkdir(parents=True, exist_ok=True)
        old = source / module["path"] / "config.json"
        pooling = json.loads(old.read_text("utf-8")) if old.is_file() else {}
        pooling |= {k: False for k in pooling if k.startswith("pooling_mode_")}
        pooling["word_embedding_dimension"] = hidden
        pooling[f"pooling_mode_{'cls_token' if job.pooling == 'cls' else 'mean_tokens'}"] = True
        (sub / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")


def _cut_as_scored(folder: Path, limit: int | None) -> None:
    """Set sentence-transformers' max_seq_length to ``limit``, the tokens heterogui gave a text
    (``ExportJob.text_limit``), so that ``SentenceTransformer(folder)`` embeds a long text as
    heterogui scored it (A's own setting, 256 for all-MiniLM-L6-v2, cut it shorter than the
    512 heterogui reads)."""
    path = folder / "sentence_bert_config.json"
    if limit is not None and path.is_file():
        config = json.loads(path.read_text("utf-8"))
        path.write_text(json.dumps({**config, "max_seq_length": limit}, indent=2) + "\n")


class BertExporter(Exporter):
    """A Hugging Face BertModel folder (``AutoModel.from_pretrained`` loads it)."""

    name = HF_BERT_FORMAT
    description = "Hugging Face BertModel folder (save_pretrained)"
    reader = "hf"
    families = ("bert",)

    closing = 1  # a full merge stops at num_layers + 1 (check_exportable)

    def check_model(self, model: MergedModel) -> None:
        """Refuse merges a BertModel cannot hold (partial zips, head counts ...)."""
        check_exportable(model, closing=self.closing)

    def write(self, job: ExportJob, folder: Path) -> None:
        """Write the merged trunk as a BertModel with the tokenizer and the side files."""
        write_transformer(_bert_model(job.model, job.hf_dtype), job, folder)
        write_sentence_transformer(job, folder, job.model.spec.trunk_config.hidden)


class ViTExporter(Exporter):
    """A Hugging Face ViTModel folder (``AutoModel.from_pretrained`` loads it)."""

    name = HF_VIT_FORMAT
    description = "Hugging Face ViTModel folder (save_pretrained)"
    reader = "hf"
    families = ("vit",)

    closing = 1 + 1  # one more than BERT's: ViT's final LayerNorm

    def check_model(self, model: MergedModel) -> None:
        """Refuse merges a ViTModel cannot hold (partial zips, head counts ...)."""
        check_exportable(model, closing=self.closing, kind="ViTModel")

    def write(self, job: ExportJob, folder: Path) -> None:
        """Write the merged trunk as a ViTModel with the side files."""
        write_transformer(_vit_model(job.model, job.hf_dtype), job, folder)


BERT = BertExporter()
VIT = ViTExporter()
