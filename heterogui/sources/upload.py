"""Workbench uploads: files (a .zip of an export, a .gguf file) copied into a fresh folder.

An upload becomes a folder of its own under the session's upload folder; the folder is then
read by whichever source claims it (a heterogui network, a heterogui merge, a Hugging Face
folder). A .zip is extracted member by member: only plain files, no absolute paths or "..",
and a size limit, so an upload never writes outside its folder.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import unicodedata
import zipfile
from pathlib import Path, PurePosixPath

from heterogui.cache import cache_dir
from heterogui.errors import HeteroguiError, ModelLoadError, excerpt, os_error_line
from heterogui.folders import remove_path
from heterogui.models.io import file_sha256

MAX_UNPACKED_BYTES = 4 << 30  # 4 GiB: far above any model the workbench can merge on a laptop
# a model's files as transformers and heterogui write them (.jinja: the chat template a
# decoder's tokenizer saves beside itself, in transformers 5 and in heterogui's exports)
MODEL_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja", ".yaml", ".md", ".svg")
# every file an upload may hold: a model's files, an export's .zip, a .gguf file
UPLOAD_SUFFIXES = (*MODEL_SUFFIXES, ".zip", ".gguf")


def check_still_there(paths: list[Path]) -> None:
    """Refuse uploads whose server copies are gone (the app deletes them an hour after the
    upload), naming the file as the user knows it.

    Raises:
        ModelLoadError: naming the first missing file and what to do.
    """
    gone = [p for p in paths if not p.exists()]
    if gone:
        raise ModelLoadError(
            f"the upload {gone[0].name!r} is no longer on the server (uploads are kept for an "
            "hour): upload it again"
        )


def as_uploaded(exc: HeteroguiError, copies: dict[str, str]) -> HeteroguiError:
    """Return ``exc`` with the server's copies of uploads named as the user knows them
    (``copies``: text of the copy's path -> the uploaded file's name), of the same type."""
    text = str(exc)
    for copy, name in copies.items():
        text = text.replace(copy, name)
    return type(exc)(text)


def receive(files: list[str] | None, workdir: str | Path | None = None) -> Path:
    """Return a new folder holding the uploaded model files (or the uploaded .gguf file).

    files: paths of the uploaded files: config.json and model.safetensors (plus tokenizer or
    side files), one .zip of an exported folder, or one .gguf file (a GGUF model keeps its
    single-file form: the GGUF source reads it). workdir: where the folder is made (a new
    temporary folder when None).

    Raises:
        ModelLoadError: nothing uploaded, files that are not model files, or a bad archive.
    """
    paths = [Path(f) for f in files or []]
    if not paths:
        raise ModelLoadError(
            "upload a model: its config.json and model.safetensors, or the .zip of an export"
        )
    check_still_there(paths)
    archive = len(paths) == 1 and paths[0].suffix.lower() == ".zip"
    root = Path(tempfile.mkdtemp(prefix="upload-", dir=workdir))
    gguf = len(paths) == 1 and paths[0].suffix.lower() == ".gguf"
    # The model folder is named after the archive (an export's name), so the model is too.
    folder = root / (_safe_name(paths[0].stem) if archive else "uploaded-model")
    try:
        if gguf:
            target = root / f"{_safe_name(paths[0].stem)}.gguf"
            shutil.copyfile(paths[0], target)
            return target
        folder.mkdir()
        if archive:
            _extract(paths[0], folder)
        else:
            _copy(paths, folder)
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"the upload has no config.json (got {sorted(p.name for p in folder.iterdir())}); "
                "upload config.json and model.safetensors, or the .zip of an export"
            )
    except OSError as exc:  # a full disk: the copy's room, not the upload, is the problem
        shutil.rmtree(root, ignore_errors=True)
        raise ModelLoadError(f"could not keep the upload: {os_error_line(exc, '')}") from exc
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return folder


def keep(received: Path) -> Path:
    """Move an accepted upload (``receive``'s folder or .gguf file) into the cache; return it.

    The upload lands in ``$HETEROGUI_CACHE/uploads/DIGEST/`` under its own name, DIGEST being
    the hash of its files' names and contents, so a recipe exported from a merge of it names a
    path that outlives the session (whose upload folder is deleted with it) and the app. The
    same files uploaded again reuse the kept copy; the session's copy is removed either way.
    """
    digest = _files_digest(received)[:16]
    target = cache_dir("uploads", digest) / received.name
    if not target.exists():
        staging = target.with_name(f".{received.name}.tmp-{os.getpid()}")
        remove_path(staging)
        shutil.move(received, staging)  # a rename when the cache shares the session's disk
        try:
            os.replace(staging, target)  # whole or not at all
        except OSError:  # another session kept the same files first
            remove_path(staging)
    shutil.rmtree(received.parent, ignore_errors=True)
    return target


def _files_digest(path: Path) -> str:
    """Return the SHA-256 of a folder's file names and contents (of a file's, for a file)."""
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_sha256(file)}\0".encode())
    return digest.hexdigest()


def _safe_name(stem: str) -> str:
    """Return a folder name made of the archive name's letters, marks and digits (of any
    script), '.', '-' and '_' ("café" stays café; it was "caf"); composed as macOS does not
    (NFC: its "cafe" and a combining accent make one letter)."""
    kept = [
        c if c.isalnum() or c in "._-" or unicodedata.category(c).startswith("M") else "_"
        for c in unicodedata.normalize("NFC", stem)
    ]
    name = "".join(kept).strip("._") or "uploaded-model"
    return name[:80]


def _copy(paths: list[Path], folder: Path) -> None:
    others = [p.name for p in paths if p.suffix.lower() not in MODEL_SUFFIXES]
    if others:
        raise ModelLoadError(
            f"{others} are not model files: upload config.json, model.safetensors (and "
            "tokenizer files), or the .zip of an export"
        )
    weights = [p for p in paths if p.suffix.lower() == ".safetensors"]
    configs = [p for p in paths if p.suffix.lower() == ".json"]
    if not weights or not configs:
        raise ModelLoadError(
            f"got {len(weights)} .safetensors and {len(configs)} .json files: upload the "
            "weights (model.safetensors) and config.json together"
        )
    # A lone weights/config file keeps the folder's standard name whatever it was called.
    names = [
        "model.safetensors"
        if len(weights) == 1 and p in weights
        else "config.json"
        if len(configs) == 1 and p in configs
        else p.name
        for p in paths
    ]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ModelLoadError(
            f"two files named {twice[0]} (files of two folders?): upload each of the model's "
            "files once (a sentence-transformers folder's 1_Pooling/config.json is not needed)"
        )
    for p, name in zip(paths, names, strict=True):
        shutil.copyfile(p, folder / name)


def _extract(archive: Path, folder: Path) -> None:
    """Extract a .zip into ``folder``: plain files only, each inside the folder."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and not _litter(m.filename)]
            total = sum(m.file_size for m in members)
            if total > MAX_UNPACKED_BYTES:
                raise ModelLoadError(
                    f"{archive.name} unpacks to {total / 2**30:.1f} GiB, over the "
                    f"{MAX_UNPACKED_BYTES / 2**30:.0f} GiB limit; upload the folder's files"
                )
            root = _common_root(members)
            written: set[tuple[str, ...]] = set()
            for member in members:
                rel = PurePosixPath(member.filename)
                if rel.is_absolute() or ".." in rel.parts:
                    raise ModelLoadError(
                        f"{archive.name} holds {member.filename!r}, a path outside the archive; "
                        "upload an archive made by the workbench's export"
                    )
                parts = rel.parts[len(root) :]
                clash = parts in written or any(parts[:k] in written for k in range(len(parts)))
                try:
                    if clash:
                        raise FileExistsError(member.filename)
                    target = folder.joinpath(*parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst)
                except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                    raise ModelLoadError(
                        f"{archive.name} holds {member.filename!r} twice, or as a file and a "
                        "folder; upload an archive made by the workbench's export"
                    ) from exc
                except OSError as exc:  # a name too long for the file system, say: its
                    # message would show the server's own folder
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                        raise  # the disk, not the archive: ``receive`` says so
                    raise ModelLoadError(
                        f"{archive.name} holds {excerpt(repr(member.filename), 80)}, which cannot "
                        f"be unpacked here ({excerpt(exc.strerror or exc, 60)}); upload an "
                        "archive made by the workbench's export"
                    ) from exc
                written.add(parts)
    except zipfile.BadZipFile as exc:
        raise ModelLoadError(f"{archive.name} is not a valid .zip archive ({exc})") from exc
    except (RuntimeError, NotImplementedError) as exc:  # encrypted, or an unknown compression
        raise ModelLoadError(
            f"{archive.name} cannot be unpacked ({excerpt(exc, 80)}): upload an archive without "
            "a password, made by the workbench's export or a plain zip"
        ) from exc


def _litter(name: str) -> bool:
    """Return whether an archive member is what a system adds beside the files: macOS's
    Finder zips a folder with ``__MACOSX/`` (resource forks) and ``.DS_Store`` files."""
    path = PurePosixPath(name)
    return path.parts[:1] == ("__MACOSX",) or path.name == ".DS_Store" or path.name.startswith("._")


def _common_root(members: list[zipfile.ZipInfo]) -> tuple[str, ...]:
    """Return the one top folder every member sits in (stripped on extraction), or ()."""
    tops = {PurePosixPath(m.filename).parts[0] for m in members}
    nested = all(len(PurePosixPath(m.filename).parts) > 1 for m in members)
    return (tops.pop(),) if len(tops) == 1 and nested else ()
