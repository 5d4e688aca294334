"""Placements the workbench collects while nobody waits, so that an alignment switch is instant.

Switching the alignment mode to a placement a session has no statistics for runs both padded
models over the calibration data (MiniLM L6 + L3: about 3 s on 2 cores; SmolLM2: about 18 s).
After every heavy step of a session, the app hands the session to one ``Prefetcher``; its
background thread collects the session's missing ``placements.PREFETCH_MODES`` placements
(``analysis.realign``, the call the switch makes) and gives each to the session
(``placements.adopt_placement``), where the switch finds it; then it matches them at the
session's settings, so that the Neurons tab and the next merge find the matching's costly part
done (the correlations and the greedy zip's runs are kept with the statistics).

It yields to everyone: it starts only after ``quiet_s`` without any event of any session, and
an event that starts meanwhile (any session's) stops its pass at the next batch (the event
shares the machine with the end of that batch only); the placement is tried again once all is
quiet. What it collected counts against the session's kept
placements (``placements.remember``: two, within half the statistics budget).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from heterogui.errors import Cancelled, HeteroguiError
from heterogui.pipeline import Prepared, ZipSettings, match_spaces, realign
from heterogui.progress import guarded
from heterogui.ui.in_flight import InFlight
from heterogui.ui.placements import adopt_placement, missing_placement
from heterogui.ui.session import Session
from heterogui.zip.plan import stop_point

log = logging.getLogger(__name__)


class Prefetcher:
    """A background thread that collects sessions' missing placements when the app is idle.

    The thread starts with the first queued session and ends when none is left.

    lock_for: the lock that serialises a session's heavy steps (the prefetch takes it only to
    hand its result over). events: the app's count of running events (``Resources.in_flight``,
    which wraps every event; None: a count of its own). quiet_s: how long no event may have
    run before a pass starts. ``schedule`` queues a session after its step.
    """

    def __init__(
        self,
        lock_for: Callable[[Session], Any],
        events: InFlight | None = None,
        quiet_s: float = 0.5,
        thread: bool = True,
    ) -> None:
        self._lock_for = lock_for
        self._events = events if events is not None else InFlight()
        self._quiet_s = quiet_s
        self._use_thread = thread
        self._cond = self._events.changed  # woken when an event ends
        self._queue: dict[str, Session] = {}  # by session id, the latest last
        self._working = False  # a pass is running
        self._failed: set[tuple[int, str]] = set()  # (analysis, mode) that raised: not retried
        self._thread: threading.Thread | None = None
        self._closed = False

    def busy(self) -> contextlib.AbstractContextManager[None]:
        """Count an event as running: a pass in progress stops at its next batch."""
        return self._events.track()

    def schedule(self, session: Session) -> None:
        """Queue ``session``: its missing placements are collected once the app is idle."""
        with self._cond:
            if self._closed:
                return
            self._queue.pop(session.sid, None)
            self._queue[session.sid] = session
            if self._use_thread and self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="heterogui-prefetch", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _interrupted(self) -> bool:
        return self._events.running > 0 or self._closed

    def run_once(self) -> bool:
        """Collect one missing placement of the latest queued session; True if one was adopted.

        A session with nothing missing leaves the queue; an interrupted pass leaves it queued.
        """
        with self._cond:
            if not self._queue or self._interrupted():
                return False
            sid, session = next(reversed(self._queue.items()))
            self._working = True
        try:
            return self._collect(sid, session)
        except Exception:  # a bug must not end the thread or retry forever: log, drop it
            log.exception("collecting a placement ahead failed")
            self._dequeue(sid, session)
            return False
        finally:
            with self._cond:
                self._working = False
                self._cond.notify_all()

    def _collect(self, sid: str, session: Session) -> bool:
        with self._lock_for(session):  # read the session while none of its steps changes it
            missing = missing_placement(session)
        if missing is not None and (id(missing[0].similarities), missing[1]) in self._failed:
            missing = None
        if missing is None:
            self._dequeue(sid, session)
            return False
        prepared, mode = missing
        try:
            collected = realign(prepared, mode, None, guarded(None, self._interrupted))
        except Cancelled:
            return False  # an event started: tried again when all is quiet
        except Exception:  # not retried: the switch itself will say what fails
            log.exception("collecting the %s placement ahead failed", mode)
            self._give_up(prepared, mode)
            return False
        with self._lock_for(session):
            adopted = adopt_placement(session, collected)
            settings = session.settings
        if not adopted:  # the session moved on, or nothing to keep: do not collect it again
            self._give_up(prepared, mode)
            return False
        self._warm_matching(collected, settings)
        return True

    def _warm_matching(self, collected: Prepared, settings: ZipSettings) -> None:
        """Match ``collected`` at ``settings``, as the Neurons tab and the next merge will.

        The correlations and the greedy zip's runs are kept with the statistics
        (``pipeline.correlation``, ``zip.greedy``), so after the switch neither is computed
        again; what an event interrupts stays done.
        """
        stop = stop_point(collected.padded_a.graph(), settings)
        # stopped by an event, or knobs the merge will refuse (it says why then)
        with contextlib.suppress(Cancelled, HeteroguiError):
            match_spaces(collected, settings, stop, progress=self._stop_when_interrupted)

    def _stop_when_interrupted(self, _fraction: float) -> None:
        if self._interrupted():
            raise Cancelled("an event started")

    def _give_up(self, prepared: Prepared, mode: str, most: int = 64) -> None:
        """Never collect ``mode`` for ``prepared``'s analysis again (the latest ``most``)."""
        if len(self._failed) >= most:  # ids of analyses long gone may come back
            self._failed.clear()
        self._failed.add((id(prepared.similarities), mode))

    def forget(self, session: Session) -> None:
        """Drop ``session`` from the queue (its tab closed and what it held was released)."""
        self._dequeue(session.sid, session)

    def _dequeue(self, sid: str, session: Session) -> None:
        with self._cond:
            if self._queue.get(sid) is session:
                del self._queue[sid]

    def _wait_for_turn(self) -> bool:
        """Block until ``quiet_s`` of quiet; False (the thread ends) once closed or no work."""
        with self._cond:
            while not self._closed and self._queue:
                running = self._events.running
                quiet_for = time.monotonic() - self._events.last_ended
                if running == 0 and quiet_for >= self._quiet_s:
                    return True
                self._cond.wait(None if running else self._quiet_s - quiet_for)
            self._thread = None  # the next ``schedule`` starts another
            return False

    def _loop(self) -> None:
        while self._wait_for_turn():
            self.run_once()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or running; True if so within ``timeout`` s (tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._working:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        """Stop the thread (a pass in progress stops at its next batch)."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
