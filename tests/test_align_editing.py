"""Editing the layer alignment in the workbench: a click on the map, the mapping box, one
numbering (A0.., B0.. over the non-head layers, as the heatmap counts them) everywhere.

The handlers are driven directly on the zoo's tiny VGG pair (A: 2+2 layers, B: 3+3); the
order rules of a click are checked on hand-made graphs with deeper stages.
"""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

from heterogui.align import editing
from heterogui.align.alignment import Alignment, align, layer_pairs
from heterogui.errors import AlignmentError, ConfigError
from heterogui.models.graph import ModelGraph
from heterogui.ui import app, events, fig_align, tab_align, tab_models, views
from heterogui.ui.resources import Resources, ZooPairs
from heterogui.ui.session import Session

pytestmark = pytest.mark.ui
PAIR = "tiny-digits-vgg-depth"
START = {"a": [[0, 1], [0, 1]], "b": [[0, 1, 2], [0, 1, 2]]}


@pytest.fixture(scope="module")
def res(tmp_path_factory) -> Resources:
    exports = tmp_path_factory.getbasetemp()
    return Resources(ZooPairs(tiny=True), device="cpu", default_pair=PAIR, export_root=exports)


@pytest.fixture()
def session(res: Resources) -> Session:
    s = Session(device="cpu")
    tab_models.on_start(s, res)
    ga, gb = graphs(s)
    assert (ga.stages, gb.stages) == (((0, 1), (2, 3)), ((0, 1, 2), (3, 4, 5)))
    tab_align.on_mapping(s, res, json.dumps(START))
    assert s.prepared.alignment.mapping() == START
    return s


def graphs(session: Session) -> tuple[ModelGraph, ModelGraph]:
    return session.prepared.net_a.graph(), session.prepared.net_b.graph()


def graph(*stages: tuple[int, ...], stem: int = 0, end: int = 0) -> ModelGraph:
    """Return a bare graph: ``stem`` layers, the stages, ``end`` layers, then a head."""
    n = stem + sum(len(s) for s in stages) + end
    return ModelGraph({}, (), tuple(stages), tuple(["x"] * n + [None]))


def expected_click(mapping, ga: ModelGraph, gb: ModelGraph, i: int, j: int):
    """The oracle: the mapping a click on (A i, B j) must give, or None when it is refused.

    Written from the layer numbering alone: the layers' stages, and their places in them.
    """
    stage_a = [s for s, blocks in enumerate(ga.stages) if i in blocks]
    stage_b = [s for s, blocks in enumerate(gb.stages) if j in blocks]
    if not stage_a or stage_a != stage_b:
        return None
    s = stage_a[0]
    if len(ga.stages[s]) == len(gb.stages[s]):
        return None
    shallow, layer, deep_layer, deep_blocks, blocks = (
        ("a", i, j, gb.stages[s], ga.stages[s])
        if len(ga.stages[s]) < len(gb.stages[s])
        else ("b", j, i, ga.stages[s], gb.stages[s])
    )
    slots = list(mapping[shallow][s])
    slots[blocks.index(layer)] = deep_blocks.index(deep_layer)
    if slots[0] != 0 or any(b <= a for a, b in itertools.pairwise(slots)):
        return None
    out = json.loads(json.dumps(mapping))
    out[shallow][s] = slots
    return out


# ---- a click on the map ----


def test_a_click_pairs_the_shallow_layer_with_the_deep_one(session, res):
    message = tab_align.on_click(session, res, 1, 2)  # A1 (stage 0) with B2 (stage 0)
    al = session.prepared.alignment
    assert al.mapping() == {"a": [[0, 2], [0, 1]], "b": [[0, 1, 2], [0, 1, 2]]}
    assert al.mode == "manual" and (1, 2) in layer_pairs(al, *graphs(session))
    assert message.startswith("Paired A1 with B2 (stage 0; it was with B1). Alignment manual")
    view = tab_align.render(session, res)
    assert json.loads(view["mapping"]) == al.mapping() and view["align_mode"] == "manual"
    assert ["0", "A1 (slot 2)", "B1, B2", "1 identity layer(s) in A"] in view["segments"]
    # Stage 1: A3 moves onto B5, the last layer of B's stage 1 (its slot 2).
    tab_align.on_click(session, res, 3.0, 5.0)  # the page sends floats
    assert session.prepared.alignment.mapping()["a"] == [[0, 2], [0, 2]]


def test_every_cell_of_the_map_does_what_the_numbering_says(session, res):
    prep = session.prepared
    ga, gb = graphs(session)
    la, lb = prep.similarity.shape
    for mode in ("sma", "uniform", "head", "head_tail"):
        al = align(ga, gb, prep.similarity, mode)
        changed = 0
        for i, j in itertools.product(range(la), range(lb)):
            want = expected_click(al.mapping(), ga, gb, i, j)
            if want is None:
                with pytest.raises(AlignmentError, match=rf"A{i}|B{j}|stage"):
                    editing.clicked_mapping(al, ga, gb, i, j)
            else:
                got, what = editing.clicked_mapping(al, ga, gb, i, j)
                assert got == want, (mode, i, j)
                changed += got != al.mapping()
                assert f"A{i}" in what and f"B{j}" in what
        assert changed > 0  # some cells move a layer in every starting alignment


def test_a_click_that_breaks_the_order_is_refused_and_changes_nothing(session, res):
    before = session.prepared
    with pytest.raises(AlignmentError) as info:
        tab_align.on_click(session, res, 1, 0)  # A1 onto B0, where A0 already is
    assert str(info.value) == (
        "A1 cannot pair with B0: B0 is the first layer of stage 0 and always pairs with A0"
    )
    assert session.prepared is before and session.prepared.alignment.mapping() == START
    with pytest.raises(AlignmentError, match="A1 is in stage 0 and B3 in stage 1"):
        tab_align.on_click(session, res, 1, 3)
    with pytest.raises(ConfigError, match=r"A has no layer 9: its layers are A0..A3"):
        tab_align.on_click(session, res, 9, 1)
    assert session.prepared is before
    # Through the app's event function (what /align_click runs): the status line says why.
    names = [n for s in ("align",) for n in views.views_of(s)]
    fn = events.event_function(tab_align.on_click, res, ("align",), names, 2)
    with pytest.warns(UserWarning, match="cannot pair"):
        out = fn(session, 1, 0, None)
    assert out[1].startswith("**Error:** A1 cannot pair with B0") and "\n" not in out[1]
    assert session.prepared is before


def test_a_click_on_the_current_pair_only_makes_the_mode_manual(session, res):
    tab_align.on_mode(session, res, "uniform", None)
    al = session.prepared.alignment
    a1 = al.positions_a[0][1]  # A1's slot: B's stage 0 starts at B0
    message = tab_align.on_click(session, res, 1, a1)
    assert message.startswith(f"A1 already pairs with B{a1} (stage 0). Alignment manual")
    assert session.prepared.alignment.mode == "manual"
    assert session.prepared.alignment.mapping() == al.mapping()


@pytest.mark.parametrize(
    "cell, message",
    [
        ((2, 3), "B3 cannot pair with A2: B2 already pairs with A3, after A2; move B2 first"),
        ((6, 2), "B2 cannot pair with A6: B3 already pairs with A5, before A6; move B3 first"),
        ((5, 2), "B2 cannot pair with A5: B3 already pairs with A5; move B3 first"),
        ((2, 1), "B1 cannot pair with A2: B1 is the first layer of stage 0 and always pairs "),
        ((7, 4), "stage 1 has 2 layers in both A and B: they pair one to one and cannot move"),
        ((7, 1), "A7 is in stage 1 and B1 in stage 0: layers pair only within their stage"),
        ((0, 0), "A0 is in the stem, before the first stage, where layers pair one to one"),
        ((9, 2), "A9 is after the last stage, where layers pair one to one; click a cell"),
    ],
)
def test_refused_clicks_say_which_layer_is_in_the_way(cell, message):
    # After a stem (layer 0), A has 6 layers in stage 0 and B has 3: B1, B2, B3 pair with
    # A1, A3, A5 (slots 0, 2, 4); stage 1 has 2 layers in each; a final layer ends each model.
    ga = graph((1, 2, 3, 4, 5, 6), (7, 8), stem=1, end=1)
    gb = graph((1, 2, 3), (4, 5), stem=1, end=1)
    al = Alignment("sma", ((0, 1, 2, 3, 4, 5), (0, 1)), ((0, 2, 4), (0, 1)), (6, 2))
    assert expected_click(al.mapping(), ga, gb, *cell) is None
    with pytest.raises(AlignmentError) as info:
        editing.clicked_mapping(al, ga, gb, *cell)  # heatmap row (A) and column (B)
    assert str(info.value).startswith(message)
    # And a valid move: B3 onto A6, the stage's last layer (slot 5).
    mapping, what = editing.clicked_mapping(al, ga, gb, 6, 3)
    assert mapping == expected_click(al.mapping(), ga, gb, 6, 3)
    assert mapping["b"] == [[0, 2, 5], [0, 1]]
    assert what == "Paired B3 with A6 (stage 0; it was with A5)"


# ---- one numbering ----


def names(text: str) -> set[str]:
    return set(re.findall(r"\b[AB]\d+\b", text))


def test_the_map_the_table_and_the_pairs_use_one_numbering(session, res):
    tab_align.on_click(session, res, 1, 2)
    view = tab_align.render(session, res)
    fig, rows, pairs = view["heatmap"], view["segments"], view["mapping_pairs"]
    ga, gb = graphs(session)
    ticks_a = dict(zip(fig.layout.yaxis.tickvals, fig.layout.yaxis.ticktext, strict=True))
    ticks_b = dict(zip(fig.layout.xaxis.tickvals, fig.layout.xaxis.ticktext, strict=True))
    assert ticks_a == {0: "A0 s0", 1: "A1 s0", 2: "A2 s1", 3: "A3 s1"}
    assert ticks_b == {j: f"B{j} s{j // 3}" for j in range(6)}
    # Every layer the table names is a row/column of the map, in the stage the row says.
    for stage, shallow, deep, _ in rows:
        for name in names(shallow) | names(deep):
            tick = (ticks_a if name[0] == "A" else ticks_b)[int(name[1:])]
            assert tick.startswith(name) and tick.endswith(f"s{stage}")
    assert rows[1][:3] == ["0", "A1 (slot 2)", "B1, B2"]
    # The hover of cell (A1, B2) and the pairs beside the box name the same layers.
    assert fig.data[0].text[1][2].startswith("A1 (stage 0) vs B2 (stage 0)")
    assert "click: pair A1 with B2" in fig.data[0].text[1][2]
    shown = [tuple(map(int, p)) for p in re.findall(r"A(\d+)↔B(\d+)", pairs)]
    assert (
        shown
        == layer_pairs(session.prepared.alignment, ga, gb)
        == list(zip(fig.data[1].y, fig.data[1].x, strict=True))
    )
    assert "stage 0: A0↔B0, B1 + identity in A, A1↔B2 · stage 1:" in pairs


# ---- the mapping box ----


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '{"a": [[0, 0], [0, 1]], "b": [[0, 1, 2], [0, 1, 2]]}',
            "stage 0 of A: slots [0, 0] are not monotone: they must increase; e.g. [0, 1]",
        ),
        (
            '{"a": [[0, 1], [0, 1]], "b": [[0, 2, 1], [0, 1, 2]]}',
            "stage 0 of B: B is the deeper model here (3 layers) and must keep every slot, "
            "i.e. [0, 1, 2], not [0, 2, 1]",
        ),
        (
            '{"a": [[0, 2], [2, 1]], "b": [[0, 1, 2], [0, 1, 2]]}',
            "stage 1 of A: the first slot must be 0 (A2 always pairs with B3), not 2; e.g. [0, 1]",
        ),
        (
            '{"a": [[0, 7], [0, 1]], "b": [[0, 1, 2], [0, 1, 2]]}',
            "stage 0 of A: slot 7 is out of range; the stage has slots 0..2 (the deeper "
            "model's 3 layers); e.g. [0, 1]",
        ),
        (
            '{"a": [[0, 1, 2], [0, 1]], "b": [[0, 1, 2], [0, 1, 2]]}',
            "stage 0 of A: 3 slot(s) for 2 layer(s) (A0, A1); give one slot per layer, e.g. [0, 1]",
        ),
        (
            '{"a": [[0]], "b": [[0]]}',
            '"a" lists 1 stage(s) but the pair has 2; give one list of slots per stage, '
            "e.g. [[0, 1], [0, 1]]",
        ),
        (
            '{"a": [[0, 1], [0, 1]], "b": [[0, 1, 2], [0, 1, 2]]',
            "the mapping does not parse (line 1, column 52: expecting ',' delimiter); write it "
            'like {"a": [[0, 1], [0, 1]], "b": [[0, 1, 2], [0, 1, 2]]}',
        ),
        (
            '{"a": [[0, 1], [0, 1]]}',
            'a mapping looks like {"a": [[0, 1], [0, 1]], "b": [[0, 1, 2], [0, 1, 2]]}: the '
            'keys "a" and "b", each with one list of slots per stage; this one has the keys a',
        ),
        (
            '{"a": [[0, true], [0, 1]], "b": [[0, 1, 2], [0, 1, 2]]}',
            "stage 0 of A: slots are whole numbers, got [0, true]; e.g. [0, 1]",
        ),
        ("", "the mapping box is empty; write a mapping like {"),
    ],
)
def test_a_bad_mapping_gets_one_readable_line_and_the_old_one_is_kept(session, res, text, message):
    before = session.prepared
    with pytest.raises(AlignmentError) as info:
        tab_align.on_mapping(session, res, text)
    said = str(info.value)
    assert said.startswith(message)
    assert "\n" not in said and "Traceback" not in said and "Error(" not in said
    assert session.prepared is before


def test_yaml_still_applies_and_the_box_keeps_the_exact_form(session, res):
    tab_align.on_mapping(session, res, "a: [[0, 2.0], [0, 2]]\nb: [[0, 1, 2], [0, 1, 2]]")
    view = tab_align.render(session, res)
    assert json.loads(view["mapping"]) == {"a": [[0, 2], [0, 2]], "b": [[0, 1, 2], [0, 1, 2]]}
    assert view["align_mode"] == "manual"
    assert view["mapping_pairs"].endswith("stage 1: A2↔B3, B4 + identity in A, A3↔B5")


# ---- over the API ----


@pytest.fixture()
def url(res):
    demo = app.build_app(res)
    address = app.launch(demo, "127.0.0.1", None, block=False)
    yield address
    demo.close()


def test_the_click_is_an_api_event(url):
    from gradio_client import Client

    client = Client(url, verbose=False)
    client.predict(api_name="/start")
    status, summary, *_ = client.predict(1, 2, api_name="/align_click")
    assert status.startswith("Paired A1 with B")
    assert summary["alignment"]["mode"] == "manual"
    mapping = summary["alignment"]["mapping"]
    status, summary, *_ = client.predict(1, 0, api_name="/align_click")
    assert status.startswith("**Error:** A1 cannot pair with B0")
    assert summary["alignment"]["mapping"] == mapping


def test_layers_outside_the_stages_are_named_for_where_they_sit():
    ga = graph((1, 2, 3, 4, 5, 6), (7, 8), stem=1, end=1)
    gb = graph((1, 2, 3), (4, 5), stem=1, end=1)
    al = Alignment("sma", ((0, 1, 2, 3, 4, 5), (0, 1)), ((0, 2, 4), (0, 1)), (6, 2))
    fig = fig_align.alignment_figure(np.zeros((10, 7)), al, ga, gb)
    ticks = fig.layout.yaxis.ticktext
    assert (ticks[0], ticks[1], ticks[7], ticks[9]) == ("A0 stem", "A1 s0", "A7 s1", "A9 end")
    assert fig.layout.xaxis.ticktext[6] == "B6 end"
    assert fig.data[0].text[9][6] == "A9 (end) vs B6 (end)<br>paired (on the alignment path)"
    assert fig.data[0].text[3][2] == (
        "A3 (stage 0) vs B2 (stage 0)<br>paired (on the alignment path)<br>click: pair B2 with A3"
    )
    assert fig.data[0].text[4][2] == "A4 (stage 0) vs B2 (stage 0)<br>click: pair B2 with A4"
    lines = {(sh.x0, sh.y0) for sh in fig.layout.shapes if sh.type == "line"}
    # Dashed lines part stem | stage 0 | stage 1 | end on both axes.
    assert {x for x, y in lines if y == -0.5} == {0.5, 3.5, 5.5}
    assert {y for x, y in lines if x == -0.5} == {0.5, 6.5, 8.5}
    # every segment box: a dark line under white dots, seen on dark and light cells alike
    rects = [sh for sh in fig.layout.shapes if sh.type == "rect"]
    assert len(rects) == 2 * len(fig_align.segment_boxes(al, ga, gb)) > 0
    for under, over in zip(rects[::2], rects[1::2], strict=True):
        assert (under.x0, under.y0, under.x1, under.y1) == (over.x0, over.y0, over.x1, over.y1)
        assert under.line.color == "#111111" and under.line.dash is None
        assert over.line.color == "white" and over.line.dash == "dot"
    assert tab_align.pairs_text(al, ga, gb) == (
        "**In layer names** (as on the map): stem: A0↔B0 · stage 0: A1↔B1, A2 + identity in B, "
        "A3↔B2, A4 + identity in B, A5↔B3, A6 + identity in B · stage 1: A7↔B4, A8↔B5 · "
        "end: A9↔B6"
    )
    # the end layers (a transformer's final norm) merge with each other: the path shows them
    pairs = layer_pairs(al, ga, gb)
    assert pairs[0] == (0, 0) and pairs[-1] == (9, 6)
    path = fig.data[1]
    assert (path.y[-1], path.x[-1]) == (9, 6)
