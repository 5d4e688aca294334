"""Token batches regrouped by length, for the passes whose sums do not depend on the grouping.

The feature pass (``zip.collect``), renormalization's per-feature sums, the sequential refit's
regressions (``fusion``) and the perplexity sums (``tasks.lm_metrics``) run over the real
tokens of all batches (docs/method.md secs. 6 and 9), so which sequences share a batch changes
their results by rounding only. Padding does cost: every padded token runs through every
layer. Calibration sentences of different lengths, padded to their batch's longest, are a
third padding on MiniLM's calibration data; sorted by length first, each batch pads only to
sequences of about its own length. The similarity pass keeps the batches it is given:
minibatch CKA compares the inputs within each batch, so the grouping is part of its estimate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from heterogui.models.capture import Batch


def by_length(batches: Sequence[Batch]) -> list[Batch]:
    """Return the same sequences in batches of the same sizes, longest first, each padded to
    its own longest sequence only.

    Applies to right-padded token batches: dicts of tensors with one key set and an
    ``attention_mask`` (B, T) whose ones come first in every row; entries of shape (B, T, ...)
    are per token (cut or padded with the value they are padded with), the others per
    sequence. Anything else (image tensors, left-padded or unmasked batches, mixed keys, no
    padding at all) comes back as it was.
    """
    batches = list(batches)
    per_token = _per_token_keys(batches)
    if per_token is None:
        return batches
    pads = {key: _pad_value(batches, key) for key in per_token}
    longest = max(b["attention_mask"].shape[1] for b in batches)
    joined = {
        key: _padded_cat([b[key] for b in batches], pads[key], longest)
        if key in per_token
        else torch.cat([b[key] for b in batches])
        for key in batches[0]
    }
    lengths = joined["attention_mask"].sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)  # ties keep their order
    regrouped, start = [], 0
    for batch in batches:
        rows = order[start : start + len(batch["attention_mask"])]
        cut = max(int(lengths[rows].max()), 1)  # rows of padding only keep one position
        regrouped.append(
            {
                key: value[rows, :cut] if key in per_token else value[rows]
                for key, value in joined.items()
            }
        )
        start += len(rows)
    return regrouped


def _per_token_keys(batches: list[Batch]) -> set[str] | None:
    """Return the per-token keys of right-padded token batches with some padding, else None."""
    if not batches or not all(isinstance(b, dict) and "attention_mask" in b for b in batches):
        return None
    keys = set(batches[0])
    per_token: set[str] | None = None
    padded = False
    for batch in batches:
        mask = batch["attention_mask"]
        if set(batch) != keys or mask.dim() != 2:
            return None
        if not all(isinstance(v, torch.Tensor) and len(v) == len(mask) for v in batch.values()):
            return None
        if not torch.equal(mask, mask.cummin(dim=1).values):  # a 0 before a 1: not right-padded
            return None
        padded = padded or not bool(mask.all())
        here = {k for k, v in batch.items() if v.dim() >= 2 and v.shape[:2] == mask.shape}
        if per_token is not None and here != per_token:
            return None
        per_token = here
    return per_token if padded else None


def _pad_value(batches: list[Batch], key: str) -> torch.Tensor:
    """Return what ``key`` holds at the first padded token of the batches."""
    for batch in batches:
        padding = batch["attention_mask"] == 0
        if padding.any():
            return batch[key][padding][0]
    raise ValueError("no padded token")  # _per_token_keys returns None without padding


def _padded_cat(parts: list[torch.Tensor], pad: torch.Tensor, length: int) -> torch.Tensor:
    """Return the parts (B_i, T_i, ...) padded with ``pad`` to ``length`` and joined."""
    rows = sum(len(p) for p in parts)
    out = pad.expand(rows, length, *pad.shape).clone()
    start = 0
    for part in parts:
        out[start : start + len(part), : part.shape[1]] = part
        start += len(part)
    return out
