"""Merged models are models: a full zip is one network with every task head, and merges merge.

``fusion.merged.as_network`` folds the unmerge matrices into the heads, so the network computes
exactly what the merged model computes; merging it with a third model gives three task heads,
and at rho = 0 (no neuron merged) that second merge is exactly the three models side by side.
"""

from __future__ import annotations

import pytest
import torch

from heterogui.errors import ModelLoadError
from heterogui.export.network import save_merged
from heterogui.fusion.merged import as_network
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.sources.registry import load
from tests.conftest import DEPTH_PAIRS, calibration, check_merge, make, max_diff

CLASSES = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (10, 11, 12, 13, 14))


def pair(name: str):
    config_a, config_b, shape = DEPTH_PAIRS[name]
    a = make(config_a, 0, "A", CLASSES[0])
    b = make(config_b, 1, "B", CLASSES[1])
    return a, b, shape


@pytest.mark.parametrize("name", list(DEPTH_PAIRS))
@pytest.mark.parametrize("rho", [1.0, 0.5])
def test_every_family_passes_check_merge(name, rho, tmp_path):
    a, b, shape = pair(name)
    check_merge(a, b, calibration(shape), torch.randn(16, *shape), tmp_path, ZipSettings(rho=rho))


@pytest.mark.parametrize("name", list(DEPTH_PAIRS))
def test_a_merge_as_one_network_computes_the_same_function(name):
    a, b, shape = pair(name)
    prep = prepare(a, b, calibration(shape), device="cpu")
    x = torch.randn(16, *shape)
    for rho in (1.0, 0.5, 0.0):
        result = zip_prepared(prep, ZipSettings(rho=rho))
        net = as_network(result.model, "AB")
        with torch.no_grad():
            assert max_diff([net.module(x)], [torch.cat(result.model(x), 1)]) < 1e-5
        assert [h.name for h in net.task_heads()] == ["A", "B"]
        assert net.head_classes() == CLASSES[0] + CLASSES[1]


def test_a_partial_merge_is_refused_as_a_model():
    a, b, shape = pair("vgg")
    result = zip_prepared(prepare(a, b, calibration(shape), device="cpu"), ZipSettings(stop=2))
    with pytest.raises(ModelLoadError, match="full zip"):
        as_network(result.model)


def test_merging_a_merge_with_a_third_model_gives_three_heads(tmp_path):
    a, b, shape = pair("resnet")
    batches = calibration(shape)
    first = zip_prepared(prepare(a, b, batches, device="cpu"), ZipSettings(rho=0.5))
    folder = save_merged(first.model, tmp_path / "ab")
    ab = load(str(folder))  # through the sources, as the CLI and the workbench load it
    assert ab.source == "merged" and len(ab.net.task_heads()) == 2
    c = make(DEPTH_PAIRS["resnet"][0], 2, "C", CLASSES[2])
    prep = prepare(ab.net, c, batches, device="cpu")
    x = torch.randn(16, *shape)
    side_by_side = zip_prepared(prep, ZipSettings(rho=0.0))
    heads = [h.name for model_heads in side_by_side.spec.heads for h in model_heads]
    assert heads == ["A", "B", "C"]
    with torch.no_grad():
        out_ab, out_c = side_by_side.model(x)
        ref_ab, ref_c = prep.net_a.module(x), prep.net_b.module(x)
    assert out_ab.shape == (16, 10) and out_c.shape == (16, 5)
    assert max_diff((out_ab, out_c), (ref_ab, ref_c)) < 1e-5  # rho = 0: exactly all three
    merged = zip_prepared(prep, ZipSettings(rho=1.0))
    three = as_network(merged.model, "ABC")
    assert three.head_classes() == CLASSES[0] + CLASSES[1] + CLASSES[2]


@pytest.mark.parametrize("name", list(DEPTH_PAIRS))
def test_effective_size_counts_what_the_merge_computes_with(name):
    """The effective size is the ensemble's at rho = 0 and the merge's nonzero entries at every
    rho: with the paper's fusion it falls as rho rises; a least-squares fusion, whose readers of
    a merge point with shared groups take every merged feature, keeps more of them."""
    from heterogui.sizes import count_flops, estimate, merge_size

    a, b, shape = pair(name)
    prep = prepare(a, b, calibration(shape), device="cpu")
    ensemble = a.parameter_count() + b.parameter_count()
    ensemble_flops = count_flops(a.module, shape) + count_flops(b.module, shape)
    sizes = {}
    for fusion in ("average", "least_squares"):
        for rho in (0.0, 0.25, 0.5, 0.75, 1.0):
            # cross-model merges only: the estimate is exact
            settings = ZipSettings(rho=rho, beta=0.0, fusion=fusion)
            result = zip_prepared(prep, settings)
            size = merge_size(result)
            assert estimate(prep, settings)["effective"] == {
                "parameters": size["parameters"],
                "flops": size["flops"],
            }
            model = result.model
            computed = sum(int(torch.count_nonzero(p)) for p in model.trunk.parameters())
            computed += sum(p.numel() for p in model.tails.parameters())
            assert size["parameters"] <= computed <= size["stored_parameters"]
            if name == "resnet":  # its identity blocks are zero branches: every entry counts
                assert size["parameters"] == computed, (fusion, rho)
            sizes[fusion, rho] = (size["parameters"], size["flops"])
    for fusion in ("average", "least_squares"):  # rho = 0: exactly the ensemble
        assert sizes[fusion, 0.0] == (ensemble, ensemble_flops)
    paper = [sizes["average", rho] for rho in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert paper == sorted(paper, reverse=True) and paper[-1][0] < paper[0][0]
    for rho in (0.25, 0.5, 0.75, 1.0):
        assert sizes["least_squares", rho][0] > sizes["average", rho][0]
