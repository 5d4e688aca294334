"""Override patterns: one recipe entry for many merge points ("*.qk": every attention layer)."""

from __future__ import annotations

import pytest
import torch

from heterogui.config import ZipSpec
from heterogui.errors import ConfigError
from heterogui.models.family import build_network
from heterogui.models.vit import ViTNetConfig
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
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
    layers = head_group_firsts(prepared.padded_a.graph())
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


def test_a_merge_points_own_entry_replaces_its_patterns_and_later_patterns_win(prepared):
    settings = ZipSettings(
        overrides={"layer*": {"rho": 0.0}, "*.ffn": {"rho": 0.5}, "layer0.ffn": {"width": 40}}
    )
    assert settings.override_for("layer0.ffn") == {"width": 40}
    assert settings.override_for("layer1.ffn") == {"rho": 0.5}
    assert settings.override_for("layer1.qk") == {"rho": 0.0}
    assert settings.override_for("stream") == {}
    widths = zip_prepared(prepared, settings).widths()
    assert widths["layer0.ffn"][2] == 40


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"*.vo": {"rho": 0.0}}, "match no merge point that takes an override"),
        ({"block*": {"rho": 0.0}}, "match no merge point"),
        ({"layer9.qk": {"rho": 0.0}}, "unknown merge points ['layer9.qk']"),
        ({"logits": {"width": 3}}, "unknown merge points ['logits']; known"),  # never merged
    ],
)
def test_a_pattern_or_name_that_matches_nothing_is_refused(prepared, overrides, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        zip_prepared(prepared, ZipSettings(overrides=overrides))


def test_recipes_take_patterns():
    spec = ZipSpec(overrides={"*.qk": {"rho": 0.0}})
    assert spec.overrides == {"*.qk": {"rho": 0.0}}
    with pytest.raises(ConfigError, match="unknown keys"):
        ZipSpec(overrides={"*.qk": {"rhoo": 0.0}})
