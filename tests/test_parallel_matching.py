"""Merge points matched side by side: the same matchings, errors and cancels reach the caller."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time

import pytest
import torch

from heterogui.bench.speed_pair import bert_pair, token_id_batches
from heterogui.matching import in_parallel, match_spaces, match_workers
from heterogui.pipeline import ZipSettings, prepare
from heterogui.zip.plan import stop_point


@contextlib.contextmanager
def _threads(n: int):
    """Run the block with ``n`` torch threads (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_merge_points_matched_side_by_side_match_as_one_after_the_other():
    a, b = bert_pair((4, 2), 64, seed=1)
    prep = prepare(a, b, token_id_batches(32, 8, 8), device="cpu")
    settings = ZipSettings()
    stop = stop_point(prep.padded_a.graph(), settings)
    with _threads(1):
        assert match_workers(10) == 1
        alone = match_spaces(prep, settings, stop)
    fractions: list[float] = []
    with _threads(3):
        assert match_workers(10) == 3 and match_workers(2) == 2
        assert match_workers(10, 16384) == 1  # one 1 GiB copy of a correlation at a time
        fresh = dataclasses.replace(prep, stats=copy.deepcopy(prep.stats))  # nothing kept
        together = match_spaces(fresh, settings, stop, progress=fractions.append)
    assert list(together) == list(alone) and len(alone) > 3
    assert all(torch.equal(together[k].groups, alone[k].groups) for k in alone)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_an_error_in_parallel_matching_stops_the_rest_and_reaches_the_caller():
    ran: list[int] = []

    def job(k: int):
        def run():
            if k == 1:
                raise ValueError("bad merge point")
            time.sleep(0.02)  # a merge point's matching takes a while
            ran.append(k)
            return {}

        return run

    with pytest.raises(ValueError, match="bad merge point"):
        in_parallel([job(k) for k in range(40)], lambda _n: None, 2)
    assert len(ran) < 39  # the jobs not started when it failed were dropped

    def cancel(_n: int) -> None:
        raise RuntimeError("cancelled")  # the workbench's Cancel raises in progress

    with pytest.raises(RuntimeError, match="cancelled"):
        in_parallel([job(0), job(2), job(3)], cancel, 2)
