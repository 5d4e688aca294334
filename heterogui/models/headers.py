"""Read a safetensors file's header (names, dtypes, shapes) without its tensors, or torch.

The header is 8 bytes of little-endian length, then a JSON object; the tensor data follows and is
never read, so checking a checkpoint's shapes costs milliseconds whatever its size.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from heterogui.errors import ModelLoadError, excerpt

_MAX_HEADER = 100_000_000  # the safetensors format's own limit on the JSON header


FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
# the stored dtypes an export can write again (safetensors name -> torch name); FP8 weights
# have no torch arithmetic of their own here: an export of them is written in float32
TORCH_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def stored_dtype(paths: Iterable[str | Path]) -> str | None:
    """Return the torch name of the dtype that holds most floating numbers of the safetensors
    files ``paths`` ("float16" for a float16 model whose norms were kept in float32), from
    their headers; None: no floating tensor, or FP8 weights.

    Raises:
        ModelLoadError: see ``read_safetensors_header``.
    """
    counts: Counter[str] = Counter()
    for path in paths:
        for info in read_safetensors_header(path).values():
            if info["dtype"] in FLOAT_DTYPES:
                counts[info["dtype"]] += math.prod(info["shape"])
    return majority_dtype(counts)


def majority_dtype(counts: Mapping[str, int]) -> str | None:
    """Return the torch name of the safetensors dtype that holds the most numbers in ``counts``
    (dtype -> numbers); None: none, or FP8."""
    if not counts:
        return None
    return TORCH_DTYPE_NAMES.get(max(counts, key=counts.__getitem__))


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """Return the JSON header of a safetensors file (name -> dtype, shape, data_offsets).

    Reads 8 + header-length bytes; tensor data is never touched. `__metadata__` is dropped.

    Raises:
        ModelLoadError: the file is missing, too short, not safetensors, or its header is corrupt.
    """
    path = Path(path)
    fix = "re-save it with safetensors (save_pretrained(..., safe_serialization=True))"
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ModelLoadError(f"{path} is not a safetensors file ({size} bytes); {fix}")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, _MAX_HEADER):
                # Only now look at magic bytes: a valid header length can start with them too.
                if head[:2] == b"PK" or head[:1] == b"\x80":
                    raise ModelLoadError(
                        f"{path} is a PyTorch zip/pickle checkpoint (torch.save), not safetensors; "
                        f"{fix}"
                    )
                raise ModelLoadError(
                    f"{path} is not a valid safetensors file: header length {length} exceeds the "
                    f"file size {size}; {fix}"
                )
            raw = fh.read(length)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}; check the path and permissions") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{path} has a corrupt safetensors header ({exc}); {fix}") from exc
    except RecursionError as exc:  # lists in lists, thousands deep: no header nests so
        raise ModelLoadError(
            f"{path} has a corrupt safetensors header (nested too deeply); {fix}"
        ) from exc
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path} has a corrupt safetensors header (not a JSON object); {fix}")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - length
    for name, info in header.items():
        if not _entry_fits(info, data_bytes):
            raise ModelLoadError(
                f"{path} has a corrupt safetensors entry for {excerpt(repr(name), 80)}; {fix}"
            )
    # a weight or bias stored as integers (quantized, or a dtype written over) would load as
    # numbers of another scale, silently: heterogui merges float weights
    for name, info in header.items():
        if name.endswith((".weight", ".bias")) and info["dtype"] not in FLOAT_DTYPES:
            raise ModelLoadError(
                f"{path} stores {name} as {info['dtype']}, but weights are floating point "
                f"({', '.join(sorted(FLOAT_DTYPES))}): dequantize the model or re-save its float "
                "weights"
            )
    return header


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_fits(info: Any, data_bytes: int) -> bool:
    """Return whether a safetensors header entry is well formed: a dtype name, a shape of
    sizes and two offsets in order within the file's data."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        return False
    shape, offsets = info["shape"], info["data_offsets"]
    return (
        isinstance(info["dtype"], str)
        and isinstance(shape, list)
        and all(_is_count(n) for n in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_count(o) for o in offsets)
        and offsets[0] <= offsets[1] <= data_bytes
    )
