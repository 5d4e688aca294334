"""Renormalization (fusion.renormalize): merged features get their groups' average statistics."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from heterogui.fusion.renormalize import merged_name, renormalized_points  # noqa: E402
from heterogui.models.capture import capture_outputs, to_rows, token_mask  # noqa: E402
from heterogui.models.hf.bert_io import network_from_hf  # noqa: E402
from heterogui.models.hf.decoder_io import network_from_hf as decoder_from_hf  # noqa: E402
from heterogui.models.hf.vit_io import network_from_hf as vit_network  # noqa: E402
from heterogui.models.permute import permute_network, random_permutations  # noqa: E402
from heterogui.pipeline import ZipSettings, prepare, zip_prepared  # noqa: E402
from tests.conftest import tiny_decoder, tiny_hf, tiny_vit, token_batch  # noqa: E402
from tests.conftest import token_batches as batches  # noqa: E402
from tests.test_head_select import vit_images  # noqa: E402


def _rows(module, name, batch_list, layout="tokens"):
    out = []
    for batch in batch_list:
        with torch.no_grad(), capture_outputs(module, [name]) as found:
            module(**batch)
        out.append(to_rows(found[name], layout, token_mask(batch)).double())
    return torch.cat(out)


@pytest.fixture(scope="module")
def bert_pair():
    deep = network_from_hf(tiny_hf(layers=3, seed=0), "A")
    shallow = network_from_hf(tiny_hf(hidden=48, heads=6, inter=80, layers=2, seed=1), "B")
    return prepare(deep, shallow, batches(), device="cpu")


def test_the_first_corrected_output_gets_its_groups_average_mean_and_spread(bert_pair):
    prep = bert_pair
    plain = zip_prepared(prep, ZipSettings(rho=0.5))
    fixed = zip_prepared(prep, ZipSettings(rho=0.5, renormalize=True))
    assert fixed.timings["renormalize"] > 0
    # the embeddings' LayerNorm comes first: nothing before it changed, so its output must
    # have exactly the target statistics on the calibration data
    name = "blocks.0"
    match = fixed.matches["stream"]
    parents = torch.cat(
        [_rows(n.module, name, prep.batches) for n in (prep.padded_a, prep.padded_b)], dim=1
    )
    merged = _rows(fixed.model, merged_name(name), prep.batches)
    before = _rows(plain.model, merged_name(name), prep.batches)
    m = match.merge()
    target_mean, target_std = m @ parents.mean(0), m @ parents.std(0, correction=0)
    assert torch.allclose(merged.mean(0), target_mean, atol=1e-4)
    assert torch.allclose(merged.std(0, correction=0), target_std, rtol=1e-3, atol=1e-4)
    # and it moved: the plain average had other statistics
    assert (before.std(0, correction=0) - target_std).abs().max() > 1e-2


def test_renormalization_corrects_norms_and_values_of_a_post_ln_encoder(bert_pair):
    prep = bert_pair
    points = renormalized_points(
        prep.padded_a, prep.padded_b, {"stream": None, "layer0.vo": None}, 9
    )
    writers = {cap.affine for _, cap in points}
    assert "blocks.0.LayerNorm" in writers
    assert (
        "blocks.1.attention.output.LayerNorm" in writers and "blocks.1.output.LayerNorm" in writers
    )
    assert "blocks.1.attention.self.value" in writers
    plain = zip_prepared(prep, ZipSettings(rho=0.5)).model.state_dict()
    fixed = zip_prepared(prep, ZipSettings(rho=0.5, renormalize=True)).model.state_dict()
    changed = {k for k in plain if not torch.equal(plain[k], fixed[k])}
    assert "trunk.1.attention.output.LayerNorm.weight" in changed
    assert "trunk.1.attention.self.value.bias" in changed
    assert not any("query" in k or "intermediate" in k for k in changed)  # not renormalized


def test_a_permuted_copy_needs_no_renormalization():
    a = network_from_hf(tiny_hf(layers=2, seed=3), "A")
    b = permute_network(a, random_permutations(a.graph(), torch.Generator().manual_seed(5)))
    prep = prepare(a, b, batches(), device="cpu")
    result = zip_prepared(prep, ZipSettings(rho=1.0, renormalize=True))
    x = token_batch(99)
    with torch.no_grad():
        out_a, out_b = result.model(**x)
        assert (out_a - a.module(**x)).abs().max() < 1e-4
        assert (out_b - b.module(**x)).abs().max() < 1e-4


def test_a_decoder_renormalizes_values_mlp_products_and_the_final_norm():
    from tests.test_decoder import batches as text_batches

    deep = decoder_from_hf(tiny_decoder(hidden=48, layers=3, heads=6, kv=2, inter=80, seed=1))
    wide = decoder_from_hf(tiny_decoder(hidden=48, layers=2, heads=6, kv=2, inter=96, seed=2))
    prep = prepare(deep, wide, text_batches(), device="cpu")
    settings = ZipSettings(rho=0.5, renormalize=True)
    matches = zip_prepared(prep, settings).matches
    points = renormalized_points(prep.padded_a, prep.padded_b, matches, 99)
    kinds = {cap.affine.rsplit(".", 1)[-1]: cap.shift for _, cap in points}
    assert kinds == {
        "v_proj": True,
        "up_proj": False,
        "norm": True,
        "input_layernorm": True,
        "post_attention_layernorm": True,
    }
    identity = prep.padded_b.identity_blocks
    assert identity  # B is padded: its identity block's norms are no target
    norms = {cap.block for _, cap in points if "layernorm" in cap.module}
    assert norms == set(range(1, 4)) - identity
    plain = zip_prepared(prep, ZipSettings(rho=0.5)).model.state_dict()
    fixed = zip_prepared(prep, settings)
    state = fixed.model.state_dict()
    changed = {k for k in plain if not torch.equal(plain[k], state[k])}
    assert any(k.endswith("mlp.up_proj.weight") for k in changed)
    assert any(k.endswith("self_attn.v_proj.weight") for k in changed)
    assert not any(k.endswith(("q_proj.weight", "gate_proj.weight")) for k in changed)
    batch = text_batches()[0]
    with torch.no_grad():
        assert all(bool(torch.isfinite(o).all()) for o in fixed.model(**batch))


def test_batch_norm_models_have_nothing_to_renormalize(bert_pair):
    from heterogui.fusion.renormalize import renormalizes
    from tests.conftest import DEPTH_PAIRS, calibration, make

    config_a, config_b, shape = DEPTH_PAIRS["resnet"]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    assert not renormalizes(prep.padded_a, prep.padded_b)
    plain = zip_prepared(prep, ZipSettings(rho=0.5)).model.state_dict()
    same = zip_prepared(prep, ZipSettings(rho=0.5, renormalize=True)).model.state_dict()
    assert all(torch.equal(plain[k], same[k]) for k in plain)
    assert renormalizes(bert_pair.padded_a, bert_pair.padded_b)


def test_a_re_merge_reuses_the_parents_statistics(monkeypatch):
    import heterogui.pipeline as pipeline

    deep = network_from_hf(tiny_hf(layers=3, seed=0), "A")
    shallow = network_from_hf(tiny_hf(layers=2, seed=1), "B")
    prep = prepare(deep, shallow, batches(), device="cpu")
    calls = []
    original = pipeline.parents_statistics
    monkeypatch.setattr(
        pipeline, "parents_statistics", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    first = zip_prepared(prep, ZipSettings(rho=0.5, renormalize=True))
    again = zip_prepared(prep, ZipSettings(rho=0.5, renormalize=True))
    other = zip_prepared(prep, ZipSettings(rho=0.75, renormalize=True))
    assert len(calls) == 1 and other.renormalized > 0
    one, two = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_a_float64_vit_merge_renormalizes_on_its_float32_images():
    # a ViT's first block is a convolution of pixels: the float64 merge's trunk, run block by
    # block for the correction, reads the float32 images in its own dtype (as its forward does)
    a = vit_network(tiny_vit(labels=3, patch=2), "A")
    b = vit_network(tiny_vit(labels=3, patch=2, seed=1), "B")
    prepared = prepare(a, b, [vit_images(s) for s in range(4)], device="cpu")
    settings = ZipSettings(rho=0.5, fusion="average", renormalize=True)
    wide = zip_prepared(prepared, settings, dtype=torch.float64)
    narrow = zip_prepared(prepared, settings)
    assert wide.renormalized == narrow.renormalized > 0
    x = vit_images(0)
    with torch.no_grad():
        for w, n in zip(wide.model(x), narrow.model(x), strict=True):
            assert w.dtype == torch.float64
            assert (w - n.double()).abs().max() < 1e-4 * n.abs().max()
