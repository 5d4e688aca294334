"""Merging three or more models at once (heterogui.nway): invariants of the N-way zip."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from heterogui.errors import ConfigError, IncompatibleModelsError, MatcherError
from heterogui.models.mlp import MLPConfig
from heterogui.models.permute import permute_network, random_permutations
from heterogui.models.resnet import cifar_resnet
from heterogui.nway import merge_group, prepare_group, zip_group_prepared
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.zip.matchers import zip_group, zip_group_naive, zip_match
from heterogui.zip.widths import group_width
from tests.conftest import IMAGE, SAME_ARCH, calibration, make, max_diff

# three depths per stage (one model deepest everywhere), one input, different widths
TRIOS = {
    "mlp": (
        MLPConfig(64, (24, 32, 16, 20), 5),
        MLPConfig(64, (16, 28), 5),
        MLPConfig(64, (20, 12, 18), 5),
        (64,),
    ),
    "resnet": (
        cifar_resnet((3, 3), 1, 5, 1, base=8),
        cifar_resnet((1, 2), 1, 5, 1, base=8),
        cifar_resnet((2, 1), 2, 5, 1, base=8),
        IMAGE,
    ),
}


def _random_corr(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, sum(sizes), generator=g, dtype=torch.float64)
    x[:, sum(sizes) // 2 :] += x[:, : sum(sizes) - sum(sizes) // 2]  # some strong pairs
    if seed % 2:  # copies of one feature, within the first model and in the last
        x[:, 1] = x[:, 0]
        x[:, -1] = x[:, 0]
    return torch.corrcoef(x.T)


@pytest.mark.parametrize("sizes", [(5, 7, 6), (4, 4, 4, 4), (3, 9, 2)])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_fast_n_way_zip_equals_the_naive_loop(sizes, beta):
    # with beta 0 the greedy zip can get stuck above the widest model's width (two groups
    # that each hold a feature of one model never merge): both loops must say so alike
    done = 0
    for seed in range(6):
        corr = _random_corr(sizes, seed)
        for rho in (0.5, 1.0):
            width = group_width(sizes, rho)
            try:
                fast = zip_group(corr, sizes, width, 0.5, beta)
            except MatcherError as exc:
                with pytest.raises(MatcherError, match=re.escape(str(exc))):
                    zip_group_naive(corr, sizes, width, 0.5, beta)
                continue
            slow = zip_group_naive(corr, sizes, width, 0.5, beta)
            assert torch.equal(fast.groups, slow.groups)
            assert fast.sizes == sizes and fast.width == width
            done += 1
    assert done >= 6


def test_n_way_zip_keeps_each_models_budget():
    sizes, beta = (6, 8, 5), 0.5
    corr = _random_corr(sizes, 3)
    width = group_width(sizes, 1.0)
    match = zip_group(corr, sizes, width, 0.5, beta)
    o = sum(sizes)
    for m, n in enumerate(sizes):
        groups = match.groups[match.rows_of(m)]
        folded = len(groups) - len(set(groups.tolist()))  # merges within model m
        assert folded <= np.floor((o - width) * n / o * beta)


@pytest.mark.parametrize("fn", [zip_group, zip_group_naive])
def test_copies_merged_within_a_model_keep_their_group_complete(fn):
    # A0, A1 copies of one feature; B0 resembles it (0.9), C0 resembles both (0.8); B0~B1 0.7,
    # B1~C0 0.6. Merging the copies neither damps their group nor counts as a second member of A,
    # so B0 joins it and then C0 completes it at 0.8. Were the copies' group damped, B0 and C0
    # would pair first (0.8) and take B1 (0.6); were it counted as two A members, C0 would join
    # B1 (0.6) rather than a damped 0.4
    pairs = {(0, 1): 1.0, (0, 2): 0.9, (1, 2): 0.9, (0, 4): 0.8, (1, 4): 0.8, (2, 4): 0.8}
    pairs |= {(2, 3): 0.7, (3, 4): 0.6}
    corr = torch.full((5, 5), 0.1, dtype=torch.float64)
    for (i, j), v in pairs.items():
        corr[i, j] = corr[j, i] = v
    assert fn(corr, (2, 2, 1), 2, 0.5, 1.0).groups.tolist() == [0, 0, 0, 1, 0]


def test_two_model_zip_is_the_n_way_zip_of_two():
    corr = _random_corr((7, 5), 1)
    assert torch.equal(zip_match(corr, 7, 5, 8).groups, zip_group(corr, (7, 5), 8).groups)
    assert group_width((7, 5), 0.5) == 12 - 3  # 2.5 merges round half up


@pytest.mark.parametrize("name", ["mlp", "vgg", "resnet"])
def test_a_model_merged_with_two_permuted_copies_computes_its_function(name):
    config, shape = SAME_ARCH[name]
    a = make(config, 0)
    copies = [
        permute_network(a, random_permutations(a.graph(), torch.Generator().manual_seed(s)))
        for s in (5, 6)
    ]
    result = merge_group([a, *copies], calibration(shape), ZipSettings(rho=1.0), device="cpu")
    x = torch.randn(32, *shape)
    ref = result.prepared.nets[0].module.eval()
    with torch.no_grad():
        outs = result.model(x)
        assert len(outs) == 3
        assert max_diff(outs, (ref(x),) * 3) < 1e-4
    for space, match in result.matches.items():
        assert match.width == match.sizes[0], space
        assert match.counts().cross == match.width  # every group holds all three copies


@pytest.mark.parametrize("name", list(TRIOS))
def test_rho_zero_is_exactly_the_ensemble_of_three(name):
    *configs, shape = TRIOS[name]
    nets = [make(c, k) for k, c in enumerate(configs)]
    prep = prepare_group(nets, calibration(shape), device="cpu")
    assert prep.reference == 0
    for stop in (None, 1, 0):
        result = zip_group_prepared(prep, ZipSettings(rho=0.0, stop=stop))
        x = torch.randn(16, *shape)
        with torch.no_grad():
            outs = result.model(x)
            refs = [net.module.eval()(x) for net in prep.nets]
        assert max_diff(outs, refs) < 1e-5, f"stop={stop}"


@pytest.mark.parametrize("name", list(TRIOS))
@pytest.mark.parametrize("fusion", ["average", "least_squares", "least_squares_sequential"])
def test_n_way_widths_follow_rho_and_the_merge_runs(name, fusion):
    *configs, shape = TRIOS[name]
    nets = [make(c, k) for k, c in enumerate(configs)]
    prep = prepare_group(nets, calibration(shape), device="cpu")
    graphs = [p.graph() for p in prep.padded]
    for rho in (0.5, 1.0):
        result = zip_group_prepared(prep, ZipSettings(rho=rho, fusion=fusion))
        for space, match in result.matches.items():
            live = tuple(n for n, g in zip(match.sizes, graphs, strict=True) if space not in g.dead)
            expected = live[0] if len(live) == 1 else group_width(live, rho)
            assert match.width == expected, space
            assert len(match.sizes) == 3
        with torch.no_grad():
            outs = result.model(torch.randn(4, *shape))
        assert all(torch.isfinite(o).all() for o in outs)
        assert (result.refit > 0) == (fusion == "least_squares_sequential")


def test_an_n_way_merge_of_two_models_is_the_two_model_merge():
    *configs, shape = TRIOS["resnet"]
    a, b = make(configs[0], 0), make(configs[1], 1)
    batches = calibration(shape)
    pair = zip_prepared(prepare(a, b, batches, device="cpu"), ZipSettings(rho=0.5))
    group = zip_group_prepared(prepare_group([a, b], batches, device="cpu"), ZipSettings(rho=0.5))
    for space, match in pair.matches.items():
        assert torch.equal(match.groups, group.matches[space].groups), space
    x = torch.randn(8, *shape)
    with torch.no_grad():
        assert max_diff(pair.model(x), group.model(x)) < 1e-5


def test_n_way_errors_name_the_problem_and_the_fix():
    *configs, shape = TRIOS["resnet"]
    nets = [make(c, k) for k, c in enumerate(configs)]
    batches = calibration(shape)
    with pytest.raises(ConfigError, match="at least two models"):
        prepare_group(nets[:1], batches, device="cpu")
    prep = prepare_group(nets, batches, device="cpu")
    with pytest.raises(ConfigError, match="set zip.matcher: zip"):
        zip_group_prepared(prep, ZipSettings(matcher="permute"))
    with pytest.raises(ConfigError, match="zip.renormalize: false"):
        zip_group_prepared(prep, ZipSettings(renormalize=True))
    crossed = [make(cifar_resnet((3, 1), 1, 5, 1, base=8), 0), make(configs[2], 2)]
    crossed.append(make(cifar_resnet((1, 3), 1, 5, 1, base=8), 1))
    with pytest.raises(IncompatibleModelsError, match="deepest in every stage"):
        prepare_group(crossed, batches, device="cpu")
