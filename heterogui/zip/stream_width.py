"""The residual stream's merged width, kept to one a transformer's own config can hold.

A transformers BERT, ViT or GPT-2 ties its heads to its width (hidden_size = heads x head
size); a Llama, Qwen2 or Mistral config needs hidden_size to be a multiple of its head count,
which comes in groups of query heads per key/value head. The Hugging Face exports pad a
layer with fewer heads with zero heads and a narrower MLP with zero neurons, which changes
nothing, but the stream cannot be padded: its norms average over every feature. A stream
width that rho gives between two such widths made most zip ratios (16 of 21 on a 0.05 grid
for BERT, ViT and GPT-2 pairs) impossible to write in the models' own format, and a
decoder's export padded its heads up to a divisor of that width (to 74 heads for a merge of
10).

``fit_stream`` moves a stream width planned from rho to the nearer of the two widths around
it that the format holds (the wider on a tie): at most half a head's size away for BERT, ViT
and GPT-2, half the head count for decoders. When neither holds the heads the attention
layers keep (more heads kept than the stream has room for: overrides that keep attention
whole), the width stays, and an export in the models' format says why. The ends stay as
well: rho = 0 (every feature, the ensemble) and rho = 1 (the paper's width), as does a width
set by hand.
"""

from __future__ import annotations

from collections.abc import Callable

from heterogui.models.graph import STREAM, ModelGraph
from heterogui.zip.matchers import EQUAL_WIDTHS
from heterogui.zip.widths import target_width


def fit_stream(
    plan: dict[str, tuple[int, int, int]], graph: ModelGraph, knobs: dict, split: bool
) -> None:
    """Move the stream's planned width in ``plan`` to the nearest one its format holds.

    knobs: the stream's settings (``ZipSettings.for_space``); split: heads are split (every
    head of both kept at half its size).
    """
    if STREAM not in plan:
        return
    n_a, n_b, width = plan[STREAM]
    ends = (target_width(n_a, n_b, 1.0), n_a + n_b)
    if knobs["width"] is not None or knobs["matcher"] in EQUAL_WIDTHS or width in ends:
        return
    rule = stream_rule(plan, graph, split)
    if rule is None or rule[1](width):
        return
    step, holds = rule
    below = width - width % step
    nearest = sorted((below + step, below), key=lambda w: abs(w - width))  # wider on a tie
    fits = [w for w in nearest if ends[0] <= w <= ends[1] and holds(w)]
    if fits:
        plan[STREAM] = (n_a, n_b, fits[0])


def stream_rule(
    plan: dict[str, tuple[int, int, int]], graph: ModelGraph, split: bool
) -> tuple[int, Callable[[int], bool]] | None:
    """Return (the step between the stream widths the family's transformers config holds,
    whether a width holds the planned heads); None for a family without attention heads."""
    queries = [(s, plan[n][2]) for n, s in graph.spaces.items() if n in plan and s.role == "q"]
    if queries:  # a decoder: hidden_size a multiple of a head count in whole groups
        group = queries[0][0].unit_heads
        most = max(r // s.head_dim for s, r in queries)
        heads = -(-most // group) * group
        return heads, lambda width: width % heads == 0
    tied = [(s, plan[n][2]) for n, s in graph.spaces.items() if n in plan and s.head_dim]
    if not tied:
        return None
    most = max(r // s.head_dim for s, r in tied)  # heads of the widest layer
    size = tied[0][0].head_dim // 2 if split else tied[0][0].head_dim  # a merged head's size
    return size, lambda width: width % size == 0 and width // size >= most
