"""Values derived from objects that do not change once made, kept while those objects live.

A merge result or a prepared pair is never changed after it is made, so what is derived from it
(sizes, correlations) can be computed once and shown in several places. Entries are keyed by the
object's id and checked against a weak reference, so a dead object's entry is never mistaken for
a new object's; dead objects' entries are dropped at the next insertion (no weakref callbacks, so
nothing runs under the lock from the garbage collector).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class ObjectMemo:
    """Values per (live object, key); with ``limit``, only the most recently used ones."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple, tuple[weakref.ref, Any]] = OrderedDict()
        self._lock = threading.Lock()  # handlers of several sessions run in parallel

    def get(self, obj: Any, key: Hashable, compute: Callable[[], Any]) -> Any:
        """Return the value kept for (``obj``, ``key``), computing it first if there is none."""
        slot = (id(obj), key)
        with self._lock:
            hit = self._items.get(slot)
            if hit is not None and hit[0]() is obj:
                self._items.move_to_end(slot)
                return hit[1]
        value = compute()
        with self._lock:
            for dead in [s for s, (ref, _) in self._items.items() if ref() is None]:
                del self._items[dead]
            self._items[slot] = (weakref.ref(obj), value)
            while self.limit is not None and len(self._items) > self.limit:
                self._items.popitem(last=False)
        return value
