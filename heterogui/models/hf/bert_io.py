"""Hugging Face BERT encoders <-> the heterogui ``bert`` family (weights copied by name).

``load_bert`` opens a local ``save_pretrained`` folder (or, when the hub is reachable and
allowed, a hub id) through ``AutoModel`` / ``AutoModelForSequenceClassification``, never with
remote code, and converts it into a ``Network`` of the bert family. Parameter names match:

    embeddings.*           <-> blocks.0.*
    encoder.layer.{i}.*    <-> blocks.{i+1}.*
    pooler.dense.*         <-> blocks.{L+1}.pooler.dense.*   (classifiers only)
    classifier.*           <-> blocks.{L+1}.classifier.*     (classifiers only)

Only absolute-position, encoder-only BERT (model_type "bert") is supported; RoBERTa-style
position offsets would need their own embedding block.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import torch

from heterogui.errors import ModelLoadError
from heterogui.models.bert import BertNetConfig, build
from heterogui.models.family import Network
from heterogui.models.hf.common import adapted, encoder_shape, load_pretrained

_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.*)")
_BLOCK = re.compile(r"blocks\.(\d+)\.(.*)")


def config_from_hf(hf_config: Any, num_labels: int | None, pooling: str = "mean") -> BertNetConfig:
    """Return the bert-family config of a transformers ``BertConfig``.

    num_labels: None for an embedding model, else the classifier's output count.

    Raises:
        ModelLoadError: a model type or option this adapter does not support.
    """
    kind = getattr(hf_config, "model_type", None)
    if kind != "bert":
        raise ModelLoadError(
            f"model_type {kind!r} is not supported by the BERT adapter; use a model_type 'bert' "
            "checkpoint (BertModel / BertForSequenceClassification)"
        )
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(
            f"position_embedding_type {hf_config.position_embedding_type!r} is not supported; "
            "only absolute position embeddings are"
        )
    if getattr(hf_config, "is_decoder", False) or getattr(hf_config, "add_cross_attention", False):
        raise ModelLoadError("decoder BERT models are not supported; use an encoder checkpoint")
    return BertNetConfig(
        vocab_size=int(hf_config.vocab_size),
        max_positions=int(hf_config.max_position_embeddings),
        type_vocab_size=int(hf_config.type_vocab_size),
        num_labels=num_labels,
        pooling=pooling,
        pad_token_id=int(hf_config.pad_token_id or 0),
        **encoder_shape(hf_config),
    )


def state_from_hf(state: dict[str, torch.Tensor], config: BertNetConfig) -> dict[str, torch.Tensor]:
    """Rename a BertModel / BertForSequenceClassification state dict into block names.

    Unused entries (a pooler of an embedding model, buffers) are dropped.
    """
    head = config.num_layers + 1
    out = {}
    for key, value in state.items():
        key = key.removeprefix("bert.")
        match = _LAYER.fullmatch(key)
        if match:
            out[f"blocks.{int(match.group(1)) + 1}.{match.group(2)}"] = value
        elif key.startswith("embeddings.") and not key.endswith(("position_ids", "token_type_ids")):
            out[f"blocks.0.{key.removeprefix('embeddings.')}"] = value
        elif config.num_labels is not None and key.startswith(("pooler.dense.", "classifier.")):
            out[f"blocks.{head}.{key}"] = value
    return out


def state_to_hf(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """Rename block names (``blocks.k.*``, embeddings and layers only) into BertModel names."""
    out = {}
    for key, value in state.items():
        match = _BLOCK.fullmatch(key)
        if not match or int(match.group(1)) > num_layers:
            continue
        k, rest = int(match.group(1)), match.group(2)
        out[f"embeddings.{rest}" if k == 0 else f"encoder.layer.{k - 1}.{rest}"] = value
    return out


def network_from_hf(
    model: Any, label: str = "model", pooling: str = "mean", copy: bool = True
) -> Network:
    """Convert a loaded transformers BERT (eval copy; the caller's model is untouched; copy
    False: the network takes its float32 tensors, for a model loaded only to be converted).

    A model with a ``classifier`` (BertForSequenceClassification) keeps pooler and classifier
    as its head; any other becomes an embedding model with ``pooling``.

    Raises:
        ModelLoadError: unsupported config, or weights that do not fill the network.
    """
    classifier = getattr(model, "classifier", None)
    num_labels = int(classifier.out_features) if classifier is not None else None
    config = config_from_hf(model.config, num_labels, pooling)
    module = adapted(
        partial(build, config),
        state_from_hf(model.state_dict(), config),
        copy,
        label,
        "BERT",
        "BertModel or BertForSequenceClassification",
    )
    return Network(config, module, None, frozenset(), label)


def load_bert(
    path: str | Path,
    *,
    pooling: str = "mean",
    device: str | torch.device = "cpu",
    label: str | None = None,
) -> tuple[Network, Any]:
    """Load a BERT folder or hub id as a bert-family Network, with its tokenizer.

    Hub ids are only fetched when HF_HUB_OFFLINE is not "1" (local folders never are).

    Raises:
        ModelLoadError: a missing folder, missing weights, or an unsupported model.
    """
    model, tokenizer, name = load_pretrained(
        path, "AutoModelForSequenceClassification", "BERT", tokenizer=True
    )
    net = network_from_hf(model, label or Path(name).name, pooling, copy=False)
    net.module.to(device)
    return net, tokenizer
