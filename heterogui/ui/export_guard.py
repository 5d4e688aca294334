"""Exports of one app's sessions kept apart: no session replaces what another is using.

Every session writes below the one export folder, so two users could name the same folder.
``ExportGuard`` (one per app, ``Resources.exports``) remembers which open session wrote each
export and which folders and files the open sessions have loaded, so that an export (with
overwrite or not) never replaces another open session's export or a folder it reads from. An
export of a session that has ended may be overwritten as before; Gradio ends a session an hour
after its tab closed. The Export tab's suggested folder names hold the session's id, so two
users' suggestions never meet.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from heterogui.errors import ExportError
from heterogui.run_export import model_folders


class ExportGuard:
    """Which open session wrote which export, and what the open sessions read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # sessions the page still holds (gradio drops a closed tab's state): gone, forgotten
        self._open: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._writers: dict[Path, str] = {}
        self._folders: dict[Path, threading.Lock] = {}  # one export of a folder at a time

    def seen(self, session: Any) -> None:
        """Count ``session`` among the open ones (each event of a session says so)."""
        with self._lock:
            self._open[session.sid] = session

    def others_inputs(self, session: Any) -> list[Path]:
        """Return the model folders and data files the other open sessions have loaded."""
        with self._lock:
            others = [s for sid, s in self._open.items() if sid != session.sid]
        return [path for other in others for path in session_inputs(other)]

    @contextlib.contextmanager
    def writing(self, path: Path, session: Any) -> Iterator[list[Path]]:
        """Hold ``path`` for one export: refuse it when another open session wrote it, yield
        the other open sessions' inputs, and record the export when it is written. Two
        sessions exporting one folder at once take turns: the second is refused.

        Raises:
            ExportError: another open session's export.
        """
        with self._lock:
            folder_lock = self._folders.setdefault(path, threading.Lock())
        with folder_lock:
            self._check_writer(path, session)
            yield self.others_inputs(session)
            self._wrote(path, session)

    def _check_writer(self, path: Path, session: Any) -> None:
        """Refuse ``path`` when another open session wrote it.

        Raises:
            ExportError: naming the folder and what to do.
        """
        with self._lock:
            writer = self._writers.get(path)
            open_writer = writer is not None and writer != session.sid and writer in self._open
        if open_writer:
            raise ExportError(
                f"output folder {path.name!r} is the export of another open session, which "
                "this export would replace; choose another folder name"
            )

    def _wrote(self, path: Path, session: Any) -> None:
        """Record that ``session`` wrote the export ``path``."""
        with self._lock:
            self._writers[path] = session.sid


def session_inputs(session: Any) -> list[Path]:
    """Return the local model folders and data files a session has loaded."""
    paths = model_folders(session.pair) if session.pair is not None else []
    for data in (session.calibration, session.evaluation):
        source = getattr(getattr(data, "ref", None), "source", "") or ""
        if source.strip() and Path(source).expanduser().exists():
            paths.append(Path(source).expanduser())
    return paths
