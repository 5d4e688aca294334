"""One Hugging Face classifier folder per model of a merged BERT or ViT classifier pair.

A merged classifier is one trunk and one head per model, each head reading the merged state
through its model's unmerge (x_m = U_m x*). A transformers classifier has one head, so a
Hugging Face export of classifiers writes, beside its root folder (the merged trunk as a
``BertModel`` / ``ViTModel``), a folder per model: ``head_a/``, ``head_b/``, each the merged trunk
again with that model's head folded onto the merged space and that model's label names
(``id2label``), which ``AutoModelForSequenceClassification`` / ``AutoModelForImageClassification``
and ``pipeline`` load as they load the model itself:

- BERT: the pooler's dense layer becomes W U_m (n_m x r), padded with zero rows to r outputs
  (tanh(0) = 0, and the classifier's zero columns read nothing from them); the classifier is
  padded with zero columns (n_m <= r: a BertModel's stream holds every merged head, and
  so each model's whole stream).
- ViT: the classifier becomes W U_m (classes x r), for any widths (its head is linear).

heterogui scores the merge's Joint prediction as the softmax of each head, then the argmax over
the labels of both; the model card's snippet computes exactly that from the two folders.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from heterogui.export.job import copy_present
from heterogui.fusion.merged import MergedModel
from heterogui.models.family import family_of
from heterogui.models.hf.common import holding, quiet_transformers

# the files beside the weights that turn raw inputs into model inputs (copied into each folder)
INPUT_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)
_CLASSIFIER = {"bert": "BertForSequenceClassification", "vit": "ViTForImageClassification"}
_AUTO = {"bert": "AutoModelForSequenceClassification", "vit": "AutoModelForImageClassification"}


def is_head_folder(folder: Path) -> bool:
    """Return whether ``folder`` is a classifier folder of a merge's export (``head_folder``)."""
    return (
        bool(re.fullmatch("head_[a-z]", folder.name)) and (folder.parent / "config.json").is_file()
    )


def head_folder(model: int) -> str:
    """Return the folder name of model ``model``'s classifier (0: ``head_a``)."""
    return f"head_{'abcdefghijklmnopqrstuvwxyz'[model]}"


def _head(model: MergedModel, m: int) -> torch.nn.Module | None:
    """Return model ``m``'s classifier head module, None when its tail is no classifier."""
    tail = list(model.tails[m])
    head = tail[-1] if len(tail) == 1 else None
    return head if getattr(head, "classifier", None) is not None else None


def classifier_heads(model: MergedModel) -> list[int]:
    """Return the models whose head is a classifier (empty: embedding models, other families)."""
    if family_of(model.spec.trunk_config).name not in _CLASSIFIER or model.spec.layout is None:
        return []
    return [m for m in range(len(model.tails)) if _head(model, m) is not None]


def _folded(model: MergedModel, m: int, width: int) -> dict[str, torch.Tensor]:
    """Return model ``m``'s head as transformers classifier tensors reading the merged state."""
    head = _head(model, m)
    u = model.unmerge_matrices()[m].detach().cpu().double()
    weight = head.classifier.weight.detach().cpu().double()
    bias = head.classifier.bias.detach().cpu().float()
    if not hasattr(head, "pooler"):  # ViT: a linear head on the [CLS] state
        return {"classifier.weight": (weight @ u).float(), "classifier.bias": bias}
    dense = head.pooler.dense
    rows = width - u.shape[0]  # >= 0: a BertModel's stream holds every merged head (module doc)
    folded = torch.cat([dense.weight.detach().cpu().double() @ u, u.new_zeros(rows, width)])
    return {
        "bert.pooler.dense.weight": folded.float(),
        "bert.pooler.dense.bias": torch.cat([dense.bias.detach().cpu().float(), torch.zeros(rows)]),
        "classifier.weight": torch.cat([weight, weight.new_zeros(len(weight), rows)], 1).float(),
        "classifier.bias": bias,
    }


def write_heads(
    hf: Any, model: MergedModel, folder: Path, labels: Sequence[Sequence[str] | None]
) -> list[str]:
    """Write a classifier folder per foldable model head; return the folder names written.

    hf: the root transformers model (BertModel / ViTModel, already saved in ``folder``);
    labels: per model, its label names (None: its global class ids, as text).
    """
    import transformers

    family = family_of(model.spec.trunk_config).name
    prefix = "bert." if family == "bert" else "vit."
    trunk = {prefix + k: v for k, v in hf.state_dict().items() if not k.startswith("pooler.")}
    written = []
    for m in classifier_heads(model):
        state = trunk | _folded(model, m, hf.config.hidden_size)
        classes = [c for head in model.spec.heads[m] for c in head.classes]
        names = labels[m] if m < len(labels) and labels[m] else None
        names = list(names) if names is not None and len(names) == len(classes) else None
        config = copy.deepcopy(hf.config)
        config.architectures = [_CLASSIFIER[family]]
        # without names (a zoo model): the global class ids heterogui scores them by ("6")
        config.id2label = dict(enumerate(names or [str(c) for c in classes]))
        config.label2id = {v: k for k, v in config.id2label.items()}
        build = functools.partial(getattr(transformers, _CLASSIFIER[family]), config)
        classifier = holding(build, state, hf.dtype)  # the dtype the trunk was written in
        sub = folder / head_folder(m)
        with quiet_transformers():
            classifier.save_pretrained(sub, safe_serialization=True)
        copy_present(INPUT_FILES, folder, sub)
        written.append(head_folder(m))
    return written


def card_use(model: MergedModel) -> str | None:
    """Return the model card's paragraph on classifying with the head folders (None: none)."""
    heads = [head_folder(m) for m in classifier_heads(model)]
    if not heads:
        return None
    family = family_of(model.spec.trunk_config).name
    inputs = (
        "tokenizer = AutoTokenizer.from_pretrained(DIR)\n"
        'inputs = tokenizer(["a sentence"], padding=True, return_tensors="pt")\n'
        if family == "bert"
        else 'inputs = {"pixel_values": images}  # images: (N, C, H, W)\n'
    )
    extra = ", AutoTokenizer" if family == "bert" else ""
    return (
        f"Each model's classifier, on the merged trunk with its own label names: "
        f"{', '.join(f'`{h}/`' for h in heads)} (`{_AUTO[family]}`"
        f"{', or `pipeline` with one of them' if family == 'bert' else ''}). The merge's Joint "
        "prediction, as heterogui scores it (softmax per head, argmax "
        "over the labels of every head):\n"
        "```python\nimport torch\n"
        f"from transformers import {_AUTO[family]}{extra}\n"
        f'heads = [{_AUTO[family]}.from_pretrained(f"{{DIR}}/{{h}}") for h in {tuple(heads)!r}]\n'
        f"{inputs}"
        "probs = torch.cat([h(**inputs).logits.softmax(-1) for h in heads], dim=1)\n"
        "labels = [name for h in heads for name in h.config.id2label.values()]\n"
        "print([labels[k] for k in probs.argmax(1).tolist()])\n```"
    )


def head_folders_hint(place: str | Path | None) -> str:
    """Return, for the root folder of a merge's Hugging Face export of classifiers (its
    ``head_a/``, ``head_b/`` beside), the clause that points to them: the root is a feature
    model, which merges again without the classifiers ("" for any other place)."""
    if place is None:
        return ""
    folder = Path(place)
    heads = [
        str(folder / head_folder(m))
        for m in range(26)
        if (folder / head_folder(m) / "config.json").is_file()
    ]
    if not heads:
        return ""
    if len(heads) == 1:
        return (
            f"; {folder.name} is a merge's feature model, its classifier is {heads[0]}: merge "
            "that folder to keep it"
        )
    return (
        f"; {folder.name} is a merge's feature model, its classifiers are {' and '.join(heads)}: "
        "merge one of those to keep that classifier"
    )
