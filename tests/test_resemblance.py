"""Which parent each merged layer resembles (CKA of the merged trunk with A's and B's layers)."""

from __future__ import annotations

import pytest
import torch

from heterogui.align.cka import CKAAccumulator, gram
from heterogui.models.capture import capture_outputs
from heterogui.models.hf.bert_io import network_from_hf
from heterogui.models.permute import permute_network, random_permutations
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.resemblance import MAX_BATCHES, parent_resemblance, slot_layers
from tests.conftest import DEPTH_PAIRS, calibration, make, tiny_hf, token_batches


@pytest.mark.parametrize("family", ["mlp", "vgg", "resnet"])
def test_a_merge_with_a_permuted_copy_resembles_both_parents_exactly(family):
    config, _, shape = DEPTH_PAIRS[family]
    net = make(config, 1)
    copy = permute_network(net, random_permutations(net.graph(), torch.Generator().manual_seed(3)))
    prepared = prepare(net, copy, calibration(shape), device="cpu")
    found = parent_resemblance(zip_prepared(prepared, ZipSettings()))
    depth = prepared.padded_a.graph().num_blocks - 1
    assert len(found.to_a) == len(found.to_b) == depth
    assert found.to_a == pytest.approx([1.0] * depth, abs=1e-3)
    assert found.to_b == pytest.approx([1.0] * depth, abs=1e-3)
    assert (
        found.layers_a
        == [f"A{i}" for i in range(depth)]
        == [n.replace("B", "A") for n in found.layers_b]
    )


def test_a_depth_pair_names_identity_slots_and_blends_at_the_ensemble():
    config_a, config_b, shape = DEPTH_PAIRS["mlp"]
    prepared = prepare(make(config_a, 1), make(config_b, 2), calibration(shape), device="cpu")
    al = prepared.alignment
    full = parent_resemblance(zip_prepared(prepared, ZipSettings(rho=1.0)))
    depth = prepared.padded_a.graph().num_blocks - 1
    shallow = "B" if len(al.positions_b[0]) < len(al.positions_a[0]) else "A"
    names = full.layers_b if shallow == "B" else full.layers_a
    identities = [n for n in names if n.startswith("identity after")]
    real = sum(len(p) for p in (al.positions_b if shallow == "B" else al.positions_a))
    assert len(names) == depth and len(identities) == depth - real
    assert all(-1 <= v <= 1 for v in full.to_a + full.to_b)
    # At rho = 0 nothing is merged: each merged layer holds both parents' features side by
    # side, so its CKA with A is that of [f_A, f_B] with f_A, computed here from the parents.
    ensemble = parent_resemblance(zip_prepared(prepared, ZipSettings(rho=0.0)))
    acc = CKAAccumulator()
    names = [f"blocks.{i}" for i in range(depth)]
    for batch in prepared.batches[:MAX_BATCHES]:
        feats = []
        for net in (prepared.padded_a, prepared.padded_b):
            with capture_outputs(net.module, names) as found:
                net.module(batch)
            feats.append([found[n].flatten(1) for n in names])
        both = torch.stack([gram(torch.cat(pair, 1)) for pair in zip(*feats, strict=True)])
        acc.update(both, torch.stack([gram(f) for f in feats[0]]))
    expected = acc.matrix().diagonal().tolist()
    assert ensemble.to_a == pytest.approx(expected, abs=1e-3)
    assert ensemble.to_a != pytest.approx(full.to_a, abs=1e-3)  # merging changes the picture


def test_transformer_merges_are_measured_on_their_tokens():
    a = network_from_hf(tiny_hf(layers=3, seed=0), "A")
    perm = random_permutations(a.graph(), torch.Generator().manual_seed(3))
    prepared = prepare(a, permute_network(a, perm), token_batches(4), device="cpu")
    found = parent_resemblance(zip_prepared(prepared, ZipSettings()))
    depth = prepared.padded_a.graph().num_blocks - 1
    assert found.to_a == pytest.approx([1.0] * depth, abs=1e-3) == found.to_b
    b = network_from_hf(tiny_hf(hidden=64, heads=8, inter=96, layers=2, seed=1), "B")
    prepared = prepare(a, b, token_batches(4), device="cpu")
    found = parent_resemblance(zip_prepared(prepared, ZipSettings(rho=0.5)))
    assert len(found.to_b) == depth and found.layers_a == ["A0", "A1", "A2", "A3"][:depth]
    assert sum(n.startswith("identity") for n in found.layers_b) == 1  # 3 layers against 2


def test_slot_layers_follow_the_alignment():
    class Graph:  # a model with a 1-block stem and two stages of 2 and 1 layers
        stages = ((1, 2), (3,))

    names = slot_layers(Graph(), ((0, 2), (1,)), (3, 2), "B")
    assert names == ["B0", "B1", "identity after B1", "B2", "identity after B2", "B3"]


def test_a_merge_that_stops_before_its_first_layer_resembles_nothing():
    """stop = 0 merges no layer: an empty account, which the Compare tab says in words."""
    config_a, config_b, shape = DEPTH_PAIRS["mlp"]
    prepared = prepare(make(config_a, 1), make(config_b, 2), calibration(shape), device="cpu")
    found = parent_resemblance(zip_prepared(prepared, ZipSettings(stop=0)))
    assert (found.to_a, found.to_b, found.layers_a, found.layers_b) == ([], [], [], [])
