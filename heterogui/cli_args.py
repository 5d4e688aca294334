"""Argument types the command lines share (``heterogui``, its subcommands and ``launch.py``)."""

from __future__ import annotations

import argparse


def thread_count(text: str) -> int:
    """Return a number of torch CPU threads given on the command line (a whole number >= 1).

    Raises:
        argparse.ArgumentTypeError: anything else (argparse prints it in one line, status 2).
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of threads: give a whole number of 1 or more"
        )
    return value
