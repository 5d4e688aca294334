"""The workbench collects the other automatic placement while idle, so that a switch runs no pass.

On the zoo's tiny depth pair (SMA and LMA place its layers differently): the statistics collected
ahead are those a switch would collect, the switch then runs no pass and the merge is the same;
an event of any session stops the pass and it runs again when all is quiet; a session that moved
on to another analysis keeps nothing; the app's events drive it end to end.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from heterogui import matching, pipeline
from heterogui.errors import Cancelled
from heterogui.ui import app, events, placements, prefetch, tab_align, tab_models, tab_zip, work
from heterogui.ui.prefetch import Prefetcher
from heterogui.ui.resources import Resources, ZooPairs
from heterogui.ui.session import Session

pytestmark = pytest.mark.ui
PAIR = "tiny-digits-vgg-depth"


@pytest.fixture(scope="module")
def res() -> Resources:
    return Resources(ZooPairs(tiny=True), device="cpu", default_pair=PAIR)


@pytest.fixture()
def session(res: Resources) -> Session:
    s = Session(device="cpu")
    tab_models.on_start(s, res)
    assert s.prepared.alignment.mode == "sma"
    return s


def own_lock(_session: Session) -> threading.Lock:
    return threading.Lock()


def forbid_passes(monkeypatch) -> None:
    """Fail on a feature pass or a correlation formed again (the idle pass did both)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a placement collected ahead must not be computed again")

    monkeypatch.setattr(work, "realign", forbidden)
    monkeypatch.setattr(matching, "space_correlation", forbidden)


def merge(session: Session, res: Resources) -> dict[str, torch.Tensor]:
    stop = session.prepared.padded_a.graph().num_blocks - 1
    tab_zip.on_merge(session, res, "zip", 0.5, 1.0, 0.5, stop, "cpu", "auto")
    return session.result.model.state_dict()


def test_the_idle_pass_collects_what_the_switch_would_and_the_switch_runs_none(
    session, res, monkeypatch
):
    first = session.prepared
    assert placements.missing_placement(session) == (first, "lma")
    cold = pipeline.realign(first, "lma")  # what the switch itself collects
    idle = Prefetcher(own_lock, thread=False)
    idle.schedule(session)
    assert idle.run_once()
    assert session.prepared is first and len(session.visited) == 1
    ahead = session.visited[0]
    placed = lambda p: (p.alignment.positions_a, p.alignment.positions_b)  # noqa: E731
    assert placed(ahead) == placed(cold) != placed(first)
    assert ahead.stats.keys() == cold.stats.keys()
    for key, moments in ahead.stats.items():
        assert torch.equal(moments.corr(), cold.stats[key].corr()), key
    assert placements.missing_placement(session) is None
    assert not idle.run_once() and idle.wait_idle(0)  # nothing left: the session leaves

    forbid_passes(monkeypatch)
    status = tab_align.on_mode(session, res, "lma", None)
    assert "from before, no new pass" in status and session.prepared.alignment.mode == "lma"
    switched = merge(session, res)
    monkeypatch.undo()
    session.prepared = cold
    expected = merge(session, res)
    assert all(torch.equal(switched[k], expected[k]) for k in expected)


def test_an_event_stops_the_pass_and_it_runs_again_when_quiet(session, monkeypatch):
    idle = Prefetcher(own_lock, thread=False)
    real = prefetch.realign
    reports = []

    def event_meanwhile(prepared, mode, manual, progress):
        with idle.busy():  # another session's step starts during the pass
            return real(prepared, mode, manual, lambda *a: reports.append(a) or progress(*a))

    monkeypatch.setattr(prefetch, "realign", event_meanwhile)
    idle.schedule(session)
    assert not idle.run_once()
    assert len(reports) == 1 and session.visited == []  # stopped at its first report
    assert not idle.wait_idle(0)  # still queued
    monkeypatch.setattr(prefetch, "realign", real)
    with idle.busy():
        assert not idle.run_once()  # nothing starts while an event runs
    assert idle.run_once() and session.visited[0].alignment.mode == "lma"


def test_a_session_that_moved_on_keeps_nothing_collected_for_its_old_analysis(session, monkeypatch):
    idle = Prefetcher(own_lock, thread=False)
    real = prefetch.realign
    old = session.prepared

    def new_analysis_meanwhile(prepared, mode, manual, progress):
        collected = real(prepared, mode, manual, progress)
        fresh = dict(old.similarities)  # another analysis: other objects
        session.prepared = dataclasses.replace(old, similarities=fresh)
        return collected

    monkeypatch.setattr(prefetch, "realign", new_analysis_meanwhile)
    idle.schedule(session)
    assert not idle.run_once()
    assert session.visited == []


def test_the_app_collects_ahead_after_a_step_and_the_switch_reuses_it(res, monkeypatch):
    demo = app.build_app(res)
    idle = demo.prefetcher
    assert isinstance(idle, Prefetcher)
    session = Session(device="cpu")
    start = events.event_function(
        tab_models.on_start, res, ("align",), [], 0, own_lock, idle
    )  # the page's load event, as build_app wires it
    out = start(session, None)
    assert out[0] is session and "Loaded demo pair" in out[1]
    try:
        assert idle.wait_idle(120)
        assert [p.alignment.mode for p in session.visited] == ["lma"]
        forbid_passes(monkeypatch)
        assert "from before, no new pass" in tab_align.on_mode(session, res, "lma", None)
        merge(session, res)
    finally:
        idle.close()
    assert not app.build_app(res, prefetch=False).prefetcher


def test_matching_reports_each_merge_point_and_stops_where_it_is_cancelled(session):
    prepared = session.prepared
    stop = prepared.padded_a.graph().num_blocks - 1
    settings = pipeline.ZipSettings(rho=0.25)  # widths not matched before
    fractions = []
    matches = pipeline.match_spaces(prepared, settings, stop, progress=fractions.append)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 1
    assert len(fractions) == len([s for s in matches if s not in prepared.padded_a.graph().dead])

    def cancel(_fraction):
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        pipeline.match_spaces(prepared, pipeline.ZipSettings(rho=0.4), stop, progress=cancel)


def test_a_failing_pass_is_logged_not_retried_and_leaves_the_session_as_it_was(
    session, monkeypatch, caplog
):
    idle = Prefetcher(own_lock, thread=False)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the pass")

    monkeypatch.setattr(prefetch, "realign", broken)
    idle.schedule(session)
    assert not idle.run_once() and "collecting the lma placement ahead failed" in caplog.text
    assert not idle.run_once()  # not tried again: the session leaves the queue
    assert idle.wait_idle(0) and session.visited == []
    monkeypatch.setattr(prefetch, "missing_placement", broken)
    idle.schedule(session)
    assert not idle.run_once() and idle.wait_idle(0)  # any other bug: the session leaves too


def test_a_merge_or_release_during_a_merge_runs_afterwards_and_an_export_does_not(res):
    """Heavy events wait their turn; Merge and slider releases keep the latest trigger (a click
    while a merge runs merges the settings changed meanwhile), Export ignores a double click."""
    demo = app.build_app(res, prefetch=False)
    modes = {d["api_name"]: d["trigger_mode"] for d in demo.config["dependencies"]}
    assert modes["merge"] == modes["remerge"] == "always_last"
    assert modes["export"] == modes["align"] == "once"
    assert demo.delete_cache == app.DELETE_CACHE  # the served copies of exports do not pile up
