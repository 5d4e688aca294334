"""Load models A and B from the zoo, a folder, an upload or a Hugging Face id; describe them.

Every choice becomes a model reference that the sources registry reads (the one place that
parses references); an upload is first copied into a fresh folder of its own (never over the
user's files). Each loader returns a ``Loaded`` or raises a HeteroguiError whose message the
page shows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from heterogui.errors import ConfigError, HeteroguiError, ModelLoadError
from heterogui.pipeline import check_pair
from heterogui.report import model_facts
from heterogui.sources import registry
from heterogui.sources.base import Loaded
from heterogui.sources.upload import receive
from heterogui.sources.zoo import zoo_ref
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
    .zip of an export); hf_id: a Hugging Face folder, hub id or "minilm:NAME".

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
        text = (folder or "").strip()
        if not text:
            raise ModelLoadError(
                "type the path of a model folder (config.json + model.safetensors)"
            )
        return registry.load(text)
    if source == "upload":
        loaded = registry.load(str(receive(files, workdir)))
        return dataclasses.replace(loaded, source="upload")
    if source == "hf":
        text = (hf_id or "").strip()
        if not text:
            raise ModelLoadError("type a Hugging Face folder, hub id or minilm:NAME")
        return registry.load(text)
    raise ConfigError(f"unknown model source {source!r}; use one of {', '.join(SOURCES)}")


def zoo_choice(pair: str, which: str) -> str:
    """Return the zoo dropdown's value of model ``which`` of demo pair ``pair``."""
    return zoo_ref(pair, which).removeprefix("zoo:")


def model_card(loaded: Loaded | None, which: str) -> str:
    """Return a Markdown card for model ``which`` ("A"/"B")."""
    if loaded is None:
        return f"**Model {which}**: not loaded yet."
    facts = model_facts(loaded.net)
    stages = "; ".join(
        f"stage {s}: {d} layers, widths {w}"
        for s, (d, w) in enumerate(zip(facts["depths"], facts["widths"], strict=True))
    )
    heads = loaded.net.task_heads()
    if facts["family"] == "bert" and loaded.net.config.num_labels is None:
        head = f"- head: sentence embedding of width {len(facts['classes'])}"
    else:
        head = "- task heads: " + "; ".join(f"{h.name} (classes {list(h.classes)})" for h in heads)
    return (
        f"**Model {which}: {loaded.name}** ({loaded.source}; scored on "
        f"{loaded.task.replace('_', ' ')})\n\n"
        f"- family **{facts['family']}**, input width {facts['input_width']}\n"
        f"- depth per stage {facts['depths']} ({stages})\n"
        f"- parameters **{facts['parameters']:,}**\n" + head
    )


def verdict(a: Loaded | None, b: Loaded | None) -> tuple[bool, str]:
    """Say whether A and B can be merged, and what the merge will do (no heavy work).

    Returns (ok, Markdown): the header pre-flight's reasons or notes, then the layer and width
    differences the merge will handle.
    """
    if a is None or b is None:
        missing = " and ".join(w for w, s in (("A", a), ("B", b)) if s is None)
        return False, f"Load model {missing} to check the pair."
    try:
        pre = registry.pair_verdict(registry.describe(a.ref), registry.describe(b.ref))
    except HeteroguiError as exc:
        return False, f"**✗ Pre-flight failed**: {exc}"
    if not pre.ok:
        lines = ["**✗ Cannot merge this pair**", "", *(f"- {r}" for r in pre.reasons)]
        return False, "\n".join(lines)
    try:
        check_pair(a.net, b.net)
    except HeteroguiError as exc:
        return False, f"**✗ Cannot merge this pair**: {exc}"
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
    if overlap and a.net.config.num_classes and a.task != "sentence_similarity":
        lines.append(
            f"- note: the task classes overlap ({overlap[:10]}): the merge works, but the "
            "Joint and per-task scores need disjoint tasks and are not shown"
        )
    lines += [f"- {n}" for n in pre.notes]
    return True, "\n".join(lines)
