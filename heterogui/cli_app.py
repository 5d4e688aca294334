"""The workbench's command-line options, shared by ``heterogui app`` and ``launch.py``.

Light on purpose: parsing the options imports neither gradio nor torch.
"""

from __future__ import annotations

import argparse
from typing import Any

from heterogui.cli_args import port_number, thread_count


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the workbench's options (host, port, login, threads, demo pair, export root)."""
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1: only this machine can connect)",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=None,
        help="port to listen on (default: Gradio's choice, 7860 or the next free one)",
    )
    parser.add_argument(
        "--auth",
        default=None,
        metavar="USER:PASSWORD",
        help="require this login (recommended whenever --host is not 127.0.0.1)",
    )
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="torch CPU threads (default: 1 on machines with 2 cores or fewer)",
    )
    parser.add_argument(
        "--pair",
        default=None,
        help="demo pair a new session opens (default: the first one; decoder-pair: the decoder "
        "language models)",
    )
    parser.add_argument(
        "--export-root",
        default=None,
        metavar="FOLDER",
        help="the folder exports are written below (default: the heterogui cache's exports/); "
        "the page refuses paths outside it",
    )


def app_options(args: argparse.Namespace) -> dict[str, Any]:
    """Return the keywords of ``heterogui.ui.app.main`` from parsed options."""
    names = ("host", "port", "auth", "threads", "pair", "export_root")
    return {name: getattr(args, name) for name in names}
