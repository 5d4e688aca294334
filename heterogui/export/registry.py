"""The output formats by name, and the one function that writes an export atomically."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from heterogui.errors import ConfigError
from heterogui.export.causal_lm import CAUSAL_LM
from heterogui.export.hf import BERT, VIT
from heterogui.export.job import Exporter, ExportJob
from heterogui.export.network import NETWORK
from heterogui.folders import atomic_output, check_output, output_as_typed, write_marker

EXPORTERS: dict[str, Exporter] = {e.name: e for e in (NETWORK, BERT, VIT, CAUSAL_LM)}


def exporter(name: str) -> Exporter:
    """Return the exporter of format ``name``.

    Raises:
        ConfigError: an unknown format.
    """
    if name not in EXPORTERS:
        raise ConfigError(f"unknown output format {name!r}; use one of {sorted(EXPORTERS)}")
    return EXPORTERS[name]


def write_export(
    job: ExportJob,
    out: str | Path,
    fmt: str,
    overwrite: bool = False,
    inputs: Iterable[Path] = (),
) -> Path:
    """Write ``job`` in format ``fmt`` to the new folder ``out`` (atomically).

    The folder and the format are checked before anything is written (``folders.check_output``:
    never over an input, the current folder, or a folder heterogui did not write); a failure
    leaves no folder behind. The folder gets a marker file: what a later overwrite may replace.

    Raises:
        ConfigError: an unknown format.
        ExportError: the format cannot hold this merge, or the folder is refused, or writing
            failed.
    """
    chosen = exporter(fmt)
    target = check_output(out, overwrite, inputs)
    chosen.check(job.model)
    with atomic_output(target, overwrite) as tmp:
        chosen.write(job, tmp)
        write_marker(tmp, f"written by heterogui ({chosen.name} format)")
    return output_as_typed(out)  # the folder written
