"""Fusion in BatchNorm units (zip.bn_units, ``fusion.bn_units``).

The rescaled states compute each parent's function exactly, leave the parents, the identity
blocks and the tails alone, and change the merge only through fusion: a permuted copy still
merges back to the model, models without BatchNorm merge the same either way, and recipes
recorded before the knob repeat their old merge.
"""

from __future__ import annotations

import copy

import pytest
import torch

from heterogui.fusion.bn_units import fusion_states, unit_scales
from heterogui.models.permute import permute_network, random_permutations
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.recipe_parse import recipe_from_dict
from tests.conftest import DEPTH_PAIRS, calibration, make, max_diff

FUSIONS = ("average", "least_squares", "least_squares_heads", "least_squares_sequential")


def pair(name: str):
    config_a, config_b, shape = DEPTH_PAIRS[name]
    return make(config_a, 0, "A", (0, 1, 2, 3, 4)), make(config_b, 1, "B", (5, 6, 7, 8, 9)), shape


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_the_rescaled_states_compute_each_parent_exactly_and_leave_it_alone(name):
    a, b, shape = pair(name)
    prep = prepare(a, b, calibration(shape), device="cpu")  # padded: identity blocks in B
    x = torch.randn(32, *shape)
    for net in (prep.padded_a, prep.padded_b):
        before = {k: v.clone() for k, v in net.module.state_dict().items()}
        stop = net.graph().num_blocks - 1
        (state,) = fusion_states([net], unit_scales([net], stop))
        rescaled = copy.deepcopy(net.module)
        rescaled.load_state_dict(state)
        with torch.no_grad():
            assert max_diff([rescaled.eval()(x)], [net.module.eval()(x)]) < 1e-4
        after = net.module.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # the parent is untouched
        changed = {k for k in state if not torch.equal(state[k], before[k])}
        layers = {
            layer
            for layer, _ in net.graph().batch_norms
            if int(layer.split(".")[1]) not in net.identity_blocks
        }
        assert {k.rsplit(".", 1)[0] for k in changed if k.endswith(".weight")} >= layers
        for block in net.identity_blocks:  # built exact: left exactly as they are
            assert not [k for k in changed if k.startswith(f"blocks.{block}.")]
        for layer, norm in net.graph().batch_norms:
            if int(layer.split(".")[1]) in net.identity_blocks:
                continue
            var = state[f"{norm}.running_var"]
            eps = net.module.get_submodule(norm).eps
            assert torch.allclose(var, torch.full_like(var, 1 - eps))
        (plain,) = fusion_states([net], {})
        assert all(torch.equal(plain[k], before[k]) for k in before)


def test_only_the_trunk_is_rescaled():
    a, _, shape = pair("resnet")
    (state,) = fusion_states([a], unit_scales([a], 2))
    original = a.module.state_dict()
    changed = {k.split(".")[1] for k in state if not torch.equal(state[k], original[k])}
    assert changed == {"0", "1"}


@pytest.mark.parametrize("name", ["vgg", "resnet"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_permuted_copy_still_merges_back_to_the_model(name, fusion):
    a, _, shape = pair(name)
    b = permute_network(a, random_permutations(a.graph(), torch.Generator().manual_seed(7)))
    batches = calibration(shape)
    prep = prepare(a, b, batches, device="cpu")
    result = zip_prepared(prep, ZipSettings(fusion=fusion, bn_units=True))
    assert result.settings.bn_units is True
    with torch.no_grad():
        refs = [prep.net_a.module.eval()(batches[0]), prep.net_b.module.eval()(batches[0])]
        assert max_diff(result.model(batches[0]), refs) < 1e-4


@pytest.mark.parametrize("name", ["vgg", "resnet"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_merge_that_merges_nothing_is_the_ensemble_to_float_precision(name, fusion):
    # rho 0 keeps every feature: each model's outputs come back. The sequential refit runs the
    # merge and re-estimates its BatchNorm block by block; in BatchNorm units that re-estimate
    # added the epsilon to the rescaled variance, and missed the parents by about 1e-4
    a, b, shape = pair(name)
    batches = calibration(shape)
    prep = prepare(a, b, batches, device="cpu")
    result = zip_prepared(prep, ZipSettings(rho=0.0, fusion=fusion, bn_units=True))
    with torch.no_grad():
        refs = [prep.net_a.module.eval()(batches[0]), prep.net_b.module.eval()(batches[0])]
        scale = max(r.abs().max().item() for r in refs)
        assert max_diff(result.model(batches[0]), refs) < 2e-6 * scale


@pytest.mark.parametrize("fusion", FUSIONS)
def test_bn_units_changes_batchnorm_merges_and_nothing_else(fusion):
    for name in ("vgg", "resnet", "mlp"):
        a, b, shape = pair(name)
        batches = calibration(shape)
        prep = prepare(a, b, batches, device="cpu")
        on = zip_prepared(prep, ZipSettings(fusion=fusion, bn_units=True))
        off = zip_prepared(prep, ZipSettings(fusion=fusion, bn_units=False))
        with torch.no_grad():
            gap = max_diff(on.model(batches[0]), off.model(batches[0]))
        if name == "mlp":  # no BatchNorm: the very same merge
            assert gap == 0.0
        else:
            assert gap > 1e-3


def test_the_baselines_and_the_recipe_record_bn_units():
    assert ZipSettings().bn_units is True
    assert ZipSettings(matcher="permute").resolved("least_squares").bn_units is False
    assert ZipSettings(matcher="average").resolved("least_squares").bn_units is False
    assert ZipSettings().resolved("least_squares").bn_units is True
    explicit = ZipSettings(matcher="permute", fusion="average", bn_units=True)
    assert explicit.resolved("least_squares").bn_units is True
    written = {"model_a": {"path": "a"}, "model_b": {"path": "b"}, "zip": {"fusion": "average"}}
    assert recipe_from_dict(written).zip.bn_units is True  # written by hand: the default
    recorded = {**written, "versions": {"heterogui": "0.1.0"}}
    assert recipe_from_dict(recorded).zip.bn_units is False  # recorded before the knob
    assert "bn_units" not in recorded["zip"]  # the caller's dict is not modified
    kept = {**recorded, "zip": {"fusion": "average", "bn_units": True}}
    assert recipe_from_dict(kept).zip.bn_units is True
    assert recipe_from_dict(recipe_from_dict(kept).to_dict()) == recipe_from_dict(kept)
    with pytest.raises(Exception, match="bn_units"):
        recipe_from_dict({**written, "zip": {"bn_units": "yes"}})
