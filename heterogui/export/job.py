"""What an export writes, and the role every output format plays (``Exporter``).

An ``ExportJob`` holds the merged model and the files that travel with it (recipe, report,
model card); an ``Exporter`` writes one output format into a folder that the export registry
(``heterogui.export.registry``) creates atomically. Every format is readable again by a model
source (``reader``), so an export can be model A or B of the next merge.
"""

from __future__ import annotations

import math
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from heterogui.config import Recipe
from heterogui.errors import ExportError
from heterogui.export.card import with_folder_size
from heterogui.export.json_text import readable_json
from heterogui.fusion.merged import MergedModel
from heterogui.models.family import family_of
from heterogui.models.headers import read_safetensors_header

# Output formats (a source names the one that fits its models as ``Loaded.export_format``).
HETEROGUI_FORMAT = "heterogui"
HF_BERT_FORMAT = "hf-bert"
HF_VIT_FORMAT = "hf-vit"
HF_CAUSAL_LM_FORMAT = "hf-causal-lm"
RECIPE_FILE = "recipe.yaml"
REPORT_FILE = "report.json"
CARD_FILE = "README.md"
UNMERGE_FILE = "unmerge.safetensors"
# how a format that holds only full merges ends its refusal of a partial one (dropped where
# heterogui's format is then chosen by itself: ``run_export.fitting_format``)
OR_HETEROGUI = " or write the heterogui format, which holds partial merges"


@dataclass(frozen=True)
class WeightsDtype:
    """The dtype an export writes the merged weights in, and why (report.json and the card).

    name: a torch dtype name ("bfloat16"); why: the reason, a clause; asked: chosen by the user
    (the card's rerun command then names it).
    """

    name: str
    why: str
    asked: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        """Return the torch dtype."""
        return getattr(torch, self.name)

    @property
    def flag(self) -> str:
        """Return the rerun command's --export-dtype flag ("" for the default choice)."""
        return f" --export-dtype {self.name}" if self.asked else ""

    @property
    def note(self) -> str:
        """Return the model card's sentence."""
        return f"Weights: stored in {self.name}, {self.why}."


@dataclass
class ExportJob:
    """A merge to write.

    recipe / report: written as recipe.yaml / report.json when given. card: more text files,
    file name -> content (the model card README.md and its SVG figures). source_folder: model
    A's folder, whose tokenizer (and sentence-transformers modules) a text model's export
    carries. pooling: how the merged token states are pooled into a sentence embedding.
    text_limit: the most tokens heterogui gave a text of this merge (``datasets.refs.text_limit``
    of model A's tokenizer; None: no limit, or no text model).
    labels: per model, a classifier's label names (``Loaded.labels``; None: none known).
    dtype: the dtype the weights are written in (None: as computed; the Hugging Face formats
    then write float32).
    """

    model: MergedModel
    recipe: Recipe | None = None
    report: dict[str, Any] | None = None
    card: dict[str, str] = field(default_factory=dict)
    source_folder: Path | None = None
    pooling: str | None = None
    text_limit: int | None = None
    labels: tuple[tuple[str, ...] | None, ...] = ()
    dtype: torch.dtype | None = None

    @property
    def hf_dtype(self) -> torch.dtype:
        """Return the dtype a Hugging Face folder's weights are written in."""
        return self.dtype or torch.float32

    def write_side_files(self, folder: Path, note: str | None = None) -> None:
        """Write recipe.yaml, report.json and the card files into ``folder``.

        note: for a format that stores the merge in another shape than heterogui's (a Hugging
        Face folder: padded widths, one head), why its weights hold other parameters than the
        merge: the count of what ``folder`` holds (``folder_parameters``, read back from the
        written files) joins report.json ("parameters": "exported") and the card, with the note.
        """
        report, card = self.report, dict(self.card)
        if note is not None:
            count = folder_parameters(folder)
            if report is not None and isinstance(report.get("parameters"), dict):
                report = {**report, "parameters": {**report["parameters"], "exported": count}}
            if CARD_FILE in card:
                card[CARD_FILE] = with_folder_size(card[CARD_FILE], count, note)
        if self.recipe is not None:
            (folder / RECIPE_FILE).write_text(self.recipe.to_yaml(), encoding="utf-8")
        if report is not None:
            (folder / REPORT_FILE).write_text(
                readable_json(report, sort_keys=True), encoding="utf-8"
            )
        for name, text in card.items():
            (folder / name).write_text(text, encoding="utf-8")


def as_stored(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Return ``tensor`` in ``dtype`` when it holds floats (None: as it is)."""
    if dtype is None or not tensor.is_floating_point():
        return tensor
    return tensor.to(dtype)


def copy_present(names: Iterable[str], source: Path | None, folder: Path) -> None:
    """Copy the files ``names`` that ``source`` holds into ``folder`` (none without a source)."""
    for name in names if source is not None else ():
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)


def folder_parameters(folder: Path) -> int:
    """Return the numbers the weights files of an exported folder hold (headers only).

    The model's ``*.safetensors`` files (shards included), not heterogui's unmerge file.
    """
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        if path.name == UNMERGE_FILE:
            continue
        for entry in read_safetensors_header(path).values():
            total += math.prod(entry["shape"])
    return total


class Exporter(ABC):
    """One output format.

    name: the format's key (a recipe's sources name it as ``Loaded.export_format``);
    reader: the kind of model source that loads the written folder back; families: the model
    families whose merges it holds (empty: every family); closing: see the attribute.
    """

    name: str = ""
    description: str = ""
    reader: str = ""
    families: tuple[str, ...] = ()
    # trunk blocks after the last layer of a format that holds only full merges (the merge's
    # stop must be layers + closing); None: the format holds partial merges too
    closing: int | None = None

    def check_family(self, family: str) -> None:
        """Raise ExportError if this format cannot hold merges of ``family`` models.

        Read from the models' headers, it refuses a format before the merge runs.
        """
        if self.families and family not in self.families:
            raise ExportError(
                f"the {self.name} format holds merges of {' or '.join(self.families)} models, "
                f"not of {family} models; leave out --format (in Python, fmt): a merge is "
                "written in its models' own format"
            )

    def check(self, model: MergedModel) -> None:
        """Raise ExportError if this format cannot hold ``model`` (before anything is written):
        a merge of another family (``families``), then the format's own limits."""
        self.check_family(family_of(model.spec.trunk_config).name)
        self.check_model(model)

    @abstractmethod
    def check_model(self, model: MergedModel) -> None:
        """Raise ExportError if this format cannot hold ``model``, a merge of its families."""

    @abstractmethod
    def write(self, job: ExportJob, folder: Path) -> None:
        """Write the merge into the (new, empty) ``folder``."""
