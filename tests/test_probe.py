"""A pair the CKA places (different depths, no BatchNorm pass) is analysed in about one pass.

The first batch's CKA places the layers; one pass of the padded pair then gives the whole CKA
(read at the padded models' own blocks) and the feature statistics. Checked against the two
passes it replaces: the CKA of the unpadded models and the statistics of the padded pair on the
same batches, the alignment the whole CKA gives, and the forwards each model runs.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DEPTH_PAIRS, calibration, make, tiny_decoder, tiny_hf, token_batches
from test_decoder import batches as decoder_batches

from heterogui import analysis, pipeline
from heterogui.align.alignment import align
from heterogui.align.similarity import layer_similarity
from heterogui.models.hf.bert_io import network_from_hf as bert_from_hf
from heterogui.models.hf.decoder_io import network_from_hf
from heterogui.zip.collect import collect_moments


def _enough(data: list) -> list:
    """Return ``data`` cycled to ``PROBE_BATCHES`` batches: the probe is then an eighth."""
    return [data[k % len(data)] for k in range(max(len(data), pipeline.PROBE_BATCHES))]


def _decoder_pair():
    deep = network_from_hf(tiny_decoder(hidden=48, layers=5, heads=6, kv=2, inter=80, seed=1))
    shallow = network_from_hf(tiny_decoder(hidden=72, layers=2, heads=9, kv=3, inter=96, seed=2))
    return deep, shallow, _enough(decoder_batches(3))


def _bert_pair():
    deep = bert_from_hf(tiny_hf(hidden=32, heads=4, inter=64, layers=5, seed=0), "A")
    shallow = bert_from_hf(tiny_hf(hidden=64, heads=8, inter=96, layers=2, seed=1), "B")
    return deep, shallow, _enough(token_batches())


def _mlp_pair():  # no BatchNorm in an MLP: its CKA has a pass of its own
    cfg_a, cfg_b, shape = DEPTH_PAIRS["mlp"]
    return make(cfg_a, 0, "A"), make(cfg_b, 1, "B"), calibration(shape, n_batches=8)


def _forwards(net) -> list[int]:
    """Count the model's forwards, padded or not (its first block is in every one)."""
    calls = [0]
    first = net.module.get_submodule("blocks.0")
    first.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


# exact identity blocks give the unpadded layers bit for bit; BERT's up to its LayerNorm eps
@pytest.mark.parametrize(
    ("pair", "tolerance"), [(_decoder_pair, 0.0), (_mlp_pair, 0.0), (_bert_pair, 1e-6)]
)
@pytest.mark.parametrize("mode", ["sma", "lma"])
def test_one_pass_gives_the_cka_and_statistics_of_the_two_passes_it_replaces(pair, tolerance, mode):
    net_a, net_b, data = pair()
    # every batch alike: the probe's CKA is the whole one, so it places the layers there (a
    # probe that does not is the next test); CKA and statistics are compared all the same
    data = [data[0]] * len(data)
    calls = _forwards(net_a), _forwards(net_b)
    prep = pipeline.prepare(net_a, net_b, data, mode=mode)
    assert "probe" in prep.timings and "analysis" in prep.timings
    assert "similarity" not in prep.timings and "features" not in prep.timings
    assert calls[0][0] == calls[1][0] == 1 + len(data)  # the probe's batch, then one pass
    cka = layer_similarity(net_a, net_b, data, measure=prep.measure)
    assert (prep.similarity - cka).abs().max().item() <= tolerance
    want = align(net_a.graph(), net_b.graph(), cka, mode)
    assert prep.alignment.positions_b == want.positions_b
    assert prep.alignment.positions_a == want.positions_a
    fresh = collect_moments((prep.padded_a, prep.padded_b), data, regroup=False)
    assert fresh.keys() == prep.stats.keys()
    for key, moments in fresh.items():
        mine, theirs = prep.stats[key], moments
        assert torch.equal(mine.corr(dtype=torch.float32), theirs.corr(dtype=torch.float32))


def test_a_probe_that_places_the_layers_elsewhere_is_corrected_by_a_partial_pass(monkeypatch):
    net_a, net_b, data = _decoder_pair()
    want = pipeline.prepare(net_a, net_b, data)
    cka = want.similarity

    ga, gb = net_a.graph(), net_b.graph()
    placed = want.alignment.positions_b
    other = next(
        al
        for m in ("head", "uniform", "head_tail")
        if (al := align(ga, gb, None, m)).positions_b != placed
    )

    def misleading(a, b, batches, *args, **kwargs):  # the probe: prefers other layers
        assert len(batches) == 1
        probe = torch.zeros_like(cka)
        for layer_b, slot in enumerate(other.positions_b[0][:-1]):  # B's layers but the head
            probe[slot, layer_b] = 1.0
        return probe

    monkeypatch.setattr(analysis, "layer_similarity", misleading)
    prep = pipeline.prepare(net_a, net_b, data)
    assert "features" in prep.timings  # the realignment's pass over the moved merge points
    assert prep.alignment == want.alignment and torch.equal(prep.similarity, cka)
    assert prep.stats.keys() == want.stats.keys()
    for key, moments in want.stats.items():  # kept from the probe's placement or collected
        got = prep.stats[key].corr(dtype=torch.float32)
        assert torch.allclose(got, moments.corr(dtype=torch.float32), atol=1e-5), key
    a = pipeline.zip_prepared(prep).model.state_dict()
    b = pipeline.zip_prepared(want).model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in b)


def test_modes_that_do_not_read_the_cka_take_no_probe():
    net_a, net_b, data = _decoder_pair()
    calls = _forwards(net_a)
    prep = pipeline.prepare(net_a, net_b, data, mode="uniform")
    assert "probe" not in prep.timings and calls[0] == len(data)
    assert prep.similarity is not None  # the map is still drawn: the CKA came with the pass


def test_statistics_over_the_budget_keep_the_separate_cka_pass():
    net_a, net_b, data = _decoder_pair()
    prep = pipeline.prepare(net_a, net_b, data, stats_budget=1)
    assert "similarity" in prep.timings and "analysis" not in prep.timings
    assert prep.stats == {}  # collected part by part at every zip
    assert pipeline.zip_prepared(prep).model is not None


def test_fewer_batches_than_the_probe_needs_keep_the_two_passes():
    net_a, net_b, data = _decoder_pair()
    data = data[: pipeline.PROBE_BATCHES - 1]  # the first batch would be over an eighth
    calls = _forwards(net_a)
    prep = pipeline.prepare(net_a, net_b, data)
    assert {"similarity", "features"} <= prep.timings.keys() and "probe" not in prep.timings
    assert calls[0] == 2 * len(data)
