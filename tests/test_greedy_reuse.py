"""Tests of the zip's kept runs (heterogui.zip.greedy): a re-zip to another width of the same
correlation reuses the steps an earlier run shares with it, and gives a zip from scratch's groups.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heterogui.errors import MatcherError
from heterogui.zip import greedy
from heterogui.zip.matchers import zip_group, zip_group_naive, zip_match
from heterogui.zip.widths import group_width, within_model_budget


@pytest.fixture
def counted(monkeypatch):
    """Count the zips that ran the loop, and the steps replayed before it."""
    seen = {"loops": 0, "replayed": []}
    run, replay = greedy.GreedyZip.run, greedy.GreedyZip.replay

    def counting_run(self, width):
        seen["loops"] += 1
        return run(self, width)

    def counting_replay(self, steps):
        seen["replayed"].append(len(steps))
        return replay(self, steps)

    monkeypatch.setattr(greedy.GreedyZip, "run", counting_run)
    monkeypatch.setattr(greedy.GreedyZip, "replay", counting_replay)
    return seen


def _correlation(sizes: tuple[int, ...], seed: int, dtype=torch.float32) -> torch.Tensor:
    """Return the correlation of features of len(sizes) models driven by shared latents."""
    gen = torch.Generator().manual_seed(seed)
    o = sum(sizes)
    latent = torch.randn(120, 8, generator=gen, dtype=torch.float64)
    x = latent @ torch.randn(8, o, generator=gen, dtype=torch.float64)
    x = x + 0.8 * torch.randn(120, o, generator=gen, dtype=torch.float64)
    return torch.corrcoef(x.T).to(dtype)


def _orders(widths: list[int], seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [sorted(widths), sorted(widths, reverse=True), list(rng.permutation(widths))]


@pytest.mark.parametrize("sizes", [(24, 24), (20, 33), (12, 15, 10)])
@pytest.mark.parametrize(("alpha", "beta"), [(0.5, 1.0), (0.3, 0.5), (1e-4, 0.075), (0.5, 0.0)])
def test_rezipping_one_correlation_gives_the_groups_of_a_zip_from_scratch(
    sizes, alpha, beta, counted
) -> None:
    o = sum(sizes)
    rhos = (1.0, 0.9, 0.75, 0.6, 0.5, 0.35, 0.2, 0.1)
    widths = sorted({group_width(sizes, rho) for rho in rhos} | {o - 1, o})
    expected = {}
    for width in widths:
        try:
            expected[width] = zip_group_naive(_correlation(sizes, 1), sizes, width, alpha, beta)
        except MatcherError as err:
            expected[width] = str(err)
    for k, order in enumerate(_orders(widths, seed=len(sizes))):
        corr = _correlation(sizes, 1, torch.float32 if k % 2 else torch.float64)
        for width in order:
            try:
                got = zip_group(corr, sizes, width, alpha, beta)
            except MatcherError as err:
                assert str(err) == expected[width], (order, width)
            else:
                assert torch.equal(got.groups, expected[width].groups), (order, width)
    # kept runs were used: some zips ran no loop, some replayed steps before theirs
    assert counted["loops"] < 3 * len(widths)
    assert any(n > 0 for n in counted["replayed"]) or beta == 0


def test_a_narrower_width_of_a_kept_run_runs_no_loop(counted) -> None:
    corr = _correlation((64, 64), 2)
    zip_match(corr, 64, 64, 64)  # rho 1, the longest run
    assert counted["loops"] == 1
    (run,) = greedy.kept_runs(corr, (64, 64), 0.5)
    owner = np.repeat([0, 1], 64)
    # the most merges whose steps all lie in what the run shares with their budgets
    merges = max(
        k
        for k in range(1, 65)
        if greedy.shared_steps(run, [within_model_budget(128, 128 - k, 64, 1.0)] * 2, owner) >= k
    )
    assert merges >= 8
    got = zip_match(corr, 64, 64, 128 - merges)
    assert counted["loops"] == 1  # read off the kept steps
    assert torch.equal(got.groups, zip_group_naive(corr, (64, 64), 128 - merges).groups)


def test_a_correlation_modified_in_place_is_zipped_afresh(counted) -> None:
    corr = _correlation((30, 30), 3)
    zip_match(corr, 30, 30, 30)
    other = _correlation((30, 30), 4)
    corr.copy_(other)  # same object, new values: its version counter moved
    got = zip_match(corr, 30, 30, 40)
    assert counted["loops"] == 2 and counted["replayed"] == []
    assert torch.equal(got.groups, zip_group_naive(other, (30, 30), 40).groups)


def test_shared_steps_stop_where_the_budgets_mask_differently() -> None:
    owner = np.array([0, 0, 0, 1, 1, 1])
    # steps: within A (0<-1), across (0<-3), within B (4<-5), within A (0<-2)
    run = greedy.Run(np.array([[0, 1], [0, 3], [4, 5], [0, 2]]), (2, 2))
    assert greedy.shared_steps(run, [2, 2], owner) == 4  # the same budgets
    # A's budget of 1: A is masked after step 0 here, not in the run: steps 0 only
    assert greedy.shared_steps(run, [1, 2], owner) == 1
    # B's budget of 1: B masked after step 2 here (its one within merge), not in the run
    assert greedy.shared_steps(run, [2, 1], owner) == 3
    # a larger budget: the run masked A after step 3 (two within merges), this zip does not
    assert greedy.shared_steps(run, [3, 2], owner) == 4
    assert greedy.shared_steps(run, [0, 2], owner) == 0  # masked from the start here only


def test_an_inference_mode_correlation_zips_without_kept_runs(counted) -> None:
    with torch.inference_mode():
        corr = _correlation((20, 20), 5)
    for width in (20, 30, 20):
        got = zip_match(corr, 20, 20, width)
        assert torch.equal(got.groups, zip_group_naive(corr, (20, 20), width).groups)
    assert counted["loops"] == 3 and greedy.kept_runs(corr, (20, 20), 0.5) == []
