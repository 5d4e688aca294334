"""The heterogui format: model.safetensors (recipe in its metadata), config.json, recipe.yaml,
report.json and the model card, in one folder written atomically.

Any merge can be written so (every family, partial zips included); a full zip is read back as
one network with every task head (``heterogui.sources.folder``), so it can be merged again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from heterogui.config import Recipe
from heterogui.export.job import HETEROGUI_FORMAT, Exporter, ExportJob, as_stored
from heterogui.folders import atomic_output
from heterogui.fusion.merged import MergedModel
from heterogui.models.io import CONFIG_FILE, WEIGHTS_FILE


def write_merged(
    model: MergedModel,
    folder: Path,
    recipe: Recipe | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write the weights (with the recipe in their metadata) and config.json into ``folder``.

    dtype: the floating tensors' dtype in the file (None: as computed).
    """
    state = {
        k: as_stored(v.detach().cpu(), dtype).contiguous() for k, v in model.state_dict().items()
    }
    # One metadata key: safetensors writes several in a random order, and a recorded recipe
    # must give a byte-identical file (config.json already says the folder is a merge).
    metadata = {"recipe": recipe.to_json()} if recipe is not None else {"format": "heterogui"}
    save_file(state, str(folder / WEIGHTS_FILE), metadata=metadata)
    config = {"heterogui": "merged", **model.spec.to_dict()}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


class NetworkExporter(Exporter):
    """The heterogui folder format (every merge fits it)."""

    name = HETEROGUI_FORMAT
    description = "heterogui folder (model.safetensors + config.json)"
    reader = "merged"

    def check_model(self, model: MergedModel) -> None:
        """Accept every merge."""

    def write(self, job: ExportJob, folder: Path) -> None:
        """Write weights, config, recipe, report and card."""
        write_merged(job.model, folder, job.recipe, job.dtype)
        job.write_side_files(folder)


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
    job = ExportJob(model, recipe, report, dict(extra_files or {}))
    with atomic_output(Path(out), overwrite) as tmp:
        NETWORK.write(job, tmp)
    return Path(out)


NETWORK = NetworkExporter()
