"""Pairs the CKA cannot re-place (every stage of equal depth) are analysed in one pass."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import DEPTH_PAIRS, IMAGE, calibration, make, tiny_decoder, tiny_hf, token_batches
from test_decoder import batches as decoder_batches

from heterogui import ready
from heterogui.align.alignment import MODES, align, placed_by_depths
from heterogui.align.similarity import layer_similarities, layer_similarity
from heterogui.models.capture import CapturePass
from heterogui.models.hf.bert_io import network_from_hf as bert_from_hf
from heterogui.models.hf.decoder_io import network_from_hf as decoder_from_hf
from heterogui.models.resnet import cifar_resnet
from heterogui.nway import prepare_group, zip_group_prepared
from heterogui.pipeline import ZipSettings, prepare, realign, zip_prepared
from heterogui.zip.collect import collect_moments


def _resnet_width_pair():
    """ResNets of one depth and two widths, with BatchNorm (re-estimated first)."""
    a = make(cifar_resnet((2, 2), 1, 5, 1, base=8), 0, "A")
    b = make(cifar_resnet((2, 2), 2, 5, 1, base=8), 1, "B")
    return a, b, calibration(IMAGE, n_batches=3)


def _bert_width_pair():
    a = bert_from_hf(tiny_hf(hidden=32, heads=4, inter=64, layers=3, seed=0), "A")
    b = bert_from_hf(tiny_hf(hidden=48, heads=6, inter=80, layers=3, seed=1), "B")
    return a, b, token_batches(3)


def _decoder_width_pair():
    a = decoder_from_hf(tiny_decoder(hidden=48, layers=3, heads=6, kv=2, inter=80, seed=1))
    b = decoder_from_hf(tiny_decoder(hidden=72, layers=3, heads=9, kv=3, inter=96, seed=2))
    return a, b, decoder_batches()


def _forwards(monkeypatch) -> list[int]:
    """Count the forwards the similarity and feature passes run (one entry per model call)."""
    calls: list[int] = []
    original = CapturePass.__call__

    def counted(self, batch):
        calls.append(1)
        return original(self, batch)

    monkeypatch.setattr(CapturePass, "__call__", counted)
    return calls


@pytest.mark.parametrize("pair", [_resnet_width_pair, _bert_width_pair, _decoder_width_pair])
def test_an_equal_depth_pair_is_analysed_in_one_forward_per_model(pair, monkeypatch):
    net_a, net_b, data = pair()
    calls = _forwards(monkeypatch)
    prep = prepare(net_a, net_b, data)
    assert len(calls) == 2 * len(data)  # one forward of A and one of B per batch
    assert "analysis" in prep.timings and "features" not in prep.timings
    assert prep.padded_a is prep.net_a and prep.padded_b is prep.net_b
    depths = tuple(len(s) for s in prep.net_a.graph().stages)
    assert prep.alignment.positions_a == prep.alignment.positions_b
    assert prep.alignment.positions_a == tuple(tuple(range(d)) for d in depths)

    # the two passes it replaces, run separately on the same ready models
    del calls[:]
    nets = (prep.net_a, prep.net_b)
    similarity = layer_similarity(*nets, data, measure=prep.measure)
    stats = collect_moments(nets, data)
    assert len(calls) == 4 * len(data)
    assert torch.equal(prep.similarity, similarity)  # same batches, same Gram matrices
    assert prep.stats.keys() == stats.keys()
    exact = isinstance(data[0], torch.Tensor)  # images: the very same batches in both passes
    for key, moments in stats.items():
        got = prep.stats[key]
        assert got.count == moments.count
        if exact:
            assert torch.equal(got.corr(), moments.corr()), key
            assert torch.equal(got.total, moments.total), key
        else:  # token batches as given, not regrouped by length: the forward's float32
            # rounding differs with the padded length (relative 2e-7 measured)
            torch.testing.assert_close(got.total, moments.total, rtol=1e-5, atol=1e-4)
            assert (got.corr() - moments.corr()).abs().max() < 1e-5, key

    # the same matching as from the separate passes' statistics
    one = zip_prepared(prep, ZipSettings())
    two = zip_prepared(dataclasses.replace(prep, stats=stats), ZipSettings())
    assert one.matches.keys() == two.matches.keys()
    for name, match in two.matches.items():
        assert torch.equal(one.matches[name].groups, match.groups), name

    # realigning (another mode) places every block where it is: no pass, the same statistics
    del calls[:]
    again = realign(prep, "lma")
    assert not calls and all(again.stats[k] is m for k, m in prep.stats.items())


@pytest.mark.parametrize("reset_bn", [True, False])
def test_pairs_whose_placement_reads_the_cka_keep_two_passes(reset_bn, monkeypatch):
    """The CKA places the blocks, then the feature pass runs the padded models.

    With BatchNorm re-estimated, the CKA comes from that pass (``heterogui.ready``): two
    forwards of each model per batch in all, none of them a separate BatchNorm pass.
    """
    cfg_a, cfg_b, shape = DEPTH_PAIRS["resnet"]
    net_a, net_b, data = make(cfg_a, 0, "A"), make(cfg_b, 1, "B"), calibration(shape, 3)
    calls = _forwards(monkeypatch)
    separate = []
    monkeypatch.setattr(ready, "reestimate_batch_norm", lambda *a, **k: separate.append(a))
    prep = prepare(net_a, net_b, data, reset_input_bn=reset_bn)
    assert len(calls) == 4 * len(data) and not separate
    similarity = "bn_similarity" if reset_bn else "similarity"
    assert {similarity, "features"} <= prep.timings.keys()
    assert not {"bn_inputs", "bn_similarity", "similarity"} - {similarity} & prep.timings.keys()
    ga, gb = prep.net_a.graph(), prep.net_b.graph()
    assert not any(placed_by_depths(ga, gb, mode) for mode in MODES)


def test_a_manual_mapping_or_an_unknown_mode_is_left_to_align():
    net_a, net_b, _ = _resnet_width_pair()
    ga, gb = net_a.graph(), net_b.graph()
    assert placed_by_depths(ga, gb, "sma") and placed_by_depths(ga, gb, "lma")
    assert not placed_by_depths(ga, gb, "manual")
    assert not placed_by_depths(ga, gb, "no such mode")


def test_a_statistics_budget_too_small_for_one_pass_keeps_the_chunked_path(monkeypatch):
    net_a, net_b, data = _resnet_width_pair()
    calls = _forwards(monkeypatch)
    prep = prepare(net_a, net_b, data, stats_budget=1)
    assert prep.stats == {}  # each zip collects its part later (``chunked_matches``)
    assert "analysis" not in prep.timings and len(calls) == 2 * len(data)  # the CKA only


def test_an_n_way_group_of_equal_depth_is_analysed_in_one_pass(monkeypatch):
    """Three ResNets of one depth (two widths): one forward per model and batch, the CKA and
    the moments of the separate passes bit for bit (image batches), the same zip."""
    a, b, data = _resnet_width_pair()
    c = make(cifar_resnet((2, 2), 2, 5, 1, base=8), 2, "C")
    calls = _forwards(monkeypatch)
    group = prepare_group([b, a, c], data, device="cpu")  # reference: the widest first
    assert len(calls) == 3 * len(data) and "analysis" in group.timings
    assert "features" not in group.timings
    del calls[:]
    ref, others = group.reference, [k for k in range(3) if k != group.reference]
    sims = layer_similarities(group.nets[ref], [group.nets[k] for k in others], data)
    stats = collect_moments(group.nets, data)
    assert len(calls) == 6 * len(data)
    for k, sim in zip(others, sims, strict=True):
        assert (
            group.alignments[k].score
            == align(group.nets[ref].graph(), group.nets[k].graph(), sim, "sma").score
        )
    assert group.stats.keys() == stats.keys()
    for key, moments in stats.items():
        assert torch.equal(group.stats[key].corr(), moments.corr()), key
        assert torch.equal(group.stats[key].total, moments.total), key
    merged = zip_group_prepared(group, ZipSettings(rho=0.5))
    again = zip_group_prepared(dataclasses.replace(group, stats=stats), ZipSettings(rho=0.5))
    for name, tensor in again.model.state_dict().items():
        assert torch.equal(merged.model.state_dict()[name], tensor), name
