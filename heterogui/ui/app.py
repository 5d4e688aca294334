"""The workbench app: assemble the tabs, wire events to handlers, and serve on 127.0.0.1.

Every event runs a plain handler ``handler(session, resources, *inputs, progress=...)`` through
``ui.events.event_function`` (errors as messages in the page, the session kept, the tabs the
event touches re-rendered by ``ui.views.render``); this module lays out the page, wires every
event with its options, and gives every main event an ``api_name`` so that gradio_client can
drive the whole flow.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from heterogui.cache import cache_path, make_folder  # noqa: E402
from heterogui.errors import ConfigError  # noqa: E402
from heterogui.folders import clean_stale_in, remove_path, why_not_writable  # noqa: E402
from heterogui.ui import tab_models  # noqa: E402
from heterogui.ui.accessibility import FOCUS_CSS, PAGE_JS  # noqa: E402
from heterogui.ui.closed_tabs import (  # noqa: E402
    RELEASE_AFTER_S,
    TICK_S,
    ClosedTabs,
    session_of,
)
from heterogui.ui.events import SessionLocks, event_function  # noqa: E402
from heterogui.ui.figstyle import DARK_CSS, STATUS_CSS  # noqa: E402
from heterogui.ui.heavy_slots import WAITING_ROOM, HeavySlots  # noqa: E402
from heterogui.ui.in_flight import GRACE_S  # noqa: E402
from heterogui.ui.local_only import local_only  # noqa: E402
from heterogui.ui.plot_zoom import ZOOM_JS  # noqa: E402
from heterogui.ui.prefetch import Prefetcher  # noqa: E402
from heterogui.ui.resources import Resources  # noqa: E402
from heterogui.ui.session import Session, remove_stale_sessions  # noqa: E402
from heterogui.ui.small_screens import FIT_JS, SMALL_SCREEN_CSS, SMALL_SCREEN_HEAD  # noqa: E402
from heterogui.ui.views import SCOPES, TABS, views_of  # noqa: E402

log = logging.getLogger(__name__)
INTRO = (
    "# heterogui workbench\n"
    "Merge two models of different depth and width without training: **1 Models** (pick A "
    "and B) → **2 Alignment** (which layers pair up) → **3 Neurons** (which neurons merge) → "
    "**4 Zip** (tune and merge) → **5 Evaluate** (A, B, merged side by side) → **6 Compare** "
    "(two merges, a 2-D sweep) → **7 Export**."
)


def new_session() -> Session:
    """Return a fresh session (gr.State calls this once per browser session)."""
    return Session()


def end_session(session: Any) -> None:
    """Delete an ended session's files (gradio drops a closed tab's state after an hour)."""
    if isinstance(session, Session):
        session.remove_files()


class ComponentNames(dict):
    """The components by name; a name given twice (two tabs, one key) is a bug caught at build."""

    def __setitem__(self, name: str, component: Any) -> None:
        if name in self:
            raise KeyError(f"two components are named {name!r}: rename one")
        super().__setitem__(name, component)


TAB_TITLES = (
    ("models", "1 Models"),
    ("align", "2 Alignment"),
    ("neurons", "3 Neurons"),
    ("zip", "4 Zip"),
    ("evaluate", "5 Evaluate"),
    ("compare", "6 Compare"),
    ("export", "7 Export"),
)


# the sessions whose page values Gradio keeps (the least recently used beyond them are dropped)
STATE_SESSIONS = 100
DELETE_CACHE = (1800, 3600)  # every half hour, Gradio's copies older than an hour


def event_options(
    api_name: str | None,
    heavy: bool,
    light: bool,
    admitted: int,
    status: Any,
    last: bool = False,
    near: Sequence[Any] = (),
) -> dict[str, Any]:
    """Return the keywords of an event listener: progress, API name and concurrency.

    heavy: one progress bar on ``status`` and at most ``admitted`` such events past Gradio's
    queue at once across users (fewer run: the others wait for a slot, ``ui.heavy_slots``,
    where their user's Cancel reaches them); light: unlimited, only the last of a burst runs;
    neither: the queue's default. last: a heavy event triggered again while it runs runs once
    more afterwards, with the latest values (a Merge or slider release is not dropped); other
    heavy events ignore a trigger while they run (a second click on Export). An event without
    an API name stays out of the API page. near: components that show a heavy event's progress
    as well (where a long step below the fold will show its result).
    """
    kwargs: dict[str, Any] = {"show_progress": "full" if heavy else "hidden"}
    if heavy:  # one progress bar, under the title, instead of an overlay on every view
        kwargs["show_progress_on"] = [status, *near]
    if api_name:
        kwargs["api_name"] = api_name
    else:
        kwargs["api_visibility"] = "undocumented"
    if heavy:
        kwargs.update(concurrency_id="heavy", concurrency_limit=admitted)
        if last:
            kwargs["trigger_mode"] = "always_last"
    elif light:
        kwargs.update(concurrency_limit=None, trigger_mode="always_last")
    return kwargs


def build_app(
    res: Resources,
    heavy_limit: int = 2,
    prefetch: bool = True,
    release_after_s: float = RELEASE_AFTER_S,
) -> gr.Blocks:
    """Return the workbench Blocks (not launched). ``heavy_limit``: concurrent heavy events.

    prefetch: collect the statistics of the other automatic placements while idle
    (``ui.prefetch``), so that switching the alignment mode runs no pass; the app's
    ``prefetcher`` attribute (None without). release_after_s: how long after its tab closed
    a session that saw no event since releases its models (``ui.closed_tabs``).
    """
    ui: dict[str, Any] = ComponentNames()
    # Gradio copies every file it serves (downloads, uploads) into its cache: an hour after
    # they were made, those copies go (a MiniLM export's copy is about 120 MB)
    with gr.Blocks(
        title="heterogui workbench", analytics_enabled=False, delete_cache=DELETE_CACHE
    ) as demo:
        state = build_page(ui, res)
        locks = SessionLocks()
        slots = HeavySlots(heavy_limit)

        def lock_for(session: Session) -> threading.Lock:
            return locks.get(session.sid)

        idle = Prefetcher(lock_for, res.in_flight) if prefetch else None
        closed = ClosedTabs(lock_for, idle.forget if idle else None, release_after_s)

        def on_close(request: gr.Request) -> None:
            session = session_of(demo, state, request.session_hash)
            if session is not None:
                closed.closed(session)

        demo.unload(on_close)  # the tab closed or reloaded (its connection ended)

        def on_tick(session: Any) -> None:
            if isinstance(session, Session):
                closed.alive(session)

        # an open page says so (gradio's page does not reopen a connection that dropped)
        gr.Timer(TICK_S).tick(
            on_tick, [state], None, queue=False, show_progress="hidden", api_visibility="private"
        )

        def on(
            trigger,
            handler,
            inputs,
            scopes,
            api_name,
            heavy=False,
            light=False,
            extra=(),
            toast=False,
            last=False,
            chained=False,
            near=(),
        ):
            scope_list = SCOPES if scopes == "all" else tuple(scopes)
            names = [n for s in scope_list for n in views_of(s)] + list(extra)
            # past Gradio's queue, heavy steps wait for a slot where Cancel reaches them
            admitted = heavy_limit + WAITING_ROOM
            kwargs = event_options(
                api_name, heavy, light, admitted, ui["status"], last, [ui[n] for n in near]
            )
            return trigger(
                event_function(
                    handler,
                    res,
                    scope_list,
                    names,
                    len(inputs),
                    lock_for if heavy else None,
                    idle,
                    toast,
                    closed,
                    slots if heavy else None,
                    chained,
                ),
                inputs=[state, *[ui[i] for i in inputs]],
                outputs=[state, ui["status"], ui["summary"], *[ui[n] for n in names]],
                **kwargs,
            )

        for tab in TABS.values():
            tab.wire(ui, on)
        on(
            demo.load,
            tab_models.on_start,
            [],
            "all",
            "start",
            heavy=True,
            extra=["tabs", *tab_models.PICKERS],
        )
    demo.ui = ui  # the components by name, for tests and screenshots
    demo.prefetcher = idle
    demo.session_of = lambda session_hash: session_of(demo, state, session_hash)  # for tests
    if idle is not None:  # closing the app stops its prefetch as well
        close_with(demo, idle)
    return demo


def build_page(ui: dict[str, Any], res: Resources) -> gr.State:
    """Create the page's components in the open Blocks (named in ``ui``); return its state."""
    gr.Markdown(INTRO)
    # called per browser session: never shared; its files go when gradio drops the session
    state = gr.State(new_session, delete_callback=end_session)
    ui["status"] = gr.Markdown(
        "Opening the demo pair (the very first start trains it: about 20 s on a laptop)…",
        elem_id="status",
        min_height=48,
    )
    with gr.Accordion("Session summary (JSON)", open=False):
        ui["summary"] = gr.JSON(label="summary")
    with gr.Tabs() as ui["tabs"]:
        for key, title in TAB_TITLES:
            with gr.Tab(title, id=key):
                TABS[key].build(ui, res)
    # A figure redrawn while its tab is hidden gets plotly's default 700 px width; a resize
    # once the tab shows fits every figure to its frame again.
    ui["tabs"].change(None, js=FIT_FIGURES_JS, queue=False, api_visibility="private")
    return state


# A tab a step switched to (Load demo pair goes to the Alignment tab) hides the button that had
# the focus: the focus moves to the tab shown, not to the top of the page (once the user has
# pressed a key or clicked: accessibility.PAGE_JS).
FIT_FIGURES_JS = """() => { setTimeout(() => {
  window.dispatchEvent(new Event('resize'));
  const lost = !document.activeElement || document.activeElement === document.body;
  if (window.heteroguiTouched && lost) {
    document.querySelector('[role=tab][aria-selected=true]')?.focus();
  }
}, 60); }"""


def close_with(demo: gr.Blocks, idle: Prefetcher) -> None:
    """Make closing ``demo`` close ``idle`` first."""
    close_app = demo.close

    def close(*args: Any, **kwargs: Any) -> Any:
        idle.close()
        return close_app(*args, **kwargs)

    demo.close = close


def default_threads() -> int:
    """Return torch's thread count for the app: 1 on small machines (see tests/conftest.py)."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(4, cores // 2)


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """Return (user, password) from "user:password" (None when not given).

    Raises:
        ConfigError: a value without a colon, a user or a password.
    """
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise ConfigError("--auth takes USER:PASSWORD: a user name, a colon and a password")
    return user, password


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int | None = None,
    auth: tuple[str, str] | None = None,
    block: bool = True,
    concurrency: int = 4,
) -> str:
    """Queue and launch ``demo``; return its URL. Never a share link, analytics or run history.

    block: wait until the server stops (Ctrl+C); else return at once (tests).
    """
    demo.queue(default_concurrency_limit=concurrency)
    _, url, _ = demo.launch(
        # served to this machine only: to its own pages and clients too (ui.local_only)
        app_kwargs={"middleware": local_only(host)} if is_loopback(host) else None,
        server_name=host,
        server_port=port,
        share=False,
        auth=auth,
        prevent_thread_lock=True,
        show_error=True,
        quiet=True,
        ssr_mode=False,
        footer_links=["api", "settings"],
        run_history=False,
        css=DARK_CSS + STATUS_CSS + FOCUS_CSS + SMALL_SCREEN_CSS,
        head=SMALL_SCREEN_HEAD,
        js="() => {" + "".join(f"({script})();" for script in (PAGE_JS, ZOOM_JS, FIT_JS)) + "}",
        enable_monitoring=False,
        mcp_server=False,
        pwa=False,
        # Gradio keeps every session's last page values (about 0.3 MB) after it closed, up to
        # this many sessions: its default of 10,000 let a long demo's memory grow by GBs
        state_session_capacity=STATE_SESSIONS,
    )
    log.info("heterogui workbench running on %s%s", url, " (login required)" if auth else "")
    if block:
        demo.block_thread()
    return url


def check_export_root(root: Path) -> None:
    """Make sure exports can be written below ``root`` (created when missing).

    Raises:
        ConfigError: a file, or a folder that cannot be created or written.
    """
    if root.exists() and not root.is_dir():
        raise ConfigError(
            f"--export-root {root} is a file; name a folder (it is created if missing)"
        )
    make_folder(root, "--export-root", "name a folder you can write")
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write in --export-root {root} ({why_not_writable(root)}); name another folder"
        )


def main(
    host: str = "127.0.0.1",
    port: int | None = None,
    auth: str | None = None,
    threads: int | None = None,
    pair: str | None = None,
    device: str = "auto",
    export_root: str | None = None,
) -> None:
    """Start the workbench and block until it stops (the contract launch.py relies on).

    auth: "user:password" to require a login; threads: torch CPU threads (default: 1 on
    machines with 2 cores or fewer); pair: the demo pair a new session opens; export_root:
    the folder exports go below (default: the cache's exports/).

    Raises:
        ConfigError: an unknown demo pair or a malformed login (before anything is served).
    """
    login = parse_auth(auth)  # bad options fail before anything is loaded
    check_address(host, port)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # ``heterogui app`` configured logging (warnings) first: its own lines, the address above
    # all, still show
    logging.getLogger("heterogui").setLevel(logging.INFO)
    res = Resources(device=device, default_pair=pair, export_root=export_root)
    pairs = [name for name, _ in res.pair_names()]
    if pair is not None and pair not in pairs:  # refused in one line, before anything is said
        raise ConfigError(f"unknown demo pair {pair!r}: use one of {', '.join(pairs)}")
    check_export_root(res.export_root)
    served = use_own_upload_folder()
    remove_stale_sessions()  # what apps killed before left in the cache
    clean_stale_in(res.export_root)  # and half-written exports of theirs
    terminated = exit_on_terminate()
    torch.set_num_threads(threads or default_threads())
    log.info("torch CPU threads: %d", torch.get_num_threads())
    log.info("exports are written below %s", res.export_root)
    if login is None and not is_loopback(host):
        log.warning(
            "serving on %s without a login: anyone who can reach this machine can load models "
            "from its folders and write exports; add --auth USER:PASSWORD",
            host,
        )
    demo = build_app(res)
    try:
        launch(demo, host, port, login)
    except KeyboardInterrupt:  # before Gradio's wait for Ctrl-C began (which catches its own)
        if terminated is None or not terminated.is_set():
            raise
    # Gradio's wait for Ctrl-C closes the server only: the app's own close also stops the
    # background prefetch, which, still inside torch as the interpreter exited, aborted it
    demo.close(verbose=False)
    finish_in_flight(res, served)
    if terminated is not None and terminated.is_set():
        sys.exit(128 + signal.SIGTERM)


def finish_in_flight(res: Resources, served: Path) -> None:
    """Let the events still running after the server stopped finish (``GRACE_S`` at most:
    one inside torch as the interpreter exited aborted the process, exit 134), then remove
    what they served (``served``: this app's own folder; one named by $GRADIO_TEMP_DIR is
    the user's, and stays)."""
    running = res.in_flight.running
    if running:
        log.info("letting %d running step(s) finish (%.0f s at most)", running, GRACE_S)
        if not res.in_flight.wait_done(GRACE_S):
            log.warning("stopping with %d step(s) still running", res.in_flight.running)
    if served.name.startswith(".served.tmp-"):
        remove_path(served)


def use_own_upload_folder() -> Path:
    """Keep Gradio's uploads and served downloads in a folder of this app's own under the
    cache's gradio/ folder (unless $GRADIO_TEMP_DIR names one) and return that folder.

    Gradio's default, /tmp/gradio, belongs to the first user who ran a Gradio app on the
    machine: every other user's uploads and downloads failed there with a permission error.
    Gradio removes what it served as it stops, but not what an app killed (or stopped while
    an export was being made) left, a MiniLM export's .zip is 80 MB: each app's folder is
    named with its process id, and those of apps that died are removed as the next one starts.

    Raises:
        ConfigError: the folder cannot be created or written.
    """
    named = os.environ.get("GRADIO_TEMP_DIR")
    what, fix = (
        ("GRADIO_TEMP_DIR", "name a folder you can write")
        if named
        else (
            "the heterogui cache folder",
            "set HETEROGUI_CACHE to a folder you can write",
        )
    )
    wanted = Path(named) if named else cache_path("gradio")
    if wanted.exists() and not wanted.is_dir():
        raise ConfigError(f"{what} {wanted} is a file, not a folder; {fix}")
    folder = make_folder(wanted, what, fix)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write in {what} {folder} ({why_not_writable(folder)}); {fix}")
    if not named:
        clean_stale_in(folder)
        folder = Path(tempfile.mkdtemp(prefix=f".served.tmp-{os.getpid()}-", dir=folder))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def exit_on_terminate() -> threading.Event | None:
    """Make SIGTERM (a service manager, kill) end the app as Ctrl-C does, and return the event
    it sets (None: not the main thread, where no handler can be set).

    The signal raises KeyboardInterrupt in the main thread: Gradio's wait for Ctrl-C then
    closes its server, which removes the copies of exports it served, and the sessions' files
    are removed (atexit), where the signal's default left both; the caller exits with 143.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    terminated = threading.Event()

    def stop(_signum: int, _frame: Any) -> None:
        terminated.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    return terminated


def check_address(host: str, port: int | None) -> None:
    """Refuse, before anything is built, an address this machine cannot serve on.

    Raises:
        ConfigError: the port is taken, or ``host`` is empty, an IPv6 address (gradio cannot
            serve one) or not an address of this machine.
    """
    if not host.strip():
        raise ConfigError("--host is empty; give an address (127.0.0.1 serves this machine only)")
    if ":" in host:  # gradio checks its start at http://HOST:PORT, which an IPv6 address breaks
        raise ConfigError(
            f"cannot serve on the IPv6 address {host}: the web server takes IPv4 addresses or "
            "host names; give one (127.0.0.1 serves this machine only)"
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind((host, port or 0))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is in use; pick another --port, or leave --port out "
                    "to take the next free one from 7860"
                ) from None
            raise ConfigError(
                f"cannot serve on {host}{f':{port}' if port else ''} ({exc.strerror or exc}); "
                "give --host an address of this machine (127.0.0.1 serves this machine only)"
            ) from None


def is_loopback(host: str) -> bool:
    """Return whether ``host`` serves this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:  # IPv4's short forms ("127.1"), which the server binds as 127.0.0.1
        return socket.inet_aton(host)[0] == 127
    except OSError:  # a host name: it may resolve to any address
        return False
