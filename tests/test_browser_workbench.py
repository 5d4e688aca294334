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
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

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
    """Move the zip-ratio slider (its release re-merges), then press Merge."""
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
    wait_status(page, "Merge #2 done")


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


def export(page, out: Path) -> None:
    """Export the merge to ``out`` from the Export tab."""
    open_tab(page, "7 Export")
    page.locator("#export-dir textarea, #export-dir input").first.fill(str(out))
    page.locator("#export").click()
    wait_status(page, "Exported to")
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()


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
    page.close()
    assert fill == "rgb(229, 231, 235)"  # light text on the dark page
    assert background in ("rgba(0, 0, 0, 0)", "transparent")
    assert errors == []
