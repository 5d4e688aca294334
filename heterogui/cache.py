"""Where heterogui keeps what it builds (zoo models, converted checkpoints): never in the repo."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from heterogui.errors import ConfigError, ModelLoadError
from heterogui.folders import clean_stale, write_error
from heterogui.models.headers import read_safetensors_header
from heterogui.models.io import file_sha256


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the heterogui cache.

    The root is $HETEROGUI_CACHE when set, else ~/.cache/heterogui.

    Raises:
        ConfigError: the folder cannot be created there (a file in the way, no permission).
    """
    fix = "set HETEROGUI_CACHE to a folder you can write"
    return make_folder(cache_path(*parts), "the heterogui cache folder", fix)


def cache_path(*parts: str) -> Path:
    """Return a path under the heterogui cache without creating anything (for reading)."""
    # "~" is the home folder, as in HF_HOME (it was a folder named "~" under the current one)
    root = Path(os.environ.get("HETEROGUI_CACHE") or Path.home() / ".cache" / "heterogui")
    return root.expanduser().joinpath(*parts)


def make_folder(path: Path, what: str, fix: str) -> Path:
    """Return ``path``, created with its parents when missing.

    what: the folder's role in the message ("--export-root"); fix: what the user can do.

    Raises:
        ConfigError: it cannot be created (a file in the way, no permission ...).
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {what} {path} ({exc.strerror or exc}); {fix}") from exc
    return path


def build_folder(folder: Path) -> Path:
    """Return a new temporary sibling of cache entry ``folder`` to build into.

    Its name holds this process's id, so that what a build killed on the way left (a
    conversion's hundreds of MB) is removed by the next build (``folders.clean_stale``).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(folder)
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-{os.getpid()}-", dir=folder.parent))


@contextmanager
def build_writes(tmp: Path, folder: Path) -> Iterator[None]:
    """Say a failed write of a build into ``tmp`` (a full disk) in one line, naming the entry.

    Raises:
        ModelLoadError: the reason (and the file, as it would be in ``folder``) and the fix.
    """
    try:
        yield
    except (OSError, SafetensorError) as exc:  # safetensors' write errors are not OSErrors
        raise ModelLoadError(
            f"could not build {folder} in heterogui's cache: {write_error(exc, tmp, folder)} "
            "(HETEROGUI_CACHE names another folder)"
        ) from exc


def install_build(tmp: Path, folder: Path, complete: Callable[[Path], bool]) -> None:
    """Rename a finished build ``tmp`` into place as ``folder``, atomically.

    A ``folder`` that is already ``complete`` (a concurrent build finished first) is kept and
    ``tmp`` left to the caller to remove; a stale or incomplete one is set aside first.
    """
    if folder.exists():
        if complete(folder):
            return
        stale = Path(
            tempfile.mkdtemp(prefix=f".{folder.name}.old-{os.getpid()}-", dir=folder.parent)
        )
        os.replace(folder, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, folder)


WEIGHTS = "model.safetensors"


def entry_record(folder: Path) -> dict[str, Any]:
    """Return what a build records of a cache entry (before its marker is written): its
    model.safetensors' bytes and sha256, and the sha256 of every other file in it
    (``entry_intact`` checks them)."""
    path = folder / WEIGHTS
    others = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != WEIGHTS)
    return {
        "weights_bytes": path.stat().st_size,
        "weights_sha256": file_sha256(path),
        "files_sha256": {p.relative_to(folder).as_posix(): file_sha256(p) for p in others},
    }


def entry_intact(folder: Path, record: Mapping[str, Any]) -> bool:
    """Return whether a cache entry is whole and unchanged: its model.safetensors as long as
    its own header says, of the size and sha256 its build recorded, and every other file it
    recorded (config, tokenizer) as it was (``entry_record``; entries written before recorded
    less, and are checked for what they recorded).

    A truncated, replaced or corrupted file is then rebuilt, not read (a safetensors file cut
    short fails deep in a loader; one with flipped bytes loads as another model; a broken
    config.json was refused with advice to fix a file the user never wrote).
    """
    path = folder / WEIGHTS
    try:
        header = read_safetensors_header(path)  # checked: every entry within the file
        with path.open("rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
        size = path.stat().st_size
    except (ModelLoadError, OSError):
        return False
    ends = [info["data_offsets"][1] for info in header.values()]
    if size != 8 + length + max(ends, default=0) or record.get("weights_bytes") not in (None, size):
        return False
    files = record.get("files_sha256") or {}
    if not isinstance(files, dict):
        return False
    try:
        recorded = record.get("weights_sha256")
        if recorded is not None and recorded != file_sha256(path):
            return False
        return all(file_sha256(folder / name) == sha for name, sha in files.items())
    except OSError:
        return False
