"""Editing an alignment by hand: the mapping text, a click on the CKA map (docs/method.md sec. 4).

A mapping is, per model and stage, the slot of each of its layers in the merged depth (the
form recipes store). ``read_mapping`` turns typed text into a checked mapping and says what is
wrong in one line; ``clicked_mapping`` moves the shallower model's layer onto the clicked deep
layer. Layers are named as the CKA map numbers them: ``A3`` is A's non-head layer 3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from heterogui.align.alignment import Alignment
from heterogui.errors import AlignmentError, ConfigError, excerpt
from heterogui.models.graph import ModelGraph
from heterogui.text_input import load_yaml

MAX_MAPPING_CHARS = 20_000  # thousands of layers' slots; a longer text is not a mapping


def stage_of(graph: ModelGraph, layer: int) -> int | None:
    """Return the stage of non-head layer ``layer`` (None: the stem, before every stage)."""
    return next((s for s, blocks in enumerate(graph.stages) if layer in blocks), None)


def place_of(graph: ModelGraph, layer: int) -> str:
    """Return where a layer sits: "stage 2", "stem" (before the stages) or "end" (after them,
    e.g. a transformer's final norm)."""
    stage = stage_of(graph, layer)
    if stage is not None:
        return f"stage {stage}"
    first = next((blocks[0] for blocks in graph.stages if blocks), 0)
    return "stem" if layer < first else "end"


def mapping_text(mapping: dict[str, list[list[int]]]) -> str:
    """Return a mapping as compact JSON text (what the Mapping box shows)."""
    return json.dumps({"a": mapping["a"], "b": mapping["b"]})


def _slots(values: list[int]) -> str:
    return json.dumps(values)


def _parse(text: str, example: str) -> Any:
    """Return the value of the mapping text (JSON, or YAML as before); readable errors."""
    if len(text) > MAX_MAPPING_CHARS:
        raise AlignmentError(
            f"the mapping is {len(text):,} characters long; a mapping lists one slot per layer"
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        json_error = exc
    try:
        return load_yaml(text, "the mapping")
    except ConfigError as exc:
        if "(aliases are refused)" in str(exc):  # an alias, not a typo: say so
            raise AlignmentError(str(exc)) from None
    where = ""
    if isinstance(json_error, json.JSONDecodeError):
        problem = json_error.msg[:1].lower() + json_error.msg[1:]
        where = f" (line {json_error.lineno}, column {json_error.colno}: {problem})"
    raise AlignmentError(f"the mapping does not parse{where}; write it like {example}")


def _whole(value: Any) -> bool:
    """Return whether a slot is a whole number (2 or 2.0; not True, not "2")."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _example_slots(slots: list[Any], deep: int, shallow: int, current: list[int]) -> list[int]:
    """Return a valid stage mapping close to ``slots`` (else the current one), for a hint."""
    ints = {s for s in slots if isinstance(s, int) and not isinstance(s, bool) and 0 < s < deep}
    guess = [0, *sorted(ints)]
    return guess if len(guess) == shallow else list(current)


def read_mapping(text: str | None, alignment: Alignment, ga: ModelGraph, gb: ModelGraph) -> dict:
    """Return the mapping typed in the box, checked against the pair, as plain lists.

    Every problem is one line naming it and the fix, e.g. ``stage 0 of B: slots [0, 2, 1] are
    not monotone: they must increase; e.g. [0, 1, 2]``.

    Raises:
        AlignmentError: the text does not parse, or is not a valid mapping for this pair.
    """
    current = alignment.mapping()
    example = mapping_text(current)
    text = (text or "").strip()
    if not text:
        raise AlignmentError(f"the mapping box is empty; write a mapping like {example}")
    data = _parse(text, example)
    if not isinstance(data, dict) or set(data) != {"a", "b"}:
        keys = sorted(map(str, data)) if isinstance(data, dict) else []
        got = f"; this one has the keys {excerpt(', '.join(keys), 80)}" if keys else ""
        raise AlignmentError(
            f'a mapping looks like {example}: the keys "a" and "b", each with one list of slots '
            f"per stage{got}"
        )
    n_stages = len(ga.stages)
    for key in ("a", "b"):
        value = data[key]
        if not isinstance(value, list) or not all(isinstance(s, list) for s in value):
            raise AlignmentError(
                f'a mapping looks like {example}: "{key}" must hold one list of slots per '
                f"stage, e.g. {_slots(current[key])}"
            )
        if len(value) != n_stages:
            raise AlignmentError(
                f'"{key}" lists {len(value)} stage(s) but the pair has {n_stages}; give one list '
                f"of slots per stage, e.g. {_slots(current[key])}"
            )
    for s in range(n_stages):
        na, nb = len(ga.stages[s]), len(gb.stages[s])
        for key, graph, other in (
            ("a", ga, f"B{gb.stages[s][0]}"),
            ("b", gb, f"A{ga.stages[s][0]}"),
        ):
            data[key][s] = _check_stage(
                data[key][s], s, key.upper(), other, graph, na, nb, current[key][s]
            )
    return {"a": data["a"], "b": data["b"]}


def _check_stage(
    slots: list[Any],
    s: int,
    model: str,
    other: str,
    graph: ModelGraph,
    na: int,
    nb: int,
    current: list[int],
) -> list[int]:
    """Return ``slots`` as ints; raise AlignmentError (one readable line) unless valid.

    other: the other model's first layer of the stage (which this model's first one pairs with).
    """
    mine = graph.stages[s]
    n, deep = len(mine), max(na, nb)
    where = f"stage {s} of {model}"
    if not all(_whole(p) for p in slots):
        got = excerpt(json.dumps(slots), 80)
        raise AlignmentError(f"{where}: slots are whole numbers, got {got}; e.g. {_slots(current)}")
    slots = [int(p) for p in slots]
    if len(slots) != n:
        names = ", ".join(f"{model}{i}" for i in mine)
        raise AlignmentError(
            f"{where}: {len(slots)} slot(s) for {n} layer(s) ({names}); give one slot per layer, "
            f"e.g. {_slots(current)}"
        )
    if n == deep:  # the deeper model, or both when the depths are equal
        if slots != list(range(deep)):
            why = (
                f"A and B both have {deep} layers here, so each"
                if na == nb
                else f"{model} is the deeper model here ({deep} layers) and"
            )
            raise AlignmentError(
                f"{where}: {why} must keep every slot, i.e. {_slots(list(range(deep)))}, not "
                f"{_slots(slots)}"
            )
        return slots
    hint = _slots(_example_slots(slots, deep, n, current))
    for p in slots:
        if not 0 <= p < deep:
            raise AlignmentError(
                f"{where}: slot {p} is out of range; the stage has slots 0..{deep - 1} (the "
                f"deeper model's {deep} layers); e.g. {hint}"
            )
    if slots[0] != 0:
        first = graph.stages[s][0]
        raise AlignmentError(
            f"{where}: the first slot must be 0 ({model}{first} always pairs with {other}), not "
            f"{slots[0]}; e.g. {hint}"
        )
    if any(b <= a for a, b in zip(slots, slots[1:], strict=False)):
        raise AlignmentError(
            f"{where}: slots {_slots(slots)} are not monotone: they must increase; e.g. {hint}"
        )
    return slots


def _layer(value: Any, model: str, layers: int) -> int:
    """Return a clicked layer number as an int in 0..layers-1."""
    if value is None or value == "":
        raise ConfigError(f"no layer of {model} given: click a cell of the map")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{model}'s layer must be a number, got {str(value)[:40]}") from None
    if not number.is_integer() or not 0 <= number < layers:
        raise ConfigError(
            f"{model} has no layer {str(value)[:40]}: its layers are {model}0..{model}{layers - 1}"
        )
    return int(number)


def clicked_mapping(
    alignment: Alignment, ga: ModelGraph, gb: ModelGraph, a: Any, b: Any
) -> tuple[dict[str, list[list[int]]], str]:
    """Return the mapping after a click on cell (A a, B b), and what it did in one sentence.

    The shallower model's layer (in that stage) moves to the deep layer's slot; every other
    layer stays. Refused (one readable sentence) when the cell lies outside one stage, in a stage
    of equal depths, or when the move would break the path's order.

    Raises:
        AlignmentError: the click cannot be applied (the reason and the fix).
        ConfigError: a layer number that the pair does not have.
    """
    a = _layer(a, "A", ga.num_blocks - 1)
    b = _layer(b, "B", gb.num_blocks - 1)
    s = _clicked_stage(ga, gb, a, b)
    click = _click(ga, gb, a, b, s)
    k, t = click.k, click.t
    mapping = alignment.mapping()
    slots = list(mapping[click.key][s])
    me, target = click.shallow(k), click.deep(t)
    if slots[k] == t:
        return mapping, f"{me} already pairs with {target} (stage {s})"
    _check_move(click, slots)
    moved_from = click.deep(slots[k])
    slots[k] = t
    mapping[click.key][s] = slots
    return mapping, f"Paired {me} with {target} (stage {s}; it was with {moved_from})"


@dataclass(frozen=True)
class _Click:
    """A click inside a stage of unequal depths: the shallow layer ``k`` and the deep slot ``t``.

    key: the shallower model's mapping key ("a" or "b"); k and t: places within the stage.
    """

    stage: int
    key: str
    shallow_model: str
    deep_model: str
    shallow_blocks: tuple[int, ...]
    deep_blocks: tuple[int, ...]
    k: int
    t: int

    def shallow(self, i: int) -> str:
        """Return the name of the shallower model's ``i``-th layer in the stage."""
        return f"{self.shallow_model}{self.shallow_blocks[i]}"

    def deep(self, i: int) -> str:
        """Return the name of the deeper model's ``i``-th layer in the stage."""
        return f"{self.deep_model}{self.deep_blocks[i]}"


def _clicked_stage(ga: ModelGraph, gb: ModelGraph, a: int, b: int) -> int:
    """Return the clicked layers' stage; raise AlignmentError unless their pairing can move."""
    sa, sb = stage_of(ga, a), stage_of(gb, b)
    if sa is None or sb is None:
        name, graph = (f"A{a}", ga) if sa is None else (f"B{b}", gb)
        where = (
            "in the stem, before the first stage"
            if place_of(graph, int(name[1:])) == "stem"
            else "after the last stage"
        )
        raise AlignmentError(
            f"{name} is {where}, where layers pair one to one; click a cell inside a stage"
        )
    if sa != sb:
        raise AlignmentError(
            f"A{a} is in stage {sa} and B{b} in stage {sb}: layers pair only within their stage; "
            "click a cell inside one stage's block"
        )
    stage_a, stage_b = ga.stages[sa], gb.stages[sa]
    if len(stage_a) == len(stage_b):
        raise AlignmentError(
            f"stage {sa} has {len(stage_a)} layers in both A and B: they pair one to one "
            "and cannot move"
        )
    return sa


def _click(ga: ModelGraph, gb: ModelGraph, a: int, b: int, s: int) -> _Click:
    """Return which model is shallower in stage ``s`` and the clicked layers' places in it."""
    stage_a, stage_b = ga.stages[s], gb.stages[s]
    if len(stage_a) > len(stage_b):  # A is the deeper model: B's layer moves
        return _Click(s, "b", "B", "A", stage_b, stage_a, stage_b.index(b), stage_a.index(a))
    return _Click(s, "a", "A", "B", stage_a, stage_b, stage_a.index(a), stage_b.index(b))


def _check_move(click: _Click, slots: list[int]) -> None:
    """Raise AlignmentError when moving layer k to slot t would break the stage's order."""
    k, t, s, shallow, deep = click.k, click.t, click.stage, click.shallow, click.deep
    me, target = shallow(k), deep(t)
    if k == 0 or t == 0:
        first, other = (me, deep(0)) if k == 0 else (target, shallow(0))
        raise AlignmentError(
            f"{me} cannot pair with {target}: {first} is the first layer of stage {s} and always "
            f"pairs with {other}"
        )
    before = [k - 1] if slots[k - 1] >= t else []
    after = [k + 1] if k + 1 < len(slots) and slots[k + 1] <= t else []
    for n in before + after:  # a neighbour in the way: the path must keep going forward
        side = "after" if n < k else "before"
        where = f"pairs with {deep(slots[n])}" + ("" if slots[n] == t else f", {side} {target}")
        raise AlignmentError(
            f"{me} cannot pair with {target}: {shallow(n)} already {where}; move {shallow(n)} first"
        )
