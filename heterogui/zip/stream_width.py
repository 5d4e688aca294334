"""The residual stream's merged width, kept to one a transformer's own config can hold.

A transformers BERT, ViT or GPT-2 ties its heads to its width (hidden_size = heads x head
size); a Llama, Qwen2 or Mistral config needs hidden_size to be a multiple of its head count,
which comes in groups of query heads per key/value head. The Hugging Face exports pad a
layer with fewer heads with zero heads and a narrower MLP with zero neurons, which changes
nothing, but the stream cannot be padded: its norms average over every feature. A stream
width that rho gives between two such widths made most zip ratios (16 of 21 on a 0.05 grid
for BERT, ViT and GPT-2 pairs) impossible to write in the models' own format, and a
decoder's export padded its heads up to a divisor of that width (3.4 times the merge's
parameters).

``fit_stream`` moves a stream width planned from rho to the nearest width the format holds
(the wider on a tie): at most half a head's size away for BERT, ViT and GPT-2, half the head
count for decoders. The ends stay: rho = 0 (every feature, the ensemble) and rho = 1 (the
paper's width) keep their widths, as does a width set by hand.
"""

from __future__ import annotations

from collections.abc import Callable

from heterogui.models.graph import ModelGraph
from heterogui.zip.matchers import EQUAL_WIDTHS
from heterogui.zip.widths import target_width

STREAM = "stream"  # the residual stream's merge point in the transformer families' graphs


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
    ends = (n_a + n_b, target_width(n_a, n_b, 1.0))
    if knobs["width"] is not None or knobs["matcher"] in EQUAL_WIDTHS or width in ends:
        return
    holds = stream_rule(plan, graph, split)
    if holds is None or holds(width):
        return
    for step in range(1, n_a + n_b):
        for candidate in (width + step, width - step):
            if min(ends) <= candidate <= max(ends) and holds(candidate):
                plan[STREAM] = (n_a, n_b, candidate)
                return


def stream_rule(
    plan: dict[str, tuple[int, int, int]], graph: ModelGraph, split: bool
) -> Callable[[int], bool] | None:
    """Return which stream widths the family's transformers config holds with the planned
    heads (None: a family without attention heads, any width)."""
    queries = [(s, plan[n][2]) for n, s in graph.spaces.items() if n in plan and s.role == "q"]
    if queries:  # a decoder: hidden_size a multiple of a head count in whole groups
        group = queries[0][0].unit_heads
        most = max(r // s.head_dim for s, r in queries)
        heads = -(-most // group) * group
        return lambda width: width % heads == 0
    tied = [(s, plan[n][2]) for n, s in graph.spaces.items() if n in plan and s.head_dim]
    if not tied:
        return None
    most = max(r // s.head_dim for s, r in tied)  # heads of the widest layer
    size = tied[0][0].head_dim // 2 if split else tied[0][0].head_dim  # a merged head's size
    return lambda width: width % size == 0 and width // size >= most
