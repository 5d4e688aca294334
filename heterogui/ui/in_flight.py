"""The events an app is running, so that it can let them finish before it exits.

A Ctrl-C or SIGTERM stops the server at once, while an event's thread may be inside torch: the
process then aborted as it exited ("terminate called without an active exception", exit 134),
and an export finished after the server had removed what it served left its .zip behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

# how long an app that is stopping waits for running events (a container's stop gives 10 s)
GRACE_S = 8.0


class InFlight:
    """Count the events running now (any session); wait until none is.

    ``changed`` is notified whenever an event ends (the background prefetch waits on it for
    quiet); ``last_ended`` is when the latest one did (``time.monotonic``; 0: none yet).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()  # re-entrant: the prefetch waits on it holding it
        self._running = 0
        self.last_ended = 0.0

    @property
    def changed(self) -> threading.Condition:
        """Return the condition notified when an event ends."""
        return self._cond

    @property
    def running(self) -> int:
        """Return how many events run now."""
        with self._cond:
            return self._running

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count the block as a running event."""
        with self._cond:
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self.last_ended = time.monotonic()
                self._cond.notify_all()

    def wait_done(self, timeout: float = GRACE_S) -> bool:
        """Wait until no event runs; return whether none does within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
