"""Measuring in a fresh Python process, so that its peak memory is its own.

``in_fresh_process("package.module:function", options)`` runs ``function(options)`` in a new
interpreter and returns what it returns (a JSON-able dict). The result comes back through a
file the parent names, not through standard output, which libraries may write to.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from heterogui.bench.documents import write_document
from heterogui.errors import ConfigError, HeteroguiError

REFUSED = 3  # the measuring process's exit status when heterogui refused its options or data


def in_fresh_process(target: str, options: dict[str, Any], what: str = "") -> dict[str, Any]:
    """Return ``target(options)`` computed in a new Python process.

    target: "module:function"; what: its name in an error (default: target).

    Raises:
        ConfigError: the process refused its options or data (the line it said, as it is).
        RuntimeError: the process failed otherwise (its last lines of error output).
    """
    with tempfile.TemporaryDirectory(prefix="heterogui-bench-") as folder:
        out = Path(folder) / "result.json"
        code = "from heterogui.bench.isolated import child; child()"
        done = subprocess.run(
            [sys.executable, "-c", code, target, json.dumps(options), str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == REFUSED and out.is_file():  # a one-line refusal stays one line
            raise ConfigError(json.loads(out.read_text())["refused"])
        if done.returncode != 0 or not out.is_file():
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"measuring {what or target} failed:\n{tail}")
        return json.loads(out.read_text())


def child() -> None:
    """Entry of the measuring process: argv = target, options (JSON), result file."""
    target, options, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    module, function = target.split(":")
    try:
        result = getattr(importlib.import_module(module), function)(options)
    except HeteroguiError as exc:  # the parent says it in one line, as the CLI says its own
        write_document(out, json.dumps({"refused": str(exc)}))
        sys.exit(REFUSED)
    write_document(out, json.dumps(result))
