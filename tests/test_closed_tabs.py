"""A closed tab's session releases its models after a grace period (``ui.closed_tabs``)."""

from __future__ import annotations

import threading

from heterogui.ui.closed_tabs import RELEASED_NOTE, ClosedTabs, seen
from heterogui.ui.session import Session


def holding() -> Session:
    session = Session(a="model a", b="model b", demo="pair")
    session.prepared, session.kept = "statistics", {1: "merge"}
    session.history = [{"merge": 1}]
    return session


def test_a_session_whose_tab_stays_away_is_released_once_and_says_so_at_its_next_event():
    forgotten = []
    tabs = ClosedTabs(lambda _s: threading.Lock(), forgotten.append, after_s=0.01)
    session = holding()
    timer = tabs.closed(session)
    timer.join(5)
    assert session.released and forgotten == [session]
    assert (session.a, session.b, session.demo, session.prepared) == (None, None, None, None)
    assert session.kept == {} and session.history == [{"merge": 1}]
    assert seen(session) == RELEASED_NOTE and "load the pair again" in RELEASED_NOTE
    assert seen(session) is None and not session.released and session.closed_at is None


def test_an_event_within_the_grace_period_keeps_everything():
    tabs = ClosedTabs(lambda _s: threading.Lock(), after_s=60)
    session = holding()
    timer = tabs.closed(session)
    stamp = session.closed_at
    timer.cancel()
    assert seen(session) is None  # the tab came back (a dropped connection, a laptop waking)
    assert not tabs.release_if_still_closed(session, stamp)
    assert session.prepared == "statistics" and session.a == "model a" and not session.released
    tabs.closed(session).cancel()
    tabs.closed(session).cancel()  # closed again: only the latest closing releases it
    assert not tabs.release_if_still_closed(session, stamp)
    assert tabs.release_if_still_closed(session, session.closed_at) and session.released


def test_a_release_waits_for_the_sessions_running_step():
    lock = threading.Lock()
    tabs = ClosedTabs(lambda _s: lock, after_s=0.01)
    session = holding()
    with lock:  # a merge of this session is running
        timer = tabs.closed(session)
        timer.join(0.3)
        assert timer.is_alive() and session.prepared == "statistics"
    timer.join(5)
    assert session.released and session.prepared is None
