"""Fusion by indexing (``SpaceTransform.along``): the same numbers as the dense M and U."""

from __future__ import annotations

import pytest
import torch

from heterogui.fusion.fuse import SpaceTransform, apply_along
from heterogui.zip.match import Match


def random_match(sizes: tuple[int, ...], width: int, dropped: int, seed: int) -> Match:
    """Return a Match of ``sizes`` features in ``width`` groups: groups of one to several
    members, several of one model in some, and ``dropped`` features in none."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    order = torch.randperm(total, generator=gen)
    kept, gone = order[: total - dropped], order[total - dropped :]
    groups = torch.full((total,), -1, dtype=torch.int64)
    groups[kept[:width]] = torch.arange(width)  # every group gets a member
    groups[kept[width:]] = torch.randint(0, width, (kept.numel() - width,), generator=gen)
    assert (groups[gone] == -1).all()
    first = {}  # number the groups in order of their first member, as a Match requires
    for g in groups.tolist():
        if g >= 0 and g not in first:
            first[g] = len(first)
    renumbered = torch.tensor([first.get(g, -1) for g in groups.tolist()])
    return Match.of_sizes(renumbered, sizes, width)


def scatter(transform: SpaceTransform, model: int, role: str, tensor, dim: int, into=None):
    """The reference: zeros, then every kept feature added into its group in feature order."""
    m = transform.match
    groups = m.groups[m.rows_of(model)]
    keep = torch.nonzero(groups >= 0).reshape(-1)
    index = groups[keep]
    dim = dim % tensor.dim()
    rows = tensor.index_select(dim, keep)
    if role == "out":
        sizes = torch.bincount(m.groups[m.groups >= 0], minlength=m.width)
        weight = (1.0 / sizes.to(torch.float64)).to(tensor.dtype)
        rows = rows * weight[index].reshape(-1, *([1] * (rows.dim() - dim - 1)))
    if into is None:
        shape = list(tensor.shape)
        shape[dim] = m.width
        into = tensor.new_zeros(shape)
    return into.index_add_(dim, index, rows)


@pytest.mark.parametrize(
    "sizes, width, dropped", [((6, 9), 7, 0), ((12, 8), 9, 3), ((5, 7, 4), 8, 2)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_along_gives_the_dense_products_and_the_scatters_numbers(sizes, width, dropped, dtype):
    for seed in range(4):
        match = random_match(sizes, width, dropped, seed)
        transform = SpaceTransform.from_match(match, dtype=dtype)
        gen = torch.Generator().manual_seed(100 + seed)
        for model, n in enumerate(sizes):
            cases = [
                ((n, 5), 0),
                ((5, n), 1),
                ((3, n, 2, 2), 1),
                ((n, 4, 3, 3), 0),
                ((2, 3, n), -1),
            ]
            for shape, dim in cases:
                tensor = torch.randn(shape, generator=gen, dtype=dtype)
                before = tensor.clone()
                for role, dense in (
                    ("out", match.m_of(model, dtype)),
                    ("in", match.u_of(model, dtype).T),
                ):
                    got = transform.along(model, role, tensor, dim)
                    assert torch.equal(got, scatter(transform, model, role, tensor, dim))
                    expected = apply_along(dense, tensor, dim)
                    torch.testing.assert_close(
                        got, expected, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6
                    )
                    total = torch.randn(got.shape, generator=gen, dtype=dtype)
                    reference = scatter(transform, model, role, tensor, dim, into=total.clone())
                    assert transform.along(model, role, tensor, dim, into=total) is total
                    assert torch.equal(total, reference)  # added in place, in the same order
                assert torch.equal(tensor, before)  # the caller's tensor is never written


def test_a_model_with_no_kept_feature_adds_nothing():
    groups = torch.tensor([0, 1, 2, -1, -1])  # A's three features form the groups; B's are dropped
    transform = SpaceTransform.from_match(Match.of_sizes(groups, (3, 2), 3))
    weights = torch.randn(4, 2)
    assert torch.equal(transform.along(1, "in", weights, 1), torch.zeros(4, 3))
    total = torch.randn(3, 4)
    assert torch.equal(transform.along(1, "out", weights.T, 0, into=total.clone()), total)
