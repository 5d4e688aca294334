"""Export the session's merge through the one export path, and repeat a merge from a recipe.

The session's merge becomes a ``heterogui.run.RunResult`` (its recipe completed by
``run.complete_recipe``, its report by ``heterogui.report``), written by ``run_export.export``
in the format that fits the models; importing a recipe runs ``run.merge``, exactly what
``heterogui merge`` runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from pathlib import Path
from typing import Any

from heterogui import run, run_export
from heterogui.config import Recipe
from heterogui.errors import ConfigError, ExportError, HeteroguiError, excerpt
from heterogui.export.job import (
    HETEROGUI_FORMAT,
    HF_BERT_FORMAT,
    HF_CAUSAL_LM_FORMAT,
    HF_VIT_FORMAT,
)
from heterogui.folders import check_names, check_output
from heterogui.pipeline import is_merge_of, resolved_settings
from heterogui.progress import Progress
from heterogui.recipe_parse import load_recipe, parse_recipe
from heterogui.report import add_pair_notes, merge_report
from heterogui.sizes import merge_size, reference_sizes
from heterogui.sources.upload import as_uploaded, check_still_there
from heterogui.text_input import typed_path
from heterogui.ui import history, labels, loading, work
from heterogui.ui.export_guard import ExportGuard
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session

AUTO = "auto"  # the format choice that means: the one that fits this merge (``fitting_format``)
FORMAT_HELP = {
    HETEROGUI_FORMAT: "a heterogui folder (config.json + model.safetensors): holds every merge, "
    "partial zips too; a full zip of classifiers loads again as a model here",
    HF_BERT_FORMAT: "a Hugging Face BERT folder (AutoModel.from_pretrained), with the tokenizer",
    HF_VIT_FORMAT: "a Hugging Face ViT folder (AutoModel.from_pretrained)",
    HF_CAUSAL_LM_FORMAT: "a Hugging Face causal-LM folder (config.json, model.safetensors, "
    "generation_config.json, the tokenizer) that loads with "
    "AutoModelForCausalLM.from_pretrained",
}


def session_run(session: Session) -> run.RunResult:
    """Return the session's current merge as a finished run (recipe, report, scores).

    Raises:
        ConfigError: nothing merged yet.
    """
    result = session.result
    if result is None or session.pair is None or session.calibration is None:
        raise nothing_to_export(session)
    pair = dataclasses.replace(session.pair, notes=loading.pair_notes(session.a, session.b))
    task = session.task
    recipe = run.complete_recipe(pair, session.calibration, result, evaluation=session.evaluation)
    scores = None
    if session.evaluation is not None and session.merged_metrics is not None:
        scores = {**session.baseline, "merged": session.merged_metrics}
    seconds = session.history[-1]["seconds"] if session.history else 0.0
    report = merge_report(result, recipe, seconds, task, scores, session.calibration.count)
    add_pair_notes(report, pair)
    return run.RunResult(
        result, recipe, report, pair, session.calibration, session.evaluation, scores
    )


def unmerged_settings(session: Session) -> str:
    """Return the Zip tab's settings that differ from the current merge's ("fusion average,
    rho 0.9"), or "" when the knobs are the merge's."""
    result = session.result
    if result is None or is_merge_of(result, session.settings):
        return ""
    want = resolved_settings(result.prepared.net_a, session.settings)
    return ", ".join(
        f"{f.name} {labels.FUSION_NAMES.get(value, value) if f.name == 'fusion' else value}"
        for f in dataclasses.fields(want)
        if f.name != "kept_heads"
        and (value := getattr(want, f.name)) != getattr(result.settings, f.name)
    )


def nothing_to_export(session: Session) -> ConfigError:
    """Return the refusal of an export with no current merge, naming the last merge if any."""
    first = "merge first (Zip tab): there is nothing to export yet"
    return ConfigError(work.no_merge(session, "export a merge of the current ones", first))


def formats(session: Session) -> list[str]:
    """Return the output formats of the session's pair: its own first, then heterogui's."""
    if session.pair is None:
        return []
    return list(dict.fromkeys((run_export.export_format(session.pair), HETEROGUI_FORMAT)))


def fitting_format(session: Session) -> tuple[str | None, str]:
    """Return the format the current merge is best written in, and why (Markdown).

    The pair's own format, unless it cannot hold this merge (a partial zip of a Hugging Face
    model): then the heterogui format, with the reason.
    """
    if session.pair is None or session.result is None:
        return None, "Merge first: the output format follows the models."
    fitting, why = run_export.fitting_format(session.pair, session.result.model)
    if why is not None:
        own = run_export.export_format(session.pair)
        return fitting, (f"**{fitting}**: {FORMAT_HELP[fitting]}. Not {own}: {excerpt(why, 300)}")
    return fitting, f"**{fitting}**: {FORMAT_HELP.get(fitting, 'the models’ own format')}."


def chosen_format(session: Session, fmt: str | None) -> str:
    """Return the format a choice names: "auto" (or none) is the one that fits the merge.

    Raises:
        ConfigError: nothing merged yet, or a format that does not fit these models.
    """
    if not fmt or fmt == AUTO:
        fitting, _ = fitting_format(session)
        if fitting is None:
            raise nothing_to_export(session)
        return fitting
    if fmt not in formats(session):
        raise ConfigError(
            f"format {fmt!r} does not fit these models: choose {AUTO} or "
            f"{' or '.join(formats(session))}"
        )
    return fmt


def export_path(out: str, root: Path) -> Path:
    """Return the folder a typed name or path means, which must lie below the export root.

    Relative names are taken below the root, never below the app's working folder.

    Raises:
        ExportError: nothing typed, a control character or an over-long name, or a path
            outside the root (or the root itself).
    """
    text = typed_path(out)
    if not text:
        raise ExportError("type an output folder for the export")
    check_names(text)  # a control character (NUL) would fail to resolve, a long name to write
    path = Path(text).expanduser()
    resolved = (path if path.is_absolute() else root / path).resolve()
    if root not in resolved.parents:
        raise ExportError(
            f"{excerpt(text, 120)!r} is not a folder below the export folder {root}; name a "
            "folder inside it (the app's --export-root option chooses another export folder)"
        )
    return resolved


def export(
    session: Session,
    out: str,
    root: Path,
    overwrite: bool = False,
    fmt: str | None = None,
    dtype: str | None = None,
    guard: ExportGuard | None = None,
) -> Path:
    """Write the merge to a new folder below ``root`` (atomically) in ``fmt``.

    overwrite: replace an earlier export of heterogui (never another folder). fmt: one of
    ``formats(session)``, or None / "auto": the format that fits the merge (``fitting_format``).
    dtype: the weights' dtype (``config.EXPORT_DTYPES``; None: "auto").
    guard: the app's record of the open sessions (``Resources.exports``): the export never
    replaces another open session's export or a folder or file another open session reads.

    Raises:
        ExportError: a folder outside the root, an existing folder (without overwrite) or one
            heterogui did not write, an input folder (of any open session), another open
            session's export, or a failed write.
        ConfigError: nothing merged yet, or a format that does not fit these models.
    """
    path = export_path(out, root)
    done = session_run(session)
    fmt = chosen_format(session, fmt)
    inputs = [*run_export.model_folders(done.pair), *run_export.data_files(done.recipe)]
    with guard.writing(path, session) if guard else contextlib.nullcontext([]) as others:
        check_output(path, overwrite, [*inputs, *others])  # before the card and figures
        run_export.export(done, path, overwrite=overwrite, fmt=fmt, dtype=dtype or AUTO)
    session.last_export, session.exported_merge = str(path), session.merge_count
    return path


def archive(folder: Path, session: Session) -> str:
    """Return a .zip of an exported folder for download, in the session's own folder.

    The session's earlier download is removed first (the page offers one at a time), and the
    rest goes when the session ends (``Session.remove_files``); the copy Gradio serves goes an
    hour after it was made (``app.DELETE_CACHE``).
    """
    downloads = session.files_folder() / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir()
    try:
        return shutil.make_archive(str(downloads / folder.name), "zip", root_dir=folder)
    except BaseException:  # a full disk, say: no partial .zip left behind
        shutil.rmtree(downloads, ignore_errors=True)
        raise


def read_recipe(path: str | None, text: str | None) -> Recipe:
    """Return the recipe of an uploaded file, else of pasted YAML/JSON text.

    Raises:
        ConfigError: nothing given, both given, or a recipe that does not parse or validate
            (an upload named by its file name, not the server's copy).
    """
    if path and (text or "").strip():
        raise ConfigError(
            "a recipe file is uploaded and a recipe pasted: remove the file or clear the text, "
            "so that it is clear which one to run"
        )
    if path:
        check_still_there([Path(path)])
        try:
            return load_recipe(path)
        except HeteroguiError as exc:
            raise as_uploaded(exc, {str(path): Path(path).name}) from None
    if not (text or "").strip():
        raise ConfigError("upload a recipe file (.yaml/.json) or paste one")
    return parse_recipe(text, "the pasted recipe")


def reproduce(
    session: Session, res: Resources, recipe: Recipe, progress: Progress | None = None
) -> dict[str, Any]:
    """Run a recipe exactly as ``heterogui merge`` does and make it the session's merge.

    Returns the run's report. Raises HeteroguiError (the session is then unchanged).
    """
    if recipe.more_models:
        raise ConfigError(
            f"this recipe merges {len(recipe.models)} models and the workbench merges two: run "
            "it with heterogui merge RECIPE -o DIR, or list two models"
        )
    done = run.merge(recipe, work.guarded(session, progress))
    result, pair = done.result, done.pair
    evaluation, baseline = done.evaluation, {}
    ref = done.task.default_evaluation(pair) if evaluation is None else None
    if ref is not None:
        evaluation = run.evaluation_data(pair, ref)
    if evaluation is not None:
        baseline = done.scores or run.evaluate_models(pair, result.prepared, evaluation)
        baseline = {k: v for k, v in baseline.items() if k != "merged"}
    session.a, session.b, session.demo = pair.a, pair.b, None
    session.data, session.device = done.calibration.ref, recipe.device
    session.calibration, session.evaluation = done.calibration, evaluation
    session.prepared, session.baseline = result.prepared, baseline
    session.reference_sizes = reference_sizes(result.prepared)
    merged = (done.scores or {}).get("merged")
    if merged is None and evaluation is not None:
        merged = run.evaluate_merge(pair, result, evaluation)
    size = merge_size(result)
    history.commit_merge(session, result, merged, size, done.report["timings_seconds"]["total"])
    return done.report
