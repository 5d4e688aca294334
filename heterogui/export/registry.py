"""The output formats by name, and the one function that writes an export atomically."""

from __future__ import annotations

from pathlib import Path

from heterogui.errors import ConfigError
from heterogui.export.hf import BERT, VIT
from heterogui.export.job import Exporter, ExportJob
from heterogui.export.network import NETWORK
from heterogui.models.io import atomic_output

EXPORTERS: dict[str, Exporter] = {e.name: e for e in (NETWORK, BERT, VIT)}


def exporter(name: str) -> Exporter:
    """Return the exporter of format ``name``.

    Raises:
        ConfigError: an unknown format.
    """
    if name not in EXPORTERS:
        raise ConfigError(f"unknown output format {name!r}; use one of {sorted(EXPORTERS)}")
    return EXPORTERS[name]


def write_export(job: ExportJob, out: str | Path, fmt: str, overwrite: bool = False) -> Path:
    """Write ``job`` in format ``fmt`` to the new folder ``out`` (atomically).

    The format is checked before anything is written; a failure leaves no folder behind.

    Raises:
        ConfigError: an unknown format.
        ExportError: the format cannot hold this merge, ``out`` exists (without overwrite), or
            writing failed.
    """
    chosen = exporter(fmt)
    chosen.check(job.model)
    with atomic_output(Path(out), overwrite) as tmp:
        chosen.write(job, tmp)
    return Path(out)
