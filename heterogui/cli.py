"""The command line: ``heterogui merge|zoo|bench|app`` (also ``python -m heterogui``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any

from heterogui import __version__
from heterogui.cli_app import add_app_arguments, app_options
from heterogui.cli_args import thread_count
from heterogui.cli_bench import add_bench_arguments
from heterogui.cli_zoo import add_zoo_arguments
from heterogui.config import EXPORT_DTYPES
from heterogui.errors import (
    MESSAGE_LIMIT,
    HeteroguiError,
    excerpt,
    os_error_line,
    out_of_memory_line,
)
from heterogui.folders import check_output, output_as_typed
from heterogui.recipe_parse import load_recipe


def cmd_merge(args: argparse.Namespace) -> int:
    """Merge as a recipe says and write the result folder (save_pretrained for HF models).

    A recipe with a list of three or more models is written as a heterogui folder; a --format
    that cannot hold the merge (another for three or more models, one for another family of
    models) is refused before anything runs. Under torchrun every rank merges (the
    calibration data split between them, the statistics all-reduced:
    ``heterogui.distributed``); only rank 0 writes the folder and prints.
    """
    from heterogui import distributed, run, run_export  # torch: only when a merge runs
    from heterogui.report import compact_heads, compact_metrics

    recipe = load_recipe(args.recipe)
    run_export.check_format(recipe, args.format)
    # before the expensive part; the text as typed (Path("") would read as the current folder)
    check_output(args.out, args.overwrite, run_export.data_files(recipe))
    out = output_as_typed(args.out)  # the folder check_output names
    distributed.init_from_env(recipe.device)
    try:
        writer = distributed.is_main()
        if not writer:  # rank 0 reports for all: the same warnings would repeat on every rank
            logging.getLogger().setLevel(logging.ERROR)
            warnings.simplefilter("ignore")
        done = run.merge(recipe, progress=_progress if args.verbose and writer else None)
        if not writer:
            return 0
        run_export.export(
            done, out, overwrite=args.overwrite, fmt=args.format, dtype=args.export_dtype
        )
        args.written = out  # a Ctrl-C from here on comes after the folder is complete
    finally:
        distributed.shutdown()
    summary = {k: done.report[k] for k in ("parameters", "widths")}
    summary["heads"] = compact_heads(done.report["heads"])  # a vocabulary: one range, not ids
    summary["seconds"] = round(done.report["timings_seconds"]["total"], 3)
    if "metrics" in done.report:  # report.json keeps them in full
        summary["metrics"] = compact_metrics(done.report["metrics"])
    for alarm in done.report.get("alarms", []):  # a collapsed merge: said, not only filed
        logging.getLogger("heterogui.cli").warning("collapse alarm: %s", alarm)
    if done.report.get("alarms"):
        summary["alarms"] = done.report["alarms"]
    print(_terminal_json(summary))
    weights = run_export.export_dtype(
        done.pair, args.export_dtype, recipe.dtype, done.scores is not None
    )
    print(f"wrote {out} ({weights.name} weights)")
    return 0


def _terminal_json(value: Any) -> str:
    """Return ``value`` as readable JSON for stdout: names as written ("café", not
    "caf\\u00e9") where the terminal can show them, else JSON's own escapes (not Python's
    "\\xe9", which is no JSON)."""
    from heterogui.export.json_text import readable_json

    text = readable_json(value, ascii_only=False)
    try:
        text.encode(sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):  # an ASCII terminal, a lone surrogate
        return readable_json(value)
    return text


def _progress(stage: str, fraction: float) -> None:
    print(f"\r{stage:<12} {fraction:6.1%}", end="\n" if fraction >= 1 else "", file=sys.stderr)


def cmd_app(args: argparse.Namespace) -> int:
    """Start the workbench."""
    from heterogui.ui.app import main as app_main  # gradio: only when the app starts

    app_main(**app_options(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``heterogui`` command."""
    parser = argparse.ArgumentParser(
        prog="heterogui",
        description="Training-free merging of models of different depth and width: merge as a "
        "recipe says, build the demo models, run the benchmarks or start the workbench.",
        epilog="heterogui COMMAND --help gives a command's options; python -m heterogui works "
        "the same.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    parser.add_argument("--version", action="version", version=f"heterogui {__version__}")

    sub = parser.add_subparsers(dest="command", required=True)

    merge = sub.add_parser("merge", help="merge two (or more) models as a recipe says")
    merge.add_argument("recipe", help="recipe file (.yaml or .json)")
    merge.add_argument(
        "-o",
        "--out",
        required=True,
        help="output folder: new or empty (an earlier export with --overwrite)",
    )
    merge.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    merge.add_argument(
        "--format",
        choices=("heterogui", "hf-bert", "hf-vit", "hf-causal-lm"),
        default=None,
        help="output format (default: the models' own: Hugging Face folders for Hugging Face "
        "models, else a heterogui folder; a merge of three or more models: heterogui only)",
    )
    merge.add_argument(
        "--export-dtype",
        choices=EXPORT_DTYPES,
        default="auto",
        help="the dtype of the written weights (default auto: the dtype the models are stored "
        "in, float16 models give a float16 folder; float32 when they differ or are quantized)",
    )
    merge.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="torch CPU threads (default: torch's choice)",
    )
    merge.set_defaults(func=cmd_merge)

    zoo = sub.add_parser("zoo", help="build or list the built-in demo models")
    add_zoo_arguments(zoo.add_subparsers(dest="zoo_command", required=True))

    bench = sub.add_parser(
        "bench", help="benchmarks (speed, quality, transformers, decoders, nway, measures, scale)"
    )
    add_bench_arguments(bench.add_subparsers(dest="bench_command", required=True))

    app = sub.add_parser("app", help="start the workbench (127.0.0.1)")
    add_app_arguments(app)
    app.set_defaults(func=cmd_app)
    _verbose_anywhere(parser)
    return parser


def _verbose_anywhere(parser: argparse.ArgumentParser) -> None:
    """Let every subcommand take -v too (``heterogui merge R -o D -v``), as the top level does.

    The subcommands' flag has no default of its own, so a -v before the subcommand holds.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument(
                    "-v",
                    "--verbose",
                    action="store_true",
                    default=argparse.SUPPRESS,
                    help="log progress",
                )
                sub.set_defaults(parser_used=sub)  # the deepest one wins: it names misuse
                _verbose_anywhere(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors print as one message and exit with code 2."""
    _print_any_text()
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the subcommand's parser, with its usage (not the top level's)
        getattr(args, "parser_used", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not args.verbose:  # heterogui reports its own progress with -v; no loaders' bars without
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if args.command != "app":  # nor tqdm's (transformers' GGUF conversion), read at import
            os.environ.setdefault("TQDM_DISABLE", "1")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # the app keeps SIGTERM's default (exit 143, as launch.py): gradio takes a KeyboardInterrupt
    # for Ctrl-C and exits 0
    terminate = _on_terminate() if args.command != "app" else None
    try:
        if getattr(args, "threads", None):  # merge, bench and app take --threads
            import torch

            torch.set_num_threads(args.threads)
        return args.func(args)
    except HeteroguiError as exc:
        # one line, no traceback
        print(f"{_error_prefix()}{excerpt(exc, MESSAGE_LIMIT)}", file=sys.stderr)
        return 2
    except PermissionError as exc:  # a file or folder the user cannot read (or write)
        where = f" {exc.filename!r}" if exc.filename else ""
        print(
            f"{_error_prefix()}permission denied on{where}: make it readable (and the output "
            "folder's parent writable) or choose another path",
            file=sys.stderr,
        )
        return 2
    except BrokenPipeError:  # the reader went away (heterogui zoo list | head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 1
    except OSError as exc:  # a full disk, a file too large, an I/O error, unwritable stdout
        written = getattr(args, "written", None)  # set once a merge's folder is complete
        if written and exc.filename is None:  # the folder is whole; printing its summary failed
            line = (
                f"{written} was written whole, but its summary could not be printed "
                f"({exc.strerror or excerpt(exc)}): see {written}/report.json"
            )
        else:
            line = os_error_line(exc)
        print(f"{_error_prefix()}{line}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # torch says it runs out with a RuntimeError
        line = out_of_memory_line(exc)
        if line is None:  # a bug: its traceback
            raise
        print(f"{_error_prefix()}{line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM; a merge's folder is whole or absent
        stopped = signal.SIGTERM if str(exc) == "SIGTERM" else signal.SIGINT
        said = "terminated" if stopped == signal.SIGTERM else "interrupted"
        written = getattr(args, "written", None)
        if written:
            left = f" after {written} was written whole"
        else:
            left = "; nothing was written" if args.command == "merge" else ""
        end_progress = "\n" if args.verbose else ""  # -v: after the progress line it cut
        print(f"{end_progress}{_error_prefix()}{said}{left}", file=sys.stderr)
        return 128 + stopped
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


def _print_any_text() -> None:
    """Make stdout and stderr write what their encoding lacks as escapes ("r1 \\xe9"): on a
    terminal that takes ASCII only, a merge wrote its folder whole, then failed on printing
    its name with a traceback (and a zoo build stopped after its first pair)."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # a text stream (a test's capture may not be)
            stream.reconfigure(errors="backslashreplace")


def _on_terminate() -> Any:
    """Make SIGTERM stop like Ctrl-C (a merge's temporary folder removed, one line); return
    the handler it replaces (None off the main thread, where no handler can be set)."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


def _error_prefix() -> str:
    """Return "error: ", or "error (rank R): " on torchrun's other ranks (their own failures)."""
    rank = os.environ.get("RANK", "0")
    return "error: " if rank == "0" else f"error (rank {rank}): "


if __name__ == "__main__":
    sys.exit(main())
