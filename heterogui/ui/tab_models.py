"""Tab 1, Models: choose A and B (zoo, folder, upload, Hugging Face), see their cards and
whether the pair can be merged, then analyse it (CKA, alignment, statistics).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from heterogui.errors import ConfigError
from heterogui.ui import text, work
from heterogui.ui.resources import Resources
from heterogui.ui.session import ModelSlot, Session
from heterogui.ui.sources import (
    SOURCES,
    hf_available,
    load_folder,
    load_hf,
    load_upload,
    model_card,
    verdict,
    zoo_slot,
)

VIEWS = ("pair_choice", "card_a", "card_b", "verdict", "dataset", "cal_size")
SOURCE_HELP = {
    "zoo": "a model of a built-in demo pair",
    "folder": "a heterogui network folder on this machine (config.json + model.safetensors)",
    "upload": "upload model.safetensors and its config.json",
    "hf": "a Hugging Face BERT folder or id (minilm:all-MiniLM-L6-v2 and "
    "minilm:paraphrase-MiniLM-L3-v2 name the offline MiniLM pair)",
}


def zoo_models(res: Resources) -> list[str]:
    """Return the choosable zoo models: "PAIR/a" and "PAIR/b" of every demo pair."""
    return [f"{name}/{w}" for name, _ in res.pair_names() for w in ("a", "b")]


def build(ui: dict[str, Any], res: Resources) -> None:
    """Create the tab's components (inside the current gr.Tab) and register them in ``ui``."""
    pairs = res.pair_names()
    with gr.Row():
        ui["pair_choice"] = gr.Dropdown(
            [(f"{n} — {d}" if d else n, n) for n, d in pairs],
            value=res.default_pair(),
            label="Demo pair",
            info="Two models trained on disjoint classes of one dataset; "
            "loading analyses them at once",
            scale=3,
        )
        ui["load_pair"] = gr.Button("Load demo pair", variant="primary", scale=1)
    with gr.Row():
        for which in ("a", "b"):
            with gr.Column(variant="panel"):
                _model_picker(ui, res, which)
    ui["verdict"] = gr.Markdown("Load model A and model B to check the pair.")
    with gr.Row():
        from heterogui.zoo.datasets import DATASETS

        ui["dataset"] = gr.Dropdown(
            [*sorted(DATASETS), text.TEXT],
            label="Calibration and test data",
            info="Inputs both models read: calibration statistics and the Evaluate tab use it "
            f"({text.TEXT!r}: text, for transformer pairs)",
        )
        ui["cal_size"] = gr.Slider(
            32,
            1024,
            value=256,
            step=32,
            label="Calibration inputs",
            info="How many inputs the feature statistics are computed on (more: slower, "
            f"steadier). Text pairs default to {text.DEFAULT_SENTENCES} built-in sentences: "
            "MiniLM's feature pass takes ~20 s for 256 on 2 CPU cores",
        )
        ui["analyse"] = gr.Button("Analyse pair", variant="primary")
    with gr.Accordion("Calibration sentences (transformer pairs)", open=False):
        ui["sentences"] = gr.Textbox(
            lines=4,
            label="Your calibration sentences, one per line (at least 16)",
            info="Empty: the built-in template sentences (as many as 'Calibration inputs')",
        )
        ui["use_sentences"] = gr.Button("Use these sentences")


def _model_picker(ui: dict[str, Any], res: Resources, which: str) -> None:
    """Create the source choice, inputs, load button and card of model A or B."""
    name = which.upper()
    sources = ["zoo", "folder", "upload"] + (["hf"] if hf_available() else [])
    ui[f"source_{which}"] = gr.Radio(
        sources,
        value="zoo",
        label=f"Model {name} comes from",
        info="; ".join(f"{s}: {SOURCE_HELP[s]}" for s in sources),
    )
    choices = zoo_models(res)
    ui[f"zoo_{which}"] = gr.Dropdown(
        choices,
        value=choices[0 if which == "a" else 1] if len(choices) > 1 else None,
        label=f"Zoo model {name}",
        info="PAIR/a or PAIR/b: model A or B of a demo pair",
    )
    ui[f"folder_{which}"] = gr.Textbox(
        label=f"Folder of model {name}",
        placeholder="/path/to/model_folder",
        info="A folder on the machine running the app, with config.json and model.safetensors",
        visible=False,
    )
    ui[f"upload_{which}"] = gr.File(
        label=f"Upload model {name} (model.safetensors + config.json)",
        file_count="multiple",
        file_types=[".safetensors", ".json"],
        height=110,
        visible=False,
    )
    ui[f"hf_{which}"] = gr.Textbox(
        label=f"Hugging Face model {name}",
        info="A save_pretrained folder (or a hub id when the hub is allowed); BERT encoders",
        visible=False,
    )
    if not hf_available():
        gr.Markdown("*Hugging Face transformers arrive with the transformer adapter change.*")
    ui[f"load_{which}"] = gr.Button(f"Load model {name}")
    ui[f"card_{which}"] = gr.Markdown(f"**Model {name}**: not loaded yet.")


def render(session: Session, res: Resources) -> dict[str, Any]:
    """Return the tab's view values for ``session``."""
    _, text = verdict(session.a, session.b)
    return {
        "pair_choice": session.pair or gr.skip(),
        "card_a": model_card(session.a, "A"),
        "card_b": model_card(session.b, "B"),
        "verdict": text,
        "dataset": session.dataset,
        "cal_size": session.calibration.size or 256,
    }


def on_load_pair(
    session: Session, res: Resources, name: str | None, progress=None
) -> tuple[str, dict[str, Any]]:
    """Load and analyse a demo pair, then show its alignment (api: /load_pair)."""
    if not name:
        raise ConfigError("choose a demo pair first")
    session.cancel_requested = False
    work.open_pair(session, res, name, progress)
    message = (
        f"Loaded demo pair **{name}** and analysed it: here is its layer alignment. "
        "Next: **4 Zip** → Merge."
    )
    return message, {"tabs": gr.Tabs(selected="align")}


def on_start(session: Session, res: Resources, progress=None) -> str | tuple[str, dict]:
    """Load the default demo pair into a new session (page load; api: /start)."""
    if session.prepared is not None:
        return "Session restored."
    name = res.default_pair()
    if name is None:
        return "No demo pair is available: load models A and B in the Models tab."
    return on_load_pair(session, res, name, progress)


def load_slot(
    which: str,
    source: str,
    zoo: str | None,
    folder: str | None,
    files: list[str] | None,
    hf_id: str | None,
    res: Resources,
    progress=None,
) -> tuple[ModelSlot, str | None]:
    """Return the chosen source's ModelSlot and, for zoo models, their dataset.

    Raises:
        HeteroguiError: a missing choice or a model that does not load (with the reason).
    """
    if source == "zoo":
        if not zoo or "/" not in zoo:
            raise ConfigError(f"choose a zoo model (PAIR/a or PAIR/b) for model {which.upper()}")
        pair_name, part = zoo.rsplit("/", 1)
        pair = res.pair(pair_name, progress)
        return zoo_slot(pair.net_a if part == "a" else pair.net_b, pair_name, part), pair.dataset
    if source == "folder":
        return load_folder(folder or ""), None
    if source == "upload":
        return load_upload(files), None
    if source == "hf":
        return load_hf(hf_id or ""), None
    raise ConfigError(f"unknown model source {source!r}; use one of zoo, folder, upload, hf")


def on_load_model(
    session: Session,
    res: Resources,
    which: str,
    source: str,
    zoo: str | None,
    folder: str | None,
    files: list[str] | None,
    hf_id: str | None,
    progress=None,
) -> str:
    """Load model A or B from the chosen source (api: /load_model_a, /load_model_b)."""
    slot, dataset = load_slot(which, source, zoo, folder, files, hf_id, res, progress)
    work.set_model(session, which, slot)
    if dataset:
        work.set_data(session, dataset, session.calibration.size or work.CALIBRATION_SIZE)
    ok, _ = verdict(session.a, session.b)
    tail = " Press **Analyse pair** to align the layers." if ok else ""
    return f"Loaded model {which.upper()} ({slot.source}: `{slot.ref}`).{tail}"


def on_analyse(
    session: Session, res: Resources, dataset: str | None, size: float | None, progress=None
) -> str:
    """Analyse the loaded pair on the chosen data (api: /analyse)."""
    if not dataset:
        raise ConfigError("choose the calibration data set first")
    session.cancel_requested = False
    work.set_data(session, dataset, int(size or work.CALIBRATION_SIZE))
    work.analyse(session, res, progress)
    if text.is_text(session):
        count = len(text.calibration(session))
        return (
            f"Analysed the pair on {count} calibration sentences (more: slower, steadier): "
            "see the Alignment tab."
        )
    return "Analysed the pair: see the Alignment tab."


def on_sentences(session: Session, res: Resources, pasted: str | None, progress=None) -> str:
    """Calibrate a transformer pair on pasted sentences (empty: built-in; api: /sentences)."""
    sentences = text.parse_sentences(pasted)
    if sentences and len(sentences) < 16:
        raise ConfigError(f"{len(sentences)} sentences: paste at least 16, one per line")
    session.sentences = sentences
    session.clear_results()
    which = f"{len(sentences)} pasted sentences" if sentences else "the built-in sentences"
    return f"Calibration: {which}. Press **Analyse pair**."


def source_visibility(source: str) -> list[Any]:
    """Return visibility updates: only the input of the chosen source shows."""
    return [gr.update(visible=source == s) for s in SOURCES]


def wire(ui: dict[str, Any], on) -> None:
    """Register the tab's events with the app's ``on`` helper."""
    on(
        ui["load_pair"].click,
        on_load_pair,
        ["pair_choice"],
        "all",
        "load_pair",
        heavy=True,
        extra=["tabs"],
    )
    for which in ("a", "b"):
        ui[f"source_{which}"].change(
            source_visibility,
            [ui[f"source_{which}"]],
            [ui[f"{s}_{which}"] for s in SOURCES],
            queue=False,
            api_visibility="undocumented",
        )
        inputs = [
            f"source_{which}",
            f"zoo_{which}",
            f"folder_{which}",
            f"upload_{which}",
            f"hf_{which}",
        ]
        on(
            ui[f"load_{which}"].click,
            _bound(which),
            inputs,
            "all",
            f"load_model_{which}",
            heavy=True,
        )
    on(ui["analyse"].click, on_analyse, ["dataset", "cal_size"], "all", "analyse", heavy=True)
    on(ui["use_sentences"].click, on_sentences, ["sentences"], "all", "sentences")


def _bound(which: str):
    def handler(
        session: Session, res: Resources, source, zoo, folder, files, hf_id, progress=None
    ) -> str:
        return on_load_model(session, res, which, source, zoo, folder, files, hf_id, progress)

    handler.__name__ = f"on_load_model_{which}"
    return handler
