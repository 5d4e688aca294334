"""The merge engine on MLP, VGG and ResNet: padding, permutation invariance, widths, ensemble."""

from __future__ import annotations

import pytest
import torch

from heterogui.align.pad import pad_network
from heterogui.errors import AlignmentError, ConfigError, IncompatibleModelsError, MatcherError
from heterogui.models.mlp import MLPConfig
from heterogui.models.permute import permute_network, random_permutations
from heterogui.models.vgg import VGGConfig
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.zip.collect import pooled_moments
from tests.conftest import DEPTH_PAIRS, IMAGE, SAME_ARCH, calibration, make, max_diff


@pytest.mark.parametrize("name", list(DEPTH_PAIRS))
@pytest.mark.parametrize("mode", ["sma", "lma", "uniform", "head", "head_tail"])
def test_padded_shallow_model_computes_its_own_function(name, mode):
    config_a, config_b, shape = DEPTH_PAIRS[name]
    a, b = make(config_a, 0), make(config_b, 1)
    prep = prepare(a, b, calibration(shape, 2), mode=mode, device="cpu", reset_input_bn=False)
    assert prep.padded_b.identity_blocks, "the shallower model must have been padded"
    x = torch.randn(32, *shape)
    with torch.no_grad():
        assert (prep.padded_b.module(x) - b.module(x)).abs().max().item() < 1e-6
        assert (prep.padded_a.module(x) - a.module(x)).abs().max().item() == 0.0
    depths = [len(s) for s in prep.padded_a.graph().stages]
    assert depths == [len(s) for s in prep.padded_b.graph().stages] == list(prep.alignment.depths)


@pytest.mark.parametrize("name", list(SAME_ARCH))
@pytest.mark.parametrize("matcher", ["zip", "permute"])
def test_zipping_a_permuted_copy_gives_the_model_back(name, matcher):
    config, shape = SAME_ARCH[name]
    a = make(config, 0)
    b = permute_network(a, random_permutations(a.graph(), torch.Generator().manual_seed(5)))
    x = torch.randn(32, *shape)
    with torch.no_grad():
        assert (a.module(x) - b.module(x)).abs().max().item() < 1e-5  # same function
    prep = prepare(a, b, calibration(shape), device="cpu")
    for space in prep.padded_a.graph().spaces:  # precondition: no feature is constant
        if space not in ("input", "logits"):
            var = pooled_moments(prep.stats, prep.padded_a.graph(), space).cov().diagonal()
            assert var.min().item() > 0, f"dead feature in {space}: choose another seed"
    result = zip_prepared(prep, ZipSettings(matcher=matcher, rho=1.0))
    ref = prep.net_a.module.eval()
    with torch.no_grad():
        out_a, out_b = result.model(x)
        assert max_diff((out_a, out_b), (ref(x), ref(x))) < 1e-4
    for space, (n_a, n_b, r) in result.widths().items():
        assert n_a == n_b == r, space
        assert result.matches[space].counts().cross == r


def test_a_model_with_features_always_zero_merges_with_its_permuted_copy_exactly():
    """Units that are 0 on every input (the zero rows an export pads a narrower layer with)
    merge with each other, not with real units (they correlated 0 with everything, so the zip
    merged real units once the copies were paired)."""
    a = make(MLPConfig(64, (24, 32, 16), 5), 0)
    linears = [m for m in a.module.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        zeroed = (range(0, 24, 3), range(5, 15), range(8, 16))
        for layer, rows in zip(linears[:3], zeroed, strict=True):
            layer.weight[list(rows)] = 0.0
            layer.bias[list(rows)] = 0.0
    b = permute_network(a, random_permutations(a.graph(), torch.Generator().manual_seed(5)))
    prep = prepare(a, b, calibration((64,)), device="cpu")
    result = zip_prepared(prep, ZipSettings(rho=1.0))
    x = torch.randn(32, 64)
    with torch.no_grad():
        ref = prep.net_a.module.eval()(x)
        assert max_diff(result.model(x), (ref, ref)) < 1e-4


@pytest.mark.parametrize("name", list(DEPTH_PAIRS))
def test_rho_zero_is_exactly_the_ensemble(name):
    config_a, config_b, shape = DEPTH_PAIRS[name]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    for stop in (None, 2, 0):
        result = zip_prepared(prep, ZipSettings(rho=0.0, stop=stop))
        x = torch.randn(32, *shape)
        with torch.no_grad():
            outs = result.model(x)
            refs = (prep.net_a.module.eval()(x), prep.net_b.module.eval()(x))
        assert max_diff(outs, refs) < 1e-5, f"stop={stop}"
        for space, (n_a, n_b, r) in result.widths().items():
            if space in prep.padded_b.graph().dead:  # B's identity block: only A's features
                assert r == n_a, space
            elif space in prep.padded_a.graph().dead:
                assert r == n_b, space
            else:
                assert r == n_a + n_b, space


@pytest.mark.parametrize("name", list(DEPTH_PAIRS))
@pytest.mark.parametrize("rho", [0.25, 0.5, 1.0])
def test_merged_widths_match_targets_and_m_u_is_identity(name, rho):
    config_a, config_b, shape = DEPTH_PAIRS[name]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    result = zip_prepared(prep, ZipSettings(rho=rho, alpha=0.5, beta=0.5))
    ga, gb = prep.padded_a.graph(), prep.padded_b.graph()
    for space, match in result.matches.items():
        n_a, n_b = ga.spaces[space].width, gb.spaces[space].width
        if space in ga.dead or space in gb.dead:
            assert match.width == (n_b if space in ga.dead else n_a)
        else:
            assert match.width == n_a + n_b - round(rho * min(n_a, n_b))
        tr = result.transforms[space]
        m_u = tr.merge[0] @ tr.unmerge[0] + tr.merge[1] @ tr.unmerge[1]
        assert torch.allclose(m_u, torch.eye(match.width), atol=1e-6)
    # the built model has exactly these widths
    trunk = result.spec.trunk_config
    graph = prep.padded_a.family.graph(trunk)
    for space, match in result.matches.items():
        assert graph.spaces[space].width == match.width


def test_width_override_per_merge_point():
    config_a, config_b, shape = DEPTH_PAIRS["vgg"]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    result = zip_prepared(prep, ZipSettings(rho=1.0, overrides={"block4": {"width": 30}}))
    assert result.widths()["block4"] == (16, 24, 30)
    with torch.no_grad():
        out_a, out_b = result.model(torch.randn(4, *shape))
    assert out_a.shape == (4, 5) and out_b.shape == (4, 5)


def test_partial_zip_keeps_one_tail_per_model():
    config_a, config_b, shape = DEPTH_PAIRS["resnet"]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    full = zip_prepared(prep, ZipSettings())
    part = zip_prepared(prep, ZipSettings(stop=3))
    assert len(part.model.trunk) == 3 and len(part.model.tails[0]) == len(full.model.trunk) - 2
    assert set(part.matches) < set(full.matches)
    params = [sum(p.numel() for p in r.model.parameters()) for r in (full, part)]
    assert params[1] > params[0]  # separate tails cost parameters
    with pytest.raises(ConfigError, match="stop point 99 is out of range"):
        zip_prepared(prep, ZipSettings(stop=99))


def test_merges_of_one_pair_share_no_modules_or_weights():
    """Tails come from one meta network per config (``merged.meta_network``): each merge copies."""
    from heterogui.fusion.merged import meta_network

    config_a, config_b, shape = DEPTH_PAIRS["resnet"]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    for stop in (None, 3):
        first, second = (zip_prepared(prep, ZipSettings(stop=stop)) for _ in range(2))
        one, two = first.model, second.model
        assert not {id(m) for m in one.modules()} & {id(m) for m in two.modules()}
        storage = {p.untyped_storage().data_ptr() for p in one.parameters()}
        assert not storage & {p.untyped_storage().data_ptr() for p in two.parameters()}
        x = calibration(shape, n_batches=1, seed=5)[0]
        expected = [out.clone() for out in one(x)]
        with torch.no_grad():  # changing one merge's head leaves the other's as it was
            for p in two.tails[0][-1].parameters():
                p.add_(1.0)
        assert all(torch.equal(e, o) for e, o in zip(expected, one(x), strict=True))
        cached = meta_network(first.spec.tail_configs[0])  # never given storage
        assert all(p.is_meta for p in cached.parameters())


def test_merge_changes_nothing_in_the_callers_models():
    config_a, config_b, shape = DEPTH_PAIRS["vgg"]
    a, b = make(config_a, 0), make(config_b, 1)
    before = {k: v.clone() for k, v in a.module.state_dict().items()}
    zip_prepared(prepare(a, b, calibration(shape), device="cpu"), ZipSettings())
    after = a.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m._forward_hooks for m in a.module.modules())


def test_errors_name_the_problem_and_the_fix():
    mlp, vgg = make(MLPConfig(64, (8, 8), 5), 0), make(VGGConfig(1, ((8,), (8,)), 5), 0)
    with pytest.raises(IncompatibleModelsError, match="same family"):
        prepare(mlp, vgg, calibration((64,)), device="cpu")
    one_stage = make(VGGConfig(1, ((8, 8),), 5), 0)
    with pytest.raises(IncompatibleModelsError, match="same number of"):
        prepare(vgg, one_stage, calibration(IMAGE), device="cpu")
    config_a, config_b, shape = DEPTH_PAIRS["vgg"]
    a, b = make(config_a, 0), make(config_b, 1)
    bad = {"a": [[0, 1, 2], [0, 0]], "b": [[0], [0, 1, 2]]}
    with pytest.raises(AlignmentError, match="not monotone"):
        prepare(a, b, calibration(shape), mode="manual", manual=bad, device="cpu")
    prep = prepare(a, b, calibration(shape), device="cpu")
    with pytest.raises(MatcherError, match="equal widths"):
        zip_prepared(prep, ZipSettings(matcher="permute"))
    with pytest.raises(ConfigError, match="unknown merge points"):
        zip_prepared(prep, ZipSettings(overrides={"nope": {"width": 3}}))
    with pytest.raises(AlignmentError, match="unknown alignment mode"):
        prepare(a, b, calibration(shape), mode="diagonal", device="cpu")


def test_manual_alignment_is_used_and_scored():
    config_a, config_b, shape = DEPTH_PAIRS["vgg"]
    a, b = make(config_a, 0), make(config_b, 1)
    manual = {"a": [[0, 1, 2], [0, 2]], "b": [[0], [0, 1, 2]]}
    prep = prepare(a, b, calibration(shape), mode="manual", manual=manual, device="cpu")
    assert prep.alignment.mapping() == manual
    assert prep.alignment.score is not None
    sma = prepare(a, b, calibration(shape), mode="sma", device="cpu")
    assert sma.alignment.score >= prep.alignment.score - 1e-12


def test_pad_rejects_positions_that_do_not_fit():
    net = make(MLPConfig(64, (8, 8), 5), 0)
    with pytest.raises(AlignmentError, match="beyond the depth"):
        pad_network(net, ((0, 5),), (3,))


@pytest.mark.gpu
def test_merge_runs_on_cuda():
    config_a, config_b, shape = DEPTH_PAIRS["resnet"]
    a, b = make(config_a, 0), make(config_b, 1)
    cpu = zip_prepared(prepare(a, b, calibration(shape), device="cpu"), ZipSettings())
    gpu = zip_prepared(prepare(a, b, calibration(shape), device="cuda"), ZipSettings())
    x = torch.randn(16, *shape)
    with torch.no_grad():
        ref = cpu.model(x)
        out = gpu.model(x.cuda())
    assert max_diff([o.cpu() for o in out], ref) < 1e-3


def test_capture_hooks_are_removed_even_when_the_forward_fails():
    from heterogui.models.capture import capture_outputs

    net = make(MLPConfig(64, (8, 8), 5), 0)
    with pytest.raises(RuntimeError), capture_outputs(net.module, ["blocks.0", "blocks.1"]):
        net.module(torch.randn(2, 63))  # wrong input width
    assert all(not m._forward_hooks for m in net.module.modules())
    with capture_outputs(net.module, ["blocks.1"]) as found:
        net.module(torch.randn(2, 64))
    assert found["blocks.1"].shape == (2, 8)
    assert all(not m._forward_hooks for m in net.module.modules())


def test_python_api_merges_networks_and_recipes():
    import heterogui

    config_a, config_b, shape = DEPTH_PAIRS["mlp"]
    result = heterogui.merge(make(config_a, 0), make(config_b, 1), calibration(shape))
    assert result.alignment.depths == (4,) and set(result.widths()) == {
        f"block{i}" for i in range(4)
    }
    with pytest.raises(ConfigError, match="give both networks"):
        heterogui.merge(make(config_a, 0))


def test_realign_times_its_own_stages_once():
    from dataclasses import replace

    from heterogui.pipeline import realign

    config_a, config_b, shape = DEPTH_PAIRS["vgg"]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    stale = replace(prep, timings={**prep.timings, "features": 1000.0, "alignment": 1000.0})
    again = realign(stale, "uniform")
    # the CKA came with the BatchNorm re-estimation (heterogui.ready): not re-run, kept
    assert again.timings["bn_similarity"] == prep.timings["bn_similarity"]
    assert again.timings["features"] < 1000.0 and again.timings["alignment"] < 1000.0
    assert set(again.timings) == set(prep.timings)


def test_the_recipe_knows_every_registered_mode_and_matcher():
    # config.py stays free of torch, so it lists the names; the engine's registries decide.
    from heterogui import config
    from heterogui.align.alignment import MODES
    from heterogui.zip.matchers import MATCHERS

    assert config.ALIGN_MODES == MODES and tuple(MATCHERS) == config.MATCHER_NAMES
