"""Tests of minibatch unbiased linear CKA (heterogui.align.cka)."""

from __future__ import annotations

import pytest
import torch

from heterogui.align.cka import CKAAccumulator, cka_matrix, gram, hsic_matrix, linear_cka
from heterogui.errors import ConfigError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _orthogonal(gen: torch.Generator, d: int) -> torch.Tensor:
    q, r = torch.linalg.qr(_randn(gen, d, d))
    return q * torch.sign(torch.diagonal(r))


def _layers(gen: torch.Generator, n: int, dims: list[int]) -> list[torch.Tensor]:
    """Build related layers: each is a random linear map of a shared base plus noise."""
    base = _randn(gen, n, 16)
    return [base @ _randn(gen, 16, d) + 0.5 * _randn(gen, n, d) for d in dims]


def test_gram_flattens_and_is_float64() -> None:
    x = torch.randn(6, 2, 3, generator=_gen(0))
    k = gram(x)
    assert k.shape == (6, 6) and k.dtype == torch.float64
    flat = x.reshape(6, -1).double()
    assert torch.equal(gram(x.double()), flat @ flat.T)  # float64 features: float64 products
    # float32 features: float32 products, within their rounding of the float64 ones
    torch.testing.assert_close(k, flat @ flat.T, rtol=1e-6, atol=1e-6)
    wide = torch.randn(8, 40_000, generator=_gen(2)).relu_() + 1.0  # a large mean, many terms
    exact = wide.double() @ wide.double().T
    torch.testing.assert_close(gram(wide), exact, rtol=2e-6, atol=0)
    assert torch.equal(gram(wide.bfloat16()), gram(wide.bfloat16().float()))


def test_self_similarity_is_one() -> None:
    x = _randn(_gen(1), 200, 30)
    assert abs(linear_cka(x, x) - 1.0) < 1e-10
    mat = cka_matrix([x], [x])
    assert abs(float(mat[0, 0]) - 1.0) < 1e-10


def test_symmetric() -> None:
    x, y = _layers(_gen(2), 64, [12, 40])
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)
    ab = cka_matrix([x, y], [y, x, x])
    ba = cka_matrix([y, x, x], [x, y])
    torch.testing.assert_close(ab, ba.T, rtol=0, atol=1e-12)


def test_invariant_to_orthogonal_transform_and_isotropic_scaling() -> None:
    gen = _gen(3)
    x, y = _layers(gen, 80, [20, 25])
    ref = linear_cka(x, y)
    q = _orthogonal(gen, 20)
    assert linear_cka(x @ q, y) == pytest.approx(ref, abs=1e-10)
    assert linear_cka(3.7 * x, 0.01 * y) == pytest.approx(ref, abs=1e-10)
    mat = cka_matrix([x @ q * 5.0], [y @ _orthogonal(gen, 25)], batch_size=20)
    assert float(mat[0, 0]) == pytest.approx(float(cka_matrix([x], [y], batch_size=20)), abs=1e-10)


def test_invariant_to_feature_translation() -> None:
    # The U-statistic cancels row and column offsets of the Gram, so shifting all inputs by the
    # same vector changes nothing (up to the cancellation of the larger Gram entries).
    gen = _gen(4)
    x, y = _layers(gen, 50, [10, 10])
    shift = 3.0 * _randn(gen, 1, 10)
    assert linear_cka(x + shift, y) == pytest.approx(linear_cka(x, y), abs=1e-8)


def test_values_bounded_for_random_inputs() -> None:
    gen = _gen(5)
    for n in (4, 5, 8, 30):
        feats_a = [_randn(gen, n, d) for d in (3, 7)]
        feats_b = [_randn(gen, n, d) for d in (2, 9, 1)]
        mat = cka_matrix(feats_a, feats_b)
        # The unbiased estimator may dip below 0 for unrelated layers, never beyond [-1, 1].
        assert bool(((mat >= -1.0) & (mat <= 1.0)).all())
    related = cka_matrix(_layers(gen, 100, [8, 30]), _layers(gen, 100, [5]))
    assert bool(((related >= -1.0) & (related <= 1.0)).all())
    x = _randn(gen, 60, 10)
    y = x @ _randn(gen, 10, 6) + 0.1 * _randn(gen, 60, 6)
    value = float(cka_matrix([x], [y]))
    assert 0.0 < value <= 1.0


def test_batched_matrix_equals_per_pair_reference() -> None:
    gen = _gen(6)
    n = 40
    feats_a = _layers(gen, n, [5, 300, 17])
    feats_b = _layers(gen, n, [9, 64]) + [_randn(gen, n, 3, 4)]
    expected = torch.tensor(
        [[linear_cka(a, b) for b in feats_b] for a in feats_a], dtype=torch.float64
    )
    torch.testing.assert_close(cka_matrix(feats_a, feats_b), expected, rtol=0, atol=1e-10)
    acc = CKAAccumulator()
    acc.update(torch.stack([gram(a) for a in feats_a]), torch.stack([gram(b) for b in feats_b]))
    torch.testing.assert_close(acc.matrix(), expected, rtol=0, atol=1e-10)


def test_hsic_matrix_equals_explicit_formula() -> None:
    gen = _gen(7)
    n = 12
    grams_a = torch.stack([gram(x) for x in _layers(gen, n, [4, 6])])
    grams_b = torch.stack([gram(x) for x in _layers(gen, n, [3, 5, 8])])
    ones = torch.ones(n, 1, dtype=torch.float64)
    got = hsic_matrix(grams_a, grams_b)
    assert got.shape == (2, 3)
    for i, k in enumerate(grams_a):
        for j, g in enumerate(grams_b):
            k0 = k - torch.diag(torch.diag(k))
            g0 = g - torch.diag(torch.diag(g))
            value = (
                torch.trace(k0 @ g0)
                + (ones.T @ k0 @ ones) * (ones.T @ g0 @ ones) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * (ones.T @ k0 @ g0 @ ones)
            ) / (n * (n - 3))
            assert float(got[i, j]) == pytest.approx(float(value), rel=1e-12, abs=1e-12)


def test_accumulator_equals_manual_averaging() -> None:
    gen = _gen(8)
    n, sizes = 90, [30, 30, 22, 8]
    feats_a = _layers(gen, n, [6, 11])
    feats_b = _layers(gen, n, [4, 20, 7])
    acc = CKAAccumulator()
    sum_ab = torch.zeros(2, 3, dtype=torch.float64)
    sum_aa = torch.zeros(2, dtype=torch.float64)
    sum_bb = torch.zeros(3, dtype=torch.float64)
    start = 0
    for size in sizes:
        sl = slice(start, start + size)
        start += size
        ga = torch.stack([gram(a[sl]) for a in feats_a])
        gb = torch.stack([gram(b[sl]) for b in feats_b])
        acc.update(ga, gb)
        sum_ab += hsic_matrix(ga, gb)
        sum_aa += torch.diagonal(hsic_matrix(ga, ga))
        sum_bb += torch.diagonal(hsic_matrix(gb, gb))
    assert acc.batches == len(sizes)
    expected = sum_ab / torch.sqrt(sum_aa[:, None] * sum_bb[None, :])
    torch.testing.assert_close(acc.matrix(), expected, rtol=0, atol=1e-12)


def test_cka_matrix_batches_fold_small_remainder() -> None:
    gen = _gen(9)
    feats_a = _layers(gen, 42, [5])
    feats_b = _layers(gen, 42, [7])
    acc = CKAAccumulator()
    for sl in (slice(0, 20), slice(20, 42)):  # 42 = 20 + 20 + 2: the 2 join the second batch
        acc.update(gram(feats_a[0][sl])[None], gram(feats_b[0][sl])[None])
    torch.testing.assert_close(
        cka_matrix(feats_a, feats_b, batch_size=20), acc.matrix(), rtol=0, atol=1e-12
    )


def test_small_batches_raise_config_error() -> None:
    x = torch.randn(3, 5, generator=_gen(10))
    with pytest.raises(ConfigError, match="at least 4 inputs per batch, got 3"):
        linear_cka(x, x)
    with pytest.raises(
        ConfigError, match="calibrate on at least 4 inputs with a batch_size of at least 4"
    ):
        hsic_matrix(gram(x)[None], gram(x)[None])
    with pytest.raises(ConfigError, match="at least 4 inputs"):
        cka_matrix([x], [x])
    y = torch.randn(10, 2, generator=_gen(11))
    with pytest.raises(ConfigError, match="batch_size=2"):
        cka_matrix([y], [y], batch_size=2)


def test_accumulator_rejects_changing_layers_and_empty_use() -> None:
    gen = _gen(12)
    grams = torch.stack([gram(_randn(gen, 8, 3)) for _ in range(3)])
    acc = CKAAccumulator()
    with pytest.raises(ConfigError, match="call update"):
        acc.matrix()
    acc.update(grams[:2], grams)
    with pytest.raises(ConfigError, match=r"earlier batches had \(2, 3\)"):
        acc.update(grams, grams)
    with pytest.raises(ConfigError, match="different batch sizes"):
        hsic_matrix(grams, grams[:, :6, :6])
    with pytest.raises(ConfigError, match="different numbers of inputs"):
        cka_matrix([_randn(gen, 8, 2)], [_randn(gen, 9, 2)])


def test_constant_layer_gives_zero() -> None:
    gen = _gen(13)
    x = _randn(gen, 20, 4)
    const = torch.ones(20, 3, dtype=torch.float64) * 2.5
    mat = cka_matrix([x, torch.zeros(20, 2)], [x, const])
    assert float(mat[0, 0]) == pytest.approx(1.0, abs=1e-10)
    assert float(mat[0, 1]) == 0.0 and float(mat[1, 0]) == 0.0 and float(mat[1, 1]) == 0.0
    assert linear_cka(x, torch.zeros(20, 2)) == 0.0
    assert linear_cka(const, x) == 0.0
