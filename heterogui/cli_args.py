"""Argument types the command lines share (``heterogui``, its subcommands and ``launch.py``):
argparse prints their refusals in one line and exits with status 2, before anything runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def at_least(minimum: int, what: str = "") -> Callable[[str], int]:
    """Return an argparse type that takes a whole number of ``minimum`` or more.

    what: the thing counted, for the message ("threads").
    """

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            fix = f"a whole number of {minimum} or more"
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a number of {what}: give {fix}"
                if what
                else f"{text!r} is not {fix}"
            )
        return value

    whole_number.__name__ = f"whole number >= {minimum}"
    return whole_number


# torch CPU threads (torch.set_num_threads refuses less than 1 with a traceback)
thread_count = at_least(1, "threads")
# how many of something a benchmark builds or draws (inputs, layers, widths, seeds ...)
count = at_least(1)


def port_number(text: str) -> int:
    """Return a TCP port given on the command line (1 to 65535).

    Raises:
        argparse.ArgumentTypeError: anything else.
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port: give a whole number from 1 to 65535"
        )
    return value
