"""Tab 7, Export: write the merge (safetensors, config, recipe, report, model card) and import
a recipe to repeat a merge exactly.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.io
import yaml

from heterogui import run_export
from heterogui.config import EXPORT_DTYPES
from heterogui.errors import ConfigError
from heterogui.report import card_files
from heterogui.ui import exporting, slides, work
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session

VIEWS = (
    "recipe_view",
    "export_dir",
    "card_preview",
    "export_format",
    "export_dtype",
    "export_info",
)


def build(ui: dict[str, Any], res: Resources) -> None:
    """Create the tab's components and register them in ``ui``."""
    with gr.Row():
        with gr.Column():
            ui["export_dir"] = gr.Textbox(
                elem_id="export-dir",
                label="Output folder",
                info=f"A new folder below {res.export_root} (a name, or a path inside it; an "
                "existing folder is refused unless you tick overwrite, which replaces only an "
                "earlier export): the model in the format that fits it (a heterogui folder, or "
                "a Hugging Face folder for Hugging Face models), recipe.yaml, report.json and "
                "README.md (the model card). The .zip below uploads as a model again",
            )
            with gr.Row():
                ui["export_format"] = gr.Dropdown(
                    [exporting.AUTO],
                    value=exporting.AUTO,
                    label="Format",
                    info="auto: the models' own format (a Hugging Face folder for Hugging Face "
                    "models) when it can hold the merge, else heterogui's",
                    elem_id="export-format",
                )
                ui["export_dtype"] = gr.Dropdown(
                    dtype_choices(None),
                    value=exporting.AUTO,
                    label="Weights dtype",
                    info="auto: the dtype the models are stored in (float32 when they differ "
                    "or are quantized); the merge is computed in float32 either way",
                    elem_id="export-dtype",
                )
                ui["overwrite"] = gr.Checkbox(value=False, label="Overwrite an earlier export")
            ui["export_info"] = gr.Markdown()
            ui["export"] = gr.Button("Export merge", variant="primary", elem_id="export")
            ui["export_file"] = gr.File(
                label="Download the export (.zip)",
                interactive=False,
                height=80,
                elem_id="export-file",
            )
        with gr.Column():
            ui["recipe_upload"] = gr.File(
                label="Import a recipe (.yaml / .json)",
                file_types=[".yaml", ".yml", ".json"],
                height=110,
            )
            ui["recipe_text"] = gr.Textbox(
                label="…or paste a recipe",
                lines=4,
                info="A recipe records models, data, alignment and "
                "knobs; importing repeats the merge exactly",
            )
            ui["import_recipe"] = gr.Button("Reproduce merge from recipe")
    # the Code component's own download names the file "file.yaml": this one saves recipe.yaml
    ui["recipe_save"] = gr.Button("Save as recipe.yaml", size="sm")  # in the view's toolbar
    ui["recipe_view"] = gr.Code(
        label="Recipe of the current merge (what recipe.yaml holds)",
        language="yaml",
        interactive=False,
        max_lines=40,
        buttons=["copy", ui["recipe_save"]],
        elem_id="recipe-view",
    )
    with gr.Accordion("Model card preview", open=False):
        ui["card_preview"] = gr.Markdown()
    with gr.Row():
        ui["download_figures"] = gr.Button(
            "Download every figure (PNG and SVG) and the tables (.zip) for slides",
            elem_id="download-figures",
        )
        ui["figures_payload"] = gr.Textbox(visible=False)


def default_folder(session: Session) -> str:
    """Return a fresh output folder name (below the export folder) for the current merge: the
    pair, rho, the merge's number and the session (two users' merge #1 differ)."""
    result = session.result
    name = session.demo
    if name is None and session.both_loaded():  # models loaded one by one: their names
        name = "+".join(m.name[:40] for m in (session.a, session.b))
    name = name or "custom"
    tag = (
        f"{name}-rho{result.settings.rho:.2f}-m{session.merge_count}-{session.sid}"
        if result
        else name
    )
    return re.sub(r"[^A-Za-z0-9._+-]", "_", tag)


def render(session: Session, res: Resources) -> dict[str, Any]:
    """Return the tab's view values for ``session``."""
    if session.result is None:
        return {
            "recipe_view": "# merge first: the recipe of the current merge shows here",
            "export_dir": gr.skip(),
            "card_preview": "Merge first.",
            "export_format": gr.update(choices=format_choices(session), value=exporting.AUTO),
            "export_dtype": gr.update(choices=dtype_choices(None), value=exporting.AUTO),
            "export_info": "Merge first: the output format follows the models.",
        }
    done = exporting.session_run(session)
    fmt, why = exporting.fitting_format(session)
    fmt = fmt or run_export.export_format(done.pair)
    weights = run_export.export_dtype(
        done.pair, exporting.AUTO, done.recipe.dtype, done.scores is not None
    )
    files = card_files(done.result, done.pair, done.task, done.scores, fmt, weights=weights)
    card = with_inline_figures(files.pop("README.md"), files)
    return {
        "recipe_view": yaml.safe_dump(
            done.recipe.to_dict(),
            sort_keys=True,
            default_flow_style=None,
            width=90,
            allow_unicode=True,
        ),
        # A fresh name for a new merge; after an export the box keeps what was typed, so a
        # second Export says "already exists" instead of writing a second copy.
        "export_dir": gr.skip()
        if session.exported_merge == session.merge_count
        else default_folder(session),
        "card_preview": without_front_matter(card),
        "export_format": gr.update(choices=format_choices(session, fmt), value=exporting.AUTO),
        "export_dtype": gr.update(choices=dtype_choices(weights.name), value=exporting.AUTO),
        "export_info": why,
    }


def dtype_choices(auto: str | None) -> list[tuple[str, str]]:
    """Return the Weights dtype dropdown's (label, value) pairs: auto (naming what it picks,
    ``auto``; None: not known yet), then every dtype."""
    label = f"{exporting.AUTO} ({auto})" if auto else exporting.AUTO
    return [(label, exporting.AUTO)] + [(d, d) for d in EXPORT_DTYPES if d != exporting.AUTO]


def format_choices(session: Session, fitting: str | None = None) -> list[tuple[str, str]]:
    """Return the Format dropdown's (label, value) pairs: auto (naming what it picks), then all."""
    auto = f"{exporting.AUTO} ({fitting})" if fitting else exporting.AUTO
    return [(auto, exporting.AUTO), *((f, f) for f in exporting.formats(session))]


def with_inline_figures(card: str, figures: dict[str, str]) -> str:
    """Return a card whose figure links point at data URIs (the page has no folder to read)."""
    for name, svg in figures.items():
        data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
        card = card.replace(f"]({name})", f"](data:image/svg+xml;base64,{data})")
    return card


def without_front_matter(card: str) -> str:
    """Return a model card without its YAML front matter (which Markdown shows as text)."""
    if card.startswith("---\n"):
        return card.split("---\n", 2)[-1].lstrip()
    return card


def on_export(
    session: Session,
    res: Resources,
    out: str | None,
    overwrite: bool,
    fmt: str | None = None,
    dtype: str | None = None,
    progress=None,
) -> tuple[str, dict[str, Any]]:
    """Export the current merge (api: /export); fmt: the output format (None, "auto": fitting);
    dtype: the weights' dtype (None, "auto": the models' own, ``run_export.export_dtype``).

    A merge whose scores are still due (a slider release scores after it shows the merge; over
    the API, /remerge leaves that to the page) is scored first, so that the report and the
    card hold its scores.
    """
    work.evaluate_pending(session, res, progress)
    session.check_cancel()  # pressed while the merge was scored: nothing is written
    session.cannot_stop = "The export is being written (its folder whole, or nothing)"
    try:
        path = exporting.export(
            session, out or "", res.export_root, bool(overwrite), fmt, dtype, guard=res.exports
        )
    finally:
        session.cannot_stop = None
    written = exporting.chosen_format(session, fmt)
    files = sorted(p.name for p in Path(path).iterdir())
    done = exporting.session_run(session)
    weights = run_export.export_dtype(
        session.pair, dtype or exporting.AUTO, done.recipe.dtype, done.scores is not None
    )
    message = f"Exported to `{path}` ({written} format): {', '.join(files)}. "
    message += f"It holds merge #{session.merge_count}. {weights.note}"
    moved = exporting.unmerged_settings(session)
    if moved:
        message += (
            f" The Zip tab's settings changed since that merge ({moved}): press Merge, then "
            "export again, to write a merge of them."
        )
    return message, {"export_file": exporting.archive(path, session)}


def on_import(
    session: Session, res: Resources, upload: str | None, text: str | None, progress=None
) -> str:
    """Reproduce a merge from a recipe file or text (api: /import_recipe)."""
    session.cancel_requested = False
    recipe = exporting.read_recipe(upload, text)
    report = exporting.reproduce(session, res, recipe, progress)
    if report is None:
        raise ConfigError("the recipe produced no report")
    # a recipe heterogui recorded lists the library versions; one written by hand does not
    done = "Reproduced the recorded" if recipe.versions else "Ran the recipe's"
    return (
        f"{done} merge of `{recipe.model_a.path}` and `{recipe.model_b.path}` "
        f"({report['alignment']['mode']}, mapping {report['alignment']['mapping']})."
    )


def on_figures(session: Session, res: Resources, progress=None) -> tuple[str, dict[str, Any]]:
    """Collect every current figure and table for the page to save as one .zip (api: /figures).

    The API returns the JSON (plotly figures and CSV tables); the page adds PNG and SVG.
    """
    if session.prepared is None:
        raise ConfigError("load and analyse a pair first: there are no figures yet")
    payload = slides.figures_payload(session, res)
    return (
        f"Collected {len(payload['figures'])} figures and the tables: the page draws each "
        "figure as PNG and SVG and saves them as one .zip (its button counts them, then names "
        "the file saved).",
        {"figures_payload": plotly.io.json.to_json_plotly(payload)},
    )


# the recipe as it shows, saved by the browser under the name the CLI and the export use
SAVE_RECIPE_JS = """(text) => {
  if (!text || text.startsWith("# merge first")) return;
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], {type: "application/yaml"}));
  link.download = "recipe.yaml";
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}"""


def wire(ui: dict[str, Any], on) -> None:
    """Register the tab's events."""
    ui["recipe_save"].click(
        None, [ui["recipe_view"]], None, js=SAVE_RECIPE_JS, api_visibility="undocumented"
    )
    collected = on(
        ui["download_figures"].click,
        on_figures,
        [],
        (),
        "figures",
        extra=["figures_payload"],
    )
    collected.success(
        None,
        [ui["figures_payload"]],
        [ui["figures_payload"]],
        js=slides.DOWNLOAD_JS,
        api_visibility="undocumented",
    )
    on(
        ui["export"].click,
        on_export,
        ["export_dir", "overwrite", "export_format", "export_dtype"],
        ("export",),
        "export",
        extra=["export_file"],
        heavy=True,
    )
    on(
        ui["import_recipe"].click,
        on_import,
        ["recipe_upload", "recipe_text"],
        "all",
        "import_recipe",
        heavy=True,
    )
