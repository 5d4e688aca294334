"""Read-only things that every session of one app may share, built once and cached.

``Resources`` is created by ``app.main`` (never at import) and passed to the handlers. It holds
the demo pairs of the zoo, their calibration and evaluation data, and the prepared statistics of
each demo pair, so that a new browser session shows the demo pair at once. Sessions only read
these objects: a session that realigns or re-merges makes new objects from them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from heterogui.cache import cache_dir
from heterogui.progress import Progress
from heterogui.sources import registry as sources
from heterogui.sources.base import Loaded
from heterogui.sources.zoo import DECODER_PAIR, DECODER_PREFIX, zoo_ref
from heterogui.tasks import Calibration, Evaluation
from heterogui.ui.export_guard import ExportGuard
from heterogui.ui.in_flight import InFlight
from heterogui.zoo import decoder_pair, decoder_training
from heterogui.zoo.pairs import build_zoo
from heterogui.zoo.registry import PAIRS, TINY_PAIRS, pair_spec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoPair:
    """Two trained models of one family on different parts of one dataset."""

    name: str
    description: str
    a: Loaded
    b: Loaded


class PairSource(Protocol):
    """Where demo pairs come from (the zoo, or a stand-in in tests)."""

    def names(self) -> list[tuple[str, str]]:
        """Return (name, one-line description) of every pair."""

    def load(self, name: str, progress: Progress | None = None) -> DemoPair:
        """Return the pair, building it first if needed."""


class ZooPairs:
    """Demo pairs from the built-in zoo (built offline on first use, then cached).

    tiny: offer the zoo's tiny pairs (seconds to build; for tests) instead of the demo pairs.
    """

    def __init__(self, tiny: bool = False):
        self.tiny = tiny

    def names(self) -> list[tuple[str, str]]:
        """Return (name, description) of every zoo pair (and of the decoder pair)."""
        registry = TINY_PAIRS if self.tiny else PAIRS
        pairs = [(name, spec.description) for name, spec in registry.items()]
        return pairs if self.tiny else [*pairs, (DECODER_PAIR, decoder_pair.description())]

    def load(self, name: str, progress: Progress | None = None) -> DemoPair:
        """Return zoo pair ``name``, trained first (with progress) when not built yet.

        Raises:
            ConfigError: unknown pair.
            ModelLoadError: the decoder pair without the package of SmolLM2's tokenizer.
        """
        if name == DECODER_PAIR and not self.tiny:
            decoder_training.decoder_pair_folders(progress=progress)  # trains them on first use
            a, b = (sources.load(f"{DECODER_PREFIX}{w}") for w in ("a", "b"))
            return DemoPair(name, decoder_pair.description(), a, b)
        build_zoo([name], progress=progress)
        a, b = (sources.load(zoo_ref(name, w)) for w in ("a", "b"))
        return DemoPair(name, pair_spec(name).description, a, b)


class Resources:
    """Shared, read-only caches of one app: demo pairs, inputs, prepared demo pairs.

    Thread-safe: a value is built once even when several sessions ask for it together.
    """

    def __init__(
        self,
        source: PairSource | None = None,
        device: str = "auto",
        default_pair: str | None = None,
        export_root: str | Path | None = None,
    ):
        self.source: PairSource = source or ZooPairs()
        self.device = device
        # Exports are written below this folder only (the page refuses paths outside it).
        self.export_root = Path(export_root or cache_dir("exports")).expanduser().resolve()
        self._default_pair = default_pair
        # the mutable shared things: which open session wrote which export (export_guard), and
        # the events running now (an app that stops lets them finish first)
        self.exports = ExportGuard()
        self.in_flight = InFlight()
        self._lock = threading.Lock()
        self._key_locks: dict[Any, threading.Lock] = {}
        self._values: dict[Any, Any] = {}

    def _cached(self, key: Any, build: Callable[[], Any]) -> Any:
        """Return the value for ``key``, building it once (other callers wait for it)."""
        with self._lock:
            if key in self._values:
                return self._values[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._values:
                    return self._values[key]
            value = build()
            with self._lock:
                self._values[key] = value
            return value

    def pair_names(self) -> list[tuple[str, str]]:
        """Return (name, description) of the demo pairs."""
        return self._cached(("names",), self.source.names)

    def default_pair(self) -> str | None:
        """Return the pair a new session starts with (None when there is none)."""
        names = [n for n, _ in self.pair_names()]
        if self._default_pair in names:
            return self._default_pair
        return names[0] if names else None

    def pair(self, name: str, progress: Progress | None = None) -> DemoPair:
        """Return demo pair ``name`` (built on first use)."""
        return self._cached(("pair", name), lambda: self.source.load(name, progress))

    def calibration(self, key: Any, build: Callable[[], Calibration]) -> Calibration:
        """Return the calibration data of a demo pair cached under ``key`` (built once)."""
        return self._cached(("calibration", key), build)

    def evaluation(self, key: Any, build: Callable[[], Evaluation]) -> Evaluation:
        """Return the evaluation data cached under ``key`` (built once)."""
        return self._cached(("evaluation", key), build)

    def baseline(self, key: Any, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Return the scores of A, B and their ensemble cached under ``key`` (built once)."""
        return self._cached(("baseline", key), build)

    def prepared(self, key: Any, build: Callable[[], Any]) -> Any:
        """Return the prepared statistics cached under ``key`` (built once by ``build``)."""
        return self._cached(("prepared", key), build)
