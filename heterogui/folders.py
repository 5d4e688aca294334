"""Write output folders safely: atomically, never over an input, never outside where asked.

``atomic_output`` writes into a hidden temporary sibling and renames it into place only when
everything was written, so a failed or killed write leaves no visible folder; leftovers of
writes whose process has died are removed by the next write to the same place.
``check_output`` refuses, before any work, an output folder that is an input, contains one or
lies inside one, the current folder, a file, a place that cannot be written, an existing
folder that heterogui did not write, a folder inside an earlier export, or a name with a
control character or too long for a file system.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from heterogui.errors import ExportError, excerpt, os_error_line

# the fix for an existing output folder, wherever the export was asked for
OVERWRITE_HINT = (
    "choose another folder or allow overwriting an earlier export (--overwrite on the command "
    "line, the Overwrite box on the Export tab, overwrite=True in Python)"
)
MARKER = ".heterogui-output"  # written into every export: what --overwrite may replace
NAME_MAX = 255  # bytes in one file or folder name (Linux, macOS and Windows file systems)
TEMP_ROOM = 32  # what the temporary siblings add to a name: ".NAME.tmp-PID-XXXXXXXX"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(target: Path, prefix: str | None = None) -> None:
    """Remove temporary siblings of ``target`` left by writes whose process has died.

    prefix: the siblings' names before "tmp-PID-" or "old-PID-" (default ".NAME.": what
    ``atomic_folder`` names them).
    """
    prefix = f".{target.name}." if prefix is None else prefix
    # a mount point is written through a temporary folder inside it (``atomic_folder``)
    for folder in (target.parent, *([target] if is_mount(target) else [])):
        if not folder.is_dir():
            continue
        for item in folder.glob(f"{prefix}*-*-*"):
            kind, _, rest = item.name[len(prefix) :].partition("-")
            pid = rest.split("-", 1)[0]
            if (
                kind not in ("tmp", "old")
                or not (pid.isascii() and pid.isdigit())
                or _alive(int(pid))
            ):
                continue
            # an --overwrite killed between its two renames: the earlier export is whole
            if kind == "old" and (item / MARKER).is_file() and not os.path.lexists(target):
                os.replace(item, target)
            else:
                remove_path(item)


# what ``atomic_folder`` names its temporary folders (mkdtemp's or token_hex's 8 characters)
_TEMPORARY = re.compile(r"\..+\.(?:tmp|old)-(?P<pid>\d+)-[0-9a-z_]{8}")


def clean_stale_in(folder: Path) -> None:
    """Remove what writes into ``folder`` left when their process died, whatever output they
    were for (``clean_stale`` removes one output's, as the next write to it starts)."""
    if not folder.is_dir():
        return
    for item in folder.glob(".*"):
        found = _TEMPORARY.fullmatch(item.name)
        if found and not _alive(int(found["pid"])):
            remove_path(item)


def is_mount(target: Path) -> bool:
    """Return whether ``target`` is a folder on another file system than its parent's (a
    mounted disk, a container's volume): it cannot be renamed, nor a sibling renamed into it."""
    try:
        return (
            target.is_dir()
            and not target.is_symlink()
            and target.stat().st_dev != target.parent.stat().st_dev
        )
    except OSError:
        return False


def remove_path(path: Path) -> None:
    """Remove a file, a link or a folder (a missing path is fine)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def atomic_folder(target: Path, overwrite: bool = False):
    """Return a temp folder beside ``target`` and a commit function that moves it into place.

    A ``target`` that is a mount point gets the temp folder inside it, and its files are moved
    in one by one (a rename cannot cross file systems, nor replace a mount point).

    ``commit`` raises FileExistsError (and removes the temp folder) if ``target`` exists and
    ``overwrite`` is off. Prefer ``atomic_output``, which also cleans up on failure.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    prefix = f".{target.name}.tmp-{os.getpid()}-"
    inside = is_mount(target)  # the temporary folder goes inside: a rename stays on its disk
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target if inside else target.parent))

    def commit() -> None:
        if inside:  # moved in file by file (an earlier export removed first, if allowed)
            earlier = [p for p in target.iterdir() if p != tmp]
            if earlier and not overwrite:
                shutil.rmtree(tmp, ignore_errors=True)
                raise FileExistsError(target)
            for item in earlier:
                remove_path(item)
            for item in tmp.iterdir():
                os.replace(item, target / item.name)
            tmp.rmdir()
            return
        if is_empty_folder(target):  # written into: the folder keeps its mode, owner, mount
            for item in tmp.iterdir():
                os.replace(item, target / item.name)
            tmp.rmdir()
            return
        if target.exists() or target.is_symlink():
            if not overwrite:
                shutil.rmtree(tmp, ignore_errors=True)
                raise FileExistsError(target)
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.replace(target, old)
            os.replace(tmp, target)
            remove_path(old)
        else:
            os.replace(tmp, target)

    return tmp, commit


def _umask() -> int:
    """Return the process's umask (os.umask sets it to read it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_readable(folder: Path) -> None:
    """Give a finished folder the modes the umask allows (mkdtemp makes it private, 0700, and
    safetensors writes its files 0600): an export or a cache entry is shared like any other."""
    mask = _umask()
    for item in (folder, *folder.rglob("*")):
        if not item.is_symlink():
            item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_output(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder that becomes ``target`` if the block succeeds; else nothing is left.

    Raises:
        ExportError: ``target`` exists (and ``overwrite`` is off), appeared while writing, or
            writing failed.
    """
    target = Path(target)
    if target.exists() and not overwrite and not is_empty_folder(target):
        raise ExportError(f"output folder {str(target)!r} already exists; {OVERWRITE_HINT}")
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        try:
            tmp, commit = atomic_folder(target, overwrite)
        except OSError as exc:  # a place os.access calls writable that is not (root in /sys)
            raise ExportError(
                f"cannot write in {target.parent}: {excerpt(exc)}; choose another folder"
            ) from exc
        try:
            yield tmp
            make_readable(tmp)
            commit()
        except FileExistsError as exc:
            raise ExportError(
                f"output folder {str(target)!r} appeared while writing; retry"
            ) from exc
        except (OSError, SafetensorError) as exc:  # safetensors' write errors are not OSErrors
            shutil.rmtree(tmp, ignore_errors=True)
            raise ExportError(
                f"could not write {target}, nothing was written: {write_error(exc, tmp, target)}"
            ) from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except BaseException:  # whatever stopped the write: the parent folders it made go too
        _remove_made(made)
        raise


def write_error(exc: Exception, tmp: Path, target: Path) -> str:
    """Return a failed write's reason with its fix, naming the file as the user will look for
    it (not inside the hidden temporary folder)."""
    if isinstance(exc, OSError):
        shown = str(exc.filename).replace(str(tmp), str(target)) if exc.filename else None
        return os_error_line(exc, shown)
    return f"{excerpt(exc)}: free some space, or write elsewhere"  # "... File too large ..."


def is_empty_folder(path: Path) -> bool:
    """Return whether ``path`` is a folder with nothing in it (writing there loses nothing)."""
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _remove_made(made: list[Path]) -> None:
    """Remove the parent folders a failed write created (deepest first), while empty."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty (written to meanwhile), or already gone
            return


def check_names(text: str) -> None:
    """Refuse a folder name with a control character or longer than a name may be (255 bytes).

    Raises:
        ExportError: naming the part and the fix.
    """
    parts = Path(text).parts
    for k, part in enumerate(parts):
        if any(ord(c) < 32 or ord(c) == 127 for c in part):
            raise ExportError(
                f"output folder {excerpt(repr(text), 80)} has a control character (a newline or "
                "tab?) in its name; name the folder with printable characters"
            )
        # the folder itself is first written under a longer temporary name beside it
        most = NAME_MAX - TEMP_ROOM if k == len(parts) - 1 else NAME_MAX
        if len(os.fsencode(part)) > most:
            raise ExportError(
                f"output folder name {excerpt(repr(part), 60)} is {len(os.fsencode(part))} bytes "
                f"long; it may have {most}: choose a shorter name"
            )


def output_as_typed(out: str | Path) -> Path:
    """Return the output folder a user typed, without the spaces around it (" r9 " is r9):
    the folder ``check_output`` checks and an export writes."""
    return Path(str(out).strip())


def check_output(out: str | Path, overwrite: bool = False, inputs: Iterable[Path] = ()) -> Path:
    """Return the resolved output folder, or raise before anything runs.

    inputs: the files and folders a merge reads (models, data); the output may not be one of
    them, contain one or lie inside one, whatever ``overwrite`` says.

    Raises:
        ExportError: naming the folder, what is wrong and what to do.
    """
    text = str(out).strip()  # as output_as_typed (Path("") would be the current folder)
    if not text:
        raise ExportError("give an output folder")
    check_names(text)
    try:
        target = Path(text).expanduser().resolve()
        target.exists()  # a path past the system's length limit fails here
    except OSError as exc:
        raise ExportError(
            f"output folder {excerpt(repr(text), 80)} cannot be used ({excerpt(exc.strerror)}); "
            "choose a shorter path"
        ) from exc
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise ExportError(
            f"output folder {text!r} is the current folder or holds it; name a new folder"
        )
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if target == source or target in source.parents or source in target.parents:
            raise ExportError(
                f"output folder {text!r} would replace or mix with an input ({source}); "
                "write the merge to a folder of its own"
            )
    if target.exists() and not target.is_dir():
        raise ExportError(f"output folder {text!r} is a file; name a folder")
    export = next((p for p in target.parents if (p / MARKER).is_file()), None)
    if export is not None:
        raise ExportError(
            f"output folder {text!r} lies inside the earlier export {export}, which overwriting "
            "that export would delete; write it beside that export"
        )
    if not is_mount(target):  # a mount point is written through a folder inside it
        check_writable(target.parent, text)
    if target.is_dir():  # an existing folder is written into (or emptied first): its own rights
        check_writable(target, text)
    clean_stale(target)  # a killed write's leftovers inside a mount point would count as files
    if target.is_dir() and not is_empty_folder(target):  # an empty one is written into
        if not (target / MARKER).is_file():  # not an export: --overwrite would not help
            held = sorted(p.name for p in target.iterdir())
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise ExportError(
                f"output folder {text!r} already holds files heterogui did not write "
                f"({excerpt(shown, 120)}); choose another folder (overwriting replaces only "
                "folders of earlier exports)"
            )
        if not overwrite:
            raise ExportError(f"output folder {text!r} already exists; {OVERWRITE_HINT}")
        added = _added_files(target)
        if added:
            raise ExportError(
                f"output folder {text!r} is an earlier export with files added to it "
                f"({excerpt(', '.join(added), 120)}), which overwriting would delete: move them "
                "out, or choose another folder"
            )
    return target


def check_writable(folder: str | Path, named: str | None = None) -> None:
    """Raise ExportError unless files can be written in ``folder`` (made if missing), before
    any work: its nearest existing ancestor is a folder this process can write in.

    named: how messages name the output (default: the folder).
    """
    if not str(folder).strip():  # Path("") would be the current folder
        raise ExportError("give an output folder")
    folder = Path(folder).expanduser()
    named = named if named is not None else str(folder)
    if folder.exists() and not folder.is_dir() and named == str(folder):
        raise ExportError(f"output folder {named!r} is a file; name a folder")
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ExportError(f"output folder {named!r} lies under the file {parent}; name a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(
            f"cannot write in {parent} ({why_not_writable(parent)}); choose another folder"
        )
    try:  # os.access says yes to root everywhere, /sys and /proc included: try for real
        os.rmdir(tempfile.mkdtemp(prefix=".heterogui-probe-", dir=parent))
    except OSError as exc:
        # /proc says "No such file or directory" of a folder it has: it takes no new entries
        why = "it takes no new folders" if exc.errno == errno.ENOENT else exc.strerror or exc
        raise ExportError(
            f"cannot write in {parent} ({excerpt(why)}); choose another folder"
        ) from exc


def why_not_writable(path: Path) -> str:
    """Return why a folder ``os.access`` refuses writes to is not writable, in a few words."""
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "read-only file system" if read_only else "no permission"


def write_marker(folder: Path, title: str) -> None:
    """Write ``folder``'s marker: ``title``, then every file in it (what a later overwrite may
    replace; a file added to the export since is not heterogui's to delete)."""
    names = sorted(_file_names(folder))
    (folder / MARKER).write_text("\n".join([title, *names]) + "\n", encoding="utf-8")


# every file name an export may write (the model cards' figures are top-level .svg files): an
# earlier export whose marker lists none of its files is judged by these
EXPORT_FILE_NAMES = frozenset(
    {
        "README.md",
        "recipe.yaml",
        "report.json",
        "config.json",
        "model.safetensors",
        "unmerge.safetensors",
        "generation_config.json",
        "preprocessor_config.json",
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
    }
)


def _added_files(folder: Path) -> list[str]:
    """Return the files of an earlier export that its marker does not list.

    A marker that lists none of the folder's files (an older one, a title alone, or one
    overwritten with something else) cannot tell: every file an export never writes counts
    as added.
    """
    listed = (folder / MARKER).read_text(encoding="utf-8", errors="replace").splitlines()[1:]
    names = _file_names(folder) - {MARKER}
    if not names & set(listed):
        return sorted(n for n in names if not is_export_file_name(n))
    return sorted(names - set(listed))


def is_export_file_name(name: str) -> bool:
    """Return whether an export may write a file of this name (relative to its folder)."""
    return name in EXPORT_FILE_NAMES or ("/" not in name and name.endswith(".svg"))


def _file_names(folder: Path) -> set[str]:
    """Return the paths of every file under ``folder``, relative to it ("a/b.json")."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def write_document(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, with the mode the umask allows (mkstemp makes
    files private)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~_umask())  # as ``make_readable``
    os.replace(tmp, target)
