"""The per-browser-session state of the workbench, held in a ``gr.State``.

One ``Session`` per browser tab: two users never share one. A fresh session holds only plain
values (gradio deep-copies the initial value of a State); heavy objects (models, cached
statistics) are attached by the handlers. Objects reached through a session that came from the
shared ``Resources`` (zoo models, prepared demo pairs) are never modified in place.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from heterogui.cache import cache_dir, cache_path
from heterogui.config import DataRef
from heterogui.errors import Cancelled
from heterogui.folders import clean_stale
from heterogui.pipeline import MergeResult, Prepared, ZipSettings
from heterogui.sources.base import Loaded, Pair
from heterogui.tasks import Calibration, Evaluation, Task, task_of

# where the workbench's sessions keep their files: temporary siblings of this name in the
# cache, named with the app's process id, so that ``folders.clean_stale`` removes a killed
# app's as it removes a killed build's
SESSION_FILES = ("sessions", "session")


def remove_stale_sessions() -> None:
    """Remove the session folders of workbench processes that have died (killed, say)."""
    target = cache_path(*SESSION_FILES)
    clean_stale(target)
    clean_stale(target, prefix=".")  # as versions before 2026-12-06 named them (".tmp-PID-...")


@dataclass
class Session:
    """Everything one browser session has loaded, computed and merged.

    demo: the demo pair loaded as A and B (None: models chosen one by one).
    data: the calibration data the user chose (None: the task's default).
    calibration / evaluation: the data drawn for the current analysis.
    prepared: cached statistics of the pair (steps 1-4); re-merges start from it.
    visited: the statistics of placements this analysis had before or collected ahead while
        idle (the latest first), so that switching to one does not run the models again
        (``ui.placements``).
    baseline: scores of "a", "b" and "ensemble" (computed once per analysis).
    history: one row per merge of this session (settings, sizes, scores).
    cancel_requested: set by the Cancel button; long steps check it between stages.
    running: a heavy step of this session is running (what Cancel can stop); waiting: one
    waits for another user's step to end (``ui.heavy_slots``: a Cancel drops it); cannot_stop:
    what the running step does now that Cancel cannot stop (None: it can).
    cancelled_at: when a heavy step last stopped at a Cancel (``events.run_step`` drops a step
    queued behind it).
    closed_at: when the tab's connection ended and its release was set (``time.monotonic``;
    None: none pending); released: what the session held was released since;
    connection_lost: the page lives on after its connection ended (``ui.closed_tabs``).
    """

    sid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    a: Loaded | None = None
    b: Loaded | None = None
    demo: str | None = None
    data: DataRef | None = None
    calibration: Calibration | None = None
    evaluation: Evaluation | None = None
    device: str = "auto"
    prepared: Prepared | None = None
    visited: list[Prepared] = field(default_factory=list)  # earlier alignments' statistics
    settings: ZipSettings = field(default_factory=ZipSettings)
    result: MergeResult | None = None
    merge_count: int = 0
    merged_metrics: Any = None
    reference_sizes: dict[str, Any] | None = None
    merged_size: dict[str, Any] | None = None
    baseline: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    neuron_space: str | None = None
    samples: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    sample_seed: int = 0
    sweep: list[dict[str, Any]] = field(default_factory=list)
    sweep_key: Any = None
    last_export: str | None = None
    exported_merge: int | None = None  # the merge (its number) the last export wrote
    cancel_requested: bool = False
    running: bool = False
    waiting: bool = False
    cannot_stop: str | None = None
    cancelled_at: float | None = None  # when a heavy step last ended cancelled (monotonic)
    compare: list[str] = field(default_factory=list)  # sentences of the similarity matrices
    details: dict[int, dict[str, Any]] = field(default_factory=dict)  # per merge: widths, pairs
    kept: dict[int, MergeResult] = field(default_factory=dict)  # merges still in memory
    pinned: list[int] = field(default_factory=list)  # the two merges the Compare tab shows
    grid: list[dict[str, Any]] = field(default_factory=list)  # the 2-D sweep's points
    grid_knob: str = "beta"  # the 2-D sweep's second knob
    grid_settings: ZipSettings | None = None  # the settings the 2-D sweep varied two knobs of
    resemblance: tuple[int, Any] | None = None  # (merge, Resemblance) of a measured merge
    # this session's folder for uploads and export downloads (files_folder)
    workdir: str | None = None
    # A language pair's last generations: prompts, settings, the merge they ran on and the
    # texts by model ("A", "B", "merged"); None until the Generate button is pressed.
    generations: dict[str, Any] | None = None
    closed_at: float | None = None
    released: bool = False
    connection_lost: bool = False

    @property
    def pair(self) -> Pair | None:
        """Return models A and B as a pair (None until both are loaded)."""
        return Pair(self.a, self.b) if self.a is not None and self.b is not None else None

    @property
    def pair_name(self) -> str | None:
        """Return the name the history gives the current pair (None until both are loaded)."""
        if self.demo:
            return self.demo
        if not self.both_loaded():
            return None
        refs = (self.a.ref, self.b.ref)
        pair = refs[0].removesuffix("/a")
        if pair.startswith("zoo:") and refs == (f"{pair}/a", f"{pair}/b"):
            return pair.removeprefix("zoo:")  # the demo pair's name, however it was loaded
        return f"{self.a.name} + {self.b.name}"

    @property
    def task(self) -> Task | None:
        """Return the task the loaded models are scored on (model A's)."""
        slot = self.a or self.b
        return task_of(slot.task) if slot is not None else None

    def files_folder(self) -> Path:
        """Return (and make, once) this session's folder for uploads and the .zip downloads of
        its exports; ``remove_files`` deletes it."""
        if self.workdir is None or not Path(self.workdir).is_dir():
            # in the cache (where the README says uploads go; a 2 GB upload filled /tmp), named
            # with the app's process id: what a killed app left, the next one removes
            # (``remove_stale_sessions``)
            root, name = cache_dir(SESSION_FILES[0]), SESSION_FILES[1]
            prefix = f".{name}.tmp-{os.getpid()}-{self.sid}-"
            self.workdir = tempfile.mkdtemp(prefix=prefix, dir=root)
            atexit.register(shutil.rmtree, self.workdir, ignore_errors=True)  # app stopped
        return Path(self.workdir)

    def remove_files(self) -> None:
        """Delete this session's folder (the app calls this when the session ends)."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def both_loaded(self) -> bool:
        """Return True when models A and B are loaded."""
        return self.pair is not None

    def clear_results(self) -> None:
        """Forget everything derived from the current pair (after loading a model)."""
        self.prepared = None
        self.visited = []
        self.result = None
        self.calibration = None
        self.evaluation = None
        self.merged_metrics = None
        self.merged_size = None
        self.reference_sizes = None
        self.baseline = {}
        self.sweep = []
        self.grid = []
        self.kept = {}
        self.generations = None

    def release(self) -> None:
        """Drop the models and all that came from them (the tab closed): the session is as
        a fresh one, with its history, its files and its settings."""
        self.clear_results()
        self.a = self.b = None
        self.demo = None
        self.resemblance = None
        self.released = True

    def check_cancel(self) -> None:
        """Raise Cancelled if the user asked to stop (and reset the request).

        Raises:
            Cancelled: the Cancel button was pressed since the step began.
        """
        if self.cancel_requested:
            self.cancel_requested = False
            raise Cancelled("stopped; the previous result is kept")


__all__ = ["Cancelled", "Session"]
