"""Tests of the streaming feature moments (heterogui.zip.stats, docs/method.md sec. 6)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from heterogui.errors import ConfigError
from heterogui.zip import stats, symmetric
from heterogui.zip.stats import FOLD_EVERY, Moments


def _data(seed: int, n: int = 300, d: int = 12) -> np.ndarray:
    """Build correlated features with non-zero means and mixed scales, (n, d) float64."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)) @ rng.standard_normal((4, d)) + rng.standard_normal((n, d))
    return x * rng.uniform(0.1, 10.0, size=d) + rng.uniform(-5.0, 5.0, size=d)


def _stream(x: np.ndarray, chunks: int, dtype: torch.dtype = torch.float64) -> Moments:
    m = Moments.empty(x.shape[1])
    for part in np.array_split(x, chunks):
        m.update(torch.from_numpy(part).to(dtype))
    return m


def test_streaming_matches_numpy_cov_and_corrcoef() -> None:
    x = _data(0)
    m = _stream(x, chunks=7)
    assert m.count == x.shape[0]
    np.testing.assert_allclose(m.mean().numpy(), x.mean(axis=0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(m.cov().numpy(), np.cov(x, rowvar=False, bias=True), atol=1e-10)
    np.testing.assert_allclose(m.corr().numpy(), np.corrcoef(x, rowvar=False), atol=1e-10)
    assert m.cov().dtype == torch.float64
    assert torch.equal(m.corr(), m.corr().T)
    assert torch.equal(torch.diagonal(m.corr()), torch.ones(x.shape[1], dtype=torch.float64))


def test_float32_rows_are_accumulated_in_float64() -> None:
    """Float32 rows: float32 centred products, float64 sums; within 1e-6 of float64."""
    x = _data(1).astype(np.float32)
    m = _stream(x, chunks=3, dtype=torch.float32)
    assert m.total.dtype == torch.float64 and m.outer.dtype == torch.float64
    ref = np.cov(x.astype(np.float64), rowvar=False, bias=True)
    scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
    assert np.abs(m.cov().numpy() - ref).max() / scale.max() < 1e-6
    ref_corr = np.corrcoef(x.astype(np.float64), rowvar=False)
    np.testing.assert_allclose(m.corr().numpy(), ref_corr, rtol=0, atol=1e-6)


def test_large_means_do_not_cost_float32_precision() -> None:
    """Means 10^4 standard deviations away: centring per batch keeps the covariance exact."""
    x = _data(6, n=2000)
    x = (x - x.mean(axis=0)) / x.std(axis=0) + 1e4 * np.arange(1, x.shape[1] + 1)
    x = x.astype(np.float32).astype(np.float64)  # the data as float32 holds it
    m = _stream(x, chunks=9, dtype=torch.float32)
    ref = np.cov(x, rowvar=False, bias=True)
    np.testing.assert_allclose(m.cov().numpy(), ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(m.mean().numpy(), x.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parts_and_folds_give_the_sums_of_whole_rows(dtype) -> None:
    """A-B parts (no B-A product), and more batches than FOLD_EVERY, change no sum."""
    x = torch.from_numpy(_data(7, n=40 * (FOLD_EVERY + 3), d=10)).to(dtype)
    whole, parts = Moments.empty(10), Moments.empty(10, split=4)
    for batch in x.split(40):
        whole.update(batch)
        parts.update_parts(batch[:, :4], batch[:, 4:])
    assert parts.count == whole.count == x.shape[0]
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    # float32 rows: the centred rows are summed in float32, in a different order per layout
    total_tol = 1e-12 if dtype == torch.float64 else 1e-7
    torch.testing.assert_close(parts.total, whole.total, rtol=total_tol, atol=0)
    torch.testing.assert_close(parts.outer, whole.outer, rtol=tol, atol=0)
    assert torch.equal(parts.cov(), parts.cov().T)
    ref = np.cov(x.double().numpy(), rowvar=False, bias=True)
    np.testing.assert_allclose(parts.cov().numpy(), ref, rtol=0, atol=tol * np.abs(ref).max())


def test_parts_that_do_not_fit_the_split_are_an_error() -> None:
    with pytest.raises(ConfigError, match="split=n_a"):
        Moments.empty(5).update_parts(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ConfigError, match="do not fit 2 \\+ 3"):
        Moments.empty(5, split=2).update_parts(torch.zeros(2, 3), torch.zeros(2, 2))


def test_a_copy_of_a_feature_correlates_exactly() -> None:
    """B's features a permuted copy of A's: float32 products still give correlation 1."""
    a = torch.from_numpy(_data(8, n=500, d=16)).float()
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    m = Moments.empty(32, split=16)
    for batch in a.split(64):
        m.update_parts(batch, batch[:, perm])
    corr = m.corr()[:16, 16:]
    assert torch.equal(corr.argmax(dim=1), torch.argsort(perm))
    assert (corr.max(dim=1).values > 1 - 1e-6).all()


def test_adding_accumulations_equals_the_union() -> None:
    x = _data(2)
    left, right = _stream(x[:110], chunks=2), _stream(x[110:], chunks=3)
    whole = _stream(x, chunks=1)
    for both in (left + right, left.merged_with(right)):
        assert both.count == whole.count
        torch.testing.assert_close(both.total, whole.total, rtol=0, atol=1e-9)
        torch.testing.assert_close(both.outer, whole.outer, rtol=0, atol=1e-8)
        torch.testing.assert_close(both.corr(), whole.corr(), rtol=0, atol=1e-12)
    assert left.count == 110  # adding returns a new accumulation, the operands are unchanged


def test_adding_different_widths_is_an_error() -> None:
    with pytest.raises(ConfigError, match="widths 3 and 4"):
        Moments.empty(3) + Moments.empty(4)


def test_constant_and_dead_features_get_finite_zero_correlation() -> None:
    x = _data(3, d=8)
    x[:, 2] = 0.3  # constant, not exactly representable: sums carry rounding error
    x[:, 5] = 0.0  # dead unit
    corr = _stream(x, chunks=4).corr()
    assert torch.isfinite(corr).all()
    for k in (2, 5):
        others = torch.cat([corr[k, :k], corr[k, k + 1 :]])
        assert others.abs().max() < 1e-6
        assert corr[k, k].abs() < 1e-6
    live = [0, 1, 3, 4, 6, 7]
    np.testing.assert_allclose(
        corr[live][:, live].numpy(), np.corrcoef(x[:, live], rowvar=False), atol=1e-10
    )


def test_floor_is_relative_to_the_feature_scale() -> None:
    x = _data(4, d=6)
    small, big = _stream(x * 1e-8, chunks=2).corr(), _stream(x * 1e8, chunks=2).corr()
    torch.testing.assert_close(small, big, rtol=0, atol=1e-9)
    with pytest.raises(ConfigError, match="floor"):
        _stream(x, chunks=1).corr(floor=0.0)


def test_features_zero_on_all_data_correlate_one_with_each_other_and_zero_with_the_rest():
    m = Moments.empty(3)
    m.update(torch.zeros(5, 3))
    assert torch.equal(m.corr(), torch.ones(3, 3, dtype=torch.float64))  # all the same
    rows = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    rows[:, 1] = 0.0
    rows[:, 3] = 0.0
    rows[:, 2] = 5.0  # constant but not zero: unlike the zeros, not merged with them for free
    m = Moments.empty(4)
    m.update(rows)
    corr = m.corr()
    assert corr[1, 3] == corr[3, 1] == 1.0 and corr[0, 0] == 1.0
    assert corr[1, 0].abs() < 1e-6 and corr[2, 1].abs() < 1e-6 and corr[2, 0].abs() < 1e-6
    m.compact()  # the compact form keeps the same correlations
    assert torch.equal(m.corr(), corr.float().double())


def test_state_round_trip_is_exact(tmp_path) -> None:
    m = _stream(_data(5), chunks=5)
    path = tmp_path / "moments.safetensors"
    save_file(m.to_state(), str(path))
    back = Moments.from_state(load_file(str(path)))
    assert back.count == m.count
    assert torch.equal(back.total, m.total) and torch.equal(back.outer, m.outer)
    assert torch.equal(back.corr(), m.corr())
    back.update(torch.zeros(1, m.width))  # the restored sums are its own, not the source's
    assert m.count == back.count - 1


def test_state_with_missing_keys_is_an_error() -> None:
    state = Moments.empty(2).to_state()
    del state["outer"]
    with pytest.raises(ConfigError, match="outer"):
        Moments.from_state(state)


def test_empty_accumulation_is_an_error() -> None:
    m = Moments.empty(4)
    for fn in (m.mean, m.cov, m.corr):
        with pytest.raises(ConfigError, match="no calibration samples reached this merge point"):
            fn()


def test_bad_shapes_are_errors() -> None:
    with pytest.raises(ConfigError, match="positive integer"):
        Moments.empty(0)
    with pytest.raises(ConfigError, match=r"\(n, 4\)"):
        Moments.empty(4).update(torch.zeros(3, 5))


def test_a_float32_correlation_is_the_rounded_float64_one() -> None:
    """corr(dtype=float32) rounds the float64 correlation (computed row block by row block)."""
    m = _stream(_data(9, n=300, d=2100), chunks=3)  # 2,100 features: two row blocks
    full = m.corr()
    assert torch.equal(m.corr(dtype=torch.float32), full.float())
    assert torch.equal(full, full.T)


@pytest.mark.parametrize("mean_shift", [0.0, 1e4])
def test_the_compact_form_keeps_the_correlations_and_rebuilds_the_sums(mean_shift) -> None:
    """Compact: the float32 correlations as they were, the sums rebuilt to their rounding."""
    x = _data(8, n=500) + mean_shift
    m = _stream(x, chunks=5, dtype=torch.float32)
    corr32, cov, outer = m.corr(dtype=torch.float32), m.cov(), m.outer.clone()
    mean, total, nbytes = m.mean(), m.total.clone(), m.nbytes
    m.compact()
    d = x.shape[1]  # float32 (d, d) and three float64 (d,): total, sigma, squares
    assert m.compacted and (nbytes, m.nbytes) == ((d + 1) * d * 8, d * d * 4 + 3 * d * 8)
    assert torch.equal(m.corr(dtype=torch.float32), corr32)  # the matchers' input, unchanged
    assert m.corr(dtype=torch.float32) is m.corr(dtype=torch.float32)  # kept, not recomputed
    assert torch.equal(m.mean(), mean) and torch.equal(m.total, total)
    assert torch.equal(m.squares(), torch.diagonal(outer))  # the diagonal stays exact
    assert torch.equal(torch.diagonal(m.outer), torch.diagonal(outer))
    sigma = torch.sqrt(torch.diagonal(cov))
    # rebuilt from float32 correlations: within their rounding, relative to σ_i σ_j
    assert ((m.cov() - cov).abs() / torch.outer(sigma, sigma)).max() < 1e-7
    assert torch.equal(m.cov(), m.cov().T) and torch.equal(m.outer, m.outer.T)
    torch.testing.assert_close(m.outer, outer, rtol=1e-7, atol=1e-7 * float(outer.abs().max()))
    # another batch rebuilds the float64 sums and goes on accumulating
    extra = torch.from_numpy(_data(9, n=50) + mean_shift).float()
    m.update(extra)
    whole = _stream(np.concatenate([x, extra.double().numpy()]), chunks=6, dtype=torch.float32)
    assert not m.compacted and m.count == whole.count
    torch.testing.assert_close(m.corr(), whole.corr(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("compact", [False, True])
def test_moment_blocks_are_the_covariance_and_the_second_moment_row_by_row(
    compact, monkeypatch
) -> None:
    """Row blocks of cov() and of E[x xᵀ] (cov + μμᵀ), exact on the diagonal, in either form."""
    x = _data(8, n=500) + 3.0
    m = _stream(x, chunks=5, dtype=torch.float32)
    if compact:
        m.compact()
    cov, mu, count = m.cov(), m.mean(), m.count
    monkeypatch.setattr(stats, "row_blocks", lambda width: symmetric.row_blocks(width, 5 * width))
    for centred, expected in ((True, cov), (False, cov + torch.outer(mu, mu))):
        blocks = list(m.moment_blocks(centred))
        got = torch.cat([block for _, block in blocks])
        starts = [rows.start for rows, _ in blocks]
        assert starts == [0, 5, 10] and got.shape == (12, 12)
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
        diagonal = m.squares() / count - (mu * mu if centred else 0.0)
        assert torch.equal(torch.diagonal(got), diagonal)
        got.zero_()  # a block is the caller's: changing it leaves the sums as they were
        assert torch.equal(m.cov(), cov)


def test_a_feature_pass_keeps_its_statistics_compact() -> None:
    from heterogui.models.family import build_network
    from heterogui.models.mlp import MLPConfig
    from heterogui.zip.collect import collect_moments

    torch.manual_seed(0)
    nets = [build_network(MLPConfig(6, (16, 12), 3)) for _ in range(2)]
    batches = list(torch.randn(64, 6).split(16))
    kept = collect_moments(nets, batches)
    sums = collect_moments(nets, batches, compact=False)
    assert kept.keys() == sums.keys() and all(m.compacted for m in kept.values())
    for key, m in sums.items():
        assert not m.compacted
        # formed from the float32 products in place: the float64 sums' correlations, rounded
        torch.testing.assert_close(
            kept[key].corr(dtype=torch.float32), m.corr(dtype=torch.float32), rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("mean_shift", [0.0, 1e4])
def test_compacting_the_products_in_place_equals_folding_them_first(mean_shift) -> None:
    """A pass that never folded compacts its float32 products in place, to float32 rounding.

    No (O, O) float64 sums are formed; large means cancel exactly (only the batches' centres
    minus the overall mean enter), and a constant feature gets correlations of exactly 0.
    """
    x = torch.from_numpy(_data(11, n=600, d=40) + mean_shift).float()
    x[:, 7] = mean_shift + 2.0  # constant: floored σ
    direct, folded = Moments.empty(40, split=25), Moments.empty(40, split=25)
    for rows in x.split(150):
        direct.update(rows)
        folded.update(rows)
    folded.settle()
    squares = torch.diagonal(folded.outer).clone()
    direct.compact()
    assert direct._outer is None and direct.compacted  # straight from the products
    corr, want = direct.corr(dtype=torch.float32), folded.corr(dtype=torch.float32)
    live = torch.ones(40, dtype=torch.bool)
    live[7] = False
    torch.testing.assert_close(corr[live][:, live], want[live][:, live], rtol=0, atol=1e-6)
    assert torch.equal(corr, corr.T) and bool((torch.diagonal(corr)[live] == 1).all())
    assert not corr[7].any()  # the constant feature: exactly uncorrelated (no cancellation)
    torch.testing.assert_close(direct.squares(), squares, rtol=1e-12, atol=0)
    torch.testing.assert_close(direct.cov(), folded.cov(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("width", "split", "blocks"), [(400, None, 3), (550, 250, 10), (400, 100, 6)]
)
def test_wide_parts_multiply_in_halves_and_give_the_same_statistics(width, split, blocks) -> None:
    """Wide parts are multiplied half by half, upper blocks only; the sums and the compacted
    correlations are those of the whole rows (float64 reference, numpy)."""
    x = _data(12, n=900, d=width)
    m32, m64 = Moments.empty(width, split=split), Moments.empty(width, split=split)
    assert len(m32._pending.blocks) == blocks  # A and B halved where each half keeps 96 features
    for rows in torch.from_numpy(x).split(300):
        m32.update(rows.float())
        m64.update(rows)
    ref_cov = np.cov(x, rowvar=False, bias=True)
    np.testing.assert_allclose(
        m64.cov().numpy(), ref_cov, rtol=0, atol=1e-9 * np.abs(ref_cov).max()
    )
    assert torch.equal(m64.cov(), m64.cov().T)
    m32.compact()  # from the float32 products in place: every lower block mirrored
    ref_corr = np.corrcoef(x.astype(np.float32).astype(np.float64), rowvar=False)
    np.testing.assert_allclose(m32.corr().numpy(), ref_corr, rtol=0, atol=2e-6)
    assert torch.equal(m32.corr(), m32.corr().T)


def test_compaction_only_writes_below_the_diagonal() -> None:
    """The products below the diagonal are never computed (``torch.empty``): whatever they
    hold, NaN included, the compacted correlations are the same, finite and symmetric."""
    x = torch.from_numpy(_data(13, n=600, d=500)).float()
    clean, dirty = Moments.empty(500, split=240), Moments.empty(500, split=240)
    for rows in x.split(200):
        clean.update(rows)
        dirty.update(rows)
    below = torch.ones(500, 500, dtype=torch.bool).tril(-1)
    dirty._pending.product[below] = float("nan")
    clean._pending.product[below] = 0.0
    clean.compact()
    dirty.compact()
    assert torch.isfinite(dirty.corr()).all()
    assert torch.equal(dirty.corr(), clean.corr()) and torch.equal(dirty.corr(), dirty.corr().T)


def test_products_per_row_counts_the_blocks_a_batch_computes() -> None:
    narrow = Moments.empty(30, torch.device("cpu"), split=10)
    assert narrow.products_per_row == 10 * 10 + 10 * 20 + 20 * 20  # A-A, A-B, B-B
    assert Moments.empty(30, torch.device("cpu")).products_per_row == 30 * 30
    wide = Moments.empty(800, torch.device("cpu"), split=400)  # each model in two halves of 200
    assert wide.products_per_row == 10 * 200 * 200  # 10 of the 16 blocks
    # the product a batch adds is what the count says: the pending blocks hold exactly those
    rows = torch.randn(7, 30)
    narrow.update_parts(rows[:, :10], rows[:, 10:])
    assert narrow.count * narrow.products_per_row == 7 * 700


def _tall_parts(mean: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4,096 rows of 8 + 8 ReLU-like features (tall: 256 rows per feature), shifted by mean."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(4096, 4, generator=gen, dtype=torch.float64)
    x = (base @ torch.randn(4, 16, generator=gen, dtype=torch.float64)).relu() + mean
    x += 0.1 * torch.randn(4096, 16, generator=gen, dtype=torch.float64)
    return x[:, :8], x[:, 8:]


@pytest.mark.parametrize("mean", [0.0, 1e3])
def test_tall_batches_match_float64_whether_taken_uncentred_or_not(mean) -> None:
    """Tall batches skip centring (shift 0) unless a feature's mean dwarfs its spread."""
    exact = Moments.empty(16, torch.device("cpu"), split=8)
    fast = Moments.empty(16, torch.device("cpu"), split=8)
    for seed in range(3):
        a, b = _tall_parts(mean, seed)
        exact.update_parts(a, b)  # float64 rows: float64 throughout
        fast.update_parts(a.float(), b.float())
    uncentred = all(not s.any() for s in fast._pending.shifts)
    assert uncentred == (mean == 0.0)  # ReLU features: uncentred; mean 1e3: centred per batch
    # float32 products over 4,096 rows a batch: CPUs' BLAS kernels sum in different orders
    # (2.3e-6 measured on an AMD EPYC, under 1e-6 on an Intel Xeon). Taken uncentred, the
    # mean-1e3 features would be off by 0.42.
    assert torch.allclose(fast.corr(), exact.corr(), rtol=0, atol=1e-5)
    assert torch.allclose(fast.mean(), exact.mean(), rtol=1e-6, atol=1e-9)
    zeros = Moments.empty(16, torch.device("cpu"), split=8)
    a, b = _tall_parts(0.0, 0)
    zeros.update_parts(a.float(), torch.zeros_like(b).float())  # dead features pass too
    assert not zeros._pending.shifts[0].any()
