"""heterogui: training-free heterogeneous model merging, as a library and a workbench.

``heterogui.merge(net_a, net_b, batches)`` or ``heterogui.merge("recipe.yaml")`` returns a
MergeResult with the merged model, the alignment, the per-merge-point matches and transforms.
"""

from __future__ import annotations

import os
from typing import Any

__version__ = "0.1.0"
__all__ = ["merge", "__version__"]


def merge(model_a: Any, model_b: Any = None, batches: Any = None, **options: Any) -> Any:
    """Merge two networks on calibration batches, or run a recipe (a Recipe or its file).

    ``merge(net_a, net_b, batches, mode=..., settings=..., device=...)`` runs the engine on
    in-memory networks (``heterogui.pipeline.merge_networks``): heterogui Networks, or loaded
    Hugging Face BERT, ViT, GPT-2, Llama, Qwen2 or Mistral models (converted by copy: the
    models given are not changed; decoders with their language-model head), with batches of
    tensors or tokenizer dicts; ``merge(recipe)`` runs a recipe
    through the one merge path (``heterogui.run.merge``) and returns its engine result (a
    ``pipeline.MergeResult``, or a ``nway.GroupMergeResult`` for a list of three or more models).

    Raises:
        ConfigError: networks given without batches, or a model heterogui cannot merge.
        HeteroguiError: any other invalid input (see the subclasses).
    """
    from heterogui import run  # the package root stays import-light: torch loads on first use
    from heterogui.config import Recipe
    from heterogui.errors import ConfigError

    if model_b is None and isinstance(model_a, Recipe | str | os.PathLike | dict):
        if isinstance(model_a, dict):
            raise ConfigError(
                "merge(recipe) takes a Recipe or a recipe file, not a dict: build the Recipe "
                "with heterogui.recipe_parse.recipe_from_dict(data)"
            )
        ignored = sorted(set(options) - {"progress"})
        if ignored:
            raise ConfigError(
                f"merge(recipe) takes no options {ignored}: a recipe holds its settings "
                "(alignment, zip, device, dtype); change them in the recipe"
            )
        return run.merge(model_a, options.get("progress")).result
    if isinstance(model_a, list | tuple):
        raise ConfigError(
            "merge(net_a, net_b, batches) takes two networks, not a list: merge three or more "
            "with heterogui.nway.merge_group(nets, batches), or a recipe whose models: lists them"
        )
    if batches is not None and not isinstance(batches, list | tuple):
        batches = list(batches)  # a generator is read once: by the checks below, not the merge
    if model_b is None or not batches:
        raise ConfigError(
            "merge(net_a, net_b, batches): give both networks and calibration batches"
        )
    import torch

    from heterogui.models.hf.instances import network_of
    from heterogui.pipeline import merge_networks
    from heterogui.tasks.images import check_inputs

    net_a, net_b = network_of(model_a, "model A"), network_of(model_b, "model B")
    if getattr(net_a.config, "vocab_size", None) is None:  # an image processor's output
        batches = [_pixels(batch) for batch in batches]
    for batch in batches:  # refused in one line here, not by torch half-way
        for net in (net_a, net_b):
            text = getattr(net.config, "vocab_size", None) is not None
            if isinstance(batch, torch.Tensor) and not text:  # images or signals
                check_inputs(net, batch, "calibration")
            else:
                _check_token_batch(net, batch)
    return merge_networks(net_a, net_b, batches, **options)


def _pixels(batch: Any) -> Any:
    """Return an image processor's output ({"pixel_values": tensor}) as its tensor."""
    from collections.abc import Mapping

    if isinstance(batch, Mapping) and set(batch) == {"pixel_values"}:
        return batch["pixel_values"]
    return batch


def _check_token_batch(net: Any, batch: Any) -> None:
    """Refuse a calibration batch that is not a tokenizer's output for ``net``'s vocabulary."""
    from collections.abc import Mapping

    import torch

    from heterogui.errors import ConfigError

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
    import inspect

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
