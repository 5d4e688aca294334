"""Read the metadata of a GGUF file (llama.cpp's format): its model description, never a weight.

`gguf_header` reads only the metadata (key/value section and tensor table) of a GGUF file, never
a weight. `gguf.GGUFReader` builds a memory-mapped numpy view for every part of every field, which
takes seconds on a file with a 49k-token vocabulary and 49k merges; this module walks the same
layout (GGUF v2/v3, either byte order) with `struct` over an `mmap` and uses the `gguf` package's
enums for value, file and tensor types, so a header reads in a small fraction of a second.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heterogui.errors import ModelLoadError, excerpt

_MAGIC = b"GGUF"
# Numeric arrays up to this length are kept (per-layer head counts ...); longer ones (token
# scores and types) are skipped without being read.
_SMALL_ARRAY = 4096


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF file says about its model, read from the metadata only.

    Hyperparameters are None when the file does not carry them (an adapter, a vision tower ...).
    `quantization` is llama.cpp's name of the file type ("Q4_1", "Q4_K_M", "F16"), or, for a file
    without `general.file_type`, the most common type of its weight matrices. `tensor_types`
    counts the tensors of each storage type, most common first (SmolLM2: 210 Q4_1, 61 F32 norms
    and a Q8_0 token embedding). `tied_embeddings` is True when the file has no separate output
    matrix (`output.weight`): the language-model head reuses the token embedding.
    """

    path: Path
    version: int
    architecture: str
    name: str | None
    model_type: str | None  # general.type: "model", "adapter" ...
    block_count: int | None
    embedding_length: int | None
    feed_forward_length: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None  # attention.key_length when present; see `head_dim`
    context_length: int | None
    rope_freq_base: float | None
    rms_eps: float | None
    vocab_size: int | None
    tokenizer_model: str | None  # tokenizer.ggml.model: "gpt2" (byte BPE), "llama" (SentencePiece)
    tokens: tuple[str, ...]
    bos_token_id: int | None
    eos_token_id: int | None
    file_type: int | None
    quantization: str
    tensor_count: int
    tensor_types: tuple[tuple[str, int], ...]
    tied_embeddings: bool

    @property
    def head_dim(self) -> int | None:
        """The attention head width: key_length if the file has it, else width / heads."""
        if self.key_length:
            return self.key_length
        if self.embedding_length and self.head_count:
            return self.embedding_length // self.head_count
        return None


class _Cursor:
    """Reads GGUF values front to back from a buffer, with bounds checks (corrupt files)."""

    def __init__(self, buf: Any, path: Path, endian: str) -> None:
        self.buf = buf
        self.size = len(buf)
        self.path = path
        self.pos = 0
        self.endian = endian
        self.u32 = struct.Struct(endian + "I")
        self.u64 = struct.Struct(endian + "Q")

    def corrupt(self, what: str) -> ModelLoadError:
        return ModelLoadError(
            f"GGUF file {self.path} is truncated or corrupt ({what} at byte {self.pos}); "
            "download or export it again"
        )

    def unpack(self, fmt: struct.Struct) -> Any:
        if self.pos + fmt.size > self.size:
            raise self.corrupt("unexpected end of file")
        (value,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return value

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.corrupt("a length past the end of the file")
        self.pos += n

    def string(self) -> str:
        n = self.unpack(self.u64)
        start = self.pos
        self.skip(n)
        return self.buf[start : self.pos].decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.skip(self.unpack(self.u64))


def _scalar_formats(endian: str) -> dict[int, struct.Struct]:
    from gguf import GGUFValueType as V

    codes = {
        V.UINT8: "B",
        V.INT8: "b",
        V.UINT16: "H",
        V.INT16: "h",
        V.UINT32: "I",
        V.INT32: "i",
        V.FLOAT32: "f",
        V.BOOL: "?",
        V.UINT64: "Q",
        V.INT64: "q",
        V.FLOAT64: "d",
    }
    return {int(k): struct.Struct(endian + c) for k, c in codes.items()}


# arrays of arrays deeper than this are no model's metadata (a crafted file nested thousands
# deep ended in a RecursionError)
_MAX_NESTING = 16


def _read_value(
    cur: _Cursor, vtype: int, scalars: dict[int, struct.Struct], keep: bool, depth: int = 0
) -> Any:
    """Read one value of GGUF type `vtype`; arrays not worth keeping come back as None."""
    from gguf import GGUFValueType as V

    if depth > _MAX_NESTING:
        raise cur.corrupt(f"arrays nested more than {_MAX_NESTING} deep")
    if vtype in scalars:
        return cur.unpack(scalars[vtype])
    if vtype == V.STRING:
        return cur.string()
    if vtype != V.ARRAY:
        raise cur.corrupt(f"unknown value type {vtype}")
    item_type = cur.unpack(cur.u32)
    count = cur.unpack(cur.u64)
    if item_type in scalars:
        size = scalars[item_type].size
        if not keep and count > _SMALL_ARRAY:
            cur.skip(count * size)
            return None
        start = cur.pos
        cur.skip(count * size)
        fmt = struct.Struct(f"{cur.endian}{count}{scalars[item_type].format[1:]}")
        return list(fmt.unpack_from(cur.buf, start))
    if item_type == V.STRING:
        if not keep and count > _SMALL_ARRAY:
            for _ in range(count):
                cur.skip_string()
            return None
        return [cur.string() for _ in range(count)]
    return [_read_value(cur, item_type, scalars, keep, depth + 1) for _ in range(count)]


def starts_as_gguf(path: Path) -> bool:
    """Return whether the file ``path`` starts with the GGUF magic (False: unreadable)."""
    try:
        with path.open("rb") as fh:
            return fh.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def _refuse_non_gguf(path: Path) -> None:
    """Raise unless `path` is a readable file that starts with the GGUF magic."""
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist; pass the path of a .gguf file")
    with path.open("rb") as fh:
        head = fh.read(8)
    if head[:4] != _MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file (it starts with {head[:4]!r}, not b'GGUF'); pass a .gguf "
            "model file such as one exported by llama.cpp's convert_hf_to_gguf.py"
        )
    if len(head) < 8:  # the magic and the version
        raise ModelLoadError(
            f"GGUF file {path} is truncated: it holds {len(head)} bytes, not even its header; "
            "pass a complete .gguf file"
        )


def _one_int(value: Any, key: str, path: Path) -> int | None:
    """An int field; a per-layer array must be uniform (heterogui's models have equal layers)."""
    if value is None:
        return None
    if isinstance(value, list):
        if not value or len(set(value)) != 1:
            raise ModelLoadError(
                f"GGUF file {path} has per-layer values for {key} ({excerpt(value, 60)}); only "
                "models whose layers all have the same shape are supported"
            )
        value = value[0]
    return int(value)


def _quantization(file_type: int | None, weight_types: Counter[int]) -> str:
    """llama.cpp's name of the file type, else the most common type of the weight matrices."""
    from gguf import GGMLQuantizationType, LlamaFileType

    if file_type is not None:
        try:
            name = LlamaFileType(file_type).name
        except ValueError:
            name = ""
        if name:
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    if not weight_types:
        return "unknown"
    common = weight_types.most_common(1)[0][0]
    try:
        return GGMLQuantizationType(common).name
    except ValueError:
        return f"type {common}"


def gguf_header(path: Path) -> GGUFHeader:
    """Read the model description of a GGUF file from its metadata, without touching a weight.

    Args:
        path: a .gguf file (GGUF version 2 or 3, little- or big-endian).

    Returns:
        the file's architecture, hyperparameters, vocabulary and quantization type.

    Raises:
        ModelLoadError: the file is missing, is not GGUF, or its metadata is truncated or corrupt.
    """
    from gguf import GGMLQuantizationType  # noqa: F401  (fails early if gguf is missing)

    path = Path(path)
    _refuse_non_gguf(path)
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        endian = "<"
        (version,) = struct.unpack_from("<I", buf, 4)
        if version & 0xFFFF == 0:  # a big-endian file reads as a huge little-endian number
            endian = ">"
            (version,) = struct.unpack_from(">I", buf, 4)
        if version not in (2, 3):
            raise ModelLoadError(
                f"GGUF file {path} has version {version}; only versions 2 and 3 are supported, "
                "convert it again with a current llama.cpp"
            )
        cur = _Cursor(buf, path, endian)
        cur.pos = 8
        scalars = _scalar_formats(endian)
        n_tensors = cur.unpack(cur.u64)
        n_fields = cur.unpack(cur.u64)
        fields: dict[str, Any] = {}
        for _ in range(n_fields):
            key = cur.string()
            vtype = cur.unpack(cur.u32)
            fields[key] = _read_value(cur, vtype, scalars, key == "tokenizer.ggml.tokens")
        types: Counter[int] = Counter()
        weight_types: Counter[int] = Counter()
        names: set[str] = set()
        data_end = 0  # the end of the furthest tensor's data, from the data section's start
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack(cur.u32)
            dims = [cur.unpack(cur.u64) for _ in range(n_dims)]
            ttype = cur.unpack(cur.u32)
            offset = cur.unpack(cur.u64)
            names.add(name)
            types[ttype] += 1
            if n_dims >= 2:
                weight_types[ttype] += 1
            data_end = max(data_end, offset + _tensor_bytes(dims, ttype))
        _refuse_truncated(path, cur, fields, data_end)
    return _header(path, version, fields, n_tensors, types, weight_types, names)


def _tensor_bytes(dims: list[int], ggml_type: int) -> int:
    """Return the bytes a tensor of ``dims`` takes in ``ggml_type`` (0 for a type gguf does not
    know: its extent is not checked)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return 0
    count = 1
    for d in dims:
        count *= d
    return count // block * size


def _refuse_truncated(path: Path, cur: _Cursor, fields: dict[str, Any], data_end: int) -> None:
    """Raise when the file ends before its tensor table's last tensor does (a partial copy).

    The tensor data starts at the end of the table, rounded up to ``general.alignment``.
    """
    alignment = fields.get("general.alignment", 32)
    alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
    needed = -(-cur.pos // alignment) * alignment + data_end
    if needed > cur.size:
        raise ModelLoadError(
            f"GGUF file {path} is truncated: its tensors need {needed:,} bytes and the file has "
            f"{cur.size:,} (an interrupted download or copy?); download or copy it again"
        )


def _header(
    path: Path,
    version: int,
    fields: dict[str, Any],
    n_tensors: int,
    types: Counter[int],
    weight_types: Counter[int],
    names: set[str],
) -> GGUFHeader:
    """Return the header of a file's metadata fields and tensor table (``gguf_header``)."""
    meta = _Fields(fields, _architecture(fields, path), path)
    tokens = tuple(fields.get("tokenizer.ggml.tokens") or ())
    file_type = meta.opt_int("general.file_type")
    return GGUFHeader(
        path=path,
        version=version,
        architecture=meta.arch,
        name=fields.get("general.name"),
        model_type=fields.get("general.type"),
        block_count=meta.arch_int("block_count"),
        embedding_length=meta.arch_int("embedding_length"),
        feed_forward_length=meta.arch_int("feed_forward_length"),
        head_count=meta.arch_int("attention.head_count"),
        head_count_kv=meta.arch_int("attention.head_count_kv"),
        key_length=meta.arch_int("attention.key_length"),
        context_length=meta.arch_int("context_length"),
        rope_freq_base=meta.arch_float("rope.freq_base"),
        rms_eps=meta.arch_float("attention.layer_norm_rms_epsilon"),
        vocab_size=meta.arch_int("vocab_size") or (len(tokens) or None),
        tokenizer_model=fields.get("tokenizer.ggml.model"),
        tokens=tokens,
        bos_token_id=meta.opt_int("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.opt_int("tokenizer.ggml.eos_token_id"),
        file_type=file_type,
        quantization=_quantization(file_type, weight_types),
        tensor_count=n_tensors,
        tensor_types=tuple((_type_name(t), n) for t, n in types.most_common()),
        tied_embeddings="token_embd.weight" in names and "output.weight" not in names,
    )


def _architecture(fields: dict[str, Any], path: Path) -> str:
    """Return the file's general.architecture; ModelLoadError when it has none."""
    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelLoadError(
            f"GGUF file {path} has no general.architecture; it is not a model file llama.cpp "
            "or transformers can load, export it again"
        )
    return arch


@dataclass(frozen=True)
class _Fields:
    """A GGUF file's metadata fields, read as the header's numbers (None when absent)."""

    fields: dict[str, Any]
    arch: str
    path: Path

    def arch_int(self, key: str) -> int | None:
        """Return the architecture's ``key`` (e.g. "block_count") as one int for every layer."""
        return _one_int(self.fields.get(f"{self.arch}.{key}"), f"{self.arch}.{key}", self.path)

    def arch_float(self, key: str) -> float | None:
        """Return the architecture's ``key`` as a float, None unless it is a number."""
        value = self.fields.get(f"{self.arch}.{key}")
        return float(value) if isinstance(value, int | float) else None

    def opt_int(self, key: str) -> int | None:
        """Return the field ``key`` when it is an int, else None."""
        value = self.fields.get(key)
        return int(value) if isinstance(value, int) else None


def _type_name(ggml_type: int) -> str:
    """Return the name of a GGML tensor type ("Q4_1"), or "type N" for one gguf does not know."""
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"type {ggml_type}"
