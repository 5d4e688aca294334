"""Layer alignment of two models, stage by stage (docs/method.md sec. 4).

In every stage the shallower model's blocks are placed at slots of the deeper one by a
segmenter (SMA, LMA, uniform, head, head_tail) or by a user's manual mapping; both models are
then padded to the deeper topology (``align.pad``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heterogui.align.segment import NEEDS_SIMILARITY, SEGMENTERS, score, validate_positions
from heterogui.errors import AlignmentError, IncompatibleModelsError
from heterogui.models.graph import ModelGraph

MODES = (*SEGMENTERS, "manual")


@dataclass(frozen=True)
class Alignment:
    """Where every block of A and of B goes in the merged topology.

    positions_a / positions_b: per stage, the slot of each block of that model.
    depths: per stage, the number of slots (the deeper model's depth).
    score: the SMA objective of the mapping on the similarity matrix (None without one).
    """

    mode: str
    positions_a: tuple[tuple[int, ...], ...]
    positions_b: tuple[tuple[int, ...], ...]
    depths: tuple[int, ...]
    score: float | None = None

    @property
    def placement(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """Return where the blocks go, (positions_a, positions_b): what padding depends on."""
        return self.positions_a, self.positions_b

    def mapping(self) -> dict[str, list[list[int]]]:
        """Return the mapping as plain lists, as a recipe stores it."""
        return {
            "a": [list(p) for p in self.positions_a],
            "b": [list(p) for p in self.positions_b],
        }


def check_stages(graph_a: ModelGraph, graph_b: ModelGraph) -> None:
    """Raise if the models cannot be aligned stage by stage.

    Raises:
        IncompatibleModelsError: when the numbers of stages differ.
    """
    if len(graph_a.stages) != len(graph_b.stages):
        raise IncompatibleModelsError(
            f"model A has {len(graph_a.stages)} stages and model B {len(graph_b.stages)}; "
            "layer alignment pairs stages one to one: pick models with the same number of "
            "resolution/width stages"
        )


def stage_similarity(
    similarity: torch.Tensor | None, graph_a: ModelGraph, graph_b: ModelGraph, stage: int
) -> torch.Tensor | None:
    """Return the (deep x shallow) similarity block of ``stage`` (None without a matrix)."""
    if similarity is None:
        return None
    rows, cols = list(graph_a.stages[stage]), list(graph_b.stages[stage])
    sub = similarity[rows][:, cols]
    return sub if len(rows) >= len(cols) else sub.T


def align(
    graph_a: ModelGraph,
    graph_b: ModelGraph,
    similarity: torch.Tensor | None,
    mode: str = "sma",
    manual: dict[str, list[list[int]]] | None = None,
) -> Alignment:
    """Align the blocks of A and B stage by stage.

    similarity: (L_A, L_B) CKA between non-head blocks (needed by "sma" and "lma").
    manual: for mode "manual", {"a": per-stage slots of A's blocks, "b": same for B}.

    Raises:
        IncompatibleModelsError: different numbers of stages.
        AlignmentError: unknown mode, missing similarity, or an invalid manual mapping.
    """
    check_stages(graph_a, graph_b)
    if mode not in MODES:
        raise AlignmentError(f"unknown alignment mode {mode!r}; choose one of {list(MODES)}")
    if mode in NEEDS_SIMILARITY and similarity is None:
        raise AlignmentError(f"alignment mode {mode!r} needs the CKA similarity matrix")
    if mode == "manual" and manual and {"a", "b"} <= set(manual):
        for key in ("a", "b"):
            if len(manual[key]) != len(graph_a.stages):
                raise AlignmentError(
                    f"manual mapping for {key.upper()} lists {len(manual[key])} stage(s) but "
                    f"the models have {len(graph_a.stages)}; give one list of slots per stage"
                )
    pos_a, pos_b, depths, total = [], [], [], 0.0
    for s, (blocks_a, blocks_b) in enumerate(zip(graph_a.stages, graph_b.stages, strict=True)):
        deep, shallow = max(len(blocks_a), len(blocks_b)), min(len(blocks_a), len(blocks_b))
        sim = stage_similarity(similarity, graph_a, graph_b, s)
        if mode == "manual":
            chosen = _manual_stage(manual, s, len(blocks_a), len(blocks_b))
        elif deep == shallow:
            chosen = tuple(range(deep))
        else:
            segmenter = SEGMENTERS[mode]
            chosen = segmenter(sim if sim is not None else torch.zeros(deep, shallow))
        full = tuple(range(deep))
        a_deeper = len(blocks_a) >= len(blocks_b)
        pos_a.append(full if a_deeper else chosen)
        pos_b.append(chosen if a_deeper else full)
        depths.append(deep)
        if sim is not None and shallow > 1:
            total += score(sim, chosen)
    return Alignment(
        mode, tuple(pos_a), tuple(pos_b), tuple(depths), total if similarity is not None else None
    )


def placed_by_depths(graph_a: ModelGraph, graph_b: ModelGraph, mode: str) -> bool:
    """Return whether ``align`` places every block without reading the CKA.

    So it does for a segmenter's mode when every stage has the same depth in A and B: each
    block keeps its own slot. The similarity pass and the feature pass can then be one pass.
    A manual mapping (validated by ``align``) and an unknown mode (refused by it) are not.
    """
    if mode not in SEGMENTERS or len(graph_a.stages) != len(graph_b.stages):
        return False
    return all(len(a) == len(b) for a, b in zip(graph_a.stages, graph_b.stages, strict=True))


def _manual_stage(
    manual: dict[str, list[list[int]]] | None, stage: int, depth_a: int, depth_b: int
) -> tuple[int, ...]:
    """Return the validated slots of the shallower model in one stage of a manual mapping."""
    if not manual or "a" not in manual or "b" not in manual:
        raise AlignmentError('a manual alignment needs a mapping {"a": [[...]], "b": [[...]]}')
    deep, shallow = max(depth_a, depth_b), min(depth_a, depth_b)
    key_deep, key_shallow = ("a", "b") if depth_a >= depth_b else ("b", "a")
    for key in ("a", "b"):
        if len(manual[key]) <= stage:
            raise AlignmentError(f"manual mapping for {key.upper()} has no entry for stage {stage}")
        if len(manual[key][stage]) != (depth_a if key == "a" else depth_b):
            raise AlignmentError(
                f"manual mapping for {key.upper()}, stage {stage}: {len(manual[key][stage])} "
                f"slot(s) for {depth_a if key == 'a' else depth_b} layer(s); give one slot per "
                "layer"
            )
    if list(manual[key_deep][stage]) != list(range(deep)):
        raise AlignmentError(
            f"stage {stage}: the deeper model {key_deep.upper()} must keep every slot "
            f"{list(range(deep))}, got {list(manual[key_deep][stage])}"
        )
    return validate_positions(manual[key_shallow][stage], deep, shallow)


def layer_pairs(alignment: Alignment, ga: ModelGraph, gb: ModelGraph) -> list[tuple[int, int]]:
    """Return (layer of A, layer of B) for every slot where both models have a real layer.

    Layers before the first stage (a stem) pair with each other, and so do layers after the
    last one (the end: a transformer's final norm), in order.
    """
    first_a = ga.stages[0][0] if ga.stages and ga.stages[0] else 0
    first_b = gb.stages[0][0] if gb.stages and gb.stages[0] else 0
    pairs = list(zip(range(first_a), range(first_b), strict=False))
    for s, depth in enumerate(alignment.depths):
        slot_a = {p: ga.stages[s][k] for k, p in enumerate(alignment.positions_a[s])}
        slot_b = {p: gb.stages[s][k] for k, p in enumerate(alignment.positions_b[s])}
        pairs += [(slot_a[t], slot_b[t]) for t in range(depth) if t in slot_a and t in slot_b]
    return pairs + list(zip(end_layers(ga), end_layers(gb), strict=False))


def end_layers(graph: ModelGraph) -> range:
    """Return the layers after the last stage (the head, the last block, is no layer)."""
    staged = [block for blocks in graph.stages for block in blocks]
    return range(max(staged, default=-1) + 1, graph.num_blocks - 1)
