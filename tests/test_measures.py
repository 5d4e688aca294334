"""What the alignment's CKA compares: block outputs (the paper's) or block updates."""

from __future__ import annotations

import pytest
import torch
from conftest import DEPTH_PAIRS, calibration, make, tiny_decoder
from test_decoder import batches as decoder_batches

from heterogui.align.alignment import align
from heterogui.align.cka import linear_cka
from heterogui.align.pad import ready_network
from heterogui.align.similarity import layer_similarity, resolve_measure
from heterogui.config import AlignmentSpec
from heterogui.errors import ConfigError
from heterogui.models.capture import capture_outputs, run_model
from heterogui.models.hf.decoder_io import network_from_hf
from heterogui.pipeline import prepare, with_measure
from heterogui.ready import similarities_while_reestimating


def _decoders():
    deep = network_from_hf(tiny_decoder(hidden=48, layers=5, heads=6, kv=2, inter=80, seed=1))
    shallow = network_from_hf(tiny_decoder(hidden=72, layers=2, heads=9, kv=3, inter=96, seed=2))
    return deep, shallow


def _per_input_updates(net, batches) -> list[torch.Tensor]:
    """Each block's output minus its input, one flattened row per text (padding zeroed)."""
    names = [f"blocks.{i}" for i in range(net.graph().num_blocks - 1)]
    rows = [[] for _ in names]
    with torch.no_grad():
        for batch in batches:
            with capture_outputs(net.module, names) as found:
                run_model(net.module, batch)
            keep = batch["attention_mask"][..., None].float()
            before = None
            for i, name in enumerate(names):
                out = found[name] * keep
                rows[i].append(out if before is None else out - before)
                before = out
    return [torch.cat([r.flatten(1) for r in per]) for per in rows]


def test_update_cka_is_the_cka_of_what_each_block_adds():
    """Against a plain computation: the differences of consecutive block outputs, one batch.

    (Minibatch CKA over one batch is the unbiased CKA of that batch's rows.)
    """
    deep, shallow = _decoders()
    batch = decoder_batches()[:1]
    got = layer_similarity(deep, shallow, batch, measure="updates")
    xs, ys = _per_input_updates(deep, batch), _per_input_updates(shallow, batch)
    want = torch.tensor(
        [[linear_cka(x.double(), y.double()) for y in ys] for x in xs], dtype=torch.float64
    )
    # Grams of float32 features are float32 products (align.cka.gram): against float64 they
    # differ by CPU (1.8e-6 on an AMD EPYC, under 1e-6 on an Intel Xeon), far below the 1e-3
    # that tells the two measures apart below.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    outputs = layer_similarity(deep, shallow, batch)
    assert not torch.allclose(got[1:, 1:], outputs[1:, 1:], atol=1e-3)  # a different measure
    torch.testing.assert_close(got[0, 0], outputs[0, 0])  # the stems write their whole output


def test_auto_is_the_familys_measure_and_unknown_ones_are_refused():
    deep, _ = _decoders()
    cfg, _, _ = DEPTH_PAIRS["resnet"]
    assert resolve_measure(deep, "auto") == "updates"
    assert resolve_measure(make(cfg, 0), "auto") == "outputs"
    assert resolve_measure(deep, "outputs") == "outputs"
    with pytest.raises(ConfigError, match="measure 'weights' is unknown; use auto or one of"):
        resolve_measure(deep, "weights")
    with pytest.raises(ConfigError, match="alignment.measure 'x' is unknown"):
        AlignmentSpec(measure="x")


def test_a_prepared_pair_switches_measure_and_computes_each_matrix_once(monkeypatch):
    deep, shallow = _decoders()
    data = decoder_batches()
    prep = prepare(deep, shallow, data)
    assert prep.measure == "updates" and set(prep.similarities) == {"updates"}
    ga, gb = deep.graph(), shallow.graph()
    assert prep.alignment == align(ga, gb, prep.similarity, "sma")
    outputs = with_measure(prep, "outputs")
    assert outputs.measure == "outputs" and outputs.alignment == prep.alignment
    torch.testing.assert_close(outputs.similarity, layer_similarity(deep, shallow, data))
    assert prep.similarities is outputs.similarities and set(prep.similarities) == {
        "updates",
        "outputs",
    }

    def forbidden(*args, **kwargs):
        raise AssertionError("the matrix was computed already")

    monkeypatch.setattr("heterogui.analysis.layer_similarity", forbidden)
    again = with_measure(outputs, "updates")
    assert again.similarity is prep.similarity
    with pytest.raises(ConfigError, match="unknown"):
        with_measure(prep, "weights")


def test_a_resnet_pair_reads_block_outputs_unless_asked():
    cfg_a, cfg_b, shape = DEPTH_PAIRS["resnet"]
    a, b, data = make(cfg_a, 0), make(cfg_b, 1), calibration(shape, n_batches=2)
    plain = prepare(a, b, data)
    asked = prepare(a, b, data, measure="updates")
    assert (plain.measure, asked.measure) == ("outputs", "updates")
    # the CKA comes from the BatchNorm re-estimation pass (heterogui.ready)
    for prep in (plain, asked):
        ready = [ready_network(n, "cpu", modifies=True) for n in (a, b)]
        (want,) = similarities_while_reestimating(ready, data, "cpu", prep.measure)
        torch.testing.assert_close(prep.similarity, want)
    # a switch of measure (the workbench's) computes the matrix as prepare does, in the
    # BatchNorm pass, so that the exported recipe places the layers as the workbench did; the
    # statistics it re-estimates again come out the same
    switched = with_measure(plain, "updates")
    assert torch.equal(switched.similarity, asked.similarity)
    assert not torch.allclose(
        layer_similarity(plain.net_a, plain.net_b, data, measure="updates"), asked.similarity
    )  # eval-mode BatchNorm gives another matrix: what the switch computed before
    for name, value in asked.net_a.module.state_dict().items():
        assert torch.equal(switched.net_a.module.state_dict()[name], value), name


@pytest.mark.parametrize("measure", ["auto", "outputs"])
def test_a_recipe_names_its_measure_and_the_completed_recipe_repeats_the_merge(measure, tmp_path):
    from test_decoder import write_recipe

    from heterogui.recipe_parse import load_recipe
    from heterogui.run import merge

    path = write_recipe(tmp_path, alignment={"mode": "sma", "measure": measure})
    done = merge(path)
    want = "updates" if measure == "auto" else "outputs"
    assert done.result.prepared.measure == want
    assert done.recipe.alignment.measure == want and done.report["alignment"]["measure"] == want
    prep = done.result.prepared
    matrix = layer_similarity(prep.net_a, prep.net_b, prep.batches, measure=want)
    slots = align(prep.net_a.graph(), prep.net_b.graph(), matrix, "sma").positions_b
    assert done.result.alignment.positions_b == slots
    (tmp_path / "again.yaml").write_text(done.recipe.to_yaml())
    again = merge(load_recipe(tmp_path / "again.yaml"))
    for name, tensor in done.result.model.state_dict().items():
        assert torch.equal(again.result.model.state_dict()[name], tensor), name
