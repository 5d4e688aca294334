"""Tests of the greedy zip run side by side on the model's device (heterogui.zip.greedy_device):
the same groups as the NumPy loop, ties and budgets included, for every merge point of a batch.
"""

from __future__ import annotations

import pytest
import torch

from heterogui import matching
from heterogui.bench.speed_pair import bert_pair, token_id_batches
from heterogui.errors import MatcherError
from heterogui.pipeline import prepare, stop_point
from heterogui.zip import greedy, greedy_device
from heterogui.zip.matchers import ZipJob, zip_match, zip_side_by_side
from heterogui.zip.plan import ZipSettings

CPU = torch.device("cpu")


def _correlation(n: int, seed: int, ties: bool) -> torch.Tensor:
    """Return a float32 correlation of n features; ``ties``: rounded to quarters (many ties),
    with copies of one feature (merged undamped)."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(80, 6, generator=gen)
    x = latent @ torch.randn(6, n, generator=gen) + torch.randn(80, n, generator=gen)
    if ties:
        x[:, 1] = x[:, 0]
        x[:, -1] = x[:, 0]
    c = torch.corrcoef(x.T)
    return (c * 4).round() / 4 if ties else c


def _jobs(sizes: tuple[int, int], seed: int, ties: bool) -> list[ZipJob]:
    """Return zips of one correlation (fresh copies: nothing reused) at several knobs."""
    o = sum(sizes)
    corr = _correlation(o, seed, ties)
    widths = (max(sizes), max(sizes) + 1, o // 2 + 1, o - 1)
    knobs = ((0.5, 1.0), (0.3, 0.5), (1.0, 0.0))
    return [ZipJob(corr.clone(), sizes, w, a, b) for w in widths for a, b in knobs]


def _reference(job: ZipJob) -> torch.Tensor | str:
    """Return the NumPy loop's groups of a fresh copy of ``job``, or its error's message."""
    try:
        return zip_match(job.corr.clone(), *job.sizes, job.width, job.alpha, job.beta).groups
    except MatcherError as error:
        return str(error)


@pytest.mark.parametrize("sizes", [(7, 5), (16, 16), (20, 13)])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("stale_rows", [32, 1])
def test_side_by_side_zips_give_the_numpy_loops_groups(sizes, ties, stale_rows, monkeypatch):
    """stale_rows 1: most steps have more rows to recompute than a step takes (the fallback)."""
    monkeypatch.setattr(greedy_device, "STALE_ROWS", stale_rows)
    jobs = _jobs(sizes, seed=sum(sizes), ties=ties)
    expected = [_reference(job) for job in jobs]
    reachable = [k for k, e in enumerate(expected) if not isinstance(e, str)]
    assert len(reachable) >= 8
    # all at once (one lock-step batch, different widths and budgets), then one at a time
    together = zip_side_by_side([jobs[k] for k in reachable], CPU, memory=2**30)
    fresh = [ZipJob(j.corr.clone(), j.sizes, j.width, j.alpha, j.beta) for j in jobs]
    alone = [zip_side_by_side([fresh[k]], CPU, memory=1)[0] for k in reachable]
    for k, a, b in zip(reachable, together, alone, strict=True):
        assert torch.equal(a.groups, expected[k]), (jobs[k].width, jobs[k].alpha, jobs[k].beta)
        assert torch.equal(b.groups, expected[k])


def test_merge_points_of_one_size_and_two_precisions_keep_their_own() -> None:
    """A float64 correlation zips in float64 beside a float32 one, as zip_match zips each.

    Pairs (0, 3) and (1, 2) differ by 1e-12: float64 merges (1, 2) first, float32 sees a tie
    and merges the row-major first, (0, 3).
    """
    corr = torch.full((4, 4), 0.1, dtype=torch.float64)
    corr.fill_diagonal_(1.0)
    corr[0, 3] = corr[3, 0] = 0.9
    corr[1, 2] = corr[2, 1] = 0.9 + 1e-12
    jobs = [ZipJob(corr.float(), (2, 2), 3), ZipJob(corr.clone(), (2, 2), 3)]
    expected = [_reference(job) for job in jobs]
    assert expected[0].tolist() == [0, 1, 2, 0] and expected[1].tolist() == [0, 1, 1, 2]
    found = zip_side_by_side(jobs, CPU, memory=2**30)
    for match, groups in zip(found, expected, strict=True):
        assert torch.equal(match.groups, groups)


def test_a_width_no_allowed_pair_reaches_raises_the_numpy_loops_error() -> None:
    job = ZipJob(_correlation(10, 3, False), (7, 3), 6, 0.5, 0.0)  # beta 0: 3 cross merges only
    ok = ZipJob(_correlation(10, 4, False), (7, 3), 8, 0.5, 1.0)
    expected = _reference(job)
    assert isinstance(expected, str) and "smallest reachable width is 7" in expected
    assert not isinstance(_reference(ZipJob(job.corr.clone(), (7, 3), 7, 0.5, 0.0)), str)
    with pytest.raises(MatcherError) as raised:
        zip_side_by_side([ok, job], CPU, memory=2**30)
    assert str(raised.value) == expected


def test_more_than_two_models_are_refused_before_any_loop() -> None:
    jobs = [ZipJob(_correlation(12, 1, False), (4, 4, 4), 6)]
    with pytest.raises(MatcherError, match="zips two models' features, got widths"):
        zip_side_by_side(jobs, CPU, memory=2**30)


def test_a_device_loops_run_is_kept_for_the_next_widths(monkeypatch) -> None:
    corr = _correlation(40, 5, False)
    expected = _reference(ZipJob(corr.clone(), (24, 16), 30))
    first = zip_side_by_side([ZipJob(corr, (24, 16), 24)], CPU, memory=2**30)[0]
    loops = []
    monkeypatch.setattr(greedy.GreedyZip, "run", lambda self, width: loops.append(width))
    narrower = zip_match(corr, 24, 16, 30)  # fewer steps, the same budgets' prefix: no loop
    assert loops == []
    assert torch.equal(narrower.groups, expected)
    assert torch.equal(zip_match(corr, 24, 16, 24).groups, first.groups)
    assert loops == []


@pytest.fixture(scope="module")
def bert_prepared():
    """A two-layer and a one-layer BERT encoder (hidden 64, 4 heads, MLP 256), analysed."""
    a, b = bert_pair((2, 1), 64)
    return prepare(a, b, token_id_batches(32, 16, 16), device="cpu")


def test_a_merge_zipped_on_the_device_matches_every_merge_point_alike(
    bert_prepared, monkeypatch
) -> None:
    settings = ZipSettings()
    stop = stop_point(bert_prepared.padded_a.graph(), settings)
    numpy_loops = matching.match_spaces(bert_prepared, settings, stop)
    zipped = []
    monkeypatch.setattr(matching, "ZIP_SIDE_BY_SIDE", {"cpu"})
    monkeypatch.setattr(
        matching,
        "zip_side_by_side",
        lambda jobs, dev, memory: zipped.extend(jobs) or zip_side_by_side(jobs, dev, memory),
    )
    monkeypatch.setattr(greedy, "_RUNS", greedy.ObjectMemo(limit=256))  # no kept runs
    side_by_side = matching.match_spaces(bert_prepared, settings, stop)
    assert len(zipped) >= 2  # the MLP and the residual stream's merge points
    assert list(side_by_side) == list(numpy_loops)
    for space, match in numpy_loops.items():
        assert torch.equal(side_by_side[space].groups, match.groups), space


@pytest.mark.gpu
@pytest.mark.parametrize("graphs", [True, False])
def test_side_by_side_zips_on_cuda_give_the_numpy_loops_groups(graphs, monkeypatch) -> None:
    monkeypatch.setattr(greedy_device, "CUDA_GRAPHS", graphs)
    jobs = _jobs((300, 212), seed=1, ties=False) + _jobs((300, 212), seed=2, ties=True)
    expected = [_reference(job) for job in jobs]
    reachable = [k for k, e in enumerate(expected) if not isinstance(e, str)]
    found = zip_side_by_side([jobs[k] for k in reachable], torch.device("cuda"), 2**30)
    for k, match in zip(reachable, found, strict=True):
        assert torch.equal(match.groups, expected[k]), (jobs[k].width, jobs[k].alpha)
