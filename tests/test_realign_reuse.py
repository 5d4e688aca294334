"""A realignment keeps the statistics of merge points whose blocks play the same roles."""

from __future__ import annotations

import pytest
import torch
from conftest import DEPTH_PAIRS, calibration, make, tiny_decoder, tiny_hf, token_batches
from test_decoder import batches as decoder_batches

from heterogui.align.alignment import SEGMENTERS
from heterogui.models.hf.bert_io import network_from_hf as bert_from_hf
from heterogui.models.hf.decoder_io import network_from_hf
from heterogui.pipeline import ZipSettings, prepare, realign, zip_prepared
from heterogui.zip import collect
from heterogui.zip.reuse import block_roles


def _resnet_pair():
    cfg_a, cfg_b, shape = DEPTH_PAIRS["resnet"]
    return make(cfg_a, 0, "A"), make(cfg_b, 1, "B"), calibration(shape, n_batches=3)


def _decoder_pair():
    deep = network_from_hf(tiny_decoder(hidden=48, layers=5, heads=6, kv=2, inter=80, seed=1))
    shallow = network_from_hf(tiny_decoder(hidden=72, layers=2, heads=9, kv=3, inter=96, seed=2))
    return deep, shallow, decoder_batches()


def _bert_pair():
    deep = bert_from_hf(tiny_hf(hidden=32, heads=4, inter=64, layers=5, seed=0), "A")
    shallow = bert_from_hf(tiny_hf(hidden=64, heads=8, inter=96, layers=2, seed=1), "B")
    return deep, shallow, token_batches()


def _counting(monkeypatch) -> list[int]:
    """Count the merge points each feature pass collects."""
    passes: list[int] = []
    original = collect.collect_moments

    def counted(*args, **kwargs):
        stats = original(*args, **kwargs)
        passes.append(len(stats))
        return stats

    monkeypatch.setattr("heterogui.zip.reuse.collect_moments", counted)
    return passes


@pytest.mark.parametrize("pair", [_resnet_pair, _decoder_pair])
def test_a_realignment_gives_the_statistics_of_a_fresh_pass_bit_for_bit(pair, monkeypatch):
    """Exact identity blocks: kept statistics are the very ones a fresh pass would collect."""
    net_a, net_b, data = pair()
    prep = prepare(net_a, net_b, data)
    passes = _counting(monkeypatch)
    moved = []
    for mode in SEGMENTERS:
        before = len(passes)
        again = realign(prep, mode)
        collected = sum(passes[before:])
        if again.alignment.positions_b == prep.alignment.positions_b:
            assert collected == 0
            continue
        fresh = prepare(net_a, net_b, data, mode=mode)
        assert again.stats.keys() == fresh.stats.keys()
        for key, moments in fresh.stats.items():
            kept = again.stats[key]
            assert torch.equal(kept.corr(dtype=torch.float32), moments.corr(dtype=torch.float32))
            assert torch.equal(kept.total, moments.total) and kept.count == moments.count
        reused = sum(again.stats[k] is prep.stats.get(k) for k in again.stats)
        moved.append((mode, reused, len(again.stats), collected))
        merged, want = zip_prepared(again, ZipSettings()), zip_prepared(fresh, ZipSettings())
        for name, tensor in want.model.state_dict().items():
            assert torch.equal(merged.model.state_dict()[name], tensor), name
    assert moved, "no alignment mode moved a block"
    # each kept some merge points and collected only the others
    assert all(0 < n < total and got == total - n for _, n, total, got in moved), moved


def test_realigning_to_the_same_placement_runs_no_pass(monkeypatch):
    net_a, net_b, data = _decoder_pair()
    prep = prepare(net_a, net_b, data)
    passes = _counting(monkeypatch)
    again = realign(prep, "manual", prep.alignment.mapping())
    assert passes == [] and again.stats.keys() == prep.stats.keys()
    assert all(again.stats[k] is prep.stats[k] for k in prep.stats)


def test_bert_identity_layers_keep_only_statistics_a_fresh_pass_gives_bit_for_bit():
    """The post-LN identity layer is exact only up to LayerNorm epsilons, so a point keeps its
    statistics only where every block up to it keeps its role: kept = fresh, bit for bit, and
    a least-squares merge (which turned the rounding into 1e-5 of the weights) is the same."""
    net_a, net_b, data = _bert_pair()
    prep = prepare(net_a, net_b, data)  # SMA places B's 2 layers at A's 0 and 2
    # LMA-first at 0 and 1: the identity blocks after B's last layer keep their roles, but the
    # identity blocks before them moved (the old rule kept their statistics: off by rounding)
    again = realign(prep, "lma_first")
    fresh = prepare(net_a, net_b, data, mode="lma_first")
    assert again.alignment == fresh.alignment != prep.alignment
    kept = [k for k in again.stats if again.stats[k] is prep.stats.get(k)]
    assert kept and len(kept) < len(again.stats)
    for key, moments in fresh.stats.items():
        assert torch.equal(again.stats[key].total, moments.total), key
        assert torch.equal(
            again.stats[key].corr(dtype=torch.float32), moments.corr(dtype=torch.float32)
        ), key
    settings = ZipSettings(fusion="least_squares")
    merged, want = zip_prepared(again, settings), zip_prepared(fresh, settings)
    for name, tensor in want.model.state_dict().items():
        assert torch.equal(merged.model.state_dict()[name], tensor), name


def test_block_roles_name_own_blocks_and_the_block_an_identity_follows():
    from heterogui.align.pad import pad_network

    net = network_from_hf(tiny_decoder(layers=2, seed=3))
    padded = pad_network(net, ((0, 3),), (5,))
    stem = [("block", 0)]
    assert block_roles(net, net)[:3] == stem + [("block", 1), ("block", 2)]
    roles = block_roles(padded, net)
    assert roles[:6] == stem + [
        ("block", 1),
        ("identity after", 1),
        ("identity after", 1),
        ("block", 2),
        ("identity after", 2),
    ]
