"""Inputs for calibration and evaluation, as a recipe's DataRef names them."""

from __future__ import annotations

from pathlib import Path

import torch

from heterogui.config import DataRef
from heterogui.errors import ConfigError, ModelLoadError
from heterogui.models.io import load_state


def load_inputs(ref: DataRef) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (inputs (N, ...), labels (N,) or None) for a DataRef, subsampled as it says.

    Raises:
        ConfigError: unknown dataset, or a file without an "inputs" tensor.
        ModelLoadError: a missing or corrupt file.
    """
    if ref.source.endswith(".safetensors"):
        inputs, labels = _from_file(Path(ref.source))
    else:
        from heterogui.zoo.datasets import DATASETS, load_split

        if ref.source not in DATASETS:
            raise ConfigError(
                f"unknown dataset {ref.source!r}; use one of {sorted(DATASETS)} or a "
                ".safetensors file with an 'inputs' tensor"
            )
        split = load_split(ref.source, ref.split, seed=0)
        inputs, labels = split.inputs, split.labels
    if ref.size is not None and ref.size < inputs.shape[0]:
        gen = torch.Generator().manual_seed(ref.seed)
        pick = torch.randperm(inputs.shape[0], generator=gen)[: ref.size].sort().values
        inputs = inputs[pick]
        labels = labels[pick] if labels is not None else None
    return inputs, labels


def _from_file(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not path.is_file():
        raise ModelLoadError(f"data file {str(path)!r} does not exist")
    state = load_state(path)
    if "inputs" not in state:
        raise ConfigError(f"{path} has no 'inputs' tensor (found {sorted(state)}); save one")
    return state["inputs"].float(), state.get("labels")


def make_batches(inputs: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split inputs into consecutive batches; a last batch under 4 joins the one before.

    inputs: (N, ...) -> list of (b, ...) tensors.
    """
    batches = list(torch.split(inputs, batch_size))
    if len(batches) > 1 and batches[-1].shape[0] < 4:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches
