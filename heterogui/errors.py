"""Errors raised by heterogui.

Every message names the offending value and says what to do about it; the CLI prints it and
the UI shows it in the page, so it must make sense to a user who has not read the code.
"""

from __future__ import annotations

import errno


class HeteroguiError(Exception):
    """Base class of every error heterogui raises on purpose."""


class ConfigError(HeteroguiError, ValueError):
    """A recipe or config field is unknown, missing or out of range."""


class IncompatibleModelsError(HeteroguiError):
    """Two models cannot be merged (different families, stages, inputs ...)."""


class AlignmentError(HeteroguiError, ValueError):
    """A layer mapping is invalid (not monotone, out of range, wrong length)."""


class MatcherError(HeteroguiError, ValueError):
    """A matcher cannot handle the widths or knobs it was given."""


class ModelLoadError(HeteroguiError):
    """A model file or folder is missing, corrupt or of an unknown format."""


class ExportError(HeteroguiError):
    """Writing results failed or would overwrite something."""


class Cancelled(HeteroguiError):
    """The user asked a running merge to stop; it stopped at a stage boundary."""


EXCERPT = 200  # characters of a user's or a library's text that a message quotes at most
# characters of heterogui's own message shown at most (a pair refused for several reasons gives
# one sentence, with its fix, per reason; user text inside is quoted by ``excerpt`` already)
MESSAGE_LIMIT = 2000


def excerpt(text: object, limit: int = EXCERPT) -> str:
    """Return ``text`` as one line of at most ``limit`` characters (for quoting in a message).

    Library messages span lines (state-dict mismatch lists, parser output) and user input can be
    huge; a message quotes only the start of either, with "…" where it was cut.
    """
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def nesting(exc: Exception) -> object:
    """Return what to say of a parse error: a RecursionError (a file of lists in lists,
    thousands deep) says so, any other error is itself."""
    return "nested too deeply to read" if isinstance(exc, RecursionError) else exc


def os_error_line(exc: OSError, filename: str | None = None) -> str:
    """Return an OSError (a full disk, an I/O error) as one line with what to do about it.

    filename: the file to name instead of the error's own (the final path of a temporary one).
    """
    full = exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    fix = "free some space, or write elsewhere" if full else "check the path and its device"
    if exc.errno == errno.ENAMETOOLONG:
        fix = "use a shorter path"
    name = filename if filename is not None else exc.filename
    where = f" on {excerpt(repr(str(name)), 160)}" if name else ""
    return f"{exc.strerror or excerpt(exc)}{where}: {fix}"


# what torch's allocators say when the memory runs out (a RuntimeError, not a MemoryError);
# "Cannot allocate memory" is ENOMEM's text, as torch's mmap of a weights file says it
_OUT_OF_MEMORY = (
    "can't allocate memory",
    "DefaultCPUAllocator",
    "CUDA out of memory",
    "Cannot allocate memory",
)


def out_of_memory_line(exc: BaseException) -> str | None:
    """Return the one line to say for an allocation that failed (None: ``exc`` is another
    error): Python's MemoryError, or torch's out-of-memory RuntimeError."""
    if not isinstance(exc, MemoryError) and not (
        isinstance(exc, RuntimeError) and any(s in str(exc) for s in _OUT_OF_MEMORY)
    ):
        return None
    return (
        "out of memory: this step needs more than is free here; free memory, use less "
        "calibration data (fewer or smaller batches), smaller models, or a machine with more"
    )
