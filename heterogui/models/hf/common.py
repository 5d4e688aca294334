"""What the Hugging Face adapters share: encoder shapes and loading a folder (or hub id).

BERT (``bert_io``) and ViT (``vit_io``) configs describe their encoder layers with the same
transformers fields; ``encoder_shape`` turns them into the per-layer fields of the family configs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from heterogui.errors import ExportError, ModelLoadError, excerpt
from heterogui.models.io import check_finite
from heterogui.models.storage import allocate, holding_state

# the families whose models are causal language models (a GPT-2, a Llama, Qwen2 or Mistral)
CAUSAL_LM_FAMILIES = ("decoder", "gpt2")


def encoder_shape(hf_config: Any) -> dict[str, Any]:
    """Return the encoder fields every family config takes (hidden, heads per layer ...).

    Raises:
        ModelLoadError: heads that do not divide hidden_size.
    """
    hidden, heads = int(hf_config.hidden_size), int(hf_config.num_attention_heads)
    if hidden % heads:
        raise ModelLoadError(f"hidden_size {hidden} is not a multiple of {heads} heads")
    layers = int(hf_config.num_hidden_layers)
    return {
        "hidden": hidden,
        "head_dim": hidden // heads,
        "heads": (heads,) * layers,
        "intermediate": (int(hf_config.intermediate_size),) * layers,
        "layer_norm_eps": float(hf_config.layer_norm_eps),
        "hidden_act": str(hf_config.hidden_act),
    }


def model_name(path: str | Path) -> tuple[str, bool]:
    """Return (name to load, local files only) of a folder or hub id.

    Hub ids are only fetched when HF_HUB_OFFLINE is not "1" (local folders never are).
    """
    expanded = Path(path).expanduser()
    name = str(expanded) if expanded.exists() else str(path)
    local = Path(name).is_dir() or os.environ.get("HF_HUB_OFFLINE") == "1"
    return name, local


def folder_config(path: str | Path) -> dict[str, Any]:
    """Return a folder's config.json as a dict ({} when it has none or it is not JSON)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return {}
    try:
        data = json.loads(config.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def has_architecture(path: str | Path, suffix: str) -> bool:
    """Return whether a folder's config.json names an architecture ending in ``suffix``."""
    archs = folder_config(path).get("architectures") or []
    return any(str(a).endswith(suffix) for a in archs)


def refuse_pickles(folder: Path) -> None:
    """Refuse a folder whose weights are PyTorch pickles only (heterogui reads safetensors).

    Raises:
        ModelLoadError: naming the conversion to run once.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # its shards are what transformers loads: safetensors, not pickles
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
            shards = {str(name) for name in weight_map.values()}
        except (OSError, ValueError, AttributeError, RecursionError):
            shards = set()  # the pre-flight and the loader name what is wrong with it
        pickled = sorted(name for name in shards if not name.endswith(".safetensors"))
        if pickled:
            raise ModelLoadError(
                f"{index} names the shard {excerpt(pickled[0], 80)!r}, which is no safetensors "
                "file: heterogui reads safetensors only (reading a pickle can run code); "
                "re-save the model with save_pretrained(..., safe_serialization=True)"
            )
        return
    if (folder / "model.safetensors").is_file():
        return
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ModelLoadError(
            f"{folder} has weights only as PyTorch pickles (.bin/.pt), which heterogui does "
            "not load (reading a pickle can run code). Convert once: load the state dict with "
            "torch.load(path, weights_only=True) and write it with safetensors.torch.save_file, "
            "or save_pretrained(..., safe_serialization=True)"
        )


def load_pretrained(
    path: str | Path, classifier: str, kind: str, tokenizer: bool = False
) -> tuple[Any, Any, str]:
    """Load a folder or hub id with ``AutoModel`` (or ``classifier`` when its config names one).

    classifier: the transformers auto class of the family's classifiers
    ("AutoModelForSequenceClassification"); kind: the family's name in messages ("BERT").
    Returns (model in eval mode, its tokenizer or None, the name it was loaded from); never
    with remote code, safetensors only.

    Raises:
        ModelLoadError: a missing folder or files, weights that do not fit config.json
            (``check_loading``), or NaN / inf in a weight.
    """
    import transformers
    from huggingface_hub.errors import StrictDataclassError  # a config field of a wrong type
    from safetensors import SafetensorError

    name, local = model_name(path)
    if Path(name).is_dir():
        refuse_pickles(Path(name))
    task = classifier.removeprefix("AutoModel")
    # GPT-2's causal LM is named GPT2LMHeadModel, not ...ForCausalLM
    suffixes = (task, "LMHeadModel") if task == "ForCausalLM" else (task,)
    named = any(has_architecture(name, suffix) for suffix in suffixes)
    auto = getattr(transformers, classifier) if named else None
    files = "config.json, model.safetensors" + (" and tokenizer files" if tokenizer else "")
    try:
        with quiet_transformers():  # its load report; what matters is checked below
            model, info = (auto or transformers.AutoModel).from_pretrained(
                name,
                local_files_only=local,
                output_loading_info=True,
                use_safetensors=True,
                ignore_mismatched_sizes=True,  # reported by the checks below, in one line
                # merges run in float32: a config's dtype (bfloat16) would round float32
                # weights on loading; weights stored in 16 bits widen exactly
                dtype=torch.float32,
            )
    # transformers reads the user's config.json: a field of the wrong type or range (a dtype
    # of [1], a pad_token_id past the vocabulary) fails inside it, with any of these
    except (
        OSError,
        ValueError,
        RuntimeError,
        SafetensorError,
        StrictDataclassError,
        AssertionError,
        IndexError,
        KeyError,
        TypeError,
    ) as exc:
        said = str(exc) or type(exc).__name__
        raise ModelLoadError(
            f"cannot load {name!r} as a Hugging Face {kind} ({excerpt(said, 300)}); pass a "
            f"save_pretrained folder with {files}"
        ) from exc
    tok = _load_tokenizer(name, local, files) if tokenizer else None
    check_loading(name, info, model.config, keep_pooler=bool(auto), head=None if auto else task)
    check_finite(model.state_dict(), name)  # by the names the user's files give the tensors
    return model.eval(), tok, name


def _load_tokenizer(name: str, local: bool, files: str) -> Any:
    """Return the tokenizer of model ``name``.

    Raises:
        ModelLoadError: its files do not load (a tokenizer.json that parses but lacks fields
            fails inside transformers with a KeyError or TypeError).
    """
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(name, local_files_only=local)
    except (
        OSError,
        ValueError,
        RuntimeError,
        KeyError,
        TypeError,
        AttributeError,
        IndexError,  # it reads config.json too: a torch_dtype of [1]
        AssertionError,
    ) as exc:
        what = (
            f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError | IndexError) else str(exc)
        )
        raise ModelLoadError(
            f"cannot load the tokenizer of {name!r} ({excerpt(what, 300)}): its tokenizer files "
            "(or its config.json) are broken or incomplete; pass a save_pretrained folder with "
            f"{files}"
        ) from exc


# weights of fine-tuned task heads a feature model drops (classifiers, question answering, a
# decoder's score head); pretraining heads (BERT's cls.*) are dropped as they should be
TASK_HEADS = ("classifier.", "qa_outputs.", "score.")


def _refuse_dropped_head(name: str, info: dict[str, Any], config: Any, head: str | None) -> None:
    """Refuse a fine-tuned task head (``TASK_HEADS``) that a feature-model load would drop.

    head: the family's classifier suffix when the model was loaded as a feature model (None:
    it was loaded with its own head); "ForCausalLM": a decoder, merged with its language-model
    head only.

    Raises:
        ModelLoadError: naming the head and the fix that fits the family and the head.
    """
    dropped = sorted(k for k in info.get("unexpected_keys") or [] if k.startswith(TASK_HEADS))
    if head is None or not dropped:
        return
    archs = list(getattr(config, "architectures", None) or [])
    shown = f"{name} holds a task head ({', '.join(dropped[:2])})"
    if head == "ForCausalLM":
        raise ModelLoadError(
            f"{shown} in place of a language-model head: heterogui merges decoders as causal "
            "language models (...ForCausalLM) only; merge the language model it was "
            "fine-tuned from"
        )
    unhead = "save the model without that head (model.base_model.save_pretrained(DIR))"
    classifier = all(k.startswith("classifier.") for k in dropped)
    fix = (
        f"if it classifies whole inputs, name its ...{head} architecture in config.json; "
        f"else {unhead}"
        if classifier and not archs
        else unhead
    )
    raise ModelLoadError(
        f"{shown} that its config.json's architectures {archs} do not load, so it would be "
        f"dropped: heterogui merges ...{head} models and feature models; {fix}"
    )


def check_loading(
    name: str, info: dict[str, Any], config: Any, keep_pooler: bool, head: str | None = None
) -> None:
    """Refuse weights that do not fit config.json: missing (they would be random), of another
    shape (re-initialised), of layers past the config's count, or a classifier the loaded model
    has no place for (silently dropped).

    head: the family's classifier suffix ("ForSequenceClassification") when the model was
    loaded as a feature model: a ``classifier.*`` weight then belongs to a head it dropped.

    Raises:
        ModelLoadError: naming the first such weight and the fix.
    """
    _refuse_dropped_head(name, info, config, head)  # first: it explains missing weights too
    # A feature model never uses its pooler (the family's head pools token states).
    missing = [k for k in info.get("missing_keys") or [] if keep_pooler or "pooler" not in k]
    if missing:
        raise ModelLoadError(
            f"{name} lacks weights {sorted(missing)[:5]}: they would be random; pass the "
            "model's complete files"
        )
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        key, stored, expected = mismatched[0]
        raise ModelLoadError(
            f"{name}: weight {key} is {tuple(stored)} in model.safetensors but config.json "
            f"makes it {tuple(expected)} ({len(mismatched)} weight(s) differ); fix config.json "
            "or save the model again with save_pretrained"
        )
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    extra = sorted(
        {int(m.group(1)) for k in info.get("unexpected_keys") or [] if (m := _LAYER.search(k))}
    )
    if layers and extra and extra[-1] >= layers:
        raise ModelLoadError(
            f"{name}: config.json says {layers} layers but model.safetensors holds layer "
            f"{extra[-1]}, which would be dropped; fix num_hidden_layers in config.json"
        )


# the layer index in a transformers weight name: encoder.layer.3., model.layers.3., h.3.
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h)\.(\d+)\.")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings (its load report) and its progress bars (loading and
    writing weights: heterogui reports its own stages) for the duration."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def holding(
    build: Callable[[], Any],
    state: dict[str, torch.Tensor],
    dtype: torch.dtype,
) -> Any:
    """Return the transformers model ``build()`` makes, holding ``state``'s tensors in ``dtype``.

    For ``save_pretrained``, not for running: the model is built on the meta device and takes
    the tensors themselves (cast where ``dtype`` differs), so writing a merge neither
    initialises a model it overwrites nor holds its weights once more (a decoder's export held
    them three times). Buffers transformers does not save (rotary frequencies, position ids)
    stay on the meta device.

    Raises:
        ExportError: ``state`` does not fit the model.
    """
    model, missing, unexpected = holding_state(
        build, state, lambda v, _want: v.to("cpu", dtype if v.is_floating_point() else v.dtype)
    )
    if missing or unexpected:
        raise ExportError(
            f"{type(model).__name__} export state mismatch: missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}"
        )
    return model.eval()


def adapted(
    build: Callable[[], torch.nn.Module],
    state: dict[str, torch.Tensor],
    copy: bool,
    label: str,
    adapter: str,
    complete: str,
) -> torch.nn.Module:
    """Return the heterogui module ``build()`` makes, holding ``state`` (converted from a
    transformers model by an adapter) in float32, in eval mode.

    Built on the meta device, so never initialised only to be overwritten (seconds for a
    decoder). copy: the tensors are copied (the caller's model stays its own); False takes
    them as they are where already float32 (a model loaded from a folder and dropped after:
    the weights are held once, not twice).

    Raises:
        ModelLoadError: ``state`` does not fill the module: naming the model (``label``), the
            ``adapter`` ("BERT") and the ``complete`` model to pass instead.
    """
    module, missing, unexpected = holding_state(
        build, state, lambda v, want: v.to(want.dtype if want is not None else v.dtype, copy=copy)
    )
    if missing or unexpected:
        raise ModelLoadError(
            f"{label}: weights do not fit the {adapter} adapter (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}); pass a complete {complete}"
        )
    device = next(iter(state.values())).device if state else torch.device("cpu")
    return allocate(module, device).eval()


def check_stream(hidden: int, head_dim: int, heads: int, kind: str, field: str) -> None:
    """Refuse a merged stream a transformers model that ties heads to its width cannot hold.

    Widths planned from rho always fit (``zip.stream_width``); a width set by hand, or more
    heads kept than the stream has room for, may not.

    Raises:
        ExportError: the stream is no whole number of heads, or fewer heads than a layer has.
    """
    if hidden % head_dim:
        raise ExportError(
            f"the merged stream's width {hidden} is not a whole number of heads of {head_dim}: "
            f"a {kind}'s {field} is its heads x their size; set the stream's width to a "
            f"multiple of {head_dim} (or leave it to rho); the heterogui format holds any width"
        )
    if heads > hidden // head_dim:
        raise ExportError(
            f"the merged stream's width {hidden} holds {hidden // head_dim} heads of {head_dim} "
            f"but a layer has {heads}: a {kind}'s {field} is its heads x their size; keep fewer "
            "heads (a larger rho on the attention spaces) or widen the stream; the heterogui "
            "format holds them"
        )
