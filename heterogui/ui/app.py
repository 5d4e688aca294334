"""The workbench app: assemble the tabs, wire events to handlers, and serve on 127.0.0.1.

Every event runs a plain handler ``handler(session, resources, *inputs, progress=...)`` that
changes the session and returns a status message; this module turns handler errors into
messages in the page (the session is kept), re-renders the tabs the event touches, and gives
every main event an ``api_name`` so that gradio_client can drive the whole flow.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported

import gradio as gr  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
import torch  # noqa: E402

from heterogui.errors import Cancelled, ConfigError, HeteroguiError, excerpt  # noqa: E402
from heterogui.ui import (  # noqa: E402
    tab_align,
    tab_compare,
    tab_evaluate,
    tab_export,
    tab_models,
    tab_neurons,
    tab_zip,
    zip_readout,
)
from heterogui.ui.figstyle import DARK_CSS, STATUS_CSS, style  # noqa: E402
from heterogui.ui.prefetch import Prefetcher  # noqa: E402
from heterogui.ui.resources import Resources  # noqa: E402
from heterogui.ui.session import Session  # noqa: E402
from heterogui.ui.summary import session_summary  # noqa: E402

log = logging.getLogger(__name__)
TABS = {
    "models": tab_models,
    "align": tab_align,
    "neurons": tab_neurons,
    "zip": tab_zip,
    "evaluate": tab_evaluate,
    "compare": tab_compare,
    "export": tab_export,
}
# Also "readout" (the Zip tab's readout alone, a part of "zip") and "scores" (the Evaluate tab's
# views that a merge's scores change, a part of "evaluate").
SCOPES = (*TABS, "knobs")
STAGES = {
    "bn_inputs": "re-estimating BatchNorm of A and B",
    "bn_similarity": "re-estimating BatchNorm of A and B, with their layer similarity (one pass)",
    "similarity": "layer similarity (CKA)",
    "probe": "layer similarity (CKA) of the first batch, to place the layers",
    "features": "feature statistics",
    "analysis": "layer similarity and feature statistics (one pass)",
    "match": "matching neurons",
    "search": "searching which attention heads to keep (a merge per flip tried)",
    "bn_merged": "BatchNorm of the merged model",
    "evaluate": "evaluating",
    "sweep": "sweeping rho",
    "done": "done",
}
INTRO = (
    "# heterogui workbench\n"
    "Merge two models of different depth and width without training: **1 Models** (pick A "
    "and B) → **2 Alignment** (which layers pair up) → **3 Neurons** (which neurons merge) → "
    "**4 Zip** (tune and merge) → **5 Evaluate** (A, B, merged side by side) → **6 Compare** "
    "(two merges, a 2-D sweep) → **7 Export**."
)


def views_of(scope: str) -> tuple[str, ...]:
    """Return the names of the components a scope renders."""
    if scope == "readout":
        return ("readout",)
    if scope == "scores":
        return tab_evaluate.SCORE_VIEWS
    return tuple(tab_zip.KNOBS) if scope == "knobs" else TABS[scope].VIEWS


def render(session: Session, res: Resources, scopes: Sequence[str]) -> dict[str, Any]:
    """Return the view values of the given scopes for ``session``."""
    values: dict[str, Any] = {}
    for scope in scopes:
        if scope == "knobs":
            if session.prepared is not None:
                values.update(zip_readout.knob_values(session))
        elif scope == "readout":
            values["readout"] = zip_readout.render_readout(session)
        elif scope == "scores":
            if session.prepared is not None and session.task is not None:
                values.update(tab_evaluate.score_views(session))
        else:
            values.update(TABS[scope].render(session, res))
    return {k: style(v) if isinstance(v, go.Figure) else v for k, v in values.items()}


def progress_adapter(progress: Any) -> Callable[[str, float], None]:
    """Return a core progress callback (stage, fraction) that drives a gr.Progress bar."""

    def report(stage: str, frac: float) -> None:
        label = STAGES.get(stage.split(" ")[-1], stage)
        if stage.startswith("build"):
            label = f"building the demo pair ({stage[6:]})"
        if progress is not None:
            progress(min(max(float(frac), 0.0), 1.0), desc=label)

    return report


def event_function(
    handler: Callable[..., Any],
    res: Resources,
    scopes: Sequence[str],
    names: Sequence[str],
    n_inputs: int,
    lock_for: Callable[[Session], Any] | None = None,
    idle: Prefetcher | None = None,
) -> Callable[..., list[Any]]:
    """Wrap a handler as a gradio function: errors become messages, views are re-rendered.

    lock_for: returns the lock that serialises this session's heavy steps (None: no lock).
    idle: the app's background prefetch, paused while the event runs; a heavy step that
    succeeds queues its session there (None: no prefetch).

    Raises:
        TypeError: at build time, when the handler does not take the event's inputs.
    """
    try:  # a mis-wired event fails when the app is built, not when a user clicks
        inspect.signature(handler).bind(None, None, *[None] * n_inputs, progress=None)
    except TypeError as exc:
        name = getattr(handler, "__name__", handler)
        raise TypeError(f"{name} does not take {n_inputs} input(s) and progress: {exc}") from exc

    def fn(*args: Any) -> list[Any]:
        session = args[0] if isinstance(args[0], Session) else Session()
        values, progress = args[1 : 1 + n_inputs], args[1 + n_inputs]
        skip = [gr.skip() for _ in names]
        try:
            with (
                idle.busy() if idle else contextlib.nullcontext(),
                lock_for(session) if lock_for else contextlib.nullcontext(),
            ):
                out = run_step(
                    session,
                    heavy=lock_for is not None,
                    step=lambda: handler(
                        session, res, *values, progress=progress_adapter(progress)
                    ),
                )
                message, extra = out if isinstance(out, tuple) else (out, {})
                views = {**render(session, res, scopes), **extra}
        except Exception as exc:  # a bug must not take the page down either: report, go on
            return [session, failure_message(exc, handler), session_summary(session), *skip]
        if idle is not None and lock_for is not None:
            idle.schedule(session)
        return [
            session,
            gr.skip() if message is None else message,  # None: nothing to say, keep the line
            session_summary(session),
            *[views.get(n, gr.skip()) for n in names],
        ]

    fn.__signature__ = event_signature(n_inputs)  # gradio finds gr.Progress by its default
    fn.__name__ = getattr(handler, "__name__", "handler")
    return fn


def failure_message(exc: Exception, handler: Callable[..., Any]) -> str:
    """Return the status line of an event that raised ``exc`` (and show it as a toast).

    Cancelled: an info; a HeteroguiError: a warning with its one-line message; anything else
    is a bug: logged with its traceback and reported by type, the page keeps running.
    """
    if isinstance(exc, Cancelled):
        gr.Info(str(exc))
        return f"**Cancelled.** {exc}"
    if isinstance(exc, HeteroguiError):
        message = excerpt(exc, 600)  # one line, whatever a library put in it
        gr.Warning(message)
        return f"**Error:** {message}"
    log.exception("handler %s failed", getattr(handler, "__name__", handler), exc_info=exc)
    gr.Warning(f"unexpected error ({type(exc).__name__}): {excerpt(exc)}")
    return f"**Unexpected error** ({type(exc).__name__}): {excerpt(exc)}"


def event_signature(n_inputs: int) -> inspect.Signature:
    """Return the signature gradio reads off an event function: session, inputs, progress."""
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("session", positional)]
    params += [inspect.Parameter(f"input_{i}", positional) for i in range(n_inputs)]
    params.append(inspect.Parameter("progress", positional, default=gr.Progress()))
    return inspect.Signature(params)


def run_step(session: Session, heavy: bool, step: Callable[[], Any]) -> Any:
    """Run one handler; a heavy step is what Cancel stops (a Cancel pressed before it is void)."""
    if not heavy:
        return step()
    session.cancel_requested, session.running = False, True
    try:
        return step()
    finally:
        session.running = False


class SessionLocks:
    """One lock per session, so that one user's heavy steps run one after the other.

    Two users' steps still run side by side (up to the heavy concurrency limit); light steps
    (the size estimate, Cancel) never wait. Owned by one app, never module-level.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def get(self, sid: str) -> threading.Lock:
        """Return the lock of session ``sid``."""
        with self._guard:
            return self._locks.setdefault(sid, threading.Lock())


def new_session() -> Session:
    """Return a fresh session (gr.State calls this once per browser session)."""
    return Session()


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


def event_options(
    api_name: str | None, heavy: bool, light: bool, heavy_limit: int, status: Any
) -> dict[str, Any]:
    """Return the keywords of an event listener: progress, API name and concurrency.

    heavy: one progress bar on ``status`` and at most ``heavy_limit`` such events at once
    across users; light: unlimited, only the last of a burst runs; neither: the queue's
    default. An event without an API name stays out of the API page.
    """
    kwargs: dict[str, Any] = {"show_progress": "full" if heavy else "hidden"}
    if heavy:  # one progress bar, under the title, instead of an overlay on every view
        kwargs["show_progress_on"] = [status]
    if api_name:
        kwargs["api_name"] = api_name
    else:
        kwargs["api_visibility"] = "undocumented"
    if heavy:
        kwargs.update(concurrency_id="heavy", concurrency_limit=heavy_limit)
    elif light:
        kwargs.update(concurrency_limit=None, trigger_mode="always_last")
    return kwargs


def build_app(res: Resources, heavy_limit: int = 2, prefetch: bool = True) -> gr.Blocks:
    """Return the workbench Blocks (not launched). ``heavy_limit``: concurrent heavy events.

    prefetch: collect the statistics of the other automatic placements while idle
    (``ui.prefetch``), so that switching the alignment mode runs no pass; the app's
    ``prefetcher`` attribute (None without).
    """
    ui: dict[str, Any] = ComponentNames()
    with gr.Blocks(title="heterogui workbench", analytics_enabled=False) as demo:
        state = build_page(ui, res)
        locks = SessionLocks()

        def lock_for(session: Session) -> threading.Lock:
            return locks.get(session.sid)

        idle = Prefetcher(lock_for) if prefetch else None

        def on(trigger, handler, inputs, scopes, api_name, heavy=False, light=False, extra=()):
            scope_list = SCOPES if scopes == "all" else tuple(scopes)
            names = [n for s in scope_list for n in views_of(s)] + list(extra)
            kwargs = event_options(api_name, heavy, light, heavy_limit, ui["status"])
            return trigger(
                event_function(
                    handler,
                    res,
                    scope_list,
                    names,
                    len(inputs),
                    lock_for if heavy else None,
                    idle,
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
    if idle is not None:  # closing the app stops its prefetch as well
        close_with(demo, idle)
    return demo


def build_page(ui: dict[str, Any], res: Resources) -> gr.State:
    """Create the page's components in the open Blocks (named in ``ui``); return its state."""
    gr.Markdown(INTRO)
    state = gr.State(new_session)  # called per browser session: never shared
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
    return state


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
        css=DARK_CSS + STATUS_CSS,
        enable_monitoring=False,
        mcp_server=False,
        pwa=False,
    )
    log.info("heterogui workbench running on %s%s", url, " (login required)" if auth else "")
    if block:
        demo.block_thread()
    return url


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
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads or default_threads())
    log.info("torch CPU threads: %d", torch.get_num_threads())
    res = Resources(device=device, default_pair=pair, export_root=export_root)
    pairs = [name for name, _ in res.pair_names()]
    if pair is not None and pair not in pairs:
        raise ConfigError(f"unknown demo pair {pair!r}: use one of {', '.join(pairs)}")
    log.info("exports are written below %s", res.export_root)
    launch(build_app(res), host, port, login)
