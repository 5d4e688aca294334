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
    ``pipeline.MergeResult``, or a ``nway.GroupMergeResult`` for a list of three or more models)
    without scoring it: ``heterogui.run.merge(recipe)`` also returns the scores, the report and
    the completed recipe, which ``heterogui.run.export`` writes.

    Raises:
        ConfigError: networks given without batches, or a model heterogui cannot merge.
        HeteroguiError: any other invalid input (see the subclasses).
    """
    from heterogui import run  # the package root stays import-light: torch loads on first use
    from heterogui.config import Recipe
    from heterogui.errors import ConfigError

    if model_b is None and isinstance(model_a, Recipe | str | os.PathLike | dict):
        recipe = run.as_recipe(model_a)  # a dict: refused, with the call that builds one
        ignored = sorted(set(options) - {"progress"})
        if ignored:
            raise ConfigError(
                f"merge(recipe) takes no options {ignored}: a recipe holds its settings "
                "(alignment, zip, device, dtype); change them in the recipe"
            )
        return run.merge(recipe, options.get("progress"), evaluate=False).result
    if isinstance(model_a, list | tuple):
        raise ConfigError(
            "merge(net_a, net_b, batches) takes two networks, not a list: merge three or more "
            "with heterogui.nway.merge_group(nets, batches), or a recipe whose models: lists them"
        )
    if model_b is None or batches is None:
        raise ConfigError(
            "merge(net_a, net_b, batches): give both networks and calibration batches"
        )
    from heterogui.api_input import (
        check_engine_options,
        check_networks,
        checked_batches,
        refuse_meta,
        widened,
    )
    from heterogui.models.hf.instances import network_of
    from heterogui.pair_check import check_pair
    from heterogui.pipeline import merge_networks, prepare
    from heterogui.zip.plan import checked_settings

    refuse_meta(model_a, "model A")
    refuse_meta(model_b, "model B")
    net_a, net_b = widened((network_of(model_a, "model A"), network_of(model_b, "model B")))
    check_pair(net_a, net_b)  # incompatible models are not refused as bad data below
    check_networks((net_a, net_b))
    settings = checked_settings(options.pop("settings", None))
    check_engine_options(options, prepare)
    batches = checked_batches((net_a, net_b), batches)
    return merge_networks(net_a, net_b, batches, settings, **options)
