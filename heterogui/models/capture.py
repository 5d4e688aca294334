"""Capture module outputs with forward hooks that are always removed (docs/method.md sec. 6).

Hooks act only on forwards of the thread that registered them (``on_this_thread``): a module
may run in several threads at once (the workbench's sessions share demo models and its idle
pass runs beside the events), and another thread's forward must neither feed a pass's
captures nor be stopped by them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn

from heterogui.models.conv import channels_last_weights

Batch = torch.Tensor | Mapping[str, torch.Tensor]


@contextmanager
def capture_outputs(
    module: nn.Module, names: Iterable[str], then: Callable[[str], None] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict that receives the output of each named submodule on every forward.

    then: called with the name after each output is stored (it may raise to end the forward).
    The hooks are removed on exit, also when the forward raises.
    """
    modules = dict(module.named_modules())
    found: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            if name not in modules:
                raise KeyError(f"no submodule named {name!r}")
            hook = on_this_thread(_store(found, name, then))
            handles.append(modules[name].register_forward_hook(hook))
        yield found
    finally:
        for handle in handles:
            handle.remove()


def on_this_thread(hook: Callable[..., Any]) -> Callable[..., Any]:
    """Return ``hook`` acting only when called on the thread that calls this (a no-op elsewhere)."""
    owner = threading.get_ident()

    def guarded(*args: Any) -> Any:
        return hook(*args) if threading.get_ident() == owner else None

    return guarded


def _store(found: dict[str, torch.Tensor], name: str, then: Callable[[str], None] | None):
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        found[name] = output[0] if isinstance(output, tuple) else output
        if then is not None:
            then(name)

    return hook


class _Captured(Exception):
    """Ends a forward pass at its last needed output (raised by a hook, caught by the pass)."""


@contextmanager
def capture_inputs(module: nn.Module, names: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict that receives the (first) input of each named submodule on every forward.

    The hooks are removed on exit, also when the forward raises.
    """
    modules = dict(module.named_modules())
    found: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            found[name] = args[0]

        return hook

    handles = []
    try:
        for name in names:
            if name not in modules:
                raise KeyError(f"no submodule named {name!r}")
            handles.append(modules[name].register_forward_pre_hook(on_this_thread(keep(name))))
        yield found
    finally:
        for handle in handles:
            handle.remove()


def first_block_input(module: nn.Module, batch: Batch) -> Any:
    """Return what ``blocks.0`` of ``module`` receives on ``batch``; no block runs."""

    def stop(_module: nn.Module, _args: tuple[Any, ...]) -> None:
        raise _Captured

    with capture_inputs(module, ["blocks.0"]) as found, suppress(_Captured):
        handle = module.get_submodule("blocks.0").register_forward_pre_hook(on_this_thread(stop))
        try:
            run_model(module, batch)
        finally:
            handle.remove()
    return found["blocks.0"]


class CapturePass:
    """Runs a module on batch after batch and returns the named submodules' outputs.

    The first batch runs the whole forward and records the order in which the outputs come;
    later batches stop right after the last of them (an exception from its hook, caught
    here), so what follows is not computed: a language model's 49,152-token head, the layers
    after the last merge point. If a named module runs more than once in a forward (its last
    output would count), every batch runs whole. whole: run every batch whole (a pass that
    also re-estimates BatchNorm statistics needs every layer).
    """

    def __init__(self, module: nn.Module, names: Iterable[str], whole: bool = False) -> None:
        self.module = module
        self.names = list(dict.fromkeys(names))
        self._last: str | None = None
        self._first = not whole

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Return {name: output} of one forward on ``batch`` (on the module's device)."""
        order: list[str] = []

        def seen(name: str) -> None:
            order.append(name)
            if name == self._last:
                raise _Captured

        with capture_outputs(self.module, self.names, seen) as found, suppress(_Captured):
            run_model(self.module, batch)
        if self._first:
            self._first = False
            once = len(order) == len(set(order)) == len(self.names)
            self._last = order[-1] if once else None
        return found


# what a pass hands each batch's captures to: (batch, per model {name: output})
Consumer = Callable[[Batch, list[dict[str, torch.Tensor]]], None]


def run_passes(
    modules: Sequence[nn.Module],
    names: Sequence[Iterable[str]],
    batches: Sequence[Batch],
    device: torch.device | str,
    consumers: Sequence[Consumer],
    progress: Callable[[float], None] | None = None,
    whole: bool = False,
) -> None:
    """Run every module once per batch and hand the batch's captures to every consumer.

    names: per module, the submodules whose outputs are captured (``CapturePass``: the forward
    stops after the last of them, unless ``whole``). One forward per model and batch serves all
    consumers: the similarity pass and the feature pass share it when the alignment is known
    before the CKA.
    """
    passes = [CapturePass(m, n, whole) for m, n in zip(modules, names, strict=True)]
    for step, batch in enumerate(batches):
        batch = to_device(batch, device)
        outs = [capture(batch) for capture in passes]
        for consume in consumers:
            consume(batch, outs)
        if progress is not None:
            progress((step + 1) / len(batches))


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    """Return the batch (a tensor or a dict of tensors) on ``device``.

    A batch of images (B, C, H, W) comes back channels-last (``pass_layout``).
    """
    if isinstance(batch, torch.Tensor):
        return pass_layout(batch.to(device))
    return {k: v.to(device) for k, v in batch.items()}


def pass_layout(images: torch.Tensor) -> torch.Tensor:
    """Return a float (B, C, H, W) batch channels-last in memory; any other tensor as it is.

    The same values in the layout every pass feeds a model: its convolutions then run
    channels-last (faster on CPU, docs/method.md sec. 6) and their outputs stay so, which
    makes a conv feature's (positions, channels) rows (``to_rows``) and its flattening for a
    Gram (``per_input``) views rather than copies.
    """
    if images.dim() != 4 or not images.is_floating_point():
        return images
    return images.contiguous(memory_format=torch.channels_last)


def run_model(model: nn.Module, batch: Batch) -> Any:
    """Call ``model`` on a tensor batch, or with keyword arguments for a dict batch.

    Its convolution weights are laid out for the pass first (``channels_last_weights``).
    """
    channels_last_weights(model)
    return model(batch) if isinstance(batch, torch.Tensor) else model(**batch)


def token_mask(batch: Batch) -> torch.Tensor | None:
    """Return the attention mask (B, T) of a dict batch, else None."""
    return None if isinstance(batch, torch.Tensor) else batch.get("attention_mask")


def to_rows(feats: torch.Tensor, layout: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return features as samples x channels.

    feats: (B, C) for "flat"; (B, C, *spatial) for "channels" (every position a sample);
    (B, T, C) for "tokens" (every token with mask 1 a sample, mask: (B, T)).
    """
    if layout == "flat":
        return feats.flatten(1)
    if layout == "channels":
        return feats.flatten(2).transpose(1, 2).reshape(-1, feats.shape[1])
    if layout == "tokens":
        rows = feats.reshape(-1, feats.shape[-1])
        return rows if mask is None else rows[mask.reshape(-1).bool()]
    raise ValueError(f"unknown feature layout {layout!r}")


def per_input(feats: torch.Tensor, layout: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return one flattened representation per input: (B, -1); padded tokens zeroed.

    The values of each row come in the features' memory order: channels-last features
    (B, C, H, W) flatten as (B, H, W, C), a view (and (B, C, L) laid out so, as (B, L, C)).
    Whatever reads the rows must not depend on their order (a Gram matrix does not).
    """
    if layout == "tokens" and mask is not None:
        feats = feats * mask[..., None].to(feats.dtype)
    if feats.dim() > 2 and not feats.is_contiguous():
        last = feats.movedim(1, -1)  # channels-last features (B, C, *spatial): a view
        if last.is_contiguous():
            return last.flatten(1)
    return feats.flatten(1)
