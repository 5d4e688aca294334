"""Start the heterogui workbench (Gradio app) on 127.0.0.1.

The app lives in `heterogui.ui.app`; this script only parses the command line and hands over.
Contract for the app module: `main(host="127.0.0.1", port=None, auth=None, threads=None,
pair=None, export_root=None)` starts the server (never with a public share link) and blocks
until it stops.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the launcher's command line (the options of ``heterogui app``)."""
    from heterogui.cli_app import add_app_arguments

    parser = argparse.ArgumentParser(description="Start the heterogui workbench (Gradio app).")
    add_app_arguments(parser)
    return parser.parse_args(argv)


def _find_app_main():
    """Return heterogui.ui.app.main, or None while the app module does not exist yet.

    An ImportError raised *inside* the app (a missing dependency, a bug) propagates, so a broken
    app is never mistaken for an absent one.
    """
    try:
        module = importlib.import_module("heterogui.ui.app")
    except ModuleNotFoundError as exc:
        if exc.name in {"heterogui.ui", "heterogui.ui.app"}:
            return None
        raise
    return getattr(module, "main", None)


def main(argv: list[str] | None = None) -> int:
    """Start the app if it is available, else say so; return the exit status."""
    args = parse_args(argv)
    # Before gradio is imported: no usage analytics, no model-hub calls unless a user asks.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    app_main = _find_app_main()
    if app_main is None:
        where = f"{args.host}:{args.port}" if args.port else args.host
        print(
            f"heterogui: the workbench app (heterogui.ui.app) arrives with a later change; "
            f"nothing to serve on {where} yet."
        )
        return 0
    from heterogui.cli_app import app_options
    from heterogui.errors import HeteroguiError

    try:
        app_main(**app_options(args))
    except HeteroguiError as exc:  # bad options: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
