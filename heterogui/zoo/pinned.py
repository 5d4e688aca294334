"""Zoo training in a child process whose CPU kernels are pinned, so the weights are the same on
every x86-64 machine.

A zoo model's weights are a pure function of its spec only if every kernel adds its terms in the
same order. On CPUs they do not by default: oneDNN (torch's convolutions) and MKL (its matrix
products) pick kernels and blockings by the CPU's instruction set and caches, so the same
training on an AVX-512 or AMX machine and on an AVX2 one ends with other weights (measured:
digits-resnet-depth's ensemble scored 0.920 and 0.907 Joint from two such builds), and every
figure measured on the zoo (docs/quality.md) moved with the machine. The child trains with
oneDNN off (ATen's own convolution over MKL's products), MKL in its conditional numerical
reproducibility mode for the AVX2 code path (``MKL_CBWR=AVX2``) and ATen's AVX2 kernels
(``ATEN_CPU_CAPABILITY``); these settings are read when a process starts, hence the child.
Machines without AVX2, and CPUs of other architectures, train with their own kernels.

``train_pinned`` runs the child and relays its progress; the child is ``python -m
heterogui.zoo.pinned NAME LETTER FOLDER``, which writes the model folder.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from heterogui.errors import HeteroguiError, ModelLoadError
from heterogui.models.io import save_network
from heterogui.zoo.registry import model_fingerprint, pair_spec
from heterogui.zoo.train import train_network

log = logging.getLogger(__name__)

# What the child's kernels are pinned to (read by MKL and ATen when the process starts).
PINNED_KERNELS = {
    "MKL_CBWR": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
}
PROGRESS = "progress "  # the child's stdout lines: "progress 0.25" while it trains


def pinned_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Return the child's environment: ``base`` (os.environ) with the kernels pinned on x86-64."""
    env = dict(os.environ if base is None else base)
    # The child imports this heterogui, wherever the parent found it (an uninstalled checkout).
    home = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (home, env.get("PYTHONPATH", "")) if p)
    if platform.machine().lower() in ("x86_64", "amd64"):
        env.update(PINNED_KERNELS)
    return env


def train_pinned(name: str, which: str, folder: Path, report: Callable[[float], None]) -> None:
    """Train model ``which`` of zoo pair ``name`` in a pinned child; it writes ``folder``.

    report: called with the fraction trained, as the child's epochs end.

    Raises:
        ModelLoadError: if the child fails (its last error line is in the message).
    """
    with tempfile.TemporaryFile() as errors:
        command = [sys.executable, "-m", "heterogui.zoo.pinned", name, which, str(folder)]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, env=pinned_environment(), text=True
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(PROGRESS):
                    report(float(line[len(PROGRESS) :]))
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code != 0:
            errors.seek(0)
            lines = [s for s in errors.read().decode(errors="replace").splitlines() if s.strip()]
            last = lines[-1] if lines else f"exit status {code}"
            raise ModelLoadError(f"training zoo model {name}/{which} failed: {last}")
    config = json.loads((folder / "config.json").read_text())
    log.info(
        "trained %s/%s: task accuracy %.4f in %.1fs",
        name,
        which,
        config["task_accuracy"],
        config["train_seconds"],
    )


def train_into(name: str, which: str, folder: Path, report: Callable[[float], None]) -> None:
    """Train model ``which`` of pair ``name`` here and write it to ``folder`` with its metrics."""
    spec = pair_spec(name)
    model = spec.model(which)
    result = train_network(
        model.config,
        spec.dataset,
        spec.classes()[spec.task_index(which)],
        model.train,
        spec.split_seed,
        label=f"{spec.name}/{which}",
        progress=report,
    )
    extra: dict[str, Any] = {
        "task_accuracy": result.task_accuracy,
        "train_accuracy": result.train_accuracy,
        "train_seconds": result.seconds,
        "dataset": spec.dataset,
        "seed": model.train.seed,
        "task": model.task,
        "train_settings": asdict(model.train),
        "fingerprint": model_fingerprint(spec, which),
        "kernels": kernels(),
    }
    save_network(result.net, folder, extra=extra, overwrite=True)


def kernels() -> dict[str, str]:
    """Return the kernel settings this process trains with (recorded in the model's config)."""
    return {k: os.environ.get(k, "") for k in PINNED_KERNELS}


def main(argv: list[str]) -> int:
    """The child: train one model and write it; progress on stdout, one error line on stderr."""
    name, which, folder = argv

    def report(fraction: float) -> None:
        print(f"{PROGRESS}{fraction}", flush=True)

    try:
        train_into(name, which, Path(folder), report)
    except (HeteroguiError, OSError, ValueError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
