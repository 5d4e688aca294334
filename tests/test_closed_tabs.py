"""A closed tab's session releases its models after a grace period (``ui.closed_tabs``)."""

from __future__ import annotations

import threading
import time

from heterogui.ui.closed_tabs import RELEASED_NOTE, ClosedTabs
from heterogui.ui.session import Session


def holding() -> Session:
    session = Session(a="model a", b="model b", demo="pair")
    session.prepared, session.kept = "statistics", {1: "merge"}
    session.history = [{"merge": 1}]
    return session


def free(_session: Session) -> threading.Lock:
    return threading.Lock()


def wait_until(check, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.01)
    return check()


def test_a_session_whose_tab_stays_away_is_released_once_and_says_so_at_its_next_event():
    forgotten = []
    tabs = ClosedTabs(free, forgotten.append, after_s=0.01)
    session = holding()
    tabs.closed(session).join(5)
    assert session.released and forgotten == [session]
    assert (session.a, session.b, session.demo, session.prepared) == (None, None, None, None)
    assert session.kept == {} and session.history == [{"merge": 1}]
    assert tabs.seen(session) == RELEASED_NOTE and "load the pair again" in RELEASED_NOTE
    assert tabs.seen(session) is None and not session.released


def test_an_event_or_a_tick_within_the_grace_period_keeps_everything():
    """A dropped connection that comes back: the page ticks (or the user clicks) before the
    release is due, and nothing is released; gradio's page does not reopen its connection,
    so from then on the page's ticks say it is there."""
    for sign in ("event", "tick"):
        tabs = ClosedTabs(free, after_s=0.2, silent_s=60)
        session = holding()
        first = tabs.closed(session)
        tabs.seen(session) if sign == "event" else tabs.alive(session)
        first.join(5)
        assert session.prepared == "statistics" and not session.released
        assert session.connection_lost  # the page lives on without its connection


def test_a_page_that_lost_its_connection_is_released_when_its_ticks_stop():
    """The tab closes after its connection had dropped: no unload comes, its ticks stop."""
    tabs = ClosedTabs(free, after_s=60, silent_s=0.3)
    session = holding()
    tabs.closed(session)  # the drop
    for _ in range(4):  # the page ticks on
        tabs.alive(session)
        time.sleep(0.1)
        assert not session.released
    assert wait_until(lambda: session.released)  # then it closes: its ticks stop


def test_ticks_of_a_page_whose_connection_never_dropped_arm_nothing():
    tabs = ClosedTabs(free, after_s=0.01, silent_s=0.01)
    session = holding()
    tabs.alive(session)
    tabs.seen(session)
    time.sleep(0.1)
    assert session.closed_at is None and not session.connection_lost and not session.released


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
