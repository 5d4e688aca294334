"""Override patterns: one recipe entry for many merge points ("*.qk": every attention layer)."""

from __future__ import annotations

import re

import pytest
import torch

from heterogui.config import ZipSpec
from heterogui.errors import ConfigError
from heterogui.models.family import build_network
from heterogui.models.graph import unshared_spaces
from heterogui.models.vit import ViTNetConfig
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.report import settings_facts
from heterogui.zip.plan import head_group_firsts


def paired(**knobs) -> ZipSettings:
    """Return settings with the paper's paired heads (whose widths rho sets; a split's not)."""
    return ZipSettings(heads="pair", **knobs)


@pytest.fixture(scope="module")
def prepared():
    torch.manual_seed(0)
    deep = ViTNetConfig(8, 2, 1, 16, 8, (2, 2, 2), (32, 32, 32), 5, layer_norm_eps=1e-6)
    shallow = ViTNetConfig(8, 2, 1, 16, 8, (2, 2), (32, 32), 5, layer_norm_eps=1e-6)
    a, b = build_network(deep, tuple(range(5))), build_network(shallow, (5, 6, 7, 8, 9))
    batches = list(torch.randn(64, 1, 8, 8).split(32))
    return prepare(a, b, batches, mode="lma", device="cpu")


def test_a_pattern_gives_every_merge_point_it_matches_the_same_knobs(prepared):
    alone = unshared_spaces([prepared.padded_a.graph(), prepared.padded_b.graph()])
    layers = [n for n in head_group_firsts(prepared.padded_a.graph()) if n not in alone]
    by_name = zip_prepared(prepared, paired(overrides={s: {"rho": 0.0} for s in layers}))
    by_pattern = zip_prepared(prepared, paired(overrides={"*.qk": {"rho": 0.0}}))
    assert by_pattern.widths() == by_name.widths()
    state, again = by_name.model.state_dict(), by_pattern.model.state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)
    plain = zip_prepared(prepared, paired()).widths()
    assert by_pattern.widths() != plain  # the pattern changed the attention widths only
    assert {k for k in plain if plain[k] != by_pattern.widths()[k]} <= {
        n for n in plain if n.endswith((".qk", ".vo"))
    }


def test_a_merge_points_own_entry_replaces_its_patterns(prepared):
    settings = ZipSettings(
        overrides={"layer*": {"rho": 0.0}, "*.ffn": {"alpha": 0.3}, "layer0.ffn": {"width": 40}}
    )
    assert settings.override_for("layer0.ffn") == {"width": 40}
    assert settings.override_for("layer1.ffn") == {"rho": 0.0, "alpha": 0.3}
    assert settings.override_for("layer1.qk") == {"rho": 0.0}
    assert settings.override_for("stream") == {}
    widths = zip_prepared(prepared, settings).widths()
    assert widths["layer0.ffn"][2] == 40


@pytest.mark.parametrize(
    "overrides, words",
    [
        (
            {"layer*": {"rho": 0.0}, "*.ffn": {"rho": 0.5}},
            "override patterns 'layer*' and '*.ffn' both match merge point layer0.ffn and set "
            "its rho to 0.0 and 0.5; give layer0.ffn its own entry",
        ),
        (
            {"layer*": {"rho": 0.0}, "*.ffn": {"width": 40}},
            "override patterns 'layer*' and '*.ffn' both match merge point layer0.ffn, one with "
            "a rho and one with a width",
        ),
    ],
)
def test_patterns_that_disagree_on_a_merge_point_are_refused(prepared, overrides, words):
    # Which one won hung on the keys' order, and recipe.yaml stores them sorted: a recorded
    # recipe could repeat another merge.
    with pytest.raises(ConfigError, match=re.escape(words)):
        zip_prepared(prepared, ZipSettings(overrides=overrides))
    alone = unshared_spaces([prepared.padded_a.graph(), prepared.padded_b.graph()])
    ffns = [n for n in prepared.padded_a.graph().spaces if n.endswith(".ffn") and n not in alone]
    own = {**overrides, **{n: {"rho": 0.5} for n in ffns}}  # their own entries settle it
    widths = zip_prepared(prepared, ZipSettings(overrides=own)).widths()
    assert (
        widths == zip_prepared(prepared, ZipSettings(overrides=dict(sorted(own.items())))).widths()
    )


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"*.vo": {"rho": 0.0}}, "match no merge point that takes an override"),
        ({"block*": {"rho": 0.0}}, "match no merge point"),
        ({"layer9.qk": {"rho": 0.0}}, "unknown merge points ['layer9.qk']"),
        (
            {"logits": {"width": 3}},
            "unknown merge points ['logits']; those that take",
        ),  # never merged
    ],
)
def test_a_pattern_or_name_that_matches_nothing_is_refused(prepared, overrides, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        zip_prepared(prepared, ZipSettings(overrides=overrides))


def test_a_merge_point_that_only_one_model_uses_is_refused_by_name(prepared):
    # B's identity layer (depth padding) leaves A's layer there unzipped: an override of it
    # was recorded in the recipe and the card but changed nothing
    alone = unshared_spaces([prepared.padded_a.graph(), prepared.padded_b.graph()])
    ffn = next(n for n in sorted(alone) if n.endswith(".ffn"))
    with pytest.raises(ConfigError, match=rf"only one model uses \['{ffn}'\] \(the others"):
        zip_prepared(prepared, ZipSettings(overrides={ffn: {"width": 16}}))
    widths = zip_prepared(prepared, ZipSettings(overrides={"*.ffn": {"width": 40}})).widths()
    shared = [n for n in widths if n.endswith(".ffn") and n not in alone]
    assert shared and all(widths[n][2] == 40 for n in shared)  # a pattern sets those both use
    assert widths[ffn][2] == 32  # the one model's features, kept


def test_recipes_take_patterns():
    spec = ZipSpec(overrides={"*.qk": {"rho": 0.0}})
    assert spec.overrides == {"*.qk": {"rho": 0.0}}
    with pytest.raises(ConfigError, match="unknown keys"):
        ZipSpec(overrides={"*.qk": {"rhoo": 0.0}})


def test_the_card_lists_overrides_as_recipe_yaml_stores_them(prepared):
    # A workbench export's card listed them in the order they were set, its rerun's card in
    # recipe.yaml's sorted order: the two cards differed though the weights were the same.
    overrides = {"layer0.ffn": {"rho": 0.5}, "*.qk": {"rho": 0.0}}
    result = zip_prepared(prepared, paired(overrides=overrides))
    assert list(settings_facts(result)["overrides"]) == ["*.qk", "layer0.ffn"]
