"""Least-squares fusion (fusion.regression): the regression, its intercept, and merges with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heterogui.config import ZipSpec
from heterogui.errors import ConfigError
from heterogui.fusion import regression
from heterogui.fusion.regression import regression_unmerge
from heterogui.models.permute import permute_network, random_permutations
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.zip.match import Match
from heterogui.zip.stats import Moments
from tests.conftest import DEPTH_PAIRS, SAME_ARCH, calibration, make, max_diff


def _features(n: int = 400, n_a: int = 5, n_b: int = 4, seed: int = 0) -> torch.Tensor:
    """Correlated features with non-zero means: (n, n_a + n_b), float64."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_a + n_b, n_a + n_b, generator=gen, dtype=torch.float64)
    shift = torch.randn(n_a + n_b, generator=gen, dtype=torch.float64) * 3
    return torch.randn(n, n_a + n_b, generator=gen, dtype=torch.float64) @ mix + shift


MATCH = Match(torch.tensor([0, 1, 2, 3, -1, 0, 2, 4, 4]), n_a=5, n_b=4, width=5)


def _moments(x: torch.Tensor) -> Moments:
    moments = Moments.empty(x.shape[1], split=5)
    for rows in x.split(64):
        moments.update_parts(rows[:, :5].float(), rows[:, 5:].float())
    moments.settle()
    return moments


# groups of three (0: A0, A1, B5) and of one (2: A3), a dropped feature (B6); the weighted
# match gives group 0 unequal shares and group 1 all to one member (as head selection does)
WEIGHTED = Match(
    torch.tensor([0, 0, 1, 2, 3, 0, -1, 1, 4]),
    n_a=5,
    n_b=4,
    width=5,
    weights=torch.tensor([0.5, 0.2, 1.0, 1.0, 1.0, 0.3, 0.0, 0.0, 1.0], dtype=torch.float64),
)
LARGER = Match(torch.tensor([0, 0, 1, 2, 3, 0, -1, 1, 4]), n_a=5, n_b=4, width=5)


@pytest.mark.parametrize("match", [MATCH, WEIGHTED, LARGER], ids=["pairs", "weighted", "three"])
def test_regression_is_the_ridge_least_squares_fit_numpy_finds(match):
    # every row of Ũ, the rows solved and those that follow from their group's (the pivots')
    x = _features()
    moments = _moments(x)
    ridge = 0.05
    reg = regression_unmerge(moments, match, ridge)
    # independently: the merged features z = M x, then the ridge regressions of x on z solved as
    # augmented least-squares problems by numpy: sqrt(n λ) I rows carry the ridge, which pulls
    # the solution towards the 0/1 unmerge U (their targets are sqrt(n λ) Uᵀ)
    xs = x.numpy()  # the float32 products agree with these to ~1e-6
    z = xs @ match.merge().numpy().T
    n, r = z.shape
    for centred in (True, False):
        zc = z - z.mean(0) if centred else z
        xc = xs - xs.mean(0) if centred else xs
        lam = ridge * np.trace(zc.T @ zc / n) / r
        design = np.vstack([zc, np.sqrt(n * lam) * np.eye(r)])
        target = np.vstack([xc, np.sqrt(n * lam) * match.unmerge().numpy().T])
        expected = np.linalg.lstsq(design, target, rcond=None)[0].T  # (O, r)
        got = torch.cat(reg.centred if centred else reg.origin).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        if centred:  # the intercept: x ≈ U z + c at the means
            offset = torch.cat(reg.offset).numpy()
            np.testing.assert_allclose(offset, xs.mean(0) - got @ z.mean(0), rtol=1e-4, atol=1e-4)


def test_pivot_rows_follow_from_their_group_as_a_full_solve_gives_them():
    # the rows left unsolved (each group's largest share) against solving every row, in float64
    x = _features(n_a=5, n_b=4)
    moments = _moments(x)
    for match in (MATCH, WEIGHTED, LARGER):
        pivot = regression.pivots(match)
        shares = match.shares()
        for g, feature in enumerate(pivot.tolist()):
            members = torch.nonzero(match.groups == g).reshape(-1)
            assert feature in members.tolist() and shares[feature] == shares[members].max()
        for centred in (True, False):
            sigma = moments.cov() if centred else moments.outer / moments.count
            sxz = match.average_columns(sigma)
            szz = match.average_columns(sxz.T.contiguous())
            full = regression.solve_regression(sxz, szz, 0.05, match.unmerge())
            got = regression.regression_unmerge(
                moments, match, 0.05, centred=centred, origin=not centred
            )
            parts = got.centred if centred else got.origin
            assert torch.allclose(torch.cat(parts), full, rtol=1e-9, atol=1e-12)


def test_regression_reconstructs_features_better_than_the_copy():
    x = _features()
    reg = regression_unmerge(_moments(x), MATCH, 1e-6)
    z = x @ MATCH.merge().T
    copy = z @ MATCH.unmerge().T
    fitted = z @ torch.cat(reg.centred).T + torch.cat(reg.offset)
    error = lambda y: float(((y - x) ** 2).sum())  # noqa: E731
    assert error(fitted) < 0.9 * error(copy)


@pytest.mark.parametrize("name", ["mlp", "vgg", "resnet"])
def test_least_squares_merge_of_a_permuted_copy_gives_the_model_back(name):
    config, shape = SAME_ARCH[name]
    a = make(config, 0)
    b = permute_network(a, random_permutations(a.graph(), torch.Generator().manual_seed(5)))
    prep = prepare(a, b, calibration(shape), device="cpu")
    x = torch.randn(32, *shape)
    ref = prep.net_a.module.eval()
    # B's features are a copy of A's: the regression is the copy itself, at a tiny ridge and at
    # the default one (the ridge pulls towards the 0/1 unmerge, which is exact here)
    for ridge in (1e-9, 1e-2, 1.0):
        result = zip_prepared(prep, ZipSettings(rho=1.0, fusion="least_squares", ridge=ridge))
        with torch.no_grad():
            assert max_diff(result.model(x), (ref(x), ref(x))) < 1e-5, ridge


@pytest.mark.parametrize(
    "fusion", ["least_squares", "least_squares_heads", "least_squares_sequential"]
)
def test_rho_zero_with_least_squares_is_still_the_ensemble(fusion):
    config_a, config_b, shape = DEPTH_PAIRS["resnet"]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    result = zip_prepared(prep, ZipSettings(rho=0.0, fusion=fusion))
    x = torch.randn(32, *shape)
    with torch.no_grad():
        outs = result.model(x)
        refs = (prep.net_a.module.eval()(x), prep.net_b.module.eval()(x))
    assert max_diff(outs, refs) < 1e-4


@pytest.mark.parametrize("name", list(DEPTH_PAIRS))
def test_least_squares_fusion_changes_the_weights_and_keeps_the_shapes(name):
    config_a, config_b, shape = DEPTH_PAIRS[name]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    for stop in (None, 1):
        average = zip_prepared(prep, ZipSettings(rho=0.5, stop=stop, fusion="average"))
        fitted = zip_prepared(prep, ZipSettings(rho=0.5, stop=stop, fusion="least_squares"))
        sa, sf = average.model.state_dict(), fitted.model.state_dict()
        assert sa.keys() == sf.keys()
        assert all(sa[k].shape == sf[k].shape for k in sa)
        changed = [k for k in sa if sa[k].is_floating_point() and not torch.equal(sa[k], sf[k])]
        assert changed, "least squares must change some weight"
        assert average.matches.keys() == fitted.matches.keys()
        for space, match in average.matches.items():  # the same matching: only fusion differs
            assert torch.equal(match.groups, fitted.matches[space].groups), space
        with torch.no_grad():
            out = fitted.model(torch.randn(8, *shape))
        assert all(bool(torch.isfinite(o).all()) for o in out)


def test_least_squares_bias_takes_the_intercept():
    # an MLP reads each merge point with a biased linear layer: the merged bias must equal
    # M_out (b + W c) summed over the models, with c the regression's intercept
    config, shape = SAME_ARCH["mlp"]
    prep = prepare(make(config, 0), make(config, 1), calibration(shape), device="cpu")
    result = zip_prepared(prep, ZipSettings(rho=0.5, fusion="least_squares"))
    ga = prep.padded_a.graph()
    reader = next(
        t
        for t in ga.tensors
        if t.name.endswith(".weight")
        and t.block < len(ga.block_out) - 1
        and any(
            a.role == "in"
            and a.space in result.transforms
            and result.transforms[a.space].regression is not None
            for a in t.axes
        )
    )
    read = next(a.space for a in reader.axes if a.role == "in")
    out = next(a.space for a in reader.axes if a.role == "out")
    bias = reader.name[: -len("weight")] + "bias"
    reg, merge = result.transforms[read].regression, result.transforms[out].merge
    states = [prep.padded_a.module.state_dict(), prep.padded_b.module.state_dict()]
    expected = sum(
        merge[m] @ (st[bias] + st[reader.name] @ reg.offset[m]) for m, st in enumerate(states)
    )
    got = result.model.state_dict()[f"trunk.{bias[len('blocks.') :]}"]
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("vgg", "least_squares"), ("resnet", "least_squares"), ("mlp", "average")],
)
def test_the_default_fusion_is_the_familys_and_the_merge_records_it(name, expected):
    config_a, config_b, shape = DEPTH_PAIRS[name]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    default = zip_prepared(prep, ZipSettings(rho=0.5))
    explicit = zip_prepared(prep, ZipSettings(rho=0.5, fusion=expected))
    other = "average" if expected != "average" else "least_squares"
    different = zip_prepared(prep, ZipSettings(rho=0.5, fusion=other))
    assert ZipSettings().fusion == ZipSpec().fusion == "auto"
    assert default.settings == explicit.settings  # "auto" resolved, as a recipe records it
    assert default.settings.fusion == expected == prep.net_a.family.default_fusion
    x = calibration(shape, n_batches=1, seed=3)[0]
    assert max_diff(default.model(x), explicit.model(x)) == 0.0
    assert max_diff(default.model(x), different.model(x)) > 1e-4
    # the one-to-one baselines keep the paper's fusion: a weight average stays one
    assert ZipSettings(matcher="permute").resolved("least_squares").fusion == "average"
    assert ZipSettings(matcher="average").resolved("least_squares").fusion == "average"
    assert ZipSettings(fusion="least_squares_sequential").resolved("average").fusion == (
        "least_squares_sequential"
    )


@pytest.mark.parametrize("name", ["resnet", "mlp"])
def test_least_squares_heads_is_one_shot_least_squares_then_the_heads_refit(name, monkeypatch):
    """The trunk is one-shot least squares to the bit; only the unmerges the heads read differ,
    and they are ``refit_tails`` on that merge. A's and B's rows at the stop point are kept for
    the next merge from the same statistics, which then runs only the merged model."""
    from heterogui.fusion import sequential

    config_a, config_b, shape = DEPTH_PAIRS[name]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    once = zip_prepared(prep, ZipSettings(rho=0.5, fusion="least_squares"))
    heads = zip_prepared(prep, ZipSettings(rho=0.5, fusion="least_squares_heads"))
    first, later = once.model.state_dict(), heads.model.state_dict()
    refit = {k for k in first if not torch.equal(first[k], later[k])}
    assert refit and all(k.startswith("unmerge") for k in refit)
    padded = [prep.padded_a, prep.padded_b]
    assert sequential.refit_tails(once.model, padded, prep.batches, prep.device, 0.01)
    for k in refit:
        assert torch.equal(once.model.state_dict()[k], later[k])
    runs = []
    real = sequential.first_block_input
    monkeypatch.setattr(sequential, "first_block_input", lambda *a: runs.append(1) or real(*a))
    again = zip_prepared(prep, ZipSettings(rho=0.75, fusion="least_squares_heads"))
    assert not runs  # A and B not run again: their stop-point rows were kept
    x = calibration(shape, n_batches=1, seed=3)[0]
    with torch.no_grad():
        assert all(bool(torch.isfinite(o).all()) for o in again.model(x))


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_only_the_forms_the_readers_take_are_fitted_and_the_merge_is_the_same(name, monkeypatch):
    import heterogui.fusion.assemble as assemble
    from heterogui.fusion import regression

    config_a, config_b, shape = DEPTH_PAIRS[name]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    settings = ZipSettings(rho=0.5, fusion="least_squares")
    needed = zip_prepared(prep, settings)
    fitted = regression.fit_regressions(
        prep.stats,
        [prep.padded_a.graph(), prep.padded_b.graph()],
        needed.matches,
        needed.spec.stop,
    )
    centred = {s for s, r in fitted.items() if r.centred is not None}
    origin = {s for s, r in fitted.items() if r.origin is not None}
    # MLP: Linear layers with biases take the centred form; the tails read the last space
    # through the origin. ResNet: its convolutions have no bias, so no centred form at all.
    tails = prep.padded_a.graph().block_out[needed.spec.stop - 1]
    assert origin == ({tails} if name == "mlp" else set(fitted))
    assert centred == (set(fitted) - {tails} if name == "mlp" else set())
    every = regression.regression_unmerge  # fitting both forms everywhere changes nothing

    def both(moments, match, ridge, centred=True, origin=True):
        return every(moments, match, ridge, centred=True, origin=True)

    monkeypatch.setattr(regression, "regression_unmerge", both)
    full = zip_prepared(prep, settings)
    assert all(t.regression.centred is not None for t in full.transforms.values() if t.regression)
    x = calibration(shape, n_batches=1, seed=5)[0]
    assert max_diff(needed.model(x), full.model(x)) == 0.0
    assert assemble.fit_regressions is regression.fit_regressions


def test_bad_fusion_settings_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="zip.fusion 'lsq' is unknown; use one of"):
        ZipSpec(fusion="lsq")
    with pytest.raises(ConfigError, match=r"zip.ridge = -1 is out of range: use a positive"):
        ZipSpec(fusion="least_squares", ridge=-1)
    config, shape = SAME_ARCH["mlp"]
    prep = prepare(make(config, 0), make(config, 1), calibration(shape), device="cpu")
    with pytest.raises(ConfigError, match="zip.ridge = 0 is out of range"):
        zip_prepared(prep, ZipSettings(fusion="least_squares", ridge=0))


@pytest.mark.parametrize("name", ["mlp", "vgg", "resnet"])
def test_sequential_least_squares_merge_of_a_permuted_copy_gives_the_model_back(name):
    config, shape = SAME_ARCH[name]
    a = make(config, 0)
    b = permute_network(a, random_permutations(a.graph(), torch.Generator().manual_seed(5)))
    prep = prepare(a, b, calibration(shape), device="cpu")
    settings = ZipSettings(rho=1.0, fusion="least_squares_sequential", ridge=1e-9)
    result = zip_prepared(prep, settings)
    assert result.timings["refit"] > 0
    x = torch.randn(32, *shape)
    ref = prep.net_a.module.eval()
    with torch.no_grad():
        assert max_diff(result.model(x), (ref(x), ref(x))) < 1e-4


@pytest.mark.parametrize("name", list(DEPTH_PAIRS))
def test_sequential_least_squares_refits_the_readers_on_the_merge_s_own_inputs(name):
    from heterogui.fusion.sequential import sequential_readers

    config_a, config_b, shape = DEPTH_PAIRS[name]
    prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
    once = zip_prepared(prep, ZipSettings(rho=0.5, fusion="least_squares"))
    refit = zip_prepared(prep, ZipSettings(rho=0.5, fusion="least_squares_sequential"))
    readers = sequential_readers(prep.padded_a.graph().tensors, once.transforms, 99)
    assert readers
    first, later = once.model.state_dict(), refit.model.state_dict()
    assert first.keys() == later.keys()
    moved = {
        k for k in first if first[k].is_floating_point() and not torch.equal(first[k], later[k])
    }
    # the first reader sees exactly the inputs the one-shot fit assumed only if nothing before
    # it was merged; every later reader is refit on different inputs
    assert any(f"trunk.{t.name[len('blocks.') :]}" in moved for t in readers)
    with torch.no_grad():
        assert all(bool(torch.isfinite(o).all()) for o in refit.model(torch.randn(8, *shape)))


@pytest.mark.parametrize("name", [*DEPTH_PAIRS, "vit"])
def test_sequential_least_squares_refits_the_tails_unmerge_on_the_merge_s_state(name, monkeypatch):
    """The tails read the stop point through U_m; the refit makes U the ridge least-squares fit
    of the parents' states there on the finished merge's own state, over the rows the tails
    read (a CNN's global-average-pool head the mean of the positions, an MLP's classifier every
    row, a ViT classifier its [CLS] token), numpy's solve agreeing, so it reproduces them no
    worse than the unmerge the merge was built with."""
    from heterogui.fusion import assemble
    from heterogui.models.capture import first_block_input

    if name == "vit":
        from heterogui.models.hf.vit_io import network_from_hf
        from tests.conftest import tiny_vit

        a = network_from_hf(tiny_vit(labels=3), "A")
        b = network_from_hf(tiny_vit(hidden=48, heads=6, inter=96, layers=2, seed=1, labels=2))
        gen = torch.Generator().manual_seed(0)
        batches = [torch.rand(16, 1, 8, 8, generator=gen) for _ in range(6)]
    else:
        config_a, config_b, shape = DEPTH_PAIRS[name]
        a, b, batches = make(config_a, 0), make(config_b, 1), calibration(shape)
    prep = prepare(a, b, batches, device="cpu")
    built = []
    real = assemble.refit_tails

    def keep_built(model, *args):
        built.extend(u.clone() for u in model.unmerge_matrices())
        return real(model, *args)

    monkeypatch.setattr(assemble, "refit_tails", keep_built)
    settings = ZipSettings(rho=0.5, fusion="least_squares_sequential")
    result = zip_prepared(prep, settings)
    model, stop = result.model, result.model.spec.stop
    states: list[list[torch.Tensor]] = [[], [], []]  # A's, B's, the merge's
    with torch.no_grad():
        for x in batches:
            for net, store in zip((prep.padded_a, prep.padded_b), states, strict=False):
                state = first_block_input(net.module, x)
                for block in list(net.module.blocks)[:stop]:
                    state = block(state)
                store.append(state)
            states[2].append(model.features(x))

    def rows(parts: list[torch.Tensor]) -> np.ndarray:
        t = torch.cat(parts)
        if name == "vit":  # (B, T, H): a classifier head reads the [CLS] token
            return t[:, 0].double().numpy()
        if t.dim() > 2:  # (B, C, H, W): the pool head reads the mean of the positions
            return t.mean(dim=(2, 3)).double().numpy()
        return t.double().numpy()  # (B, F): an MLP's classifier reads every row

    z = rows(states[2])
    n, r = z.shape
    szz = z.T @ z / n
    lam = settings.ridge * np.trace(szz) / r
    for m, before in enumerate(built):
        x, before = rows(states[m]), before.double().numpy()
        expected = np.linalg.solve(szz + lam * np.eye(r), (x.T @ z / n + lam * before).T).T
        after = model.unmerge_matrices()[m].double().numpy()
        assert np.abs(after - expected).max() < 1e-4 * np.abs(expected).max()
        assert not np.allclose(after, before)
        error = lambda u, x=x: float(((x - z @ u.T) ** 2).sum())  # noqa: E731
        assert error(after) <= error(before)


def test_each_tail_is_refit_on_the_rows_its_first_block_reads():
    """A CNN's pool head reads the mean of the positions, a [CLS] head the first token, a mean-
    pooling embedding head, an MLP's classifier and a language-model head every row."""
    from heterogui.fusion.sequential import tail_reads
    from heterogui.models.bert_modules import PoolHead as EmbeddingHead
    from heterogui.models.conv import PoolHead
    from heterogui.models.mlp import LinearHead

    assert tail_reads(PoolHead(8, 3), "channels") == "mean"
    assert tail_reads(EmbeddingHead("cls"), "tokens") == "first"
    assert tail_reads(EmbeddingHead("mean"), "tokens") == "all"
    assert tail_reads(LinearHead(8, 3), "flat") == "all"
    assert tail_reads(torch.nn.Linear(8, 3), "tokens") == "all"
    # a pool head behind other blocks (a partial zip) is not the tail's first block
    assert tail_reads(torch.nn.Conv2d(8, 8, 3), "channels") == "all"


def test_sequential_least_squares_runs_on_token_models():
    from heterogui.models.hf.bert_io import network_from_hf
    from heterogui.models.hf.decoder_io import network_from_hf as decoder_from_hf
    from tests.conftest import tiny_decoder, tiny_hf, token_batches
    from tests.test_decoder import batches as text_batches

    pairs = [
        (
            network_from_hf(tiny_hf(layers=3, seed=0), "A"),
            network_from_hf(tiny_hf(hidden=48, heads=6, inter=80, layers=2, seed=1), "B"),
            token_batches(),
        ),
        (
            decoder_from_hf(tiny_decoder(hidden=48, layers=3, heads=6, kv=2, inter=80, seed=1)),
            decoder_from_hf(tiny_decoder(hidden=48, layers=2, heads=6, kv=2, inter=96, seed=2)),
            text_batches(),
        ),
    ]
    for deep, shallow, calib in pairs:
        prep = prepare(deep, shallow, calib, device="cpu")
        once = zip_prepared(prep, ZipSettings(rho=0.5, fusion="least_squares"))
        refit = zip_prepared(prep, ZipSettings(rho=0.5, fusion="least_squares_sequential"))
        first, later = once.model.state_dict(), refit.model.state_dict()
        assert any(not torch.equal(first[k], later[k]) for k in first)
        with torch.no_grad():
            outs = refit.model(**calib[0])
        assert all(bool(torch.isfinite(o).all()) for o in outs)


def test_vit_merges_default_to_sequential_least_squares_with_the_tails_refit():
    """ViT's "auto" fusion is the sequential refit, the tails' unmerge refit with it."""
    from heterogui.models.hf.vit_io import network_from_hf
    from tests.conftest import tiny_vit

    a = network_from_hf(tiny_vit(labels=3), "A")
    b = network_from_hf(tiny_vit(hidden=48, heads=6, inter=96, layers=2, seed=1, labels=2), "B")
    gen = torch.Generator().manual_seed(0)
    prep = prepare(a, b, [torch.rand(16, 1, 8, 8, generator=gen) for _ in range(4)], device="cpu")
    default = zip_prepared(prep, ZipSettings(rho=0.5))
    assert default.settings.fusion == "least_squares_sequential" == a.family.default_fusion
    assert {"refit", "refit_tails"} <= set(default.timings)
    explicit = zip_prepared(prep, ZipSettings(rho=0.5, fusion="least_squares_sequential"))
    x = torch.rand(8, 1, 8, 8, generator=gen)
    with torch.no_grad():
        assert max_diff(default.model(x), explicit.model(x)) == 0.0


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_a_first_sequential_merge_runs_the_parents_once_and_merges_the_same(name, monkeypatch):
    """The block-by-block refit hands the parents' rows at the stop point on to the heads'
    refit (``sequential._keep_parent_rows``): A and B start from their inputs once, not twice,
    and the merge is the same to the bit as when the heads' refit runs them itself."""
    from heterogui.fusion import sequential

    config_a, config_b, shape = DEPTH_PAIRS[name]
    settings = ZipSettings(rho=0.5, fusion="least_squares_sequential")

    def first_merge():
        runs = []
        real = sequential.first_block_input
        monkeypatch.setattr(sequential, "first_block_input", lambda *a: runs.append(1) or real(*a))
        prep = prepare(make(config_a, 0), make(config_b, 1), calibration(shape), device="cpu")
        merged = zip_prepared(prep, settings).model.state_dict()
        monkeypatch.setattr(sequential, "first_block_input", real)
        return merged, len(runs), 2 * len(prep.batches)

    handed_on, runs, once = first_merge()
    assert runs == once  # each parent on each batch: once, in the refit
    monkeypatch.setattr(sequential, "_keep_parent_rows", lambda *args: None)
    own, runs, once = first_merge()
    assert runs == 2 * once
    assert handed_on.keys() == own.keys()
    assert all(torch.equal(handed_on[k], own[k]) for k in own)
