"""The words the workbench shows about a merge: its fusion, heads, renormalization, metric and
collapse alarm (docs/method.md secs. 8, 9 and 11), and the Zip tab's choices and help on them."""

from __future__ import annotations

from heterogui.config import SPLIT_HEADS
from heterogui.markup import escape_markdown
from heterogui.pipeline import MergeResult, Prepared, ZipSettings
from heterogui.tasks import Task
from heterogui.ui.session import Session
from heterogui.zip.collect import capture_points
from heterogui.zip.plan import head_group_firsts
from heterogui.zip.reuse import block_roles

# the least-squares fusions by the names the page shows (the Zip tab's dropdown, messages)
FUSION_NAMES = {
    "least_squares": "least squares",
    "least_squares_heads": "least squares, heads refit",
    "least_squares_sequential": "sequential least squares",
}

# the Zip tab's dropdowns (label, value) and the explanation below its knobs
HEAD_CHOICES = [
    ("auto (split for ViTs, else pair)", "auto"),
    ("pair and average (paper)", "pair"),
    ("select the stronger head of each pair", "select"),
    ("search the heads to keep on the calibration data (slower)", "search"),
    ("split: keep every head of both, each at half its size", "split"),
]
FUSION_CHOICES = [
    ("auto (what measured best for the family)", "auto"),
    ("average (paper)", "average"),
    *((name, fusion) for fusion, name in FUSION_NAMES.items()),
]
KNOBS_HELP = """
- **Matcher.** *zip*: the greedy elastic zip, which merges models of any widths; *permute*
  (one-to-one matching) and *average* (no matching) need equal widths.
- **Fusion.** *average*: the paper's merged weights W* = M W U. *least squares*: the merged
  weights that best reproduce the parents' averaged outputs, fitted in closed form on the
  calibration statistics. *least squares, heads refit*: that, then each model's unmerge (what
  its head reads) refit on the merge's own output (one pass of the merge; +1-3 points on the
  zoo's CNNs: docs/quality.md). *sequential least squares*: refit layer by layer on the merge's
  own inputs, and the unmerges after it (a few passes a merge; best on the zoo's CNNs and ViTs,
  not on MiniLM's sentence similarity: docs/quality.md). *auto*: sequential for ViTs, least
  squares for VGG and ResNet (measured better at little cost), the paper's average for the
  others. On decoder language models least squares lowered the perplexity on every pair measured
  (by 0.1-5%, and by 15% on the trained Llama pair's code) but a re-merge of a SmolLM2-sized
  model takes 11-31 s with it against 1-2 s; the sequential refit was best on the trained pairs
  and worse on SmolLM2 (docs/decoders.md).
- **Attention heads** (transformers). *pair*: a head of A and its matched head of B are
  averaged (an attention pattern neither computes). *select*: the pair's head that writes
  more through its output projection is kept whole, and both models' outputs read it.
  *search*: starts from select and flips one pair's choice at a time while the merge
  reproduces its parents better on the calibration data (a merge per flip tried: seconds on
  the zoo's ViTs, minutes on MiniLM). *split*: no head is averaged or dropped; every head of A
  and B is kept and cut to its strongest half (BERT, ViT and GPT-2; the layer keeps the
  paper's width, and rho then sets the other merge points). *auto*: split for ViTs, pair for
  the others.
- **Renormalize** (transformers). Rescale the merged LayerNorm/RMSNorm and value outputs to
  the parents' average statistics: one more pass over the calibration data per merge.
"""


def fusion_text(settings: ZipSettings) -> str:
    """Return the fusion of ``settings`` for messages ("least squares (ridge 0.01)")."""
    if settings.fusion == "average":
        return "average"
    return f"{FUSION_NAMES[settings.fusion]} (ridge {settings.ridge:g})"


def heads_text(result: MergeResult) -> str:
    """Return what head selection did to a merge, for messages (it was on): how many merged
    head pairs took A's head and how many B's (a split: the size its heads were cut to)."""
    graph = result.prepared.padded_a.graph()
    if result.settings.heads == SPLIT_HEADS:
        if result.split_rank is None:
            return "heads: no attention heads to split"
        d = result.prepared.padded_a.config.head_dim
        return f"heads split: every head of A and B kept, cut from {d} to {result.split_rank}"
    taken = [0, 0]
    for name in head_group_firsts(graph):
        match = result.matches.get(name)
        if match is None or match.weights is None:
            continue
        owners, kept = match.owners(), match.groups >= 0
        chosen = kept & (match.weights == 1)
        chosen[kept] &= match.shared_groups()[match.groups[kept]]
        for model in (0, 1):
            taken[model] += int((chosen & (owners == model)).sum()) // graph.spaces[name].unit
    if not any(taken):
        return "heads: no merged attention heads to select"
    kept = f"{taken[0]} merged head pairs kept A's head, {taken[1]} B's"
    if result.searched is None:
        return f"heads selected: {kept}"
    tried, value = result.searched
    return (
        f"heads searched: {kept} (best of {tried} merges tried, divergence from the parents "
        f"{value:.4g}; {result.timings.get('search', 0.0):.1f}s)"
    )


def renormalize_text(result: MergeResult) -> str:
    """Return what renormalization did to a merge, for messages (it was on)."""
    n = result.renormalized
    if n == 0:
        return (
            "renormalize: no LayerNorm/RMSNorm or value outputs to rescale in these models "
            "(BatchNorm re-estimation does that job)"
        )
    outputs = f"{n} merged output{'s' if n != 1 else ''}"
    return f"renormalized {outputs} to the parents' average statistics"


def shown(text: str) -> str:
    """Return ``text`` as the status line and a toast show it: a "<" as text (YAML's errors
    name "<stream end>", which the page would read as a tag and drop with all that follows)."""
    return text.replace("&", "&amp;").replace("<", "&lt;")


def literal(text: str) -> str:
    """Return ``text`` as the status line (Markdown) shows it, character for character: a
    folder typed as "../*star* __init__" showed in italics and bold without its marks.

    Backticks stay: messages quote commands in them (`pip install ...`), shown as code.
    """
    return escape_markdown(shown(text), keep_code=True)


def lower_is_better(task: Task | None) -> bool:
    """Return whether a smaller headline score is better for ``task`` (perplexity)."""
    if task is None:
        return False
    return task.lower_is_better


def metric_label(task: Task | None) -> str:
    """Return the headline metric's name for axes and tables ("perplexity (lower is better)")."""
    if task is None:
        return "score"
    return f"{task.metric} (lower is better)" if lower_is_better(task) else task.metric


def merge_alarms(session: Session) -> list[str]:
    """Return why the current merge's scores look broken (the task's alarms; none: [])."""
    task = session.task
    if task is None or session.result is None or session.merged_metrics is None:
        return []
    return task.alarms({**session.baseline, "merged": session.merged_metrics})


def alarm_line(reasons: list[str]) -> str:
    """Return the one-line collapse alarm of a merge ("" when there is no reason)."""
    if not reasons:
        return ""
    return (
        "⚠ **Collapse alarm**: the merge completed but looks broken: "
        + "; ".join(reasons)
        + ". Try a lower rho, a later stop point or more calibration texts."
    )


def point_layers(prepared: Prepared) -> dict[str, str]:
    """Return, for every merge point inside one block of the padded pair, the layers of A and
    B it merges, as the CKA map names them ("A3 ↔ B5"): a point is named by its slot, which
    after padding is not the shallower model's layer number."""
    blocks: dict[str, set[int]] = {}
    for space, _module, _layout, block in capture_points(prepared.padded_a.graph()):
        blocks.setdefault(space, set()).add(block)
    roles = [
        block_roles(prepared.padded_a, prepared.net_a),
        block_roles(prepared.padded_b, prepared.net_b),
    ]
    out = {}
    for space, found in blocks.items():
        if len(found) == 1:
            (block,) = found
            named = [
                f"{m}{own}" if kind == "block" else f"{m} identity"
                for m, (kind, own) in zip("AB", (r[block] for r in roles), strict=True)
            ]
            out[space] = " ↔ ".join(named)
    return out
