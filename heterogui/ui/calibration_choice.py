"""The Models tab's calibration-data controls: the choices a pair's task offers, the one a
session shows, and the DataRef the controls name (a built-in source, or a file)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from heterogui.config import DataRef
from heterogui.datasets.images import DATASETS
from heterogui.datasets.text_domains import DOMAINS
from heterogui.errors import ConfigError, HeteroguiError
from heterogui.sources.base import LANGUAGE_MODELING
from heterogui.tasks.language import ALL_DOMAINS
from heterogui.text_input import typed_path
from heterogui.ui.session import Session

FILE = "file"  # the data choice that reads the "Calibration file" box
# Calibration choices per task kind, else per input kind.
DATA_CHOICES = {
    "images": (*sorted(DATASETS), FILE),
    "text": ("sentences", FILE),
    LANGUAGE_MODELING: (ALL_DOMAINS, *DOMAINS, FILE),
}


def data_choice(session: Session) -> str | None:
    """Return the Calibration data dropdown's value for the session."""
    ref = session.calibration.ref if session.calibration else session.data
    if ref is None and session.both_loaded():  # not analysed yet: what Analyse would read
        try:
            ref = session.task.default_calibration(session.pair)
        except HeteroguiError:  # images without a built-in dataset: nothing to preselect
            return None
    if ref is None:
        return None
    return ref.source if ref.source in data_choices(session) else FILE


def data_choices(session: Session) -> list[str]:
    """Return the Calibration data choices of the loaded models' task (none loaded: [])."""
    task = session.task
    if task is None:
        return []
    inputs = "text" if task.inputs == "text" else "images"
    return [c for c in DATA_CHOICES.get(task.kind, DATA_CHOICES[inputs]) if c != FILE] + [FILE]


def chosen_data(session: Session, choice: str | None, file: str | None, size: int) -> DataRef:
    """Return the DataRef the data controls name (the task's default kind, size and batch).

    Raises:
        ConfigError: no models yet, or 'file' without a file.
    """
    if not session.both_loaded():
        raise ConfigError("load model A and model B first")
    default = session.task.default_calibration(session.pair, size) if choice != FILE else None
    if choice == FILE or default is None:
        path = typed_path(file)
        if not path:
            raise ConfigError("type the path of a calibration file (.safetensors or .txt)")
        base = session.task.default_calibration(session.pair, size)
        return dataclasses.replace(base, source=str(Path(path).expanduser()), split="calibration")
    return dataclasses.replace(default, source=choice or default.source)
