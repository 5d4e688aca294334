"""Weighted RMSNorms (heterogui.fusion.norm_weights, docs/method.md sec. 9): a decoder merged
with a permuted copy of itself computes its function at every rho and stop point, the
exported folder too, and recipes recorded before the knob repeat their merge."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_decoder
from test_decoder import batches, logits, real_rows
from transformers import AutoModelForCausalLM

from heterogui.export.job import ExportJob
from heterogui.export.registry import write_export
from heterogui.fusion.norm_weights import stream_scales
from heterogui.models.hf.decoder_io import network_from_hf
from heterogui.models.permute import permute_network, random_permutations
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.recipe_parse import recipe_from_dict
from heterogui.report import settings_facts
from heterogui.zip.match import Match


@pytest.fixture(scope="module")
def permuted_pair():
    net = network_from_hf(tiny_decoder("llama", hidden=48, layers=3, heads=6, kv=2))
    copy = permute_network(net, random_permutations(net.graph(), torch.Generator().manual_seed(3)))
    calib = batches()
    with torch.no_grad():
        want = net.module(**calib[0])
    return prepare(net, copy, calib, mode="sma", device="cpu"), calib[0], want


def _gap(result, batch, want) -> float:
    return max(
        float(real_rows((out - want).abs(), batch).max()) for out in logits(result.model, batch)
    )


@pytest.mark.parametrize("stop", [None, 3])
def test_a_permuted_copy_merged_wider_computes_its_function(permuted_pair, stop, tmp_path):
    prep, batch, want = permuted_pair
    # rho 0.5: half the features merged, the rest kept from both models (a wider stream)
    weighted = zip_prepared(prep, ZipSettings(rho=0.5, stop=stop))
    assert weighted.spec.trunk_config.hidden == 72 and weighted.norm_weighted
    assert _gap(weighted, batch, want) < 1e-4
    # the paper's norms divide by the mean square over all 72 features, a kept one counting
    # as much as a merged one: the function changes
    plain = zip_prepared(prep, ZipSettings(rho=0.5, stop=stop, norm_weights=False))
    assert not plain.norm_weighted and _gap(plain, batch, want) > 0.5
    if stop is None:  # the weights hold it: the exported folder is a plain Llama model
        folder = write_export(
            ExportJob(weighted.model, source_folder=None), tmp_path / "m", "hf-causal-lm"
        )
        loaded = AutoModelForCausalLM.from_pretrained(folder)
        with torch.no_grad():
            exported = loaded(**batch).logits
        assert float(real_rows((exported - want).abs(), batch).max()) < 1e-4


@pytest.mark.parametrize("stop", [None, 3])
def test_the_sequential_refit_fits_in_the_weighted_basis(permuted_pair, stop):
    # the norms are weighed before the refit and every stream writer it fits again is weighed
    # again (fusion.sequential's reweigh): the copy comes back. With the paper's norms the
    # refit cannot undo their scale (1.0 and 1.2 on these logits)
    prep, batch, want = permuted_pair
    settings = ZipSettings(rho=0.5, stop=stop, fusion="least_squares_sequential")
    weighted = zip_prepared(prep, settings)
    assert weighted.norm_weighted and "refit" in weighted.timings
    assert _gap(weighted, batch, want) < 1e-4
    assert settings_facts(weighted)["norm_weights"] is True
    plain = zip_prepared(prep, dataclasses.replace(settings, norm_weights=False))
    assert not plain.norm_weighted and _gap(plain, batch, want) > 0.5


def test_one_to_one_merges_are_left_as_they_were(permuted_pair):
    prep, batch, want = permuted_pair
    weighted = zip_prepared(prep, ZipSettings(rho=1.0))
    plain = zip_prepared(prep, ZipSettings(rho=1.0, norm_weights=False))
    assert not weighted.norm_weighted  # every group one feature of each: every scale is 1
    ours, theirs = weighted.model.state_dict(), plain.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert settings_facts(weighted)["norm_weights"] is True


def test_stream_scales_weigh_each_group_by_the_features_it_stands_for():
    # A: 4 features, B: 2; groups: {A0, B0}, {A1, A2}, {A3}, {B1}
    match = Match.of_sizes(torch.tensor([0, 1, 1, 2, 0, 3]), (4, 2), 4)
    # w_k = (c_Ak / 4 + c_Bk / 2) / 2; s_k = sqrt(4 w_k)
    want = torch.tensor([3 / 8, 2 / 8, 1 / 8, 2 / 8], dtype=torch.float64).mul(4).sqrt()
    assert torch.allclose(stream_scales(match), want, rtol=0, atol=1e-15)
    one_to_one = Match.of_sizes(torch.tensor([0, 1, 2, 2, 1, 0]), (3, 3), 3)
    assert torch.equal(stream_scales(one_to_one), torch.ones(3, dtype=torch.float64))


def test_recipes_recorded_before_the_knob_merge_with_plain_norms():
    written = {"model_a": {"path": "a"}, "model_b": {"path": "b"}}
    assert recipe_from_dict(written).zip.norm_weights is True  # written by hand: the default
    recorded = {**written, "versions": {"heterogui": "0.1.0"}, "zip": {"bn_units": True}}
    assert recipe_from_dict(recorded).zip.norm_weights is False
    assert recipe_from_dict(recorded).zip.bn_units is True
    kept = {**recorded, "zip": {"norm_weights": True}}
    assert recipe_from_dict(kept).zip.norm_weights is True
    with pytest.raises(Exception, match="norm_weights"):
        recipe_from_dict({**written, "zip": {"norm_weights": "yes"}})
