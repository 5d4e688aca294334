"""What the Python API (``heterogui.merge``, ``heterogui.nway.merge_group``) refuses in one line.

A recipe's fields are checked as they are parsed (``config``, ``recipe_parse``); networks,
batches and settings handed over in memory are checked here, before anything runs, so a
mistake reads as the mistake and not as a torch traceback half-way through a merge.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral
from typing import Any

import torch

from heterogui.align.alignment import MODES
from heterogui.align.cka import MIN_BATCH
from heterogui.align.similarity import MEASURES
from heterogui.config import check_device_name
from heterogui.datasets.images import refuse_nonfinite_rows
from heterogui.errors import ConfigError
from heterogui.models.family import Network
from heterogui.models.io import check_finite
from heterogui.sources.base import model_key
from heterogui.tasks.images import check_inputs
from heterogui.zip.plan import ZipSettings

FUSION_DTYPES = (torch.float32, torch.float64)
# the dtypes the Python API widens to float32 (``widened``)
HALF_DTYPES = (torch.float16, torch.bfloat16)


def checked_batches(nets: Sequence[Network], batches: Any) -> list[Any]:
    """Return ``batches`` as a list, each batch checked against every network.

    Raises:
        ConfigError: one tensor or one tokenizer output in place of a list of batches, no
            batches, a batch too small for CKA, or a batch a network cannot read.
    """
    if isinstance(batches, torch.Tensor | Mapping):
        what = "one tensor" if isinstance(batches, torch.Tensor) else "one tokenizer output"
        raise ConfigError(
            f"calibration batches must be a list of batches, got {what}; pass [batch], or "
            "list(inputs.split(64)) to cut a tensor into batches"
        )
    if batches is not None and not isinstance(batches, list | tuple):
        batches = list(batches)  # a generator or DataLoader is read once, here
    if not batches:
        raise ConfigError("give calibration batches: a list of input batches, at least one")
    if getattr(nets[0].config, "vocab_size", None) is None:  # an image processor's output
        batches = [_pixels(batch) for batch in batches]
    batches = [widened_input(batch) for batch in batches]
    named = [
        dataclasses.replace(net, label=f"model {model_key(k).upper()}")
        if net.label == "model"
        else net
        for k, net in enumerate(nets)
    ]
    shapes = set()  # a tensor shape is checked once per model (a CNN's check runs a forward)
    for k, batch in enumerate(batches):
        for m, net in enumerate(named):
            if isinstance(batch, torch.Tensor) and getattr(net.config, "vocab_size", None) is None:
                if (m, batch.shape[1:], batch.dtype) not in shapes:
                    check_inputs(net, batch, "calibration")
                    _check_dtype(net, batch)
                    shapes.add((m, batch.shape[1:], batch.dtype))
            else:
                _check_token_batch(net, batch)
        _check_size(batch, k, len(batches))
        if isinstance(batch, torch.Tensor):  # NaN was blamed on the models overflowing
            refuse_nonfinite_rows(batch, f"calibration batch {k + 1} of {len(batches)}")
    return list(batches)


def widened(nets: Sequence[Network]) -> list[Network]:
    """Return ``nets`` with 16-bit floating weights widened to float32, as copies (the caller's
    networks stay as they are).

    Statistics over half-precision features move matchings (docs/method.md sec. 6); models
    loaded from files, and Hugging Face models handed over in memory, are widened so too. An
    export writes the dtype asked for.
    """
    out = []
    for net in nets:
        tensors = (*net.module.parameters(), *net.module.buffers())
        if any(t.dtype in HALF_DTYPES for t in tensors):
            net = dataclasses.replace(net, module=copy.deepcopy(net.module).float())
        out.append(net)
    return out


def widened_input(batch: Any) -> Any:
    """Return a batch whose 16-bit float tensors are float32 (to meet ``widened`` networks);
    other tensors (token ids, float32 or float64 inputs) as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.float() if batch.dtype in HALF_DTYPES else batch
    if isinstance(batch, Mapping):
        return {k: widened_input(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch


def check_networks(nets: Sequence[Network]) -> None:
    """Refuse networks whose weights cannot be merged as they are.

    Raises:
        ConfigError: weights on the meta device, or networks of different dtypes.
        ModelLoadError: NaN or inf weights (naming the tensor).
    """
    dtypes = []
    for k, net in enumerate(nets):
        name = net.label.removeprefix("model ") if net.label != "model" else model_key(k).upper()
        refuse_meta(net.module, f"model {name}")
        tensors = [*net.module.parameters(), *net.module.buffers()]
        check_finite(net.module.state_dict(), name)
        floats = {t.dtype for t in tensors if t.is_floating_point()}
        dtypes.append(floats.pop() if len(floats) == 1 else None)
    known = {d for d in dtypes if d is not None}
    if len(known) > 1:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes if d is not None)
        raise ConfigError(
            f"the models compute in different dtypes ({names}); convert them to one "
            "(model.to(torch.float32))"
        )


def refuse_meta(model: Any, label: str) -> None:
    """Refuse a model (a torch module, or a heterogui network's) whose weights are on the
    meta device: shapes without values.

    Raises:
        ConfigError: naming the model and how to give it values.
    """
    module = getattr(model, "module", model)
    if isinstance(module, torch.nn.Module) and any(
        t.is_meta for t in (*module.parameters(), *module.buffers())
    ):
        raise ConfigError(
            f"{label} has weights on the meta device (no values); load or initialise its "
            "weights first (model.to_empty(device='cpu') and load_state_dict)"
        )


def check_engine_options(options: Mapping[str, Any], takes: Callable[..., Any]) -> None:
    """Refuse options ``takes`` (the engine's prepare step) has no keyword for, and a device or
    a fusion dtype the engine does not take.

    Raises:
        ConfigError: naming the option or value and what to use (a zip knob: ``settings``).
    """
    known = {"dtype", *inspect.signature(takes).parameters}
    unknown = sorted(set(options) - known)
    if unknown:
        knobs = [k for k in unknown if k in {f.name for f in dataclasses.fields(ZipSettings)}]
        hint = (
            f"zip knobs go in settings=ZipSettings({knobs[0]}=...)"
            if knobs
            else f"it takes {sorted(known - {'batches', 'net_a', 'net_b', 'nets'})}"
        )
        raise ConfigError(f"unknown option(s) {unknown}; {hint}")
    device = options.get("device", "auto")
    check_device_name(str(device) if isinstance(device, torch.device) else device)
    _check_values(options)
    dtype = options.get("dtype", torch.float32)
    if dtype not in FUSION_DTYPES:
        raise ConfigError(f"dtype {dtype!r} is unknown; use torch.float32 or torch.float64")


def _check_values(options: Mapping[str, Any]) -> None:
    """Refuse option values the data passes would trip over later (or silently misread)."""
    mode = options.get("mode", "sma")
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is unknown; use one of {MODES}")
    manual = options.get("manual")
    if (mode == "manual") != (manual is not None):
        raise ConfigError(
            "mode='manual' takes a mapping (manual={'a': [...], 'b': [...]}), and a mapping "
            f"takes mode='manual' (got mode {mode!r}, manual {'given' if manual else 'none'})"
        )
    measure = options.get("measure", "auto")
    if measure != "auto" and measure not in MEASURES:
        raise ConfigError(f"measure {measure!r} is unknown; use auto or one of {MEASURES}")
    budget = options.get("stats_budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, Integral)):
        raise ConfigError(f"stats_budget = {budget!r} must be a number of bytes, or None")
    if budget is not None and budget <= 0:
        raise ConfigError(f"stats_budget = {budget} must be positive (bytes), or None")
    if not isinstance(options.get("reset_input_bn", True), bool):
        raise ConfigError(f"reset_input_bn = {options['reset_input_bn']!r} must be True or False")
    progress = options.get("progress")
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress must be a function (stage, fraction), got {progress!r}")


def _pixels(batch: Any) -> Any:
    """Return an image processor's output ({"pixel_values": tensor}) as its tensor."""
    if isinstance(batch, Mapping) and set(batch) == {"pixel_values"}:
        return batch["pixel_values"]
    return batch


def _check_dtype(net: Network, batch: torch.Tensor) -> None:
    """Refuse inputs of a dtype other than the one ``net`` computes in."""
    weights = next((p for p in net.module.parameters() if p.is_floating_point()), None)
    if weights is not None and batch.dtype != weights.dtype:
        want = str(weights.dtype).removeprefix("torch.")
        raise ConfigError(
            f"calibration inputs are {str(batch.dtype).removeprefix('torch.')} but {net.label} "
            f"computes in {want}; convert them (inputs.to(torch.{want}), scaled as in training)"
        )


def _check_size(batch: Any, k: int, count: int) -> None:
    """Refuse a batch too small for CKA, naming it (a DataLoader's short last batch)."""
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else batch
    n = len(ids) if isinstance(ids, torch.Tensor) else MIN_BATCH
    if n < MIN_BATCH:
        last = k == count - 1 and count > 1
        fix = (
            "drop it (DataLoader(..., drop_last=True))"
            if last
            else f"use batches of at least {MIN_BATCH}"
        )
        raise ConfigError(
            f"calibration batch {k + 1} of {count} holds {n} input(s) and CKA needs at least "
            f"{MIN_BATCH} per batch; {fix}"
        )


def _check_token_batch(net: Network, batch: Any) -> None:
    """Refuse a calibration batch that is not a tokenizer's output for ``net``'s vocabulary."""
    vocab = getattr(net.config, "vocab_size", None)
    if vocab is None:  # images or signals: tensors (an image processor's output unwrapped)
        keys = f" with keys {sorted(map(str, batch))}" if isinstance(batch, Mapping) else ""
        raise ConfigError(
            f"calibration batches of {net.label} must be tensors (N, ...), got a "
            f"{type(batch).__name__}{keys}; pass the inputs tensor itself (of an image "
            "processor's output, its pixel_values)"
        )
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None  # BatchEncoding too
    if not isinstance(ids, torch.Tensor):
        got = type(batch).__name__ if ids is None else f"input_ids of type {type(ids).__name__}"
        raise ConfigError(
            f"calibration batches of {net.label} must be tokenizer outputs (dicts with "
            f"input_ids), got a {got}; tokenize the texts first: tokenizer(texts, "
            "padding=True, return_tensors='pt')"
        )
    reads = [n for n in inspect.signature(type(net.module).forward).parameters if n != "self"]
    extra = sorted(str(k) for k in batch if k not in reads)
    if extra:
        raise ConfigError(
            f"calibration batches hold {extra}, which {net.label} does not read (it reads "
            f"{reads}); pass only those keys of the tokenizer's output"
        )
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.dim() != 2:
        raise ConfigError(
            f"input_ids must be whole numbers of shape (texts, tokens), got {ids.dtype} "
            f"{tuple(ids.shape)}; pass the tokenizer's output as it is"
        )
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ConfigError(
            f"token id {int(ids.max()) if int(ids.max()) >= vocab else int(ids.min())} lies "
            f"outside {net.label}'s vocabulary of {vocab}: tokenize with that model's tokenizer"
        )
    positions = getattr(net.config, "max_positions", None)
    if positions is not None and ids.shape[1] > positions:
        raise ConfigError(
            f"calibration texts of {ids.shape[1]} tokens are longer than {net.label}'s "
            f"{positions} positions; tokenize with truncation=True, max_length={positions}"
        )
    for key, value in batch.items():
        if key != "input_ids" and isinstance(value, torch.Tensor) and value.shape != ids.shape:
            raise ConfigError(
                f"{key} has shape {tuple(value.shape)} but input_ids {tuple(ids.shape)}; pass "
                "the tokenizer's output as it is"
            )
