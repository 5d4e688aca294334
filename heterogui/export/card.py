"""The model card written next to every exported merge: Markdown with small SVG figures.

The SVGs are drawn here as plain text (no plotting library, no browser), so an export needs
nothing beyond the core and opens anywhere a README renders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from heterogui.markup import escape_markdown

SIZE = 28  # pixels per heatmap cell


def _viridis(v: float) -> str:
    """Return a colour from dark blue (0) through teal to yellow (1)."""
    stops = [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)]
    v = min(max(v, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(v), len(stops) - 2)
    t = v - i
    rgb = [round(a + (b - a) * t) for a, b in zip(stops[i], stops[i + 1], strict=True)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _number(v: float) -> str:
    """Return a short axis label: 1.2M, 45k, 0.87."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def _svg_start(width: float, height: float, font_size: int) -> str:
    """Return an SVG's opening tag and its white background: its dark text stays readable
    where it is shown on a dark page (the workbench's dark mode, a hub's dark theme)."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="{font_size}" fill="#111111">\n'
        '<rect width="100%" height="100%" fill="#ffffff"/>'
    )


def heatmap_svg(z: list[list[float]], path: list[tuple[int, int]], title: str) -> str:
    """Return an SVG heatmap (rows: layers of A, columns: layers of B) with the path drawn.

    The colours span the values' own range, shown on a colour bar beside the map.
    path: (row, column) cells joined by a red line.
    """
    rows, cols = len(z), len(z[0]) if z else 0
    values = [v for row in z for v in row] or [0.0]
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    left, top = 40, 40
    bar_x = left + cols * SIZE + 16
    width, height = bar_x + 60, top + max(rows * SIZE, 100) + 30
    parts = [
        _svg_start(width, height, 11),
        f'<text x="{left}" y="16">{escape(title)}</text>',
    ]
    for i, row in enumerate(z):
        parts.append(f'<text x="4" y="{top + i * SIZE + SIZE * 0.65:.0f}">A{i}</text>')
        for j, v in enumerate(row):
            parts.append(
                f'<rect x="{left + j * SIZE}" y="{top + i * SIZE}" width="{SIZE}" '
                f'height="{SIZE}" fill="{_viridis((v - lo) / span)}">'
                f"<title>A{i} B{j}: {v:.3f}</title></rect>"
            )
    for j in range(cols):
        parts.append(f'<text x="{left + j * SIZE + 4}" y="{top + rows * SIZE + 16}">B{j}</text>')
    points = " ".join(
        f"{left + (j + 0.5) * SIZE:.0f},{top + (i + 0.5) * SIZE:.0f}" for i, j in path
    )
    parts.append(f'<polyline points="{points}" fill="none" stroke="#ff4b4b" stroke-width="3"/>')
    steps, bar_h = 20, max(rows * SIZE, 100)
    for k in range(steps):  # the colour bar: the highest value on top
        parts.append(
            f'<rect x="{bar_x}" y="{top + k * bar_h / steps:.1f}" width="12" '
            f'height="{bar_h / steps + 0.5:.1f}" fill="{_viridis(1 - k / (steps - 1))}"/>'
        )
    parts.append(f'<text x="{bar_x + 16}" y="{top + 8}">{hi:.3f}</text>')
    parts.append(f'<text x="{bar_x + 16}" y="{top + bar_h}">{lo:.3f}</text>')
    parts.append(f'<text x="{bar_x}" y="{top - 6}">CKA</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def bars_svg(labels: list[str], series: dict[str, list[float]], title: str) -> str:
    """Return an SVG grouped bar chart: one group per label, one bar per series, a value axis."""
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    n = max(len(series), 1)
    group_w, bar_w, plot_h, left, top = 24 * n + 16, 24, 160, 50, 40
    top_value = max([v for vals in series.values() for v in vals] + [1])
    width = left + group_w * max(len(labels), 1) + 10
    parts = [
        _svg_start(max(width, 260), top + plot_h + 60, 10),
        f'<text x="{left}" y="14">{escape(title)}</text>',
    ]
    for k, name in enumerate(series):
        parts.append(
            f'<rect x="{left + 90 * k}" y="20" width="10" height="10" '
            f'fill="{colours[k % 4]}"/><text x="{left + 90 * k + 14}" y="29">'
            f"{escape(name)}</text>"
        )
    for tick in (0.0, 0.5, 1.0):  # the value axis, with grid lines
        y = top + plot_h * (1 - tick)
        parts.append(
            f'<line x1="{left - 4}" y1="{y:.1f}" x2="{width}" y2="{y:.1f}" stroke="#ccc"/>'
            f'<text x="{left - 6}" y="{y + 3:.1f}" text-anchor="end">'
            f"{_number(tick * top_value)}</text>"
        )
    for g, label in enumerate(labels):
        for k, values in enumerate(series.values()):
            h = plot_h * values[g] / top_value
            x = left + g * group_w + k * bar_w
            parts.append(
                f'<rect x="{x}" y="{top + plot_h - h:.1f}" width="{bar_w - 2}" height="{h:.1f}" '
                f'fill="{colours[k % 4]}"><title>{escape(label)}: {values[g]:g}</title></rect>'
            )
        parts.append(
            f'<text x="{left + g * group_w}" y="{top + plot_h + 14}" '
            f'transform="rotate(30 {left + g * group_w} {top + plot_h + 14})">'
            f"{escape(label)}</text>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def class_ranges(classes: Sequence[int]) -> str:
    """Return classes as runs of consecutive ids: "0-4", "0, 2, 5-9"; a language model's
    head "0-49151" instead of 49,152 numbers."""
    runs: list[list[int]] = []
    for c in sorted(int(c) for c in classes):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)


def cell_text(v: Any) -> str:
    """Return a table cell: "—" for None, true / false (as a recipe writes them), 4 significant
    digits, thousands separators; a mapping (the overrides) as a recipe's inline YAML, "none"
    when empty."""
    if v is None:
        return "—"
    if isinstance(v, Mapping):
        return f"`{json.dumps(v)}`".replace("|", "\\|") if v else "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    return f"{v:,}" if isinstance(v, int) else _markdown_text(str(v))


def _markdown_text(text: str) -> str:
    """Return ``text`` as a table cell shows it, on one line: Markdown's marks escaped (a label
    "sport | news" split its row) and HTML's "<" and ">" too."""
    return re.sub(r"([<>])", r"\\\1", escape_markdown(" ".join(text.split())))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell_text(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


_USE = {
    "heterogui": """```python
from heterogui.sources.registry import load
merged = load(DIR).net.module        # one network; its outputs are every task head side by side
```
or `heterogui merge` with this folder as model A or B of a next merge.""",
    "hf-bert": """```python
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(DIR)
tokenizer = AutoTokenizer.from_pretrained(DIR)
batch = tokenizer(["a sentence"], return_tensors="pt")
states = model(**batch).last_hidden_state  # merged token states; pool them for embeddings
```""",
    "hf-vit": """```python
from transformers import AutoModel
model = AutoModel.from_pretrained(DIR)
states = model(pixel_values=images).last_hidden_state  # images: (N, C, H, W); [CLS] is row 0
```""",
    "hf-causal-lm": """```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(DIR)
tokenizer = AutoTokenizer.from_pretrained(DIR)
ids = tokenizer("def read_config(path):", return_tensors="pt")
print(tokenizer.decode(model.generate(**ids, max_new_tokens=32)[0]))
```
Its logits are the mean of the merge's two language-model heads' logits.""",
}
# a heterogui-format merge that one network cannot hold (text models, a partial zip)
_MERGED_USE = """```python
from heterogui.sources.folder import load_merged
merged = load_merged(DIR)   # the merged trunk, then each model's own tail and heads
```"""
_FRONT = {
    "heterogui": "---\nlibrary_name: heterogui\ntags: [heterogui, model-merging]\n---\n",
    "hf-bert": "---\nlibrary_name: transformers\ntags: [heterogui, model-merging, bert]\n---\n",
    "hf-vit": "---\nlibrary_name: transformers\ntags: [heterogui, model-merging, vit]\n---\n",
    "hf-causal-lm": (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\n"
        "tags: [heterogui, model-merging, causal-lm]\n---\n"
    ),
}


def model_card(facts: dict[str, Any], fmt: str = "heterogui") -> str:
    """Return the README.md of an exported merge.

    facts: "title", "models" (rows: name, reference, family, layers per stage, parameters),
    "heads" (rows: head, task classes, from model; "heads_header" names that column: outputs
    for embedders and language models), "alignment" (mode, mapping, score),
    "settings" (dict), "widths" (rows: merge point, A, B, merged), "sizes" (rows: model,
    parameters, FLOPs), "metric_header" and "metrics" (rows, or []), "notes" (sentences).
    Optional: "rerun_flags" (what the rerun command needs beyond the recipe: " --format X"
    for an export in another than the default format), "rerun_command" (what runs the recipe;
    default "heterogui merge", under torchrun its launch), "relative_inputs" (the recipe's
    relative paths: the rerun runs from the folder the merge ran in), "not_one_network" (why a
    heterogui-format folder loads only as a merged model: text models, a partial zip),
    "width_header" (the models' width columns; default A and B), "classify" (a Hugging Face
    export of classifiers: how to classify with its head folders),
    "alignment" "text"
    (a sentence in place of mode, score and mapping) and "alignment_figure" (default True:
    the card shows alignment.svg).
    fmt: the output format (its front matter and usage snippet).
    """
    al = facts["alignment"]
    aligned = al.get("text") or (
        f"Mode **{al['mode']}**, score {al['score']}, mapping `{al['mapping']}`."
    )
    width_header = ["merge point", *facts.get("width_header", ["width A", "width B"])]
    figure = facts.get("alignment_figure", True)
    parts = [
        f"# {facts['title']}",
        "A training-free heterogeneous merge made with heterogui (layer alignment by CKA, "
        "elastic neuron zip).",
        "## Source models",
        _table(["model", "name", "family", "layers per stage", "parameters"], facts["models"]),
    ]
    if facts.get("heads"):
        parts += [
            "## Task heads",
            _table(["head", facts.get("heads_header", "classes"), "from"], facts["heads"]),
        ]
    parts += [
        "## Layer alignment",
        aligned,
        *(["![layer CKA and alignment path](alignment.svg)"] if figure else []),
        "## Neuron zip",
        _table(["setting", "value"], [[k, v] for k, v in facts["settings"].items()]),
        _table([*width_header, "merged width"], facts["widths"]),
        "![widths per merge point](widths.svg)",
        "## Size",
        _table(["model", "parameters", "FLOPs per input"], facts["sizes"]),
    ]
    if facts.get("metrics"):
        parts += ["## Scores", _table(facts["metric_header"], facts["metrics"])]
    use = _USE[fmt] if facts.get("not_one_network") is None else _MERGED_USE
    if facts.get("classify"):
        use += "\n\n" + facts["classify"]
    parts += ["## Use", use.replace("DIR", '"DIR"' if fmt == "heterogui" else "DIR")]
    if facts.get("not_one_network") is not None:
        parts += [f"It is not one network to load or merge again: {facts['not_one_network']}."]
    parts += [f"- {n}" for n in facts.get("notes", ())]
    relative = facts.get("relative_inputs") or []
    where = (
        " run from the folder the merge ran in (the recipe names "
        f"{', '.join(f'`{p}`' for p in relative)} relative to it)"
        if relative
        else ""
    )
    parts += [
        "## Reproduce",
        f"`{facts.get('rerun_command', 'heterogui merge')} recipe.yaml --out OUT"
        f"{facts.get('rerun_flags', '')}`{where} repeats "
        "this merge bit for bit; "
        "`recipe.yaml`, `report.json` and `config.json` sit beside this card.",
    ]
    return _FRONT[fmt] + "\n\n".join(parts) + "\n"


def with_folder_size(card: str, count: int, note: str) -> str:
    """Return a model card whose Size table and notes also give what the folder stores.

    count: the parameters the folder's weights files hold; note: why they differ from the
    merge's (the format's shape). The row follows "merged (stored)"; the note follows the
    card's notes on sizes.
    """
    lines = card.split("\n")
    stored = next((k for k, ln in enumerate(lines) if ln.startswith("| merged (stored) |")), None)
    if stored is not None:
        row = _table(["model", "parameters", "FLOPs per input"], [["in this folder", count, None]])
        lines.insert(stored + 1, row.split("\n")[-1])
    sizes = next((k for k, ln in enumerate(lines) if ln.startswith("- Sizes: ")), None)
    sentence = f"- In this folder: {count:,} parameters (what transformers counts), as {note}."
    lines.insert(len(lines) if sizes is None else sizes + 1, sentence)
    return "\n".join(lines)
