"""Write and read merged models: model.safetensors (recipe in metadata), config.json,
recipe.yaml and report.json, all in one folder written atomically (design.md, CLI contract).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from heterogui.config import Recipe
from heterogui.errors import ModelLoadError
from heterogui.fusion.merged import MergedModel, MergedSpec, build_merged
from heterogui.models.io import CONFIG_FILE, WEIGHTS_FILE, atomic_output, load_state, read_config

RECIPE_FILE = "recipe.yaml"
REPORT_FILE = "report.json"


def save_merged(
    model: MergedModel,
    out: str | Path,
    recipe: Recipe | None = None,
    report: dict[str, Any] | None = None,
    overwrite: bool = False,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write a merged model folder atomically: a failure leaves no partial folder.

    extra_files: more text files to write (name -> content), e.g. a model card.

    Raises:
        ExportError: ``out`` exists and ``overwrite`` is False, or writing failed.
    """
    out = Path(out)
    with atomic_output(out, overwrite) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        metadata = {"format": "heterogui-merged"}
        if recipe is not None:
            metadata["recipe"] = recipe.to_json()
        save_file(state, str(tmp / WEIGHTS_FILE), metadata=metadata)
        config = {"heterogui": "merged", **model.spec.to_dict()}
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        if recipe is not None:
            (tmp / RECIPE_FILE).write_text(recipe.to_yaml())
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return out


def load_merged(folder: str | Path, device: str | torch.device = "cpu") -> MergedModel:
    """Load a merged model folder written by ``save_merged`` (eval mode).

    Raises:
        ModelLoadError: missing/corrupt files, or weights that do not fit the config.
    """
    folder = Path(folder)
    data = read_config(folder)
    if data.get("heterogui") != "merged":
        raise ModelLoadError(f"{folder}/{CONFIG_FILE} does not describe a heterogui merged model")
    spec = MergedSpec.from_dict({k: v for k, v in data.items() if k != "heterogui"})
    model = build_merged(spec)
    state = load_state(folder / WEIGHTS_FILE)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights in {folder} do not fit its config: {exc}") from exc
    return model.to(device).eval()
