"""Load models A and B from the zoo, a folder, an upload or a Hugging Face id; describe them.

Every loader returns a ``ModelSlot`` or raises a HeteroguiError whose message the page shows.
Uploaded files are copied into a fresh folder of the session (never over the user's files).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from heterogui.errors import ConfigError, HeteroguiError, ModelLoadError
from heterogui.models.family import Network
from heterogui.models.graph import INPUT, LOGITS
from heterogui.models.io import CONFIG_FILE, WEIGHTS_FILE, file_sha256, load_network
from heterogui.pipeline import check_pair
from heterogui.ui.session import ModelSlot
from heterogui.ui.text import preflight_text

log = logging.getLogger(__name__)
SOURCES = ("zoo", "folder", "upload", "hf")


def hf_available() -> bool:
    """Return True when the transformer adapter (``heterogui.models.bert``) is installed."""
    try:
        return importlib.util.find_spec("heterogui.models.bert") is not None
    except ImportError:
        return False


def load_folder(path: str) -> ModelSlot:
    """Load a heterogui network folder (config.json + model.safetensors).

    Raises:
        ModelLoadError: the folder or a file is missing or corrupt.
        ConfigError: the config names an unknown family or field.
    """
    text = (path or "").strip()
    if not text:
        raise ModelLoadError("type the path of a model folder (config.json + model.safetensors)")
    folder = Path(text).expanduser()
    net = load_network(folder)
    return ModelSlot(net, str(folder.resolve()), "folder", file_sha256(folder / WEIGHTS_FILE))


def load_upload(files: list[str] | None, workdir: str | None = None) -> ModelSlot:
    """Load a network from uploaded files: one .safetensors file and one config .json.

    workdir: where to make the model folder (a new temporary folder when None).

    Raises:
        ModelLoadError: files missing, not safetensors, corrupt, or not a heterogui config.
    """
    paths = [Path(f) for f in (files or [])]
    weights = [p for p in paths if p.suffix == ".safetensors"]
    configs = [p for p in paths if p.suffix == ".json"]
    others = [p.name for p in paths if p.suffix not in (".safetensors", ".json")]
    if others:
        raise ModelLoadError(
            f"{others} are not model files: upload one .safetensors weights file and its "
            "config.json (a heterogui network folder's two files)"
        )
    if len(weights) != 1 or len(configs) != 1:
        raise ModelLoadError(
            f"got {len(weights)} .safetensors and {len(configs)} .json files: upload exactly "
            "one weights file (.safetensors) and one config.json"
        )
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=workdir))
    shutil.copyfile(weights[0], folder / WEIGHTS_FILE)
    shutil.copyfile(configs[0], folder / CONFIG_FILE)
    try:
        net = load_network(folder)
    except HeteroguiError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return ModelSlot(net, str(folder), "upload", file_sha256(folder / WEIGHTS_FILE))


def load_hf(model_id: str) -> ModelSlot:
    """Load a Hugging Face BERT: a save_pretrained folder, a hub id (when the hub is allowed),
    or "minilm:all-MiniLM-L6-v2" / "minilm:paraphrase-MiniLM-L3-v2" (the offline MiniLM pair).

    Raises:
        ConfigError: the transformer adapter is not installed.
        ModelLoadError: the model cannot be loaded (the reason is in the message).
    """
    if not hf_available():
        raise ConfigError(
            "Hugging Face transformers arrive with the transformer adapter "
            "(heterogui.models.bert), which this install does not have yet"
        )
    name = (model_id or "").strip()
    if not name:
        raise ModelLoadError("type a Hugging Face model id or a save_pretrained folder")
    from heterogui.ui.text import load_slot

    return load_slot(name)


def zoo_slot(net: Network, pair: str, which: str) -> ModelSlot:
    """Return the slot of model ``which`` ("a"/"b") of zoo pair ``pair``."""
    return ModelSlot(net, f"zoo:{pair}/{which}", "zoo", None)


def block_widths(net: Network) -> list[list[int]]:
    """Return per stage the width of every block (its own inner space, else its output)."""
    graph = net.graph()
    owners: dict[str, set[int]] = {}
    for name, space in graph.spaces.items():
        owners[name] = {c.block for c in space.captures}
    out = []
    for stage in graph.stages:
        widths = []
        for block in stage:
            own = [
                graph.spaces[n].width
                for n, blocks in owners.items()
                if blocks == {block} and n not in (INPUT, LOGITS)
            ]
            widths.append(own[0] if own else graph.spaces[graph.block_out[block]].width)
        out.append(widths)
    return out


def model_facts(net: Network) -> dict[str, Any]:
    """Return the facts a model card shows: family, stages, widths, parameters, classes."""
    graph = net.graph()
    widths = block_widths(net)
    return {
        "label": net.label,
        "family": net.family.name,
        "input_width": graph.spaces[INPUT].width,
        "depths": [len(w) for w in widths],
        "widths": widths,
        "parameters": net.parameter_count(),
        "classes": list(net.head_classes()),
    }


def model_card(slot: ModelSlot | None, which: str) -> str:
    """Return a Markdown card for model ``which`` ("A"/"B")."""
    if slot is None:
        return f"**Model {which}**: not loaded yet."
    facts = model_facts(slot.net)
    stages = "; ".join(
        f"stage {s}: {d} layers, widths {w}"
        for s, (d, w) in enumerate(zip(facts["depths"], facts["widths"], strict=True))
    )
    return (
        f"**Model {which}: {facts['label']}** ({slot.source}: `{slot.ref}`)\n\n"
        f"- family **{facts['family']}**, input width {facts['input_width']}\n"
        f"- depth per stage {facts['depths']} ({stages})\n"
        f"- parameters **{facts['parameters']:,}**\n"
        + (
            f"- task classes {facts['classes']}"
            if facts["family"] != "bert"
            else f"- head: {len(facts['classes'])} outputs (sentence embedding or classifier)"
        )
    )


def verdict(a: ModelSlot | None, b: ModelSlot | None) -> tuple[bool, str]:
    """Say whether A and B can be merged, and what the merge will do (no heavy work).

    Returns (ok, Markdown).
    """
    if a is None or b is None:
        missing = " and ".join(w for w, s in (("A", a), ("B", b)) if s is None)
        return False, f"Load model {missing} to check the pair."
    pre = preflight_text(a, b) if "bert" in (a.net.family.name, b.net.family.name) else None
    if pre is not None and pre.startswith("**✗"):
        return False, pre
    try:
        check_pair(a.net, b.net)
    except HeteroguiError as exc:
        return False, f"**✗ Cannot merge this pair**: {exc}"
    fa, fb = model_facts(a.net), model_facts(b.net)
    lines = [f"**✓ Compatible**: both are {fa['family']} models with {len(fa['depths'])} stage(s)."]
    for s, (da, db) in enumerate(zip(fa["depths"], fb["depths"], strict=True)):
        if da == db:
            lines.append(f"- stage {s}: same depth ({da}); layers pair one to one")
        else:
            deep, shallow = ("A", "B") if da > db else ("B", "A")
            lines.append(
                f"- stage {s}: {deep} has {max(da, db)} layers, {shallow} {min(da, db)}: "
                f"layer alignment pads {shallow} with {abs(da - db)} identity layer(s)"
            )
    if fa["widths"] != fb["widths"]:
        lines.append("- widths differ: the elastic zip merges neurons into a chosen width")
    overlap = sorted(set(fa["classes"]) & set(fb["classes"]))
    if overlap and pre is None:  # transformer heads are per model (embeddings or classifiers)
        lines.append(
            f"- note: the task classes overlap ({overlap}): the merge works, but the Joint/Task "
            "metrics need disjoint tasks and are not shown"
        )
    if pre is not None:
        lines.append(pre)
    return True, "\n".join(lines)


def guess_dataset(net: Network) -> str | None:
    """Return the zoo dataset whose inputs fit ``net`` (digits 1x8x8, MNIST-1D 1x40), if any."""
    config = net.config
    if net.family.name == "mlp":
        return {64: "digits", 40: "mnist1d"}.get(getattr(config, "in_features", None))
    dims = getattr(config, "spatial_dims", None)
    if getattr(config, "in_channels", None) == 1:
        return {2: "digits", 1: "mnist1d"}.get(dims)
    return None
