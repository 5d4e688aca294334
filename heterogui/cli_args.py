"""Argument types the command lines share (``heterogui``, its subcommands and ``launch.py``):
argparse prints their refusals in one line and exits with status 2, before anything runs."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable


def whole_number(minimum: int, maximum: int | None = None, what: str = "") -> Callable[[str], int]:
    """Return an argparse type that takes a whole number from ``minimum`` (to ``maximum``).

    what: what the number is, for the message ("a port"); "": a whole number.
    """
    span = f"of {minimum} or more" if maximum is None else f"from {minimum} to {maximum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            fix = f"a whole number {span}"
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {what}: give {fix}" if what else f"{text!r} is not {fix}"
            )
        return value

    parse.__name__ = f"whole number {span}"
    return parse


# torch CPU threads (torch.set_num_threads refuses less than 1 with a traceback)
# (more than a few per core only slows torch down; tens of thousands crash it)
MAX_THREADS = max(
    8,
    4
    * (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)),
)
thread_count = whole_number(1, MAX_THREADS, "a number of threads")
# how many of something a benchmark builds or draws (inputs, layers, widths, seeds ...)
count = whole_number(1)
# how many inputs a benchmark calibrates on (CKA compares at least 4 at once)
inputs_count = whole_number(4, None, "a number of inputs")
# a TCP port to serve on
port_number = whole_number(1, 65535, "a port")


def device_name(text: str) -> str:
    """argparse type of --device: auto, cpu, cuda or cuda:N, CUDA only where there is one."""
    from heterogui.config import check_device_name
    from heterogui.errors import ConfigError

    try:
        check_device_name(text)
        if text.startswith("cuda"):
            from heterogui.pipeline import resolve_device  # torch: only for a CUDA device

            resolve_device(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
