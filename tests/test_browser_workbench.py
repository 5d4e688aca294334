"""A newcomer's first minutes in headless Chromium: open the page, see the demo pair and its
alignment heatmap, edit the alignment, move a slider, merge, read the results side by side,
export. Fails on any page error or any request to a host other than this machine.

Screenshots go to a temporary folder. With HETEROGUI_SCREENSHOTS=DIR (e.g. assets) the test runs
on the real default demo pair (built on first use) and also writes the README's screenshots
(workbench-*.png) to DIR:

    HETEROGUI_SCREENSHOTS=assets python -m pytest tests/test_browser_workbench.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from heterogui.ui.app import build_app, launch
from heterogui.ui.resources import Resources, ZooPairs

pytestmark = [pytest.mark.browser, pytest.mark.ui]
README_DIR = os.environ.get("HETEROGUI_SCREENSHOTS")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    exports = tmp_path_factory.getbasetemp()  # every test's tmp_path lies below it
    if README_DIR:  # the real demo pair, as a newcomer gets it
        res = Resources(ZooPairs(), device="cpu", export_root=exports)
    else:
        pair = "tiny-digits-vgg-depth"
        res = Resources(ZooPairs(tiny=True), device="cpu", default_pair=pair, export_root=exports)
    demo = build_app(res)
    address = launch(demo, "127.0.0.1", None, block=False)
    yield address
    demo.close()


class Shots:
    """Save screenshots to a temporary folder (and to README_DIR when set)."""

    def __init__(self, page, folder: Path):
        self.page, self.folder = page, folder

    def __call__(self, name: str, full_page: bool = True) -> None:
        path = self.folder / f"workbench-{name}.png"
        for close in self.page.locator(".toast-close").all():  # a toast would hide a figure
            close.click()
        self.page.locator(".toast-body").first.wait_for(state="detached", timeout=TIMEOUT_MS)
        self.page.screenshot(path=str(path), full_page=full_page)
        if README_DIR:
            Path(README_DIR).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(README_DIR) / path.name)


def wait_status(page, text: str) -> None:
    """Wait until the status line under the title shows ``text``."""
    page.locator("#status").get_by_text(text).first.wait_for(timeout=TIMEOUT_MS)


def open_tab(page, title: str) -> None:
    page.get_by_role("tab", name=title).click()
    page.wait_for_timeout(400)


def watch(page) -> tuple[list[str], list[str]]:
    """Record page errors and requests to any host but this machine."""
    errors, foreign = [], []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def on_request(req) -> None:
        local = urlparse(req.url).hostname in LOCAL_HOSTS
        if not local and not req.url.startswith(("data:", "blob:")):
            foreign.append(req.url)

    page.on("request", on_request)
    return errors, foreign


def edit_alignment(page) -> None:
    """Move the last layer of the shallower model's first stage; apply; check the mapping."""
    box = page.locator("#mapping textarea")
    mapping = json.loads(box.input_value())
    shallow = "a" if len(mapping["a"][0]) < len(mapping["b"][0]) else "b"
    deep = len(mapping["b" if shallow == "a" else "a"][0])
    first = mapping[shallow][0]
    mapping[shallow][0] = first[:-1] + [deep - 1 if first[-1] != deep - 1 else first[-1] - 1]
    box.fill(json.dumps(mapping))
    page.locator("#apply-mapping").click()
    wait_status(page, "Alignment manual")
    assert json.loads(box.input_value()) == mapping


def slide_and_merge(page) -> None:
    """Move the zip-ratio slider (its release re-merges), press Merge (nothing changed: no
    merge), then move it again."""
    open_tab(page, "4 Zip")
    rho = page.locator("#rho input[type=number]")
    rho.fill("0.5")
    rho.press("Tab")  # leaving the box releases the slider
    wait_status(page, "Merge #1 evaluated")  # the merge shows first, then its metrics
    # The merge's score shows beside the sliders, no tab switch needed.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#readout tr')].some(r => "
        "r.cells[0].innerText.trim() === 'merged' && /\\d/.test(r.cells[4].innerText))",
        timeout=TIMEOUT_MS,
    )
    page.locator("#merge").click()
    wait_status(page, "Merge #1 has these settings (nothing to re-merge): Joint")
    rho.fill("0.75")
    rho.press("Enter")  # Enter releases the slider as leaving its box does
    wait_status(page, "Merge #2 evaluated")


def read_results(page) -> None:
    """Wait for A, B, ensemble and merged side by side, with the sample predictions."""
    open_tab(page, "5 Evaluate")
    page.wait_for_function(
        "() => ['A', 'B', 'ensemble', 'merged'].every(r => "
        "document.querySelector('#metrics').innerText.split(/\\s+/).includes(r))",
        timeout=TIMEOUT_MS,
    )
    page.locator("#samples .js-plotly-plot").wait_for(timeout=TIMEOUT_MS)
    assert page.locator("#samples").get_by_text("merged:").count() > 0
    # every accuracy shows two decimals ("96.00" beside "97.11"), the sizes their separators
    words = page.locator("#metrics").inner_text().split()
    scores = [w for w in words if re.fullmatch(r"\d+\.\d+", w)]
    assert len(scores) >= 4 and all(re.fullmatch(r"\d+\.\d\d", w) for w in scores), words
    assert any(re.fullmatch(r"\d{1,3}(,\d{3})+", w) for w in words), words


def pick(page, elem_id: str, text: str) -> None:
    """Choose the option containing ``text`` in the dropdown ``#elem_id``."""
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option").filter(has_text=text).first.click()
    page.wait_for_timeout(200)


def compare_and_sweep(page) -> None:
    """Compare merges #1 and #2, run the 2-D sweep, load its best cell."""
    open_tab(page, "6 Compare")
    pick(page, "compare-left", "#1 ")
    pick(page, "compare-right", "#2 ")
    page.locator("#compare-merges").click()
    wait_status(page, "Comparing merge #1 with #2")
    table = page.locator("#compare-table")
    table.get_by_text("#2 − #1").wait_for(timeout=TIMEOUT_MS)
    assert table.get_by_text("parameters (effective)").count() == 1
    page.locator("#run-grid").click()
    wait_status(page, "2-D sweep: 25 merges")
    page.locator("#grid-plot .js-plotly-plot").wait_for(timeout=TIMEOUT_MS)
    page.locator("#grid-cell input").click()
    page.get_by_role("option").first.click()
    page.locator("#grid-load").click()
    wait_status(page, "loaded and merged")
    page.mouse.click(*cell_point(page, 0.5, 0.25, "grid-plot"))  # a click on the map loads too
    wait_status(page, "rho 0.25, beta 0.5 loaded and merged")
    page.locator("#measure-resemblance").click()
    wait_status(page, "against both parents")
    page.locator("#resemblance-plot .js-plotly-plot").wait_for(timeout=TIMEOUT_MS)


def export(page, out: Path) -> None:
    """Export the merge to ``out`` from the Export tab."""
    open_tab(page, "7 Export")
    page.locator("#export-dir textarea, #export-dir input").first.fill(str(out))
    page.locator("#export").click()
    wait_status(page, "Exported to")
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    # the recipe view's own button saves it under the name the CLI reads (not "file.yaml")
    with page.expect_download(timeout=TIMEOUT_MS) as caught:
        page.locator('#recipe-view button[title="Save as recipe.yaml"]').click()
    assert caught.value.suggested_filename == "recipe.yaml"
    saved = out.parent / "saved-recipe.yaml"
    caught.value.save_as(saved)
    assert yaml.safe_load(saved.read_text()) == yaml.safe_load((out / "recipe.yaml").read_text())


def download_figures(page, folder: Path) -> None:
    """Save every figure and table in one click; check the .zip holds real PNG and SVG files."""
    with page.expect_download(timeout=TIMEOUT_MS) as caught:
        page.locator("#download-figures").click()
    path = folder / caught.value.suggested_filename
    caught.value.save_as(path)
    button = page.locator("#download-figures")  # it says what it saved, and can be used again
    saved = f"Saved {path.name} ("
    page.wait_for_function(
        f"document.querySelector('#download-figures').textContent.startsWith({saved!r})"
    )
    assert button.is_enabled()
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # every CRC matches
        names = archive.namelist()
        pngs = [n for n in names if n.endswith(".png")]
        svgs = [n for n in names if n.endswith(".svg")]
        assert "alignment-heatmap.png" in pngs and len(pngs) == len(svgs) >= 6
        assert all(archive.read(n)[:8] == b"\x89PNG\r\n\x1a\n" for n in pngs)
        assert all(b"<svg" in archive.read(n)[:400] for n in svgs)
        assert archive.read("metrics.csv").decode().splitlines()[0].startswith("model,")


def test_a_newcomer_merges_and_exports(url, chromium_browser, tmp_path):
    page = chromium_browser.new_page(viewport={"width": 1360, "height": 900})
    errors, foreign = watch(page)
    shot = Shots(page, tmp_path)
    page.goto(url)
    # The demo pair loads by itself and the page shows its alignment heatmap.
    wait_status(page, "Loaded demo pair")
    page.locator("#cka-heatmap .js-plotly-plot").wait_for(timeout=TIMEOUT_MS)
    assert page.locator("#cka-heatmap").get_by_text("layers of A").count() > 0
    shot("alignment", full_page=False)
    edit_alignment(page)
    slide_and_merge(page)
    shot("zip")
    open_tab(page, "3 Neurons")
    page.locator("#neuron-map .js-plotly-plot").wait_for(timeout=TIMEOUT_MS)
    shot("neurons", full_page=False)
    read_results(page)
    shot("evaluate")
    compare_and_sweep(page)
    shot("compare")
    export(page, tmp_path / "export")
    shot("export")
    download_figures(page, tmp_path)
    page.close()
    assert errors == []
    assert foreign == []


def test_figures_follow_the_dark_theme(url, chromium_browser, tmp_path):
    page = chromium_browser.new_page(viewport={"width": 1360, "height": 900})
    errors, _ = watch(page)
    page.goto(url + "?__theme=dark")
    wait_status(page, "Loaded demo pair")
    tick = page.locator("#cka-heatmap .xtick text").first
    tick.wait_for(timeout=TIMEOUT_MS)
    fill = tick.evaluate("e => getComputedStyle(e).fill")
    background = page.locator("#cka-heatmap .main-svg").first.evaluate(
        "e => getComputedStyle(e).backgroundColor"
    )
    Shots(page, tmp_path)("dark", full_page=False)
    open_tab(page, "4 Zip")  # the architecture's box labels are text on data points
    label = page.locator("#arch-plot .scatterlayer .textpoint text").first
    label.wait_for(timeout=TIMEOUT_MS)
    label_fill = label.evaluate("e => getComputedStyle(e).fill")
    page.close()
    assert label_fill == "rgb(229, 231, 235)"  # were near-black on the dark page
    assert fill == "rgb(229, 231, 235)"  # light text on the dark page
    assert background in ("rgba(0, 0, 0, 0)", "transparent")
    assert errors == []


def cell_point(page, row: float, column: float, plot: str = "cka-heatmap") -> tuple[float, float]:
    """Return the page coordinates of the point (x = ``column``, y = ``row``) of a plot.

    On the CKA map: layer ``row`` of A, ``column`` of B.
    """
    return page.evaluate(
        """([i, j, plot]) => {
          const gd = document.querySelector('#' + plot + ' .js-plotly-plot');
          gd.scrollIntoView({block: 'center'});
          const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
          const box = gd.getBoundingClientRect();
          return [box.left + xa._offset + xa.l2p(j), box.top + ya._offset + ya.l2p(i)];
        }""",
        [row, column, plot],
    )


def map_range(page, axis: str) -> list[float]:
    """Return the CKA map's range on ``axis`` ("xaxis": B's layers, "yaxis": A's)."""
    return page.evaluate(
        "axis => document.querySelector('#cka-heatmap .js-plotly-plot')._fullLayout[axis].range",
        axis,
    )


def drag_zoom(page, rows: list[float], columns: list[float]) -> list[float]:
    """Drag a zoom box over all rows and all but a quarter layer at each end of the columns;
    return the map's new range of columns."""
    page.mouse.move(*cell_point(page, rows[0], columns[0] + 0.25))
    page.mouse.down()
    page.mouse.move(*cell_point(page, rows[1], columns[1] - 0.25), steps=8)
    page.mouse.up()
    page.wait_for_timeout(400)  # past plotly's double-click delay, or the next click resets it
    return map_range(page, "xaxis")


def wait_range(page, want: list[float]) -> None:
    """Wait until the CKA map shows the range of columns ``want``."""
    page.wait_for_function(
        """want => {
            const gd = document.querySelector('#cka-heatmap .js-plotly-plot');
            const range = gd && gd._fullLayout && gd._fullLayout.xaxis.range;
            return range && Math.abs(range[0] - want[0]) + Math.abs(range[1] - want[1]) < 1e-6;
        }""",
        arg=want,
        timeout=TIMEOUT_MS,
    )


def movable_layer(page) -> dict:
    """Return a layer of the shallower model that a click can move, read from the page.

    From the pairs beside the mapping ("stage 0: A0↔B0, B1 + identity in A, ..."): the first
    stage of unequal depths, its shallow and deep layers in order, a shallow layer k (not the
    first) and a free deep slot t between its neighbours' slots.
    """
    text = page.locator("#mapping-pairs").inner_text()
    mapping = json.loads(page.locator("#mapping textarea").input_value())
    for s, part in enumerate(text.split("stage ")[1:]):
        items = part.split(": ", 1)[1].split(" · ")[0].split(", ")
        shallow = next((i[-1] for i in items if "identity in" in i), None)
        if shallow is None:
            continue
        deep, mine = [], []
        for item in items:
            names = item.split(" + ")[0].split("↔")
            deep += [n for n in names if not n.startswith(shallow)]
            mine += [n for n in names if n.startswith(shallow)]
        slots = mapping[shallow.lower()][s]
        for k in range(1, len(mine)):
            end = slots[k + 1] if k + 1 < len(slots) else len(deep)
            free = [t for t in range(slots[k - 1] + 1, end) if t != slots[k]]
            if free:
                key = shallow.lower()
                return {
                    "stage": s,
                    "key": key,
                    "shallow": shallow,
                    "mine": mine,
                    "deep": deep,
                    "k": k,
                    "t": free[-1],
                    "slots": slots,
                    "mapping": mapping,
                }
    raise AssertionError(f"no layer can move in {text}")


def test_a_click_on_the_map_pairs_layers(url, chromium_browser, tmp_path):
    page = chromium_browser.new_page(viewport={"width": 1360, "height": 900})
    errors, _ = watch(page)
    page.goto(url)
    wait_status(page, "Loaded demo pair")
    page.locator("#cka-heatmap .js-plotly-plot").wait_for(timeout=TIMEOUT_MS)
    move = movable_layer(page)
    shallow, layer, deep = move["shallow"], move["mine"][move["k"]], move["deep"]
    before, s, slot = move["mapping"], move["stage"], move["slots"][move["k"]]

    def cell(target: str) -> tuple[float, float]:
        a, b = (layer, target) if shallow == "A" else (target, layer)
        return cell_point(page, int(a[1:]), int(b[1:]))

    def click(target: str) -> None:
        page.mouse.click(*cell(target))

    def wait_mapping(want: dict) -> None:
        page.wait_for_function(
            "want => document.querySelector('#mapping textarea').value === want",
            arg=json.dumps(want),
            timeout=TIMEOUT_MS,
        )

    # A zoom (a box dragged over B's layers, all still in view) stays while clicks redraw the map.
    columns, rows = map_range(page, "xaxis"), map_range(page, "yaxis")
    zoomed = drag_zoom(page, rows, columns)
    assert zoomed[1] - zoomed[0] < columns[1] - columns[0] - 0.4, (zoomed, columns)
    # A double click resets the zoom and pairs nothing (its first click paired layers).
    page.mouse.dblclick(*cell(deep[move["t"]]))
    wait_range(page, columns)
    page.wait_for_timeout(1500)  # a click would have been sent 0.4 s after its release
    assert json.loads(page.locator("#mapping textarea").input_value()) == before
    assert "Paired" not in page.locator("#status").inner_text()
    zoomed = drag_zoom(page, rows, columns)
    # Move a layer of the shallower model onto a free deep layer: the status line, the mapping
    # box and the pairs beside it follow.
    click(deep[move["t"]])
    wait_status(page, f"Paired {layer} with {deep[move['t']]} (stage {s}")
    wait_status(page, "Alignment manual")
    expected = json.loads(json.dumps(before))
    expected[move["key"]][s][move["k"]] = move["t"]
    wait_mapping(expected)
    pair = (layer, deep[move["t"]]) if shallow == "A" else (deep[move["t"]], layer)
    page.locator("#mapping-pairs").get_by_text("↔".join(pair)).wait_for(timeout=TIMEOUT_MS)
    Shots(page, tmp_path)("align-click", full_page=False)
    wait_range(page, zoomed)  # the map was drawn anew (gradio re-creates it), zoomed again
    # The map was drawn again; a click still works: the stage's first deep layer is refused ...
    click(deep[0])
    wait_status(page, f"{layer} cannot pair with {deep[0]}")
    assert json.loads(page.locator("#mapping textarea").input_value()) == expected
    # ... and, after a visit to another tab, moving the layer back restores the first mapping.
    open_tab(page, "3 Neurons")
    open_tab(page, "2 Alignment")
    click(deep[slot])
    wait_status(page, f"Paired {layer} with {deep[slot]}")
    wait_mapping(before)
    # The Zip tab's figures were redrawn while hidden (plotly's 700 px): shown, they fit again.
    open_tab(page, "4 Zip")
    page.wait_for_function(
        """() => {
            const g = document.querySelector('#arch-plot .js-plotly-plot');
            const frame = g && g.closest('.block');
            return g && g._fullLayout && frame
                && Math.abs(g._fullLayout.width - frame.getBoundingClientRect().width) < 12;
        }""",
        timeout=TIMEOUT_MS,
    )
    page.close()
    assert errors == []


def open_on_touch(chromium_browser, url: str, width: int, height: int):
    """Open the page on a touch screen of ``width`` x ``height``; return the browser context,
    the page (the demo pair loaded) and the list its page errors go to."""
    context = chromium_browser.new_context(
        viewport={"width": width, "height": height}, has_touch=True, is_mobile=True
    )
    page = context.new_page()
    errors, _ = watch(page)
    page.goto(url)
    wait_status(page, "Loaded demo pair")
    return context, page, errors


def test_a_tablet_taps_cells_and_scrolls_past_figures(url, chromium_browser):
    # An iPad in portrait: the CKA map's cells are about 17 px, and a finger taps, swipes.
    context, page, errors = open_on_touch(chromium_browser, url, 834, 1194)
    page.locator("#cka-heatmap .js-plotly-plot").wait_for(timeout=TIMEOUT_MS)
    # A swipe over a figure scrolls the page: no figure zooms on a drag.
    page.wait_for_function(
        """() => {
            const plots = [...document.querySelectorAll('.js-plotly-plot')];
            const still = g => g._fullLayout && g._fullLayout.dragmode === false;
            return plots.length && plots.every(still);
        }""",
        timeout=TIMEOUT_MS,
    )
    # A tap on the cell beside the path's marker pairs that cell's layers (the marker took it).
    move = movable_layer(page)
    shallow, layer, deep = move["shallow"], move["mine"][move["k"]], move["deep"]
    target = deep[move["t"]]
    a, b = (layer, target) if shallow == "A" else (target, layer)
    page.touchscreen.tap(*cell_point(page, int(a[1:]), int(b[1:])))
    wait_status(page, f"Paired {layer} with {target} (stage {move['stage']}")
    context.close()
    assert errors == []


def open_tab_on_a_phone(page, title: str) -> None:
    """Open a tab on a narrow page: gradio lists the tabs that do not fit under "More tabs"."""
    tab = page.get_by_role("tab", name=title)
    if not tab.is_visible():
        page.get_by_label("More tabs").click()
        tab = page.locator(".overflow-dropdown button", has_text=title)
    tab.click()
    page.wait_for_timeout(400)


def box_point(box: dict, across: float, down: float) -> tuple[float, float]:
    """Return the point ``across`` and ``down`` of the way into a bounding box."""
    return box["x"] + box["width"] * across, box["y"] + box["height"] * down


# Per figure on the page, its title's edges and its frame's (CSS pixels); [] without a title.
TITLE_EDGES = """() => [...document.querySelectorAll('.js-plotly-plot')]
    .filter(gd => gd.offsetParent !== null && gd.querySelector('.gtitle'))
    .map(gd => {
      const t = gd.querySelector('.gtitle').getBoundingClientRect();
      const f = gd.getBoundingClientRect();
      return [t.left, t.right, f.left, f.right];
    })"""

# The sample captions whose boxes overlap another caption's (their texts).
CAPTIONS_OVERLAPPING = """() => {
  const boxes = [...document.querySelectorAll('#samples .annotation-text')]
    .map(t => [t.textContent, t.getBoundingClientRect()]);
  const meet = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom
    && b.top < a.bottom;
  return boxes.filter(([text, box]) => boxes.some(([_, other]) => other !== box
    && meet(box, other))).map(([text]) => text);
}"""

# Block labels that a block's toolbar covers (their texts)
LABELS_UNDER_TOOLBARS = """() => [...document.querySelectorAll('.icon-button-wrapper')]
  .filter(bar => bar.offsetParent !== null && bar.closest('.block'))
  .flatMap(bar => {
    const b = bar.getBoundingClientRect();
    return [...bar.closest('.block').querySelectorAll('label, [data-testid=block-label]')]
      .filter(label => label.offsetParent !== null && label.textContent.trim())
      .filter(label => {
        const a = label.getBoundingClientRect();
        return a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
      })
      .map(label => label.textContent.trim());
  })"""

# Per visible figure, the texts of its titles and annotations whose boxes overlap another's
TEXTS_OVERLAPPING = """() => [...document.querySelectorAll('.js-plotly-plot')]
  .filter(gd => gd.offsetParent !== null)
  .flatMap(gd => {
    const boxes = [...gd.querySelectorAll('.annotation-text, .gtitle')]
      .map(t => [t.textContent, t.getBoundingClientRect()]).filter(([_, b]) => b.width > 0);
    const meet = (a, b) => a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1
      && b.top < a.bottom - 1;
    return boxes.filter(([_, box]) => boxes.some(([__, other]) => other !== box
      && meet(box, other))).map(([text]) => text);
  })"""

# Dropdown values whose text runs on under the dropdown's arrow (their starts)
VALUES_UNDER_ARROWS = """() => [...document.querySelectorAll('.block .secondary-wrap > input')]
  .filter(box => box.offsetParent !== null && box.value)
  .filter(box => {
    const arrow = box.parentElement.querySelector(':scope > .icon-wrap');
    const end = box.getBoundingClientRect().right - parseFloat(getComputedStyle(box).paddingRight);
    return arrow && end > arrow.getBoundingClientRect().left + 0.5;
  })
  .map(box => box.value.slice(0, 40))"""

# Table headers of one word that the page broke over more than one line.
BROKEN_HEADERS = """() => [...document.querySelectorAll('th')]
  .filter(th => th.offsetParent !== null && /^\\w+$/.test(th.innerText.trim()))
  .filter(th => {
    const walk = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
    const tops = new Set();
    for (let node = walk.nextNode(); node; node = walk.nextNode()) {
      if (!node.textContent.trim()) continue;
      const range = document.createRange();
      range.selectNodeContents(node);
      for (const r of range.getClientRects()) tops.add(Math.round(r.top));
    }
    return tops.size > 1;
  }).map(th => th.innerText.trim())"""


def test_a_phone_sees_each_step_whole_titles_and_captions(url, chromium_browser):
    """A phone in portrait (390 x 844): the status line stays on screen when a slider far
    below it re-merges (it was a screen above, and a release raises no toast), the toolbar
    hides until a figure is touched (it covered titles), titles fit their figures (cut at
    the right), the sample panels wrap into rows (six in a row overlapped their captions),
    one-word table headers stay whole ("stage" broke into three lines) and sliders are
    finger-sized. Rotated, the wrapped samples still fill their frame (a wrap pinned their
    width, and panels were cut off). An error's toast leaves the status line, which says the
    same, readable (it covered it), no toolbar covers a label (the recipe's did) and no
    dropdown's value runs on under its arrow."""
    context, page, errors = open_on_touch(chromium_browser, url, 390, 844)
    page.locator("#cka-heatmap .js-plotly-plot .gtitle").wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(500)
    titles = page.evaluate(TITLE_EDGES)
    toolbar = page.locator("#cka-heatmap .modebar-container").evaluate(
        "bar => getComputedStyle(bar).opacity"
    )
    broken = page.evaluate(BROKEN_HEADERS)
    covered = page.evaluate(LABELS_UNDER_TOOLBARS)
    open_tab_on_a_phone(page, "4 Zip")
    under_arrows = page.evaluate(VALUES_UNDER_ARROWS)  # the fusion's "auto (what measured..."
    rho = page.locator("#rho input[type=number]")
    rho.scroll_into_view_if_needed()
    slider = page.locator("#rho input[type=range]").bounding_box()
    rho.fill("0.5")
    rho.press("Enter")
    wait_status(page, "Merge #1 evaluated")
    status = page.locator("#status").bounding_box()
    box = rho.bounding_box()
    # a swipe up that begins on the rho slider's track, away from its thumb, scrolls the page
    # and leaves rho as it is (it set rho where the finger landed)
    track = page.locator("#rho input[type=range]")
    track.evaluate("slider => slider.scrollIntoView({block: 'center'})")
    scrolled, (x, y) = page.evaluate("scrollY"), box_point(track.bounding_box(), 0.9, 0.5)
    touch = context.new_cdp_session(page)
    for kind, points in (
        ("touchStart", [{"x": x, "y": y}]),
        *(("touchMove", [{"x": x, "y": y - 25 * k}]) for k in range(1, 13)),
        ("touchEnd", []),
    ):
        touch.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})
    page.wait_for_timeout(800)
    swiped = (rho.input_value(), page.evaluate("scrollY") > scrolled)
    open_tab_on_a_phone(page, "5 Evaluate")
    page.locator("#samples .annotation-text").first.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(800)
    overlapping = [page.evaluate(CAPTIONS_OVERLAPPING)]
    covered += page.evaluate(LABELS_UNDER_TOOLBARS)
    frames = []  # the samples' frame and drawn widths, then rows, after each rotation
    for width, height in ((844, 390), (390, 844)):  # the wrapped figure follows the page
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(1200)
        frames.append(page.evaluate(FRAME_FIT, "samples"))
        overlapping.append(page.evaluate(CAPTIONS_OVERLAPPING))
    open_tab_on_a_phone(page, "7 Export")  # an error's toast leaves the status line readable
    covered += page.evaluate(LABELS_UNDER_TOOLBARS)  # the recipe's toolbar covered its label
    under_arrows += page.evaluate(VALUES_UNDER_ARROWS)
    page.locator("#export-dir textarea, #export-dir input").first.fill(" ")
    page.locator("#export").click()
    page.locator(".toast-body").first.wait_for(timeout=TIMEOUT_MS)
    toast, said = page.locator(".toast-wrap").bounding_box(), page.locator("#status").bounding_box()
    context.close()
    assert covered == []
    assert under_arrows == []
    assert toast["y"] >= said["y"] + said["height"] or toast["y"] + toast["height"] <= said["y"]
    assert titles and all(f0 - 1 <= t0 and t1 <= f1 + 1 for t0, t1, f0, f1 in titles), titles
    assert toolbar == "0"
    assert broken == []
    assert slider["height"] >= 28
    assert status["y"] >= 0 and status["y"] + status["height"] <= 844, status
    assert 0 <= box["y"] <= 844  # the slider the user just released is on screen with it
    assert swiped == ("0.5", True)
    assert overlapping == [[], [], []]
    assert all(abs(drawn - frame) <= 2 for drawn, frame in frames), frames
    assert errors == []


# Controls whose content is wider than their box (a clipped label, a slider's end cut off): a
# box's own scroll area may exceed it by a few pixels (an accordion's arrow) without hiding text.
CLIPPED_CONTROLS = """() => [...document.querySelectorAll('.block')]
    .filter(e => e.offsetParent !== null && e.clientWidth > 0
        && e.scrollWidth > e.clientWidth + 8 && getComputedStyle(e).overflowX !== 'visible')
    .map(e => `${e.innerText.split('\\n')[0]} (${e.scrollWidth} px in ${e.clientWidth})`)"""


def test_a_narrow_window_clips_no_control(url, chromium_browser):
    # 800 px: a laptop's half screen beside slides. The Zip tab's Renormalize label and the
    # calibration slider's 1024 were cut off there.
    page = chromium_browser.new_page(viewport={"width": 800, "height": 900})
    errors, _ = watch(page)
    page.goto(url)
    wait_status(page, "Loaded demo pair")
    clipped = {}
    for title in (
        "1 Models",
        "2 Alignment",
        "3 Neurons",
        "4 Zip",
        "5 Evaluate",
        "6 Compare",
        "7 Export",
    ):
        open_tab(page, title)
        clipped[title] = page.evaluate(CLIPPED_CONTROLS)
    page.close()
    assert {t: c for t, c in clipped.items() if c} == {}
    assert errors == []


FRAME_FIT = """(id) => {
  const plot = document.querySelector('#' + id + ' .js-plotly-plot');
  return [plot.querySelector('.main-svg').getBoundingClientRect().width,
          plot.getBoundingClientRect().width];
}"""


def test_a_laptop_at_150_percent_shows_whole_figures(url, chromium_browser):
    """1280 x 720 at 150% zoom (853 x 480 CSS pixels): the CKA map fills its plot (square
    cells made it a strip between empty axis ranges), a figure drawn inside a closed accordion
    fits its frame once opened (it kept 700 px), the readout's border fits its rows, and the
    page's start draws no focus ring on a tab nobody chose."""
    page = chromium_browser.new_page(
        viewport={"width": 853, "height": 480}, device_scale_factor=1.5
    )
    errors, _ = watch(page)
    page.goto(url)
    wait_status(page, "Loaded demo pair")
    page.locator("#cka-heatmap .js-plotly-plot").wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(500)
    focused = page.evaluate("() => document.activeElement?.getAttribute('role')")
    y_range, layers, plot_share = page.evaluate(
        """() => {
          const gd = document.querySelector('#cka-heatmap .js-plotly-plot');
          const ya = gd._fullLayout.yaxis;
          return [ya.range, gd.data[0].z.length, ya._length / gd._fullLayout.height];
        }"""
    )
    open_tab(page, "4 Zip")
    page.set_viewport_size({"width": 1366, "height": 768})  # the laptop at 100%
    page.wait_for_timeout(500)
    table, rows = page.evaluate(
        """() => {
          const t = document.querySelector('#readout table'), cs = getComputedStyle(t);
          const edges = ['paddingLeft', 'paddingRight', 'borderLeftWidth', 'borderRightWidth']
            .reduce((sum, k) => sum + parseFloat(cs[k]), 0);
          return [t.getBoundingClientRect().width,
                  edges + Math.max(...[...t.rows].map(r => r.getBoundingClientRect().width))];
        }"""
    )
    widths = page.get_by_text("Widths per merge point and overrides")
    widths.click()  # drawn once open, then closed
    page.locator("#widths-plot .js-plotly-plot").wait_for(timeout=TIMEOUT_MS)
    widths.click()
    page.locator("#merge").click()  # redraws the widths while they are hidden
    wait_status(page, "Merge #1")
    widths.click()
    page.wait_for_timeout(800)
    drawn, frame = page.evaluate(FRAME_FIT, "widths-plot")
    page.close()
    assert focused != "tab"
    assert min(y_range) > -0.6 and max(y_range) < layers - 0.4, y_range  # the layers, no more
    assert plot_share > 0.5
    assert abs(drawn - frame) <= 2, (drawn, frame)
    assert table - rows <= 2, (table, rows)  # its border around its rows, not 150 px wider
    assert errors == []


def test_the_keyboard_alone_loads_merges_and_is_told_what_happened(url, chromium_browser):
    """Keyboard and screen-reader users: Enter on Load demo pair leaves the focus on the tab it
    switched to (it fell to the page's top), focus passing through the sliders' number boxes
    merges nothing (it merged), an arrow key on the rho slider re-merges as a pointer's
    release does (it did nothing), a value typed in a box re-merges as focus leaves it, the
    focused slider shows a ring, the status line is a live region a screen reader announces,
    and a figure is an image named by its label and title."""
    page = chromium_browser.new_page(viewport={"width": 1360, "height": 900})
    errors, _ = watch(page)
    page.goto(url)
    wait_status(page, "Loaded demo pair")
    status = page.locator("#status")
    assert (status.get_attribute("role"), status.get_attribute("aria-live")) == (
        "status",
        "polite",
    )
    heatmap = page.locator("#cka-heatmap .js-plotly-plot")
    heatmap.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function(
        "() => (document.querySelector('#cka-heatmap .js-plotly-plot')"
        ".getAttribute('aria-label') || '').includes('Layer CKA with the')",
        timeout=TIMEOUT_MS,
    )
    assert heatmap.get_attribute("role") == "img"
    assert heatmap.get_attribute("aria-label").startswith("Layer similarity (CKA)")
    open_tab(page, "1 Models")
    page.get_by_role("button", name="Load demo pair").focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.activeElement && document.activeElement.getAttribute('role') === 'tab'"
        " && document.activeElement.getAttribute('aria-selected') === 'true'",
        timeout=TIMEOUT_MS,
    )
    wait_status(page, "Loaded demo pair")
    open_tab(page, "4 Zip")
    # focus passing through the sliders' number boxes sends nothing (each blur released its
    # slider: a merge nobody asked for)
    sent = []
    page.on("request", lambda r: sent.append(r.post_data) if "queue/join" in r.url else None)
    box = page.locator("#rho input[type=number]")
    box.click()
    for key in ("Shift+Tab", "Shift+Tab", "Shift+Tab", "Tab", "Tab", "Tab", "Tab", "Tab"):
        page.keyboard.press(key)
    page.wait_for_timeout(1000)
    assert sent == []
    slider = page.locator("#rho input[type=range]")
    slider.focus()
    page.keyboard.press("ArrowLeft")
    wait_status(page, "Merge #1 evaluated")
    ring = slider.evaluate(
        "e => [getComputedStyle(e).outlineStyle, getComputedStyle(e).outlineWidth]"
    )
    assert ring == ["solid", "2px"]
    box.fill("0.5")  # a value typed in the box is released as focus leaves it
    page.keyboard.press("Tab")
    wait_status(page, "Merge #2")
    page.close()
    assert errors == []


def choose_source(page, which: str, source: str) -> None:
    """Pick where model ``which`` comes from (the radio shows that source's input)."""
    page.locator(f"#source-{which}").get_by_text(source, exact=True).click()
    page.wait_for_timeout(300)


def test_an_export_uploads_again_as_a_model(url, chromium_browser, tmp_path):
    page = chromium_browser.new_page(viewport={"width": 1360, "height": 900})
    errors, foreign = watch(page)
    page.goto(url)
    wait_status(page, "Loaded demo pair")
    open_tab(page, "4 Zip")
    page.locator("#merge").click()
    wait_status(page, "Merge #1 done")
    export(page, tmp_path / "round-trip")
    with page.expect_download(timeout=TIMEOUT_MS) as caught:
        page.locator("#export-file a").first.click()
    archive = tmp_path / caught.value.suggested_filename
    caught.value.save_as(archive)
    # The .zip goes back in as model A: a merge is a model again, with both task heads.
    open_tab(page, "1 Models")
    choose_source(page, "a", "upload")
    page.locator("#upload-a input[type=file]").set_input_files(str(archive))
    page.wait_for_timeout(500)
    page.locator("#load-a").click()
    wait_status(page, "(upload)")
    card = page.locator("#component-0").page.get_by_text("task heads:").first
    assert card.inner_text().count("classes") == 2
    page.locator("#analyse").click()
    wait_status(page, "Analysed the pair")
    open_tab(page, "4 Zip")
    page.locator("#merge").click()
    wait_status(page, "Merge #2 done")
    page.close()
    assert errors == [] and foreign == []


@pytest.mark.slow
def test_the_minilm_pair_merges_in_the_page(url, chromium_browser, tmp_path):
    page = chromium_browser.new_page(viewport={"width": 1360, "height": 900})
    errors, foreign = watch(page)
    shot = Shots(page, tmp_path)
    page.goto(url)
    wait_status(page, "Loaded demo pair")
    open_tab(page, "1 Models")
    names = {"a": "all-MiniLM-L6-v2", "b": "paraphrase-MiniLM-L3-v2"}
    for which, name in names.items():  # both pickers first: loading A leaves B's as typed
        choose_source(page, which, "hf")
        page.locator(f"#hf-{which} textarea, #hf-{which} input").first.fill(f"minilm:{name}")
    for which, name in names.items():
        page.locator(f"#load-{which}").click()
        wait_status(page, f"Loaded model {which.upper()}: {name}")
    page.locator("#analyse").click()
    # While it runs (about 15 s): the step's stage and share of work, and no time estimate
    # (Gradio's would be the average of earlier runs, of the digits pair's analysis).
    level = page.locator("#status .progress-level")
    level.wait_for(timeout=TIMEOUT_MS)
    assert re.search(r"(CKA|statistics|BatchNorm|evaluating).* - \d+\.\d%", level.inner_text())
    estimate = page.locator("#status .progress-text")
    shown = [e.evaluate("e => getComputedStyle(e).display") for e in estimate.all()]
    assert shown and set(shown) == {"none"}
    wait_status(page, "Analysed the pair")
    open_tab(page, "2 Alignment")
    page.locator("#cka-heatmap .js-plotly-plot").wait_for(timeout=TIMEOUT_MS)
    shot("minilm-alignment", full_page=False)
    open_tab(page, "4 Zip")
    page.locator("#merge").click()
    wait_status(page, "Merge #1 done")
    page.wait_for_function(  # the Spearman of the merge beside the sliders
        "() => [...document.querySelectorAll('#readout tr')].some(r => "
        "r.cells[0].innerText.trim() === 'merged' && /\\d/.test(r.cells[4].innerText))",
        timeout=TIMEOUT_MS,
    )
    assert page.locator("#readout").get_by_text("Spearman").count() == 1
    shot("minilm-zip")
    open_tab(page, "3 Neurons")
    page.locator("#neuron-map .js-plotly-plot").wait_for(timeout=TIMEOUT_MS)
    pick(page, "neuron-space", "layer0.ffn")  # 1,536 + 1,536 features: the detail view
    wait_status(page, "Showing merge point layer0.ffn")
    page.locator("#neuron-overview .js-plotly-plot").wait_for(timeout=TIMEOUT_MS)
    assert page.locator("#neuron-map").get_by_text("strongest").count() >= 1
    shot("minilm-neurons", full_page=False)
    open_tab(page, "5 Evaluate")
    merged_row = page.get_by_text("merged (exported trunk, mean-pooled)")
    merged_row.filter(visible=True).first.wait_for(timeout=TIMEOUT_MS)
    shot("minilm-evaluate")
    # On a phone's width the scores fit beside the models' names, which wrap (the names took
    # the width, and the scores were a sideways scroll away), and no number breaks
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(800)
    overlapping = page.evaluate(TEXTS_OVERLAPPING)
    open_tab_on_a_phone(page, "4 Zip")  # the size figure's two titles met there
    page.wait_for_timeout(800)
    overlapping += page.evaluate(TEXTS_OVERLAPPING)
    open_tab_on_a_phone(page, "5 Evaluate")
    scores = page.locator("#text-scores table").evaluate(
        """t => ({
            overflow: t.scrollWidth - t.parentElement.clientWidth,
            broken: [...t.querySelectorAll('tbody td:not(:first-child)')].filter(cell => {
                const text = document.createRange();  // the lines the number takes
                text.selectNodeContents(cell);
                const tops = [...text.getClientRects()].filter(r => r.width > 0)
                    .map(r => Math.round(r.top));
                return cell.innerText.trim() && new Set(tops).size > 1;
            }).map(cell => cell.innerText),
        })"""
    )
    page.close()
    assert scores == {"overflow": 0, "broken": []}, scores
    assert overlapping == []
    assert errors == [] and foreign == []
