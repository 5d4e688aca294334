"""Load models A and B from the zoo, a folder, an upload or a Hugging Face id; describe them.

Every choice becomes a model reference that the sources registry reads (the one place that
parses references); an upload is first copied into a fresh folder of its own (never over the
user's files). Each loader returns a ``Loaded`` or raises a HeteroguiError whose message the
page shows.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from heterogui.errors import (
    ConfigError,
    HeteroguiError,
    IncompatibleModelsError,
    ModelLoadError,
)
from heterogui.export.card import class_ranges
from heterogui.export.hf_heads import head_folders_hint
from heterogui.host_memory import check_fits
from heterogui.memo import ObjectMemo
from heterogui.pair_check import check_pair
from heterogui.report import model_facts
from heterogui.sources import registry
from heterogui.sources.base import LANGUAGE_MODELING, SENTENCE_SIMILARITY, Loaded
from heterogui.sources.preflight import Verdict
from heterogui.sources.upload import as_uploaded, keep, receive
from heterogui.sources.zoo import zoo_ref
from heterogui.tasks.images import is_classifier, without_classifier
from heterogui.text_input import typed_path
from heterogui.ui.resources import Resources

SOURCES = ("zoo", "folder", "upload", "hf")


def load_choice(
    res: Resources,
    source: str,
    zoo: str | None,
    folder: str | None,
    files: list[str] | None,
    hf_id: str | None,
    workdir: str | Path | None = None,
    progress=None,
) -> Loaded:
    """Return the model the Models tab's inputs name, loaded through its source.

    zoo: "PAIR/a" or "PAIR/b"; folder: a folder on this machine; files: uploaded files (or a
    .zip of an export); hf_id: a Hugging Face folder, hub id, "minilm:NAME", a built-in GGUF
    model ("smollm2:135m-instruct") or a .gguf file (folder also takes a .gguf file).

    Raises:
        HeteroguiError: a missing choice or a model that does not load (with the reason).
    """
    if source == "zoo":
        if not zoo or "/" not in zoo:
            raise ConfigError("choose a zoo model (PAIR/a or PAIR/b)")
        name, which = zoo.rsplit("/", 1)
        demo = res.pair(name, progress)
        return demo.a if which == "a" else demo.b
    if source == "folder":
        text = typed_path(folder)
        if not text:
            raise ModelLoadError(
                "type the path of a model folder (config.json + model.safetensors)"
            )
        return registry.load(text)
    if source == "upload":
        received = receive(files, workdir)
        try:
            loaded = registry.load(str(received))
        except BaseException as exc:  # a refused upload leaves no copy behind
            shutil.rmtree(received.parent, ignore_errors=True)
            if not isinstance(exc, HeteroguiError):
                raise
            # named as the user knows it, not by its temporary copy
            uploaded = Path(files[0]).name if len(files or []) == 1 else "the uploaded model"
            raise as_uploaded(exc, {f"{received}/": "", str(received): uploaded}) from None
        kept = keep(received)  # where an exported recipe finds it after the session
        folder = kept if loaded.folder == received else loaded.folder
        return dataclasses.replace(loaded, source="upload", ref=str(kept), folder=folder)
    if source == "hf":
        text = typed_path(hf_id)
        if not text:
            raise ModelLoadError(
                "type a Hugging Face folder, hub id, minilm:NAME, smollm2:135m-instruct or the "
                "path of a .gguf file"
            )
        return registry.load(text)
    raise ConfigError(f"unknown model source {source!r}; use one of {', '.join(SOURCES)}")


def zoo_choice(pair: str, which: str) -> str:
    """Return the zoo dropdown's value of model ``which`` of demo pair ``pair``."""
    return zoo_ref(pair, which).removeprefix("zoo:")


def model_card(loaded: Loaded | None, which: str) -> str:
    """Return a Markdown card for model ``which`` ("A"/"B"), with its note (GGUF) if any."""
    if loaded is None:
        return f"**Model {which}**: not loaded yet."
    facts = model_facts(loaded.net)
    title = (
        f"**Model {which}: {loaded.name}** ({loaded.source}; scored on "
        f"{loaded.task.replace('_', ' ')})\n\n"
    )
    if loaded.task == LANGUAGE_MODELING:
        body = _decoder_lines(loaded, facts)
    else:
        body = _network_lines(loaded, facts)
    return title + "\n".join(body) + note_line(loaded)


def _network_lines(loaded: Loaded, facts: dict) -> list[str]:
    """Return the card lines of a classifier or an embedding model: stages, widths, heads."""
    stages = "; ".join(
        f"stage {s}: {d} layers, widths {w}"
        for s, (d, w) in enumerate(zip(facts["depths"], facts["widths"], strict=True))
    )
    heads = loaded.net.task_heads()
    if not is_classifier(loaded.net):  # a feature model
        what = "sentence embedding" if facts["family"] == "bert" else "pooled features"
        head = f"- head: {what} of width {len(facts['classes'])} (no classifier)"
    else:
        head = "- task heads: " + "; ".join(
            f"{h.name} (classes {class_ranges(h.classes)})" for h in heads
        )
    return [
        f"- family **{facts['family']}**, input width {facts['input_width']}",
        f"- depth per stage {facts['depths']} ({stages})",
        f"- parameters **{facts['parameters']:,}**",
        head,
    ]


def _decoder_lines(loaded: Loaded, facts: dict) -> list[str]:
    """Return the card lines of a causal language model: layers, stream, heads, MLP, vocabulary."""
    config = loaded.net.config
    kind = getattr(config, "model_type", facts["family"])
    lines = [f"- family **{facts['family']}** ({kind}), **{sum(facts['depths'])} layers**"]
    if hasattr(config, "hidden") and hasattr(config, "heads"):
        lines += [
            f"- residual stream width {config.hidden}; head size {config.head_dim}",
            f"- query heads {per_layer(config.heads)}, key/value heads "
            f"{per_layer(config.kv_heads)}",
            f"- MLP width {per_layer(config.intermediate)}",
        ]
    lines += [
        f"- parameters **{facts['parameters']:,}**",
        f"- head: next-token logits over a vocabulary of {len(facts['classes']):,} tokens",
    ]
    return lines


def per_layer(values: tuple[int, ...] | list[int]) -> str:
    """Return per-layer numbers compactly: "9 in every layer", else the list."""
    values = list(values)
    if values and len(set(values)) == 1:
        return f"{values[0]} in every layer"
    return str(values)


def note_line(loaded: Loaded | None, label: str | None = None) -> str:
    """Return the model's note (a GGUF file's "dequantized" sentence) as a card line, or ""."""
    if loaded is None or not loaded.note:
        return ""
    who = f"{label} ({loaded.name})" if label else loaded.name
    return f"\n- ⚠ **{who}**: {loaded.note}"


# The header pre-flight of a loaded pair, once per pair of loads: the Models tab's verdict is
# drawn on every render and Analyse refuses what it refuses (a GGUF header read takes seconds).
_PREFLIGHT = ObjectMemo()


def pair_preflight(a: Loaded, b: Loaded) -> Verdict:
    """Return the header pre-flight of two loaded models (kept while model A is loaded).

    Raises:
        HeteroguiError: unreadable headers.
    """
    return _PREFLIGHT.get(
        a,
        (id(b), b.ref, b.sha256),
        lambda: registry.pair_verdict(registry.describe(a.ref), registry.describe(b.ref)),
    )


def pair_notes(a: Loaded, b: Loaded) -> tuple[str, ...]:
    """Return what a merge of A and B does other than either model would, for its report and
    model card, as ``run.load_pair`` finds it: the pre-flight's cautions and how the two
    tokenizers encode text differently.

    Raises:
        HeteroguiError: unreadable headers.
    """
    return registry.pair_notes(pair_preflight(a, b), a, b)


def refuse_unmergeable(a: Loaded, b: Loaded) -> None:
    """Refuse a pair the header pre-flight refuses (as ``run.load_pair`` does for a recipe).

    Raises:
        IncompatibleModelsError: the pre-flight's reasons (other tokenizers, head groupings ...).
        ConfigError: the merge needs more memory than is free (``host_memory.check_fits``).
    """
    verdict = pair_preflight(a, b)
    if not verdict.ok:
        raise IncompatibleModelsError("cannot merge this pair: " + "; ".join(verdict.reasons))
    check_fits(verdict.memory)  # the system would kill the app, and every session with it


def verdict(a: Loaded | None, b: Loaded | None) -> tuple[bool, str]:
    """Say whether A and B can be merged, and what the merge will do (no heavy work).

    Returns (ok, Markdown): the header pre-flight's reasons or notes, then the layer and width
    differences the merge will handle.
    """
    if a is None or b is None:
        missing = " and ".join(w for w, s in (("A", a), ("B", b)) if s is None)
        return False, f"Load model {missing} to check the pair."
    try:
        pre = pair_preflight(a, b)
    except HeteroguiError as exc:
        return False, f"**✗ Pre-flight failed**: {exc}"
    notes = note_line(a, "model A") + note_line(b, "model B")
    if not pre.ok:
        lines = ["**✗ Cannot merge this pair**", "", *(f"- {r}" for r in pre.reasons)]
        return False, "\n".join(lines) + notes
    try:
        check_pair(a.net, b.net)
    except HeteroguiError as exc:
        return False, f"**✗ Cannot merge this pair**: {exc}" + notes
    fa, fb = model_facts(a.net), model_facts(b.net)
    lines = [
        f"**✓ Compatible**: both are {fa['family']} models with {len(fa['depths'])} stage(s).",
        "",
    ]
    for s, (da, db) in enumerate(zip(fa["depths"], fb["depths"], strict=True)):
        if da == db:
            lines.append(f"- stage {s}: same depth ({da}); layers pair one to one")
        else:
            deep, shallow = ("A", "B") if da > db else ("B", "A")
            lines.append(
                f"- stage {s}: {deep} has {max(da, db)} layers, {shallow} {min(da, db)}: "
                f"layer alignment pads {shallow} with {abs(da - db)} identity layer(s)"
            )
    if any(set(wa) != set(wb) for wa, wb in zip(fa["widths"], fb["widths"], strict=True)):
        lines.append("- widths differ: the elastic zip merges neurons into a chosen width")
    overlap = sorted(set(fa["classes"]) & set(fb["classes"]))
    scored_on_classes = a.task not in (SENTENCE_SIMILARITY, LANGUAGE_MODELING)
    features = [m for m in (a, b) if not is_classifier(m.net)]
    if scored_on_classes and features:
        which = without_classifier([f"{'AB'[m is b]} ({m.name})" for m in features])
        hints = "".join(head_folders_hint(m.folder) for m in features)
        lines.append(f"- note: {which}: the merge works, but is not scored{hints}")
    elif overlap and scored_on_classes:
        lines.append(
            f"- note: the task classes overlap ({overlap[:10]}): the merge works, but the "
            "Joint and per-task scores need disjoint tasks and are not shown"
        )
    lines += [f"- {n}" for n in dict.fromkeys((*pre.notes, *pair_notes(a, b)))]  # each once
    return True, "\n".join(lines) + notes
