"""Tests of the matchers (heterogui.zip.matchers, docs/method.md sec. 7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heterogui.errors import MatcherError
from heterogui.zip.matchers import (
    MATCHERS,
    Match,
    ZipJob,
    average_match,
    keep_one_match,
    permute_match,
    zip_group,
    zip_group_naive,
    zip_match,
    zip_match_naive,
    zip_side_by_side,
)
from heterogui.zip.stats import Moments
from heterogui.zip.widths import group_width, target_width

ALPHAS = (1e-4, 0.5, 1.0)
BETAS = (0.0, 0.075, 0.5, 1.0)


def _corr(x: np.ndarray) -> torch.Tensor:
    """Return the correlation of the columns of x, (d, d), as the pipeline computes it."""
    m = Moments.empty(x.shape[1])
    m.update(torch.from_numpy(x))
    return m.corr()


def _features(rng: np.random.Generator, n_a: int, n_b: int, n: int = 80) -> np.ndarray:
    """Build A and B features driven by shared latents, with some sign flips, (n, n_a + n_b)."""
    z = rng.standard_normal((n, 6))
    x = z @ rng.standard_normal((6, n_a + n_b)) + 0.7 * rng.standard_normal((n, n_a + n_b))
    return x * rng.choice([-1.0, 1.0], size=n_a + n_b)


def _tied_features(rng: np.random.Generator, n_a: int, n_b: int) -> np.ndarray:
    """Build features where some columns are exact copies (within A and across models)."""
    x = _features(rng, n_a, n_b)
    x[:, 1] = x[:, 0]
    x[:, n_a] = x[:, 0]
    x[:, n_a + n_b - 1] = x[:, n_a - 1]
    return x


def _corr_cases(seed: int, n_a: int, n_b: int) -> list[np.ndarray]:
    """Return correlation matrices, from plain to full of exact ties, each (O, O)."""
    rng = np.random.default_rng(seed)
    o = n_a + n_b
    plain = _corr(_features(rng, n_a, n_b)).numpy()
    tied = _corr(_tied_features(rng, n_a, n_b)).numpy()
    grid = np.round(rng.uniform(-1, 1, (o, o)), 1)
    # dyadic negatives: alpha = 0.5 halves them exactly, so damped values tie with old ones
    dyadic = -rng.integers(1, 9, (o, o)) / 8.0
    return [
        plain,
        tied,
        np.round(plain, 1),
        _symmetric(grid),
        _symmetric(dyadic),
        np.full((o, o), 0.5),
    ]


def _symmetric(a: np.ndarray) -> np.ndarray:
    return np.triu(a) + np.triu(a, 1).T


def _run(fn, corr, n_a, n_b, width, alpha, beta) -> torch.Tensor | str:
    try:
        return fn(torch.from_numpy(corr), n_a, n_b, width, alpha=alpha, beta=beta).groups
    except MatcherError as err:
        return str(err)


def _widths(n_a: int, n_b: int) -> list[int]:
    o = n_a + n_b
    return sorted({o, o - 1, max(n_a, n_b) + 1, max(n_a, n_b), min(n_a, n_b), o // 3, 2, 1})


@pytest.mark.parametrize(("n_a", "n_b"), [(4, 4), (6, 11), (13, 5), (12, 12)])
def test_fast_zip_equals_naive_zip(n_a: int, n_b: int) -> None:
    outcomes = {"match": 0, "error": 0}
    cases = _corr_cases(n_a * 100 + n_b, n_a, n_b) + _corr_cases(n_a * 100 + n_b + 1, n_a, n_b)
    for seed, corr in enumerate(cases):
        for width in _widths(n_a, n_b):
            for alpha in ALPHAS:
                for beta in BETAS:
                    case = f"corr #{seed}, width={width}, alpha={alpha}, beta={beta}"
                    slow = _run(zip_match_naive, corr, n_a, n_b, width, alpha, beta)
                    fast = _run(zip_match, corr, n_a, n_b, width, alpha, beta)
                    if isinstance(slow, str):
                        assert fast == slow, case
                        outcomes["error"] += 1
                    else:
                        assert isinstance(fast, torch.Tensor), f"{case}: {fast}"
                        assert torch.equal(fast, slow), case
                        outcomes["match"] += 1
    assert outcomes["match"] > 100 and outcomes["error"] > 10  # both paths were exercised


def test_fast_zip_equals_naive_zip_on_wider_features() -> None:
    rng = np.random.default_rng(7)
    n_a, n_b = 40, 56
    corr = _corr(_tied_features(rng, n_a, n_b)).numpy()
    for width, alpha, beta in [(56, 0.5, 1.0), (70, 1e-4, 0.075), (48, 1.0, 0.5), (96, 0.5, 0.0)]:
        slow = _run(zip_match_naive, corr, n_a, n_b, width, alpha, beta)
        fast = _run(zip_match, corr, n_a, n_b, width, alpha, beta)
        assert isinstance(slow, torch.Tensor) and torch.equal(fast, slow)


def test_a_float32_correlation_zips_in_float32_like_its_float64_copy() -> None:
    rng = np.random.default_rng(11)
    n_a, n_b = 40, 56
    corr32 = _corr(_tied_features(rng, n_a, n_b)).numpy().astype(np.float32)
    for width, alpha, beta in [(56, 0.5, 1.0), (70, 1e-4, 0.075), (48, 1.0, 0.5), (96, 0.5, 0.0)]:
        slow = _run(zip_match_naive, corr32, n_a, n_b, width, alpha, beta)
        fast = _run(zip_match, corr32, n_a, n_b, width, alpha, beta)
        assert isinstance(slow, torch.Tensor) and torch.equal(fast, slow)  # fast = naive
        if alpha in (0.5, 1.0):  # exact products: the float64 copy gives the same groups
            wide = _run(zip_match, corr32.astype(np.float64), n_a, n_b, width, alpha, beta)
            assert torch.equal(fast, wide)
    for sizes in [(20, 30, 25), (16, 16, 16)]:
        rows = torch.randn(300, sum(sizes), generator=torch.Generator().manual_seed(3))
        corr = torch.corrcoef(rows.T)
        for alpha in (0.5, 0.1):
            width = group_width(sizes, 1.0)
            fast = zip_group(corr.float(), sizes, width, alpha)
            assert torch.equal(
                fast.groups, zip_group_naive(corr.float(), sizes, width, alpha).groups
            )


@pytest.mark.parametrize("name", ["zip", "zip_naive", "permute"])
def test_permuted_copy_is_matched_to_itself(name: str) -> None:
    rng = np.random.default_rng(11)
    n = 16
    x = rng.standard_normal((400, n))
    perm = rng.permutation(n)
    corr = _corr(np.concatenate([x, x[:, perm]], axis=1))
    match = MATCHERS[name](corr, n, n, width=target_width(n, n, 1.0), alpha=0.5, beta=1.0)
    groups = match.groups
    assert match.width == n
    # B feature q is a copy of A feature perm[q]: both must share a group
    assert torch.equal(groups[n:], groups[torch.from_numpy(perm)])
    assert torch.equal(groups[:n], torch.arange(n))
    assert match.counts().cross == n and len(match.cross_pairs()) == n


def test_naive_zip_follows_the_method_on_a_small_case() -> None:
    # features A0 A1 B0 B1; A0~A1 is the strongest pair
    corr = torch.full((4, 4), 0.1, dtype=torch.float64)
    for (i, j), v in {(0, 1): 0.95, (0, 2): 0.9, (1, 3): 0.8}.items():
        corr[i, j] = corr[j, i] = v
    # beta=1: one within-model merge per model (budget floor(2 * 2/4 * 1) = 1); after A0+A1 the
    # damped values 0.5*min(...) = 0.05 lose to B0~B1 (0.1)
    assert zip_match_naive(corr, 2, 2, 2, alpha=0.5, beta=1.0).groups.tolist() == [0, 0, 1, 1]
    # beta=0: within-model pairs are forbidden from the start
    assert zip_match_naive(corr, 2, 2, 2, alpha=0.5, beta=0.0).groups.tolist() == [0, 1, 0, 1]
    assert zip_match(corr, 2, 2, 2, alpha=0.5, beta=0.0).groups.tolist() == [0, 1, 0, 1]


def _pairs(o: int, pairs: dict[tuple[int, int], float]) -> torch.Tensor:
    """Return an (o, o) correlation of 0.1 with the given pairs set symmetrically."""
    corr = torch.full((o, o), 0.1, dtype=torch.float64)
    for (i, j), v in pairs.items():
        corr[i, j] = corr[j, i] = v
    return corr


def _zip_two_pairs(fn, corr: torch.Tensor) -> list[int]:
    """Return the groups of two A and two B features zipped to width 2 (alpha 0.5, beta 1) by
    ``fn``, or by the device loop on the CPU ("device")."""
    if fn == "device":
        return zip_side_by_side([ZipJob(corr, (2, 2), 2)], torch.device("cpu"), 2**20)[
            0
        ].groups.tolist()
    return fn(corr, 2, 2, 2, alpha=0.5, beta=1.0).groups.tolist()


@pytest.mark.parametrize("fn", [zip_match_naive, zip_match, "device"])
def test_a_merge_of_copies_is_not_damped(fn) -> None:
    # A0 and A1 are copies of one feature (a merge that kept it from both models holds it twice);
    # B0 resembles it, B1 resembles B0 less. Merging the copies leaves that feature as it was, so
    # B0 still joins it at 0.9; damping the copies' group (0.45) would let B0 and B1 merge
    # within B at 0.6 instead
    corr = _pairs(4, {(0, 1): 1.0, (0, 2): 0.9, (1, 2): 0.9, (2, 3): 0.6})
    assert _zip_two_pairs(fn, corr) == [0, 0, 0, 1]
    # just under a copy, the paper's damping holds
    almost = _pairs(4, {(0, 1): 0.9999, (0, 2): 0.9, (1, 2): 0.9, (2, 3): 0.6})
    assert zip_match(almost, 2, 2, 2, alpha=0.5, beta=1.0).groups.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("fn", [zip_match_naive, zip_match, "device"])
def test_copies_across_models_complete_a_group_that_is_damped(fn) -> None:
    # A0 and B0 are copies (a model and a copy of its layer); A1 resembles both (0.9), B1
    # resembles A1 (0.6). The pair A0-B0 is complete: A1 joining it would be a merge within A,
    # damped to 0.45 as the paper does, so A1 pairs with B1
    corr = _pairs(4, {(0, 2): 1.0, (0, 1): 0.9, (1, 2): 0.9, (1, 3): 0.6})
    assert _zip_two_pairs(fn, corr) == [0, 1, 0, 1]


def _all_matches(corr: torch.Tensor, n: int) -> list[Match]:
    out = [fn(corr, n, n, width=w, alpha=0.5, beta=1.0) for fn in MATCHERS.values() for w in [n]]
    out += [zip_match(corr, n, n, w, alpha=1e-4, beta=0.075) for w in (2 * n, 2 * n - 3, n + 1)]
    out += [keep_one_match(n, n, "a"), keep_one_match(n, n, "b")]
    return out


def test_merge_times_unmerge_is_identity_for_every_matcher() -> None:
    n = 10
    corr = _corr(_features(np.random.default_rng(3), n, n))
    for match in _all_matches(corr, n):
        m, u = match.merge(), match.unmerge()
        assert m.shape == (match.width, 2 * n) and u.shape == (2 * n, match.width)
        torch.testing.assert_close(
            m @ u, torch.eye(match.width, dtype=torch.float64), atol=1e-12, rtol=0
        )
        torch.testing.assert_close(m.sum(dim=1), torch.ones(match.width, dtype=torch.float64))
        assert torch.equal(torch.cat([match.m_a(), match.m_b()], dim=1), m)
        assert torch.equal(torch.cat([match.u_a(), match.u_b()], dim=0), u)
        firsts = [int(torch.nonzero(match.groups == g)[0]) for g in range(match.width)]
        assert firsts == sorted(firsts)  # groups numbered by their smallest member


def test_dtype_and_device_arguments() -> None:
    match = average_match(torch.eye(6), 3, 3)
    m = match.m_a(dtype=torch.float32, device="cpu")
    assert m.dtype == torch.float32 and torch.equal(m, torch.eye(3) / 2)
    assert match.u_b(dtype=torch.float16).dtype == torch.float16


def test_requested_widths_are_met() -> None:
    n_a, n_b = 7, 12
    corr = _corr(_features(np.random.default_rng(4), n_a, n_b))
    for rho in (0.0, 0.3, 0.5, 1.0):
        width = target_width(n_a, n_b, rho)
        for fn in (zip_match, zip_match_naive):
            assert fn(corr, n_a, n_b, width).width == width
    assert MATCHERS["zip"](corr, n_a, n_b, width=None, alpha=0.5, beta=1.0).width == n_b


def test_full_width_merges_nothing() -> None:
    n_a, n_b = 5, 8
    corr = _corr(_features(np.random.default_rng(5), n_a, n_b))
    eye = torch.eye(n_a + n_b, dtype=torch.float64)
    for beta in (0.0, 1.0):
        match = zip_match(corr, n_a, n_b, n_a + n_b, beta=beta)
        assert torch.equal(match.merge(), eye) and torch.equal(match.unmerge(), eye)
        assert match.counts().cross == 0


@pytest.mark.parametrize("keep", ["a", "b"])
def test_keep_one_drops_the_other_model(keep: str) -> None:
    n_a, n_b = 4, 6
    match = keep_one_match(n_a, n_b, keep)
    kept, dropped = (n_a, n_b) if keep == "a" else (n_b, n_a)
    assert match.width == kept and match.counts().dropped == dropped
    m_drop, u_drop = (match.m_b(), match.u_b()) if keep == "a" else (match.m_a(), match.u_a())
    m_keep = match.m_a() if keep == "a" else match.m_b()
    assert not m_drop.any() and not u_drop.any()
    assert torch.equal(m_keep, torch.eye(kept, dtype=torch.float64))
    torch.testing.assert_close(
        match.merge() @ match.unmerge(), torch.eye(kept, dtype=torch.float64)
    )


def test_counts_and_cross_pairs() -> None:
    # A: 0 1 2, B: 3 4 | groups: {A0, A1, B0}, {A2}, {B1}
    match = Match(groups=torch.tensor([0, 0, 1, 0, 2]), n_a=3, n_b=2, width=3)
    c = match.counts()
    assert (c.groups, c.cross, c.within_a, c.within_b, c.dropped) == (3, 1, 1, 0, 0)
    assert match.cross_pairs().tolist() == [[0, 0], [1, 0]]


def test_target_width_values() -> None:
    assert [target_width(8, 8, r) for r in (0.0, 0.5, 1.0)] == [16, 12, 8]
    assert [target_width(8, 16, r) for r in (0.0, 0.5, 1.0)] == [24, 20, 16]
    assert target_width(5, 5, 0.5) == 7  # 2.5 merges round half up
    with pytest.raises(MatcherError, match="rho must be in"):
        target_width(8, 8, 1.5)


@pytest.mark.parametrize("name", ["permute", "average"])
def test_equal_width_matchers_reject_unequal_widths(name: str) -> None:
    corr = torch.eye(10, dtype=torch.float64)
    msg = f"{name} needs equal widths, got n_a=4 and n_b=6; use the zip matcher"
    with pytest.raises(MatcherError, match=msg):
        MATCHERS[name](corr, 4, 6, width=None, alpha=0.5, beta=1.0)
    fn = permute_match if name == "permute" else average_match
    with pytest.raises(MatcherError, match=msg):
        fn(corr, 4, 6)
    with pytest.raises(MatcherError, match="always gives width n_a=5, got width=7"):
        MATCHERS[name](corr, 5, 5, width=7, alpha=0.5, beta=1.0)


@pytest.mark.parametrize("fn", [zip_match, zip_match_naive])
def test_zip_rejects_bad_knobs(fn) -> None:
    corr = _corr(_features(np.random.default_rng(6), 6, 9))
    for width in (0, 16):
        with pytest.raises(MatcherError, match=f"between 1 and n_a \\+ n_b = 15, got {width}"):
            fn(corr, 6, 9, width)
    with pytest.raises(MatcherError, match=r"alpha must be in \(0, 1\], got 0"):
        fn(corr, 6, 9, 9, alpha=0.0)
    with pytest.raises(MatcherError, match=r"beta must be in \[0, 1\], got -0.1"):
        fn(corr, 6, 9, 9, beta=-0.1)
    with pytest.raises(MatcherError, match=r"corr must have shape \(15, 15\)"):
        fn(corr[:-1, :-1], 6, 9, 9)
    bad = corr.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(MatcherError, match="NaN"):
        fn(bad, 6, 9, 9)


@pytest.mark.parametrize("fn", [zip_match, zip_match_naive])
def test_unreachable_width_without_within_model_merges(fn) -> None:
    corr = _corr(_features(np.random.default_rng(8), 6, 9))
    assert fn(corr, 6, 9, 9, beta=0.0).counts().cross == 6  # max(n_a, n_b) is reachable
    with pytest.raises(MatcherError) as err:
        fn(corr, 6, 9, 8, beta=0.0)
    for part in ("width 8", "smallest reachable width is 9", "raise beta", "lower rho"):
        assert part in str(err.value)


def test_within_model_budget_and_zip_ratio_are_exact():
    from heterogui.zip.widths import merges_for, target_width, within_model_budget

    # 100 + 100 features zipped to 100 with beta 0.58: 50 * 0.58 is 29, not 28.999...
    assert within_model_budget(200, 100, 100, 0.58) == 29
    assert within_model_budget(200, 100, 100, 0.0) == 0
    assert within_model_budget(200, 100, 100, 1.0) == 50
    # rho * min = 0.29 * 50 = 14.5 exactly: half up gives 15 merges (a float gives 14.4999...)
    assert merges_for(0.29, 50) == 15 and target_width(50, 50, 0.29) == 85
    assert merges_for(0.5, 5) == 3 and merges_for(1.0, 7) == 7 and merges_for(0.0, 7) == 0


def test_a_nearly_symmetric_correlation_is_matched_as_its_symmetric_part():
    """One entry off far from the diagonal (another tile): zip matches (C + Cᵀ) / 2."""
    from heterogui.zip.matchers import zip_match

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(400, 600, generator=gen, dtype=torch.float64)
    x[:, 300:] += x[:, :300]  # B's feature k echoes A's feature k (correlation ~0.7)
    skewed = torch.corrcoef(x.T)
    skewed[5, 590] = 1.0  # rows 0-255 x columns 512-599: a tile away from its mirror
    got = zip_match(skewed, 300, 300, 300)
    assert torch.equal(got.groups, zip_match((skewed + skewed.T) / 2, 300, 300, 300).groups)
    # taken as it is, 1.0 would be the best pair; symmetrised it is ~0.5, below A5-B5's ~0.7
    assert got.groups[5] == got.groups[305] != got.groups[590]


@pytest.mark.parametrize(
    ("values", "finite"),
    [
        ([0.5, -1.0, 2.0], True),
        ([3e38, 3e38, 3e38], True),  # the sum overflows; every element is finite
        ([1.0, float("inf")], False),
        ([float("-inf"), 1.0], False),
        ([float("inf"), float("-inf")], False),
        ([float("nan"), 1.0], False),
        ([], True),
    ],
)
def test_all_finite_is_exact(values, finite):
    from heterogui.zip.widths import all_finite

    for dtype in (torch.float32, torch.float64):
        assert all_finite(torch.tensor(values, dtype=dtype)) is finite


def test_a_corr_with_nan_or_inf_is_refused():
    from heterogui.zip.widths import as_matrix

    corr = torch.eye(6)
    corr[2, 4] = float("nan")
    with pytest.raises(MatcherError, match="corr contains NaN or inf"):
        as_matrix(corr, (3, 3))
