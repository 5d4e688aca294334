"""Save and load networks as folders: config.json + model.safetensors (weights only).

The folder format is the one the zoo caches, the CLI reads from recipes, and users upload.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from heterogui.errors import ModelLoadError, excerpt, nesting
from heterogui.folders import atomic_output
from heterogui.models.conv import channels_last_weights
from heterogui.models.family import Head, Network, config_from_dict, config_to_dict, family_of
from heterogui.models.headers import read_safetensors_header
from heterogui.models.storage import allocate, holding_state, on_meta

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


# Files this large keep their hash while their inode, size, modification and change times stay
# the same (in this process): a cached checkpoint's check and its load then hash it once, not
# twice. The change time is the kernel's own: a rewrite whose modification time was set back
# (cp -p, rsync -t, tar x) still moves it.
REMEMBERED_HASH_BYTES = 16 << 20
_REMEMBERED: dict[tuple[str, int, int, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    info = os.stat(path)
    key = None
    if info.st_size >= REMEMBERED_HASH_BYTES:
        key = (
            os.path.realpath(path),
            info.st_ino,
            info.st_size,
            info.st_mtime_ns,
            info.st_ctime_ns,
        )
        if key in _REMEMBERED:
            return _REMEMBERED[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if key is not None:
        if len(_REMEMBERED) >= 64:
            _REMEMBERED.clear()
        _REMEMBERED[key] = digest.hexdigest()
    return digest.hexdigest()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Return a sha256 over the names, dtypes, shapes and bytes of a state dict (sorted)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_network(
    net: Network, folder: str | Path, extra: dict[str, Any] | None = None, overwrite: bool = False
) -> Path:
    """Write ``net`` to ``folder`` atomically (config.json + model.safetensors).

    extra: more JSON-ready fields for config.json (e.g. training metrics).

    Raises:
        ExportError: ``folder`` exists (and ``overwrite`` is off) or writing failed.
    """
    folder = Path(folder)
    with atomic_output(folder, overwrite) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in net.module.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "heterogui-network"})
        config = {
            "heterogui": "network",
            "config": config_to_dict(net.config),
            "classes": list(net.head_classes()),
            "label": net.label,
            "identity_blocks": sorted(net.identity_blocks),
            "weights_sha256": file_sha256(tmp / WEIGHTS_FILE),
            **({"heads": [h.to_dict() for h in net.heads]} if net.heads else {}),
            **(extra or {}),
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return folder


def read_config(folder: str | Path) -> dict[str, Any]:
    """Return the parsed config.json of a network folder.

    Raises:
        ModelLoadError: the folder or its config is missing or not valid JSON.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(
            f"model folder {str(folder)!r} does not exist; pass a folder with "
            f"{CONFIG_FILE} and {WEIGHTS_FILE}"
        )
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(f"{str(folder)!r} has no {CONFIG_FILE}; it is not a model folder")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad JSON or text, a 5,000-digit number
        raise ModelLoadError(
            f"{path} is not valid JSON ({excerpt(nesting(exc), 80)}); re-export the model"
        ) from exc
    if not isinstance(data, dict):
        raise ModelLoadError(
            f"{path} holds a JSON {type(data).__name__}, not an object: it is not a model "
            "config; re-export the model"
        )
    return data


def check_weights_fit(build: Callable[[], torch.nn.Module], weights: Path, where: str) -> None:
    """Raise unless the weights file has exactly the tensors ``build`` makes (headers only).

    The module is built on the meta device (shapes, no memory) and compared with the
    safetensors header, so a config.json that describes a model other than its weights (a
    width of 15000, say) is refused before anything is allocated.

    Raises:
        ModelLoadError: naming the first tensors that are missing, extra or of another shape.
    """
    try:  # sizes no tensor can have (a kernel of 10**9) fail in torch, not in the config check
        want = {k: tuple(v.shape) for k, v in on_meta(build).state_dict().items()}
    except (RuntimeError, OverflowError, ValueError) as exc:
        raise ModelLoadError(
            f"the config.json of {where} describes a model torch cannot build "
            f"({excerpt(str(exc).splitlines()[0] if str(exc) else exc, 100)}); re-export the model"
        ) from exc
    have = {k: tuple(info["shape"]) for k, info in read_safetensors_header(weights).items()}
    problems = [f"{k} missing" for k in sorted(set(want) - set(have))]
    problems += [f"{k} not in the model" for k in sorted(set(have) - set(want))]
    problems += [
        f"{k} is {have[k]} in the file but {want[k]} by config.json"
        for k in sorted(set(want) & set(have))
        if want[k] != have[k]
    ]
    if problems:
        raise ModelLoadError(
            f"the weights in {where} do not fit its config.json ({len(problems)} tensors: "
            f"{excerpt('; '.join(problems), 160)}); re-export the model or fix config.json"
        )


def check_finite(state: dict[str, torch.Tensor], name: str) -> None:
    """Raise if a floating-point tensor of ``state`` holds NaN or inf.

    Raises:
        ModelLoadError: naming the model, the tensor and how many values are not finite.
    """
    for key, value in state.items():
        if value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise ModelLoadError(
                    f"model {name}: tensor {key} holds {bad} NaN or inf value(s); the model is "
                    "broken: re-train or re-export it"
                )


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle).

    Raises:
        ModelLoadError: the file is missing or not a valid safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file {str(path)!r} does not exist")
    if not os.access(path, os.R_OK):  # safetensors would say "No such file or directory"
        raise ModelLoadError(f"cannot read {str(path)!r}: permission denied; make it readable")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{str(path)!r} is not a valid safetensors file ({exc}); export the weights with "
            "safetensors.torch.save_file"
        ) from exc


# Class ids stop below a million (ImageNet-21k has 21,843 classes): scoring names every class
# up to the largest id, so an id of 10**30 in a config.json or a labels tensor would take all
# the memory there is.
CLASS_ID_LIMIT = 1_000_000


def check_head_classes(classes: Any, outputs: int, where: str) -> None:
    """Refuse a head's class ids that do not fit its ``outputs`` (one id per output).

    Raises:
        ModelLoadError: another count than ``outputs``, an id that is not an integer from 0
            below ``CLASS_ID_LIMIT``, or one id twice.
    """
    ids = list(classes) if isinstance(classes, list | tuple) else [classes]
    if len(ids) != outputs or not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c < CLASS_ID_LIMIT for c in ids
    ):
        raise ModelLoadError(
            f"{where} lists classes {excerpt(ids, 80)} for a head of {outputs} outputs; list "
            f"one class id (an integer from 0 to {CLASS_ID_LIMIT - 1:,}) per output"
        )
    twice = sorted({c for c in ids if ids.count(c) > 1})
    if twice:
        raise ModelLoadError(
            f"{where} lists class {excerpt(twice, 40)} twice in one head of {outputs} "
            "outputs; give each output its own class id"
        )


def saved_config(data: dict[str, Any], folder: Path) -> Any:
    """Return the family config of a network folder's config.json, checked field by field.

    Raises:
        ModelLoadError: the 'config' section is missing.
        ConfigError: an unknown family, or a field of the wrong type or out of range.
    """
    if not isinstance(data.get("config"), dict):
        raise ModelLoadError(
            f"{folder}/{CONFIG_FILE} has no 'config' section (the family and its widths); "
            "re-export the model"
        )
    return config_from_dict(data["config"])


def load_network(folder: str | Path, device: str | torch.device = "cpu") -> Network:
    """Load a network folder written by ``save_network``.

    Raises:
        ModelLoadError: missing/corrupt files, or weights that do not fit the config.
        ConfigError: an unknown family or config field.
    """
    folder = Path(folder)
    data = read_config(folder)
    if data.get("heterogui") != "network":
        raise ModelLoadError(f"{folder}/{CONFIG_FILE} does not describe a heterogui network")
    config = saved_config(data, folder)
    build = partial(family_of(config).build, config)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{str(folder)!r} has no {WEIGHTS_FILE}; re-export the model")
    check_weights_fit(build, weights, str(folder))
    state = load_state(weights)
    check_finite(state, data.get("label", folder.name))
    # the loaded tensors themselves (cast where the file holds another dtype): the weights are
    # held once, not once more as a randomly initialised model's own (decoders: seconds)
    try:
        module, missing, unexpected = holding_state(
            build, state, lambda v, want: v.to(want.dtype) if want is not None else v
        )
    except RuntimeError as exc:
        raise ModelLoadError(f"weights in {folder} do not fit its config: {excerpt(exc)}") from exc
    if missing or unexpected:  # check_weights_fit compared the names already
        raise ModelLoadError(
            f"weights in {folder} do not fit its config: missing {missing[:4]}, unexpected "
            f"{unexpected[:4]}"
        )
    allocate(module, torch.device("cpu"))  # what the file lacks (BatchNorm's batch counters)
    channels_last_weights(module)  # laid out as a built model's convolutions are
    module.to(device).eval()
    where = f"{folder}/{CONFIG_FILE}"
    listed = data.get("classes")  # written by every version; missing: one class per output
    classes = tuple(range(config.num_classes)) if listed is None else listed
    check_head_classes(classes, config.num_classes, where)
    identity = identity_blocks(data.get("identity_blocks", []), config, where)
    label = data.get("label", folder.name)
    if not isinstance(label, str) or not label:
        raise ModelLoadError(
            f"{where} has label {excerpt(repr(label), 40)}: it names the model in messages "
            "and must be text; re-export the model or fix config.json"
        )
    try:
        heads = tuple(Head.from_dict(h) for h in data["heads"]) if data.get("heads") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"{where} has malformed heads ({excerpt(exc, 60)}); give each a name and its "
            "classes, or re-export the model"
        ) from exc
    return Network(config, module, tuple(classes), identity, label, heads)


def identity_blocks(listed: Any, config: Any, where: str) -> frozenset[int]:
    """Return a network's identity blocks as its config.json lists them (block numbers).

    Raises:
        ModelLoadError: not a list of distinct block numbers of this network.
    """
    blocks = family_of(config).graph(config).num_blocks
    if not isinstance(listed, list) or not all(
        isinstance(b, int) and not isinstance(b, bool) and 0 <= b < blocks for b in listed
    ):
        raise ModelLoadError(
            f"{where} lists identity_blocks {excerpt(repr(listed), 60)}; list the numbers "
            f"(0 to {blocks - 1}) of the blocks padding inserted, or [] for none"
        )
    return frozenset(listed)
