"""Drive the workbench over its API with gradio_client, against the app launched in-process.

load -> align -> zip -> merge -> evaluate -> export -> import; bad input gives a message and
keeps the session; two clients (two sessions) never see each other's state; a login is enforced
when asked for.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from heterogui.ui.app import build_app, launch
from heterogui.ui.resources import Resources, ZooPairs

pytestmark = pytest.mark.ui
PAIR = "tiny-digits-vgg-depth"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Return (the app, its address), launched on 127.0.0.1."""
    exports = tmp_path_factory.getbasetemp()  # every test's tmp_path lies below it
    demo = build_app(
        Resources(ZooPairs(tiny=True), device="cpu", default_pair=PAIR, export_root=exports)
    )
    address = launch(demo, "127.0.0.1", None, block=False)
    assert address.startswith("http://127.0.0.1:")
    yield demo, address
    demo.close()


@pytest.fixture(scope="module")
def url(served):
    return served[1]


def call(client: Client, api: str, *args):
    """Return (status message, session summary, other outputs) of one API event."""
    out = client.predict(*args, api_name=api)
    return out[0], out[1], out[2:]


def test_requests_that_name_another_host_are_refused(url):
    """DNS rebinding: a page the user visits points a name of its own at 127.0.0.1; its
    requests carry that name, and the app refuses them."""
    import urllib.error
    import urllib.request

    port = url.rstrip("/").rsplit(":", 1)[1]
    for host, code in ((f"127.0.0.1:{port}", 200), (f"localhost:{port}", 200)):
        request = urllib.request.Request(f"{url}gradio_api/info", headers={"Host": host})
        assert urllib.request.urlopen(request, timeout=30).status == code
    request = urllib.request.Request(
        f"{url}gradio_api/info", headers={"Host": f"rebind.example:{port}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400
    # a page of another site posting to the real address (an upload is a plain form post), or
    # a page another server on this machine serves (it passed: only the name was compared)
    for origin, code in (
        ("http://evil.example", 403),
        ("null", 403),
        ("http://localhost:3000", 403),
        (f"http://127.0.0.1:{int(port) + 1}", 403),
    ):
        form = urllib.request.Request(
            f"{url}gradio_api/upload", data=b"", method="POST", headers={"Origin": origin}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(form, timeout=30)
        assert refused.value.code == code
    for own in (url.rstrip("/"), f"http://localhost:{port}"):  # the app's own page
        page = urllib.request.Request(f"{url}gradio_api/info", headers={"Origin": own})
        if own.startswith("http://localhost"):
            page.add_header("Host", f"localhost:{port}")
        assert urllib.request.urlopen(page, timeout=30).status == 200


def test_the_whole_flow_over_the_api(url, tmp_path):
    client = Client(url, verbose=False)
    status, summary, _ = call(client, "/start")
    assert "Loaded demo pair" in status and summary["pair"] == PAIR and summary["analysed"]
    status, summary, _ = call(client, "/align", "lma", "")
    assert summary["alignment"]["mode"] == "lma"
    mapping = summary["alignment"]["mapping"]
    mapping["a"][0] = [0, 1] if mapping["a"][0] != [0, 1] else [0, 2]
    status, summary, _ = call(client, "/set_mapping", json.dumps(mapping))
    assert summary["alignment"] == {**summary["alignment"], "mode": "manual", "mapping": mapping}
    status, summary, _ = call(
        client, "/set_mapping", '{"a": [[0, 0], [0, 1]], "b": [[0, 1, 2], [0, 1, 2]]}'
    )
    assert status.startswith("**Error:**") and "monotone" in status
    assert summary["alignment"]["mapping"] == mapping  # nothing lost
    stop = summary["blocks"]
    status, summary, _ = call(client, "/zip", "zip", 0.5, 1.0, 0.5, stop)
    assert summary["settings"]["rho"] == 0.5 and "merged" not in summary
    status, summary, _ = call(client, "/merge", "zip", 0.5, 1.0, 0.5, stop, "cpu")
    assert "Merge #1 done" in status
    merged = summary["merged"]
    assert merged["metrics"]["Joint"] is not None and merged["stop"] == stop
    status, summary, _ = call(client, "/remerge", True, "zip", 0.5, 1.0, 0.7, stop, "cpu")
    assert "scoring it" in status and summary["merged"]["metrics"]["Joint"] is None
    status, summary, views = call(client, "/evaluate")
    assert "Merge #2 evaluated" in status and summary["merged"]["metrics"]["Joint"] is not None
    merged = summary["merged"]
    status, summary, _ = call(client, "/samples", "2, 7")
    assert status == "Showing samples [2, 7]."
    out = tmp_path / "export"
    status, summary, views = call(client, "/export", str(out), False)
    assert "Exported to" in status and summary["last_export"] == str(out)
    assert views[-1].endswith(".zip")
    status, _, _ = call(client, "/export", str(out), False)
    assert "already exists" in status and "the Overwrite box on the Export tab" in status

    other = Client(url, verbose=False)
    recipe = handle_file(str(out / "recipe.yaml"))
    status, again, _ = call(other, "/import_recipe", recipe, "")
    assert "Reproduced" in status
    assert again["merged"]["widths"] == merged["widths"]
    assert again["merged"]["metrics"] == merged["metrics"]


def test_the_fusion_over_the_api(url):
    """The fusion follows the device (Renormalize and the heads come after it): older calls
    work."""
    client = Client(url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/zip", "/merge", "/remerge"):
        fusion = api[name]["parameters"][-3]
        assert fusion["label"] == "Fusion" and fusion["parameter_default"] == "auto"
    _, summary, _ = call(client, "/start")
    stop = summary["blocks"]
    _, summary, _ = call(client, "/zip", "zip", 0.5, 1.0, 0.5, stop, "least_squares")
    assert summary["settings"]["fusion"] == "least_squares" and "merged" not in summary
    status, summary, _ = call(client, "/merge", "zip", 0.5, 1.0, 0.5, stop, "cpu", "least_squares")
    assert "Merge #1 done" in status and "fusion: least squares" in status
    status, summary, _ = call(client, "/merge", "zip", 0.5, 1.0, 0.5, stop, "cpu", "average")
    assert "fusion" not in status
    status, summary, _ = call(client, "/merge", "zip", 0.5, 1.0, 0.5, stop, "cpu")  # "auto"
    assert "fusion: least squares" in status  # the VGG family's default, as the merge records
    history = [h["fusion"] for h in summary["history"]]
    assert history == ["least_squares", "average", "least_squares"]
    with pytest.raises(AppError, match="magic is not in the list of choices"):
        call(client, "/zip", "zip", 0.5, 1.0, 0.5, stop, "magic")  # refused by the dropdown


def test_the_renormalization_over_the_api(url):
    """Renormalize follows the fusion in /zip, /merge and /remerge (the heads come last)."""
    client = Client(url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/zip", "/merge", "/remerge"):
        *_, fusion, renormalize, _heads = api[name]["parameters"]
        assert fusion["label"] == "Fusion"
        assert renormalize["label"] == "Renormalize" and renormalize["parameter_default"] is False
    _, summary, _ = call(client, "/start")
    stop = summary["blocks"]
    _, summary, _ = call(client, "/zip", "zip", 0.5, 1.0, 0.5, stop, "average", True)
    assert summary["settings"]["renormalize"] is True and "merged" not in summary
    status, summary, _ = call(client, "/merge", "zip", 0.5, 1.0, 0.5, stop, "cpu", "average", True)
    assert "Merge #1 done" in status and "renormalize:" in status  # nothing to do on VGG
    status, summary, _ = call(client, "/remerge", True, "zip", 0.5, 1.0, 0.6, stop, "cpu")
    assert "renormaliz" not in status
    assert [h["renormalize"] for h in summary["history"]] == [True, False]


def test_the_heads_over_the_api(url):
    """The attention heads' choice is the last input of /zip, /merge and /remerge."""
    client = Client(url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/zip", "/merge", "/remerge"):
        last = api[name]["parameters"][-1]
        assert last["label"] == "Attention heads" and last["parameter_default"] == "auto"
    _, summary, _ = call(client, "/start")
    stop = summary["blocks"]
    _, summary, _ = call(client, "/zip", "zip", 0.5, 1.0, 0.5, stop, "average", False, "select")
    assert summary["settings"]["heads"] == "select" and "merged" not in summary
    knobs = ("zip", 0.5, 1.0, 0.5, stop, "cpu", "average", False, "select")
    status, summary, _ = call(client, "/merge", *knobs)
    assert "Merge #1 done" in status and "heads: no merged attention heads" in status  # VGG
    status, summary, _ = call(client, "/remerge", True, "zip", 0.5, 1.0, 0.6, stop, "cpu")
    assert "heads" not in status
    assert [h["heads"] for h in summary["history"]] == ["select", "pair"]
    with pytest.raises(AppError, match="both is not in the list of choices"):
        call(client, "/zip", "zip", 0.5, 1.0, 0.5, stop, "average", False, "both")


def test_after_a_step_the_app_collects_the_other_placement_and_the_switch_reuses_it(served):
    demo, url = served
    client = Client(url, verbose=False)
    status, summary, _ = call(client, "/start")
    assert summary["alignment"]["mode"] == "sma"
    assert demo.prefetcher.wait_idle(120)  # the pair's LMA placement, collected while idle
    status, summary, _ = call(client, "/align", "lma", "")
    assert "statistics of this placement from before, no new pass" in status
    assert summary["alignment"]["mode"] == "lma"


def test_two_clients_do_not_see_each_other(url):
    one, two = Client(url, verbose=False), Client(url, verbose=False)
    _, first, _ = call(one, "/start")
    stop = first["blocks"]
    _, first, _ = call(one, "/merge", "zip", 0.5, 1.0, 0.3, stop, "cpu")
    _, second, _ = call(two, "/load_pair", "tiny-digits-vgg-width")
    job = one.submit(api_name="/sweep")
    _, second, _ = call(two, "/zip", "zip", 0.9, 0.5, 0.8, second["blocks"])
    assert second["pair"] == "tiny-digits-vgg-width" and second["merges"] == 0
    assert second["settings"]["rho"] == 0.8 and second["session"] != first["session"]
    after = job.result()[1]
    assert after["pair"] == PAIR and after["merges"] == 1 and after["settings"]["rho"] == 0.3


def test_a_login_is_required_when_asked_for():
    demo = build_app(Resources(ZooPairs(tiny=True), device="cpu", default_pair=PAIR))
    address = launch(demo, "127.0.0.1", None, auth=("ann", "s3cret"), block=False)
    try:
        assert httpx.get(f"{address}config").status_code in (401, 403)
        client = Client(address, auth=("ann", "s3cret"), verbose=False)
        assert (
            "/start" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        )
    finally:
        demo.close()


def slow_merges(monkeypatch, reports: int) -> None:
    """Make the workbench's merges long: ``reports`` progress reports 20 ms apart first."""
    from heterogui.ui import work

    real = work.zip_prepared

    def slow(prepared, settings, progress=None, **kw):  # a long merge that reports progress
        for k in range(reports):
            progress("match", k / reports)
            time.sleep(0.02)
        return real(prepared, settings, progress=progress, **kw)

    monkeypatch.setattr(work, "zip_prepared", slow)


def press_cancel(client: Client) -> str:
    """Press Cancel until it finds a step to stop (5 s at most); return its answer."""
    for _ in range(100):
        status, _, _ = call(client, "/cancel")
        if "Cancelling" in status:
            break
        time.sleep(0.05)
    return status


def test_cancel_over_the_api_stops_a_running_merge(url, monkeypatch):
    slow_merges(monkeypatch, 200)
    client = Client(url, verbose=False)
    status, summary, _ = call(client, "/start")
    status, _, _ = call(client, "/cancel")
    assert "Nothing is running" in status
    stop = summary["blocks"]
    job = client.submit("zip", 0.5, 1.0, 0.5, stop, "cpu", api_name="/merge")
    status = press_cancel(client)  # once the merge has started (it runs 4 s)
    assert "Cancelling" in status
    status, summary = job.result()[:2]
    assert status.startswith("**Cancelled.**") and summary["merges"] == 0  # nothing added
    assert summary["history"] == []


def test_cancel_drops_a_merge_that_waits_for_another_user_s(tmp_path, monkeypatch):
    """One heavy step at a time: the second user's merge waits inside the app (not in Gradio's
    queue, where Cancel did not reach it) and that user's Cancel drops it before it starts;
    the first user's merge goes on."""
    demo = build_app(
        Resources(ZooPairs(tiny=True), device="cpu", default_pair=PAIR, export_root=tmp_path),
        heavy_limit=1,
        prefetch=False,
    )
    address = launch(demo, "127.0.0.1", None, block=False)
    try:
        first, second = Client(address, verbose=False), Client(address, verbose=False)
        _, summary, _ = call(first, "/start")
        call(second, "/start")
        slow_merges(monkeypatch, 150)
        stop = summary["blocks"]
        running = first.submit("zip", 0.5, 1.0, 0.5, stop, "cpu", api_name="/merge")
        time.sleep(0.5)
        waiting = second.submit("zip", 0.5, 1.0, 0.75, stop, "cpu", api_name="/merge")
        status = press_cancel(second)  # once the second merge waits (the first runs 3 s)
        assert "it waits for another user's" in status
        status, summary = waiting.result()[:2]
        assert status.startswith("**Cancelled.** Dropped before it started")
        assert summary["merges"] == 0
        status, summary = running.result()[:2]
        assert status.startswith("Merge #1 done") and summary["merges"] == 1
    finally:
        demo.close()


def test_the_readme_client_snippet_runs_as_written(url, capsys):
    """The gradio_client flow in the README is run as it is printed there (URL aside)."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("```python\nfrom gradio_client import Client")
    code = readme[start + len("```python\n") : readme.index("```", start + 10)]
    code = code.replace("http://127.0.0.1:7860/", url)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own README
    assert "Comparing merge #1 with #2" in scope["status"]
    assert "Joint" in capsys.readouterr().out


def test_a_closed_tab_releases_its_models_and_an_open_one_keeps_them(tmp_path):
    """Gradio keeps a closed tab's state for an hour: its models, statistics and merges are
    released once the tab has been away for ``release_after_s`` (history and files stay),
    while another tab keeps all it holds."""
    demo = build_app(
        Resources(ZooPairs(tiny=True), device="cpu", default_pair=PAIR, export_root=tmp_path),
        release_after_s=0.5,
    )
    address = launch(demo, "127.0.0.1", None, block=False)
    try:
        closing, staying = Client(address, verbose=False), Client(address, verbose=False)
        for client in (closing, staying):
            _, summary, _ = call(client, "/start")
            call(client, "/merge", "zip", 0.5, 1.0, 0.5, summary["blocks"], "cpu")
        gone, kept = demo.session_of(closing.session_hash), demo.session_of(staying.session_hash)
        assert gone is not None and gone.prepared is not None and gone.kept
        closing.close()  # the heartbeat ends, as when a tab closes
        for _ in range(600):
            if gone.released:
                break
            time.sleep(0.05)
        assert gone.released and gone.a is None and gone.b is None
        assert gone.prepared is None and gone.result is None and not gone.kept
        assert len(gone.history) == 1
        assert kept.prepared is not None and kept.result is not None and not kept.released
        status, summary, _ = call(staying, "/evaluate")
        assert "Merge #1 evaluation: Joint" in status and summary["merged"]["metrics"]["Joint"]
    finally:
        demo.close()
