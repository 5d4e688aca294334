"""Models given as Python objects to ``heterogui.merge``: heterogui networks as they are, a
merge (a ``MergeResult`` or its ``MergedModel``) as one network of its family, loaded Hugging
Face models converted by their family's adapter (``bert_io``, ``vit_io``, ``gpt2_io``,
``decoder_io``), anything else refused with what to pass instead.

The conversion copies the weights: the caller's model is never changed.
"""

from __future__ import annotations

from typing import Any

from heterogui.errors import ConfigError
from heterogui.models.family import Network

CAUSAL_LM_TYPES = ("gpt2", "llama", "qwen2", "mistral")
KNOWN_TYPES = ("bert", "vit", *CAUSAL_LM_TYPES)


def network_of(model: Any, label: str) -> Network:
    """Return ``model`` as a heterogui Network (``label``: its name in messages and reports).

    Raises:
        ConfigError: an object that is neither a Network nor a Hugging Face model heterogui has
            an adapter for.
        ModelLoadError: a Hugging Face model whose config or weights its adapter cannot take.
    """
    model = unmerged_input(model, label.removeprefix("model "))
    if isinstance(model, Network):
        return model
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind == "bert":
        from heterogui.models.hf.bert_io import network_from_hf

        return network_from_hf(model, label)
    if kind == "vit":
        from heterogui.models.hf.vit_io import network_from_hf

        return network_from_hf(model, label)
    if kind in CAUSAL_LM_TYPES:
        from heterogui.models.hf.decoder_io import causal_lm_network

        return causal_lm_network(_causal_lm(model, label), label)
    cls = type(model)
    what = f"a Hugging Face {kind!r} model" if kind else f"a {cls.__module__}.{cls.__qualname__}"
    raise ConfigError(
        f"{label} is {what}, which heterogui cannot merge; pass a heterogui network "
        f"(heterogui.run.load_pair(...).a.net, or one built with heterogui.models), a merge "
        f"(heterogui.merge's result) or a loaded Hugging Face model of type "
        f"{', '.join(KNOWN_TYPES)}"
    )


def unmerged_input(model: Any, label: str = "merged") -> Any:
    """Return a merge given as a model (a ``MergeResult``, a ``GroupMergeResult`` or their
    ``MergedModel``) as one network with every task head (``fusion.merged.as_network``: the
    next merge of a chain, as a recipe takes a merge's folder), anything else as it is.
    label: the network's name in messages. Image classifiers, ViTs and decoders chain so; a
    BERT merge (its classifiers' pooler and classifier, or an embedding model's pooling) and
    a partial zip have no network of their family: a BERT merge chains through its exported
    Hugging Face folder.

    Raises:
        ModelLoadError: such a merge (``as_network``), saying so.
    """
    from heterogui.fusion.merged import MergedModel, as_network

    inner = getattr(model, "model", None)  # a merge's result (two models or more)
    if isinstance(inner, MergedModel):
        model = inner
    return as_network(model, label) if isinstance(model, MergedModel) else model


def _causal_lm(model: Any, label: str) -> Any:
    """Return ``model`` when it has a language-model head (decoders merge with theirs).

    Raises:
        ConfigError: a bare decoder trunk (AutoModel), which has no head to merge.
    """
    if getattr(model, "lm_head", None) is None:
        raise ConfigError(
            f"{label} is a decoder without its language-model head; load it with "
            "AutoModelForCausalLM (heterogui merges the head with the trunk)"
        )
    return model
