"""Built-in text domains for language models, available offline wherever Python is installed.

- "python-docs": English technical prose, the Python documentation topics that ship with every
  CPython (``pydoc_data.topics.topics``, the text ``help("if")`` shows).
- "python-source": Python code, a fixed sorted list of pure-Python standard library modules
  (under ``sysconfig.get_paths()["stdlib"]``; a module missing from an install is skipped).

Each domain is cut into texts (documents) of MIN_CHARS to MAX_CHARS characters, short enough for
short-context models: paragraphs (prose) or blank-line separated blocks (code) are merged up to
MAX_CHARS, a block too long for that is cut at line ends, and a document's last piece under
MIN_CHARS is dropped. Every text goes to a split by the sha256 of its content (not Python's
salted ``hash``): 80% "train", 10% "calibration", 10% "test", so test texts are never trained or
calibrated on and a text keeps its split when others change. The texts follow the running
Python's version (its docs and sources), so a recorded sha256 holds for one Python version.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from pathlib import Path

from heterogui.config import DataRef
from heterogui.datasets.refs import parse_lines, subsample, text_sha256
from heterogui.errors import ConfigError, ModelLoadError
from heterogui.text_input import read_text

DOMAINS = ("python-docs", "python-source")
SPLITS = ("train", "calibration", "test")
MIN_CHARS = 200
MAX_CHARS = 600
# Lines are cut to this length so that a piece under MIN_CHARS always takes the next line.
_MAX_LINE = MAX_CHARS - MIN_CHARS - 2
# A block that starts with one of these (a top-level definition) starts a new text once the
# text has MIN_CHARS.
_TOP_LEVEL = ("def ", "async def ", "class ", "@")

# Pure-Python standard library modules, sorted. Some moved between versions (pathlib, string
# and zipfile became packages), so both spellings are listed and missing files are skipped.
STDLIB_FILES = (
    "argparse.py",
    "ast.py",
    "base64.py",
    "bisect.py",
    "calendar.py",
    "cmd.py",
    "collections/__init__.py",
    "colorsys.py",
    "configparser.py",
    "contextlib.py",
    "copy.py",
    "csv.py",
    "dataclasses.py",
    "difflib.py",
    "enum.py",
    "fnmatch.py",
    "fractions.py",
    "functools.py",
    "getopt.py",
    "gettext.py",
    "glob.py",
    "graphlib.py",
    "heapq.py",
    "inspect.py",
    "ipaddress.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "json/scanner.py",
    "linecache.py",
    "logging/__init__.py",
    "numbers.py",
    "operator.py",
    "pathlib.py",
    "pathlib/__init__.py",
    "pprint.py",
    "queue.py",
    "random.py",
    "reprlib.py",
    "sched.py",
    "secrets.py",
    "shlex.py",
    "shutil.py",
    "statistics.py",
    "string.py",
    "string/__init__.py",
    "textwrap.py",
    "tokenize.py",
    "tomllib/_parser.py",
    "traceback.py",
    "typing.py",
    "weakref.py",
    "zipfile.py",
    "zipfile/__init__.py",
)


def split_of(text: str) -> str:
    """Return the split of a text from the sha256 of its content: train 8/10, calibration and
    test 1/10 each (stable across runs, machines and Python versions)."""
    bucket = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % 10
    return "train" if bucket < 8 else "calibration" if bucket == 8 else "test"


def chunk_text(document: str) -> list[str]:
    """Return a document cut into texts of MIN_CHARS to MAX_CHARS characters.

    Blocks (separated by blank lines; a header such as "Title\n=====" or "class A:" joins the
    block after it) are merged while they fit in MAX_CHARS; a block that does not fit is taken
    line by line (lines over _MAX_LINE are cut). A text ends at the first block or line that
    would overflow it, or before a top-level "def" / "class", once it has MIN_CHARS. Trailing
    spaces are dropped, and so is the last piece if it is under MIN_CHARS.
    """
    blocks: list[list[str]] = [[]]
    for raw in document.splitlines():
        line = raw.rstrip()
        if not line:
            if blocks[-1]:
                blocks.append([])
            continue
        blocks[-1] += [line[i : i + _MAX_LINE] for i in range(0, len(line), _MAX_LINE)]
    blocks = _glue_headers(blocks)
    texts: list[str] = []
    current = ""

    def join(text: str, piece: str, sep: str) -> str:
        return f"{text}{sep}{piece}" if text else piece

    for block in blocks:
        whole = "\n".join(block)
        if not whole:
            continue
        top_level = block[0].startswith(_TOP_LEVEL)
        fits = len(join(current, whole, "\n\n")) <= MAX_CHARS
        if fits and not (top_level and len(current) >= MIN_CHARS):
            current = join(current, whole, "\n\n")
            continue
        if len(current) >= MIN_CHARS:
            texts.append(current)
            current = ""
            if len(whole) <= MAX_CHARS:
                current = whole
                continue
        sep = "\n\n"
        for line in block:
            if len(join(current, line, sep)) > MAX_CHARS:
                texts.append(current)  # at least MIN_CHARS, as _MAX_LINE guarantees
                current, sep = "", "\n"
            current, sep = join(current, line, sep), "\n"
    texts.append(current)
    texts = [text.strip("\n") for text in texts]  # a cut at a header's blank line leaves one
    return [text for text in texts if len(text) >= MIN_CHARS]


def _glue_headers(blocks: list[list[str]]) -> list[list[str]]:
    """Return blocks with each header (a last line ending in ":" or a heading underline such
    as "=====") joined to the block after it, so that no text ends on a header."""
    out: list[list[str]] = []
    for block in blocks:
        if out and out[-1] and _is_header(out[-1][-1]):
            out[-1] = [*out[-1], "", *block]
        else:
            out.append(block)
    return out


def _is_header(line: str) -> bool:
    stripped = line.strip()
    underline = len(stripped) >= 3 and set(stripped) <= set("=-~^*")
    return underline or stripped.endswith(":")


def _documents(name: str) -> list[str]:
    """Return the documents of a built-in domain, in a fixed order.

    Raises:
        ConfigError: the domain's source is missing from this Python install.
    """
    if name == "python-docs":
        try:
            from pydoc_data.topics import topics
        except ImportError as exc:
            raise ConfigError(
                "text domain 'python-docs' needs pydoc_data (the Python docs topics), which this "
                "Python install lacks; install the full standard library or use a .txt file"
            ) from exc
        return [topics[key] for key in sorted(topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [root / rel for rel in STDLIB_FILES if (root / rel).is_file()]
    if not files:
        raise ConfigError(
            f"text domain 'python-source' found no standard library sources under {str(root)!r} "
            "(an install without .py files?); use 'python-docs' or a .txt file"
        )
    return [read_text(path, "standard library file") for path in files]


@functools.lru_cache(maxsize=4)
def _domain_splits(name: str) -> dict[str, tuple[str, ...]]:
    """Return a domain's texts by split (each text once, in document order)."""
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    for document in _documents(name):
        for text in chunk_text(document):
            if text not in seen:
                seen.add(text)
                splits[split_of(text)].append(text)
    return {split: tuple(texts) for split, texts in splits.items()}


def domain_texts(name: str, split: str) -> list[str]:
    """Return all texts of a built-in domain's split, in a fixed order (a fresh list).

    Raises:
        ConfigError: an unknown domain or split, or a domain this Python install lacks.
    """
    if name not in DOMAINS:
        raise ConfigError(
            f"unknown text domain {name!r}; use one of {list(DOMAINS)} or a .txt file with one "
            "text a line"
        )
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} of text domain {name!r}; use one of {SPLITS}")
    return list(_domain_splits(name)[split])


def load_texts(ref: DataRef) -> list[str]:
    """Return the texts a DataRef names: a built-in domain's split or a .txt file (one a line).

    ``ref.size`` texts are drawn with ``ref.seed`` without replacement, in their original order
    (all when size is None), and checked against ``ref.sha256`` when the recipe records one.

    Raises:
        ConfigError: an unknown source or split, an empty or non-UTF-8 file, or texts that
            differ from the recorded sha256.
        ModelLoadError: a missing file.
    """
    if ref.has_suffix(".txt"):
        path = Path(ref.source).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise ModelLoadError(f"text file {str(path)!r} {what}; pass a .txt file")
        texts = parse_lines(read_text(path, "text file"))
        if not texts:
            raise ConfigError(f"text file {str(path)!r} holds no text; write one text a line")
    elif ref.source in DOMAINS:
        texts = domain_texts(ref.source, ref.split)
    else:
        raise ConfigError(
            f"unknown text source {ref.source!r}; use a built-in domain {list(DOMAINS)} or a "
            ".txt file with one text a line"
        )
    texts = subsample(texts, ref)
    digest = text_sha256(texts)
    if ref.sha256 and ref.sha256 != digest:
        raise ConfigError(
            f"the texts drawn from {ref.source} changed: sha256 {digest[:12]}... but the recipe "
            f"records {ref.sha256[:12]}...; restore them (the same Python version for a "
            "built-in domain) or remove sha256 from the recipe"
        )
    return texts
