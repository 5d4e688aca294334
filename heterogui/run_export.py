"""Writing a finished merge (``run.RunResult``) to a new folder in an output format.

``export`` is the one writer behind ``heterogui merge --out``, the Python API and the
workbench's Export tab; ``data_files`` and ``model_folders`` name the inputs an output folder
may not overwrite or lie inside.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heterogui import run_group
from heterogui.config import EXPORT_DTYPES, Recipe
from heterogui.datasets.refs import text_limit
from heterogui.errors import ConfigError, ExportError
from heterogui.export.job import (
    HETEROGUI_FORMAT,
    OR_HETEROGUI,
    Exporter,
    ExportJob,
    WeightsDtype,
)
from heterogui.export.registry import exporter, write_export
from heterogui.fusion.merged import MergedModel
from heterogui.nway import GroupMergeResult
from heterogui.report import card_files
from heterogui.report_group import group_card_files
from heterogui.sources import registry as sources
from heterogui.sources.base import Pair

if TYPE_CHECKING:
    from heterogui.run import RunResult

log = logging.getLogger(__name__)


def export_format(pair: Pair) -> str:
    """Return the output format that fits a pair: its sources' format when they share one.

    Three or more models: heterogui (``run_group.check_format``).
    """
    fmt = pair.a.export_format
    if pair.more or fmt != pair.b.export_format:
        return HETEROGUI_FORMAT
    return fmt


def fitting_format(pair: Pair, model: MergedModel) -> tuple[str, str | None]:
    """Return the format a merge is written in by default, and why not the pair's own (None:
    it is the pair's own).

    The pair's format (``export_format``), unless that cannot hold this merge (a partial zip
    of Hugging Face models, head counts transformers cannot express): then heterogui's, which
    holds every merge of two models, with the exporter's reason.
    """
    own = export_format(pair)
    try:
        exporter(own).check(model)
    except ExportError as exc:  # its fix, "or write the heterogui format", is what happens
        return HETEROGUI_FORMAT, str(exc).replace(OR_HETEROGUI, "")
    return own, None


def export_dtype(
    pair: Pair, asked: str = "auto", computed: str = "float32", scored: bool = True
) -> WeightsDtype:
    """Return the dtype an export writes the merge's weights in, and why.

    asked: one of ``EXPORT_DTYPES``; "auto": the dtype every model is stored in
    (``Loaded.stored_dtype``: float16 models give a float16 merge), else (the models' dtypes
    differ, or one is quantized) float32. computed: the dtype the merge was computed in (the
    recipe's dtype). scored: whether the merge has scores (the note names them then).

    Raises:
        ConfigError: an unknown dtype.
    """
    if asked not in EXPORT_DTYPES:
        raise ConfigError(
            f"export dtype {asked!r} is unknown; use one of {', '.join(EXPORT_DTYPES)}"
        )
    rounded = (
        f"the merge and its scores were computed in {computed}"
        if scored
        else f"the merge was computed in {computed}"
    )
    if asked != "auto":
        return WeightsDtype(asked, f"as asked ({rounded})", asked=True)
    stored = [m.stored_dtype for m in pair.models]
    every = "both" if len(stored) == 2 else "all"
    if stored[0] is not None and len(set(stored)) == 1:
        name = stored[0]
        return WeightsDtype(name, f"the dtype {every} source models are stored in ({rounded})")
    kinds = ", ".join(
        f"{m.name}: {d or 'quantized or FP8'}" for m, d in zip(pair.models, stored, strict=True)
    )
    return WeightsDtype(
        "float32",
        f"as the source models are not stored in one float dtype ({kinds}); {rounded}",
    )


def export(
    run: RunResult,
    out: str | Path,
    overwrite: bool = False,
    fmt: str | None = None,
    dtype: str = "auto",
) -> Path:
    """Write a merge to the new folder ``out`` (atomically) in ``fmt`` (None: the one that fits,
    ``fitting_format``: the pair's own, else heterogui's, with a warning that says why), its
    weights in ``dtype`` (one of ``EXPORT_DTYPES``; "auto": ``export_dtype``).

    A merge of three or more models is written in the heterogui format only.

    Raises:
        ConfigError: not a run's result, an unknown format or dtype, or another format than
            heterogui for three or more models.
        ExportError: the format cannot hold this merge, ``out`` exists, or writing failed.
    """
    if not all(hasattr(run, k) for k in ("result", "recipe", "report", "pair")):
        raise ConfigError(
            f"run.export writes what run.merge returns (the merge with its recipe and report), "
            f"not a {type(run).__name__}: an in-memory merge (heterogui.merge(a, b, batches)) "
            "records no recipe; run it as a recipe with run.merge(RECIPE) to export it"
        )
    if fmt is not None:
        exporter(fmt)  # an unknown format: refused before anything is written
    weights = export_dtype(run.pair, dtype, run.recipe.dtype, run.scores is not None)
    if isinstance(run.result, GroupMergeResult):
        fmt = run_group.check_format(fmt)
        card = group_card_files(
            run.result, run.pair, run.task, run.scores, relative_inputs(run.recipe), weights
        )
    else:
        fitting, why = fitting_format(run.pair, run.result.model)
        if fmt is None:
            fmt = fitting
            if why is not None:
                log.warning("writing the heterogui format, as the models' own cannot hold: %s", why)
        card = card_files(
            run.result,
            run.pair,
            run.task,
            run.scores,
            fmt,
            fmt == fitting,
            relative_inputs(run.recipe),
            weights,
        )
    inputs = [*model_folders(run.pair), *data_files(run.recipe)]
    job = ExportJob(
        run.result.model,
        run.recipe,
        # a rerun of recipe.yaml writes it again with --format and --export-dtype
        {**run.report, "format": fmt, "weights_dtype": weights.name},
        card,
        run.pair.a.folder,
        getattr(run.pair.a.net.config, "pooling", None),
        text_limit(run.pair.a.tokenizer) if run.pair.a.tokenizer is not None else None,
        tuple(m.labels for m in run.pair.models),
        weights.torch_dtype,
    )
    return write_export(job, out, fmt, overwrite, inputs)


def model_folders(pair: Pair) -> list[Path]:
    """Return the local folders the models were read from."""
    return [m.folder for m in pair.models if m.folder is not None]


def _named_paths(recipe: Recipe) -> list[str]:
    """Return the local files and folders a recipe names (models and data), where they exist,
    as the recipe writes them."""
    data = (recipe.calibration, recipe.evaluation)
    named = [*(m.path for m in recipe.models), *(ref.source for ref in data if ref is not None)]
    # an empty reference is no path (Path("") is the current folder): the loader refuses it
    return [p for p in named if p.strip() and Path(p).expanduser().exists()]


def data_files(recipe: Recipe) -> list[Path]:
    """Return the local files and folders a recipe names (models and data), where they exist."""
    return [Path(p).expanduser() for p in _named_paths(recipe)]


def relative_inputs(recipe: Recipe) -> list[str]:
    """Return the recipe's relative local paths: a rerun reads them from the current folder."""
    return list(
        dict.fromkeys(p for p in _named_paths(recipe) if not Path(p).expanduser().is_absolute())
    )


def check_format(recipe: Recipe, fmt: str | None) -> None:
    """Refuse an output format that cannot hold the recipe's merge, before the merge runs.

    Three or more models: heterogui only (``run_group.check_format``); two: a format for their
    family, read from model A's header (the exporter checks the merged model again when it
    writes).

    Raises:
        ConfigError: another format than heterogui for three or more models.
        ExportError: a format for another family of models.
        ModelLoadError: a model reference whose header cannot be read.
    """
    if recipe.more_models:
        run_group.check_format(fmt)
    elif fmt is not None:
        chosen = exporter(fmt)
        header = sources.describe(recipe.model_a.path)
        chosen.check_family(header.family)
        if chosen.closing is not None and recipe.stop is not None:
            _check_full_stop(recipe, chosen, header)


def _check_full_stop(recipe: Recipe, chosen: Exporter, header: Any) -> None:
    """Refuse, before the merge, a partial stop that a full-merge format cannot hold (the
    deeper model's layers, read from both headers; the exporter checks the merge again).

    Raises:
        ExportError: the recipe's stop lies before the full merge's.
    """
    cards = [header.card, sources.describe(recipe.model_b.path).card]
    if any(card is None for card in cards):
        return  # no layer count in the headers: the exporter refuses it after the merge
    full = max(card.depth for card in cards) + chosen.closing
    if recipe.stop < full:
        raise ExportError(
            f"the recipe stops at block {recipe.stop}, but the {chosen.name} format needs every "
            f"layer merged (stop {full}, or null): merge every layer (stop: null){OR_HETEROGUI}"
        )
