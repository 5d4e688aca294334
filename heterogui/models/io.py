"""Save and load networks as folders: config.json + model.safetensors (weights only).

The folder format is the one the zoo caches, the CLI reads from recipes, and users upload.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from heterogui.errors import ExportError, ModelLoadError
from heterogui.models.family import Head, Network, config_from_dict, config_to_dict, family_of

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Return a sha256 over the names, dtypes, shapes and bytes of a state dict (sorted)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_folder(target: Path, overwrite: bool = False):
    """Return a temp folder beside ``target`` and a commit function that moves it into place.

    ``commit`` raises FileExistsError (and removes the temp folder) if ``target`` exists and
    ``overwrite`` is off. Prefer ``atomic_output``, which also cleans up on failure.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))

    def commit() -> None:
        if target.exists():
            if not overwrite:
                shutil.rmtree(tmp, ignore_errors=True)
                raise FileExistsError(target)
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)

    return tmp, commit


@contextmanager
def atomic_output(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp folder that becomes ``target`` if the block succeeds; else nothing is left.

    Raises:
        ExportError: ``target`` exists (and ``overwrite`` is off), appeared while writing, or
            writing failed.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise ExportError(
            f"output folder {str(target)!r} already exists; choose another folder or allow "
            "overwriting it (--overwrite)"
        )
    tmp, commit = atomic_folder(target, overwrite)
    try:
        yield tmp
        commit()
    except FileExistsError as exc:
        raise ExportError(f"output folder {str(target)!r} appeared while writing; retry") from exc
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"could not write {target}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); re-export the model") from exc


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never pickle).

    Raises:
        ModelLoadError: the file is missing or not a valid safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file {str(path)!r} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{str(path)!r} is not a valid safetensors file ({exc}); export the weights with "
            "safetensors.torch.save_file"
        ) from exc


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
    config = config_from_dict(data["config"])
    module = family_of(config).build(config)
    state = load_state(folder / WEIGHTS_FILE)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights in {folder} do not fit its config: {exc}") from exc
    module.to(device).eval()
    classes = tuple(data.get("classes") or range(config.num_classes))
    identity = frozenset(data.get("identity_blocks", ()))
    heads = tuple(Head.from_dict(h) for h in data["heads"]) if data.get("heads") else None
    return Network(config, module, classes, identity, data.get("label", folder.name), heads)
