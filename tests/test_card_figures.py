"""The model card's SVG figures: valid SVG, a colour bar over the data's range, a value axis."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from heterogui.export.card import bars_svg, heatmap_svg

NS = "{http://www.w3.org/2000/svg}"


def _texts(svg: str) -> list[str]:
    return [t.text for t in ET.fromstring(svg).iter(f"{NS}text")]


def test_heatmap_colours_span_the_data_and_the_colour_bar_names_the_range():
    z = [[0.91, 0.95], [0.93, 0.99], [0.92, 0.97]]
    svg = heatmap_svg(z, [(0, 0), (1, 1), (2, 1)], "CKA")
    texts = _texts(svg)
    assert "0.990" in texts and "0.910" in texts and "CKA" in texts
    cells = [r for r in ET.fromstring(svg).iter(f"{NS}rect") if r.find(f"{NS}title") is not None]
    fills = {r.find(f"{NS}title").text.split(": ")[1]: r.get("fill") for r in cells}
    assert fills["0.910"] == "#440154" and fills["0.990"] == "#fde725"  # the scale's two ends
    assert len(set(fills.values())) == 6  # a narrow range still gives six distinct colours


def test_bars_have_a_value_axis_in_readable_units():
    svg = bars_svg(["block1", "block2"], {"A": [64, 128], "merged": [96, 2_500_000]}, "w")
    assert {"0", "1.25M", "2.5M"} <= set(_texts(svg))


def test_figures_draw_dark_text_on_their_own_white_background():
    """A card's figures are shown on dark pages too (the workbench's dark mode, a hub's dark
    theme): each paints a white background under everything and writes its text dark."""
    for svg in (heatmap_svg([[0.5, 0.7]], [(0, 0)], "CKA"), bars_svg(["l0"], {"A": [4]}, "w")):
        root = ET.fromstring(svg)
        first = next(iter(root))
        assert first.tag == f"{NS}rect" and first.get("fill") == "#ffffff"
        assert (first.get("width"), first.get("height")) == ("100%", "100%")
        assert root.get("fill") == "#111111"
        assert all(t.get("fill") is None for t in root.iter(f"{NS}text"))  # inherit the dark


def test_settings_cells_write_overrides_as_a_recipe_does():
    from heterogui.export.card import cell_text

    assert cell_text({}) == "none"
    assert cell_text({"*.qk": {"rho": 0}}) == '`{"*.qk": {"rho": 0}}`'
    assert cell_text({"a|b": 1}) == '`{"a\\|b": 1}`'  # a pipe would split the table's cell
    assert (cell_text(None), cell_text(True), cell_text(0.123456), cell_text(1536)) == (
        "—",
        "true",
        "0.1235",
        "1,536",
    )


def test_class_ranges_write_runs_of_consecutive_classes():
    from heterogui.export.card import class_ranges

    assert class_ranges([0, 1, 2, 3, 4]) == "0-4"
    assert class_ranges([9, 0, 2, 5, 6, 7, 8]) == "0, 2, 5-9"
    assert class_ranges([3]) == "3" and class_ranges([]) == ""
    assert class_ranges(range(49152)) == "0-49151"


def test_readable_json_keeps_the_values_and_puts_number_lists_on_one_line():
    import json

    from heterogui.export.json_text import readable_json

    value = {
        "widths": {"layer0.mlp": [512, 768, 1024], "stream": [-1.5, 2e-05, 0]},
        "heads": [{"classes": list(range(1000)), "name": "says [1, 2] in text"}],
        "nested": [[1, 2], [3]],
        "mixed": [1, "two", None, True],
        "empty": [],
    }
    text = readable_json(value, sort_keys=True)
    assert json.loads(text) == value
    assert '"layer0.mlp": [512, 768, 1024]' in text and '"stream": [-1.5, 2e-05, 0]' in text
    assert len(text.splitlines()) < 40  # not a line per class id
    assert '"mixed": [\n' in text  # lists holding more than numbers stay indented


def test_a_card_s_scores_keep_the_workbench_s_decimals():
    # a card showed "44" and "53.8" beside "45.11" (4 significant digits), the workbench 44.00
    from heterogui.report import metric_facts
    from heterogui.tasks.classification import Metrics
    from heterogui.tasks.images import IMAGES

    merged = Metrics(joint=0.44, tasks=(0.538, 0.4511), counts=(50, 50), names=("A", "B"))
    scores = {"a": None, "merged": merged}
    facts = metric_facts(IMAGES, scores, ("a", "merged"))
    assert facts["metric_header"] == ["model", "Joint", "Task A", "Task B", "Avg"]
    assert facts["metrics"][:2] == [
        ["a", "—", "—", "—", "—"],
        ["merged", "44.00", "53.80", "45.11", "49.46"],
    ]


def test_a_split_of_heads_is_noted_only_where_the_models_have_attention():
    # a VGG merge with heads: split (which changes nothing there) got the note on merging it
    import heterogui
    from heterogui.report import split_heads_note
    from heterogui.zip.plan import ZipSettings
    from tests.conftest import DEPTH_PAIRS, calibration, make

    config_a, config_b, shape = DEPTH_PAIRS["vgg"]
    a, b = make(config_a, 0, "A"), make(config_b, 1, "B")
    result = heterogui.merge(a, b, calibration(shape, 2, 16), settings=ZipSettings(heads="split"))
    assert result.settings.heads == "split" and split_heads_note(result) == []
