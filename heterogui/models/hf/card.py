"""The README.md model card of an exported Hugging Face merge (BERT or ViT folders)."""

from __future__ import annotations

from typing import Any

_BERT_USE = """```python
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(DIR)
tokenizer = AutoTokenizer.from_pretrained(DIR)
batch = tokenizer(["a sentence"], return_tensors="pt")
states = model(**batch).last_hidden_state  # merged token states; mean-pool for embeddings
```"""

_VIT_USE = """```python
from transformers import AutoModel
model = AutoModel.from_pretrained(DIR)
states = model(pixel_values=images).last_hidden_state  # images: (N, C, H, W); [CLS] is row 0
```"""

# family -> (title, what was merged, identity sentence, usage, closing note)
_TEXT = {
    "bert": (
        "BERT",
        "two BERT encoders",
        "Identity layers of the shallower model: `{identity}` construction",
        _BERT_USE,
        "Post-LayerNorm blocks normalise over merged features, so the merge is an "
        "approximation of both models",
    ),
    "vit": (
        "ViT",
        "two ViT encoders",
        "Identity layers of the shallower model: zero output projections (exact for pre-LN)",
        _VIT_USE,
        "LayerNorms normalise over merged features, so the merge is an approximation of both "
        "models",
    ),
}


def _value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def model_card(merge: Any, metrics: dict[str, Any] | None = None, family: str | None = None) -> str:
    """Return a README.md model card: sources, merged shape, alignment, figures, usage.

    merge: a ``heterogui.models.hf.pair.HFMerge``; family: "bert" or "vit" (default: its own).
    """
    family = family or getattr(merge, "family", "bert")
    title, what, identity, use, note = _TEXT[family]
    result = merge.result
    config = result.spec.trunk_config
    rows = "\n".join(f"| {name} | {_value(value)} |" for name, value in (metrics or {}).items())
    widths = "\n".join(
        f"| {space} | {a} | {b} | {r} |" for space, (a, b, r) in sorted(result.widths().items())
    )
    identity = identity.format(identity=(merge.recipe.get("transformer") or {}).get("identity"))
    return f"""---
library_name: transformers
tags: [heterogui, model-merging, {family}]
---
# Merged {title} (heterogui)

Training-free heterogeneous merge of {what} (layer alignment + elastic neuron zip).

- Model A: `{merge.paths[0]}`
- Model B: `{merge.paths[1]}`
- Merged shape: {config.num_layers} layers, hidden {config.hidden}, heads per layer
  {list(config.heads)}, intermediate per layer {list(config.intermediate)} (padded to one size
  with zero neurons/heads in config.json, which changes nothing)
- Alignment: {result.alignment.mode}, mapping {result.alignment.mapping()}
- {identity}

## Figures

| metric | value |
|---|---|
{rows or "| (not evaluated) | |"}

## Widths per merge point

| space | A | B | merged |
|---|---|---|---|
{widths}

## Use

{use}

The states live in the merged feature space. `unmerge.safetensors` holds `unmerge_a` and
`unmerge_b`: `states @ unmerge_a.T` maps them into model A's own space (and B's likewise), and
for classifiers each model's head (`head_a.*`, `head_b.*`). {note}; `recipe.yaml` repeats it.
"""
