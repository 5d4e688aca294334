"""Tab 1, Models: choose A and B (zoo, folder, upload, Hugging Face), see their cards and
whether the pair can be merged, choose the calibration data, then analyse the pair.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import gradio as gr

from heterogui.cache import cache_dir
from heterogui.config import DataRef
from heterogui.datasets.refs import parse_lines, text_sha256
from heterogui.datasets.text_domains import DOMAINS
from heterogui.errors import ConfigError, HeteroguiError
from heterogui.folders import write_document
from heterogui.pipeline import ZipSettings
from heterogui.sources.gguf import BUILT_IN as GGUF_BUILT_IN
from heterogui.sources.upload import UPLOAD_SUFFIXES
from heterogui.tasks.language import ALL_DOMAINS
from heterogui.tasks.sentences import MIN_SENTENCES
from heterogui.ui import history, work
from heterogui.ui.calibration_choice import (
    DATA_CHOICES,
    FILE,
    chosen_data,
    data_choice,
    data_choices,
)
from heterogui.ui.labels import literal
from heterogui.ui.loading import SOURCES, load_choice, model_card, verdict, zoo_choice
from heterogui.ui.resources import Resources
from heterogui.ui.session import Session

VIEWS = ("pair_choice", "card_a", "card_b", "verdict", "dataset", "cal_size")
# References the hf box reads offline, with what they are.
BUILT_IN_REFS = {
    "minilm:all-MiniLM-L6-v2": "MiniLM sentence embedder",
    "minilm:paraphrase-MiniLM-L3-v2": "MiniLM sentence embedder",
    "smollm2:135m-instruct": "SmolLM2-135M-Instruct language model, dequantized from 4-bit GGUF",
    "decoder-pair:a": "the decoder demo pair's prose model",
    "decoder-pair:b": "the decoder demo pair's code model",
}
SOURCE_HELP = {
    "zoo": "a model of a built-in demo pair",
    "folder": "a folder on this machine: a heterogui model or merge, or a Hugging Face folder "
    "(causal language models too); or a .gguf file",
    "upload": "upload config.json + model.safetensors (and tokenizer files), or an export's .zip",
    "hf": "a Hugging Face folder or hub id, or a built-in reference: "
    + ", ".join(f"{ref} ({what})" for ref, what in BUILT_IN_REFS.items()),
}


def zoo_models(res: Resources) -> list[str]:
    """Return the choosable zoo models: "PAIR/a" and "PAIR/b" of every demo pair."""
    return [zoo_choice(name, w) for name, _ in res.pair_names() for w in ("a", "b")]


def build(ui: dict[str, Any], res: Resources) -> None:
    """Create the tab's components (inside the current gr.Tab) and register them in ``ui``."""
    pairs = res.pair_names()
    with gr.Row():
        ui["pair_choice"] = gr.Dropdown(
            [(f"{n} — {d}" if d else n, n) for n, d in pairs],
            value=res.default_pair(),
            label="Demo pair",
            info="Two models trained on different parts of one dataset (disjoint classes; "
            "the decoder pair: prose and code); loading analyses them at once",
            scale=3,
        )
        ui["load_pair"] = gr.Button("Load demo pair", variant="primary", scale=1)
    with gr.Row():
        for which in ("a", "b"):
            with gr.Column(variant="panel"):
                _model_picker(ui, res, which)
    ui["verdict"] = gr.Markdown("Load model A and model B to check the pair.")
    with gr.Row():
        ui["dataset"] = gr.Dropdown(
            [*DATA_CHOICES["images"], "sentences", ALL_DOMAINS, *DOMAINS],
            label="Calibration data",
            info="What the feature statistics are computed on: a built-in dataset, the built-in "
            f"sentences (embedding models), {ALL_DOMAINS!r} or one of them (language models: "
            f"Python docs prose and Python source), or {FILE!r}: the file below",
        )
        ui["cal_file"] = gr.Textbox(
            label="Calibration file",
            placeholder="/path/to/images.safetensors or sentences.txt",
            info="With data 'file': a .safetensors file with an 'inputs' tensor (N, C, H, W), "
            "or a .txt file with one sentence (or, for language models, one text) per line",
        )
        ui["cal_size"] = gr.Slider(
            16,
            1024,
            value=256,
            step=16,
            label="Calibration inputs",
            info="How many inputs the statistics use (more: slower, steadier). Text pairs "
            "start at 64 sentences: MiniLM's feature pass takes ~20 s for 256 on 2 CPU cores; "
            "language pairs at 32 texts",
            scale=2,  # a narrower slider clips its 1024 at the right end
        )
        ui["analyse"] = gr.Button(
            "Analyse pair", variant="primary", elem_id="analyse", scale=0, min_width=140
        )
        ui["analyse_cancel"] = gr.Button(
            "Cancel", variant="stop", elem_id="analyse-cancel", scale=0, min_width=90
        )
    with gr.Accordion("Calibration sentences (text models)", open=False):
        ui["sentences"] = gr.Textbox(
            lines=4,
            label=f"Your calibration sentences, one per line (at least {MIN_SENTENCES})",
            info="Saved as a .txt file of this session and used as the calibration data",
        )
        ui["use_sentences"] = gr.Button("Use these sentences")


def _model_picker(ui: dict[str, Any], res: Resources, which: str) -> None:
    """Create the source choice, inputs, load button and card of model A or B."""
    name = which.upper()
    ui[f"source_{which}"] = gr.Radio(
        list(SOURCES),
        value="zoo",
        label=f"Model {name} comes from",
        info="; ".join(f"{s}: {SOURCE_HELP[s]}" for s in SOURCES),
        elem_id=f"source-{which}",
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
        info="A folder on the machine running the app: a heterogui model or merge "
        "(config.json + model.safetensors) or a Hugging Face save_pretrained folder (BERT, "
        "ViT, or a Llama / Qwen2 / Mistral / GPT-2 causal LM); or the path of a .gguf file",
        visible=False,
    )
    ui[f"upload_{which}"] = gr.File(
        label=(
            f"Upload model {name} (config.json + model.safetensors, an export's .zip, "
            "or a .gguf file)"
        ),
        file_count="multiple",
        file_types=list(UPLOAD_SUFFIXES),
        height=110,
        visible=False,
        elem_id=f"upload-{which}",
    )
    ui[f"hf_{which}"] = gr.Textbox(
        label=f"Hugging Face model {name}",
        info="A save_pretrained folder, a hub id (when the hub is allowed), a .gguf file, or a "
        f"built-in reference: {', '.join(BUILT_IN_REFS)}; BERT, ViT and decoder language "
        "models (Llama, Qwen2, Mistral, GPT-2)",
        placeholder="smollm2:135m-instruct",
        visible=False,
        elem_id=f"hf-{which}",
    )
    ui[f"load_{which}"] = gr.Button(f"Load model {name}", elem_id=f"load-{which}")
    ui[f"card_{which}"] = gr.Markdown(f"**Model {name}**: not loaded yet.")


PICKERS = tuple(f"{key}_{w}" for w in ("a", "b") for key in ("source", "zoo", "folder", "hf"))


def picker_kind(loaded: Any) -> str:
    """Return the picker ("zoo", "folder", "upload", "hf") a loaded model came through."""
    if loaded.ref.startswith("zoo:"):
        return "zoo"
    if loaded.source in ("hf", "minilm") or loaded.ref in GGUF_BUILT_IN:
        return "hf"
    return "upload" if loaded.source == "upload" else "folder"


def picker_values(session: Session, which: str) -> dict[str, Any]:
    """Return the picker of model ``which`` set to the model loaded there (none: unchanged).

    After a demo pair or a model loads, the source and its box show what is loaded, not what
    was picked before.
    """
    loaded = getattr(session, which)
    if loaded is None:
        return {}
    kind = picker_kind(loaded)
    out: dict[str, Any] = {f"source_{which}": gr.update(value=kind)}
    if kind == "zoo":
        out[f"zoo_{which}"] = gr.update(value=loaded.ref.removeprefix("zoo:"))
    elif kind in ("folder", "hf"):
        out[f"{kind}_{which}"] = gr.update(value=loaded.ref)
    return out


def carried_knobs(session: Session) -> str:
    """Return a note on zip knobs that differ from the defaults (they carry over to a pair)."""
    default = ZipSettings()
    kept = [
        f"{k} {getattr(session.settings, k)}"
        for k in history.KNOBS
        if k != "stop" and getattr(session.settings, k) != getattr(default, k)
    ]
    return f" Zip knobs kept from before: {', '.join(kept)}." if kept else ""


def render(session: Session, res: Resources) -> dict[str, Any]:
    """Return the tab's view values for ``session``."""
    _, text = verdict(session.a, session.b)
    choices = data_choices(session)
    size = session.calibration.count if session.calibration else (session.data or DataRef()).size
    if session.calibration is None and session.data is None and session.both_loaded():
        # the task's own start (images without a built-in dataset have none)
        with contextlib.suppress(HeteroguiError):
            size = session.task.default_calibration(session.pair).size
    return {
        "pair_choice": gr.update(value=session.demo),
        "card_a": model_card(session.a, "A"),
        "card_b": model_card(session.b, "B"),
        "verdict": text,
        "dataset": gr.update(choices=choices or None, value=data_choice(session)),
        "cal_size": size or 256,
    }


def on_load_pair(
    session: Session, res: Resources, name: str | None, progress=None
) -> tuple[str, dict[str, Any]]:
    """Load and analyse a demo pair, then show its alignment (api: /load_pair)."""
    if not name:
        raise ConfigError("choose a demo pair first")
    work.open_pair(session, res, name, progress)
    message = (
        f"Loaded demo pair **{name}** and analysed it: here is its layer alignment. "
        f"Next: **4 Zip** → Merge.{carried_knobs(session)}"
    )
    pickers = {**picker_values(session, "a"), **picker_values(session, "b")}
    return message, {"tabs": gr.Tabs(selected="align"), **pickers}


def on_start(session: Session, res: Resources, progress=None) -> str | tuple[str, dict]:
    """Load the default demo pair into a new session (page load; api: /start)."""
    if session.prepared is not None:
        return "Session restored."
    name = res.default_pair()
    if name is None:
        return "No demo pair is available: load models A and B in the Models tab."
    return on_load_pair(session, res, name, progress)


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
) -> tuple[str, dict[str, Any]]:
    """Load model A or B from the chosen source (api: /load_model_a, /load_model_b)."""
    workdir = session.files_folder() if source == "upload" else None
    loaded = load_choice(res, source, zoo, folder, files, hf_id, workdir, progress)
    work.set_model(session, which, loaded)
    ok, _ = verdict(session.a, session.b)
    tail = " Press **Analyse pair** to align the layers." if ok else ""
    if not ok and session.both_loaded():  # often mid-change: the other model is still the old
        other = "b" if which == "a" else "a"
        kept = literal(getattr(session, other).name)
        tail = (
            f" With model {other.upper()} (**{kept}**) it cannot be merged: the verdict below "
            f"says why. Load a model {other.upper()} that pairs with it."
        )
    note = f" ⚠ {loaded.note}." if loaded.note else ""
    name, source = literal(loaded.name), literal(loaded.source)
    message = f"Loaded model {which.upper()}: **{name}** ({source}).{note}{tail}"
    # This model's picker shows what is loaded; the other's is left as the user set it (they
    # may be choosing the next model to load there)
    return message, picker_values(session, which)


def on_analyse(
    session: Session,
    res: Resources,
    choice: str | None,
    file: str | None,
    size: float | None,
    progress=None,
) -> str:
    """Analyse the loaded pair on the chosen data (api: /analyse)."""
    data = chosen_data(session, choice, file, work.whole(size or 256, "calibration inputs"))
    # a demo pair on its own data, at its own size, shares the app's analysis of it
    shared = session.demo and data == session.task.default_calibration(session.pair)
    work.analyse(session, res, None if shared else data, progress)
    cal = session.calibration
    return (
        f"Analysed the pair on {cal.count} calibration inputs from {Path(cal.ref.source).name} "
        "(more: slower, steadier): see the Alignment tab."
    )


def on_sentences(
    session: Session, res: Resources, pasted: str | None, progress=None
) -> tuple[str, dict[str, Any]]:
    """Save pasted calibration sentences as a .txt file in the heterogui cache and choose it as
    the calibration file (api: /sentences); Analyse pair then calibrates on it. The current
    analysis and merges stay until then. The file outlives the session (it is named by its
    text's hash, never changed): a recipe exported from this merge repeats it later."""
    if not session.both_loaded() or session.task.inputs != "text":
        raise ConfigError("load two text models (Hugging Face BERT or language models) first")
    sentences = parse_lines(pasted)
    if len(sentences) < MIN_SENTENCES:
        raise ConfigError(
            f"{len(sentences)} sentence{'' if len(sentences) == 1 else 's'}: paste at least "
            f"{MIN_SENTENCES}, one per line"
        )
    distinct = len(set(sentences))
    if distinct < MIN_SENTENCES:  # copies add nothing: the layers' CKA would be flat
        raise ConfigError(
            f"{len(sentences)} sentences but {distinct} different; paste at least "
            f"{MIN_SENTENCES} different sentences, one per line"
        )
    # One file per text (named by its hash): a recipe exported earlier keeps its own file.
    path = cache_dir("sentences") / f"sentences-{text_sha256(sentences)}.txt"
    if not path.is_file():
        write_document(path, "\n".join(sentences) + "\n")
    message = (
        f"Calibration: {len(sentences)} pasted sentences, saved as {path.name} and chosen as "
        "the calibration file. Press **Analyse pair**."
    )
    return message, {"dataset": gr.update(value=FILE), "cal_file": str(path)}


def source_visibility(source: str) -> list[Any]:
    """Return visibility updates: only the input of the chosen source shows."""
    return [gr.update(visible=source == s) for s in SOURCES]


def wire(ui: dict[str, Any], on) -> None:
    """Register the tab's events with the app's ``on`` helper.

    Loading a model, analysing and using the sentences say what they did in a toast too: on a
    laptop screen their buttons lie below the fold of the status line.
    """
    on(
        ui["load_pair"].click,
        on_load_pair,
        ["pair_choice"],
        "all",
        "load_pair",
        heavy=True,
        extra=["tabs", *PICKERS],
    )
    for which in ("a", "b"):
        ui[f"source_{which}"].change(
            source_visibility,
            [ui[f"source_{which}"]],
            [ui[f"{s}_{which}"] for s in SOURCES],
            queue=False,
            api_visibility="undocumented",
        )
        inputs = [f"{key}_{which}" for key in ("source", "zoo", "folder", "upload", "hf")]
        on(
            ui[f"load_{which}"].click,
            _bound(which),
            inputs,
            "all",
            f"load_model_{which}",
            heavy=True,
            extra=list(PICKERS),
            toast=True,
        )
    on(
        ui["analyse"].click,
        on_analyse,
        ["dataset", "cal_file", "cal_size"],
        "all",
        "analyse",
        heavy=True,
        toast=True,
    )
    on(
        ui["use_sentences"].click,
        on_sentences,
        ["sentences"],
        (),
        "sentences",
        extra=["dataset", "cal_file"],
        toast=True,
    )


def _bound(which: str):
    def handler(
        session: Session, res: Resources, source, zoo, folder, files, hf_id, progress=None
    ) -> tuple[str, dict[str, Any]]:
        return on_load_model(session, res, which, source, zoo, folder, files, hf_id, progress)

    handler.__name__ = f"on_load_model_{which}"
    return handler
