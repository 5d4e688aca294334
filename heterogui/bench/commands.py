"""``heterogui bench speed|quality``: argument parsing and dispatch."""

from __future__ import annotations

import argparse


def _quality(args: argparse.Namespace) -> int:
    from heterogui.bench.quality import run_quality_cli

    return run_quality_cli(args)


def _speed(args: argparse.Namespace) -> int:
    from heterogui.bench.speed import run_speed_cli

    return run_speed_cli(args)


def add_bench_arguments(subparsers: argparse._SubParsersAction) -> None:
    """Register ``speed`` and ``quality`` on the ``bench`` subparsers."""
    from heterogui.bench.speed import add_speed_arguments
    from heterogui.zoo.commands import add_bench_quality_arguments

    speed = subparsers.add_parser("speed", help="merge time vs forward passes; matcher speed")
    add_speed_arguments(speed)
    speed.set_defaults(func=_speed)
    quality = subparsers.add_parser("quality", help="accuracy table of merges of the zoo pairs")
    add_bench_quality_arguments(quality)
    quality.set_defaults(func=_quality)
