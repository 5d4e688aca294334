"""Export the session's merge (weights, config, recipe, report, model card) and import recipes.

The recipe written here is what ``heterogui merge`` and ``heterogui.api.merge_recipe`` read, so
an exported merge can be repeated bit for bit; importing a recipe runs exactly that path.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from heterogui.api import load_model, merge_recipe, model_folder, versions
from heterogui.config import (
    AlignmentSpec,
    DataRef,
    ModelRef,
    Recipe,
    ZipSpec,
    load_recipe,
    recipe_from_dict,
)
from heterogui.errors import ConfigError, ExportError, HeteroguiError
from heterogui.export.merged_io import save_merged
from heterogui.models.io import WEIGHTS_FILE, file_sha256
from heterogui.report import merge_report
from heterogui.ui import card, evaluation
from heterogui.ui.fig_align import layer_pairs
from heterogui.ui.resources import Resources
from heterogui.ui.session import ModelSlot, Session
from heterogui.ui.sizes import parameters_and_flops, reference_sizes
from heterogui.ui.sources import model_facts
from heterogui.ui.work import commit_merge

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]


def _sha(slot: ModelSlot) -> str | None:
    """Return the weights hash of a model's folder (zoo models: their cached folder), cached."""
    if slot.sha256 or slot.source == "hf":
        return slot.sha256
    try:
        slot.sha256 = file_sha256(model_folder(ModelRef(slot.ref)) / WEIGHTS_FILE)
    except (HeteroguiError, OSError) as exc:
        log.warning("no hash for %s: %s", slot.ref, exc)
    return slot.sha256


def session_recipe(session: Session) -> Recipe:
    """Return the recipe of the session's current merge.

    Raises:
        ConfigError: nothing merged yet.
    """
    result = session.result
    if result is None or session.a is None or session.b is None:
        raise ConfigError("merge first (Zip tab): there is nothing to export yet")
    s = result.settings
    evaluation_ref = None
    if session.dataset and evaluation.disjoint(result.prepared):
        evaluation_ref = DataRef(source=session.dataset, split="test", size=None, batch_size=512)
    return Recipe(
        model_a=ModelRef(session.a.ref, _sha(session.a)),
        model_b=ModelRef(session.b.ref, _sha(session.b)),
        calibration=session.calibration,
        alignment=AlignmentSpec(result.alignment.mode, result.alignment.mapping()),
        zip=ZipSpec(
            s.matcher, s.alpha, s.beta, s.rho, {k: dict(v) for k, v in s.overrides.items()}
        ),
        stop=s.stop,
        evaluation=evaluation_ref,
        device=str(result.prepared.device),
        versions=versions(),
    )


def card_facts(session: Session) -> dict[str, Any]:
    """Return what the model card shows about the session's merge."""
    result = session.result
    prep = result.prepared
    models = []
    for name, slot in (("A", session.a), ("B", session.b)):
        f = model_facts(slot.net)
        models.append([name, f"`{slot.ref}`", f["family"], f["depths"], f["parameters"]])
    sizes = dict(session.reference_sizes or reference_sizes(prep))
    sizes["merged"] = session.merged_size or parameters_and_flops(result.model, prep)
    metrics = []
    named = {
        "A": session.baseline.get("a"),
        "B": session.baseline.get("b"),
        "ensemble": session.baseline.get("ensemble"),
        "merged": session.merged_metrics,
    }
    if session.merged_metrics is not None:
        metrics = [[n, *evaluation.metric_columns(m).values()] for n, m in named.items()]
    al = result.alignment
    return {
        "title": f"Merge of {prep.net_a.label} and {prep.net_b.label}",
        "models": models,
        "alignment": {
            "mode": al.mode,
            "mapping": al.mapping(),
            "score": "n/a" if al.score is None else f"{al.score:.3f}",
        },
        "settings": {
            "matcher": result.settings.matcher,
            "alpha": result.settings.alpha,
            "beta": result.settings.beta,
            "rho": result.settings.rho,
            "stop": result.spec.stop,
            "overrides": dict(result.settings.overrides),
        },
        "widths": [[s, *w] for s, w in result.widths().items()],
        "sizes": [[n, v["parameters"], v["flops"]] for n, v in sizes.items()],
        "metrics": metrics,
    }


def card_files(session: Session) -> dict[str, str]:
    """Return README.md (the model card) and its SVG figures."""
    result = session.result
    prep = result.prepared
    ga, gb = prep.net_a.graph(), prep.net_b.graph()
    files = {"README.md": card.model_card(card_facts(session))}
    if prep.similarity is not None:
        files["alignment.svg"] = card.heatmap_svg(
            prep.similarity.tolist(),
            layer_pairs(result.alignment, ga, gb),
            f"layer CKA, {result.alignment.mode} path",
        )
    widths = result.widths()
    files["widths.svg"] = card.bars_svg(
        list(widths),
        {k: [w[i] for w in widths.values()] for i, k in enumerate(("A", "B", "merged"))},
        "width per merge point",
    )
    return files


def export(session: Session, out: str, overwrite: bool = False) -> Path:
    """Write the merge to folder ``out`` (atomically): weights, config, recipe, report, card.

    Raises:
        ExportError: ``out`` exists and overwrite is off, or writing failed.
        ConfigError: nothing merged yet.
    """
    if session.dataset == "sentences" and session.result is not None:
        from heterogui.ui import text as text_pair

        return text_pair.export(session, out, overwrite)  # a Hugging Face folder
    text = (out or "").strip()
    if not text:
        raise ExportError("type an output folder for the export")
    path = Path(text).expanduser()
    if path.exists() and not overwrite:
        raise ExportError(
            f"output folder {str(path)!r} already exists; choose another folder or tick 'overwrite'"
        )
    recipe = session_recipe(session)
    seconds = session.history[-1]["seconds"] if session.history else 0.0
    report = merge_report(session.result, recipe, seconds)
    save_merged(
        session.result.model,
        path,
        recipe,
        report,
        overwrite=overwrite,
        extra_files=card_files(session),
    )
    session.last_export = str(path)
    return path


def archive(folder: Path) -> str:
    """Return a .zip of an exported folder (in a fresh temporary folder) for download."""
    target = Path(tempfile.mkdtemp(prefix="heterogui-export-")) / folder.name
    return shutil.make_archive(str(target), "zip", root_dir=folder)


def read_recipe(path: str | None, text: str | None) -> Recipe:
    """Return the recipe of an uploaded file, else of pasted YAML/JSON text.

    Raises:
        ConfigError: nothing given, or a recipe that does not parse or validate.
    """
    if path:
        return load_recipe(path)
    if not (text or "").strip():
        raise ConfigError("upload a recipe file (.yaml/.json) or paste one")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the recipe does not parse: {exc}") from exc
    return recipe_from_dict(data)


def reproduce(
    session: Session, res: Resources, recipe: Recipe, progress: Progress | None = None
) -> dict[str, Any]:
    """Run a recipe exactly as ``heterogui merge`` does and make it the session's merge.

    Returns the run's report. Raises HeteroguiError (the session is then unchanged).
    """
    done = merge_recipe(recipe, progress)
    result = done.result
    slots = []
    for ref in (done.recipe.model_a, done.recipe.model_b):
        net, sha = load_model(ref)
        source = "zoo" if ref.path.startswith("zoo:") else "folder"
        slots.append(ModelSlot(net, ref.path, source, sha))
    pair = _zoo_pair(done.recipe)
    dataset = (
        recipe.calibration.source
        if not recipe.calibration.source.endswith(".safetensors")
        else None
    )
    session.a, session.b, session.pair, session.dataset = slots[0], slots[1], pair, dataset
    session.calibration, session.device = recipe.calibration, recipe.device
    session.prepared = result.prepared
    session.baseline = evaluation.baseline_metrics(result.prepared, res, dataset)
    session.reference_sizes = reference_sizes(result.prepared)
    metrics = evaluation.merged_metrics(result, res, dataset)
    size = parameters_and_flops(result.model, result.prepared)
    commit_merge(session, result, metrics, size, done.report["timings_seconds"]["total"])
    return done.report


def _zoo_pair(recipe: Recipe) -> str | None:
    a, b = recipe.model_a.path, recipe.model_b.path
    if a.startswith("zoo:") and b.startswith("zoo:") and a[4:].split("/")[0] == b[4:].split("/")[0]:
        return a[4:].split("/")[0]
    return None
