"""Zoo training in a child process whose CPU kernels are pinned, so the weights are the same
whatever kernels the CPU would pick (an Intel Xeon and an AMD EPYC still train different
weights: docs/method.md sec. 11).

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

``train_all`` runs such children side by side (one per core, each on one thread, so the weights
do not depend on how many run at once) and relays their progress; a child is ``python -m
heterogui.zoo.pinned NAME LETTER FOLDER``, which writes the model folder.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import selectors
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class Job:
    """One zoo model to train: pair ``name``, model ``which``, written to ``folder``."""

    name: str
    which: str
    folder: Path


class _Child:
    """A running training child: its process, its stderr file and what it has reported."""

    def __init__(self, job: Job):
        self.job = job
        self.errors = tempfile.TemporaryFile()  # noqa: SIM115 -- closed with the child (close)
        command = [sys.executable, "-m", "heterogui.zoo.pinned", job.name, job.which]
        try:
            self.proc = subprocess.Popen(
                [*command, str(job.folder)],
                stdout=subprocess.PIPE,
                stderr=self.errors,
                env=pinned_environment(),
            )
        except OSError:
            self.errors.close()
            raise
        self.pending = b""  # stdout read but not yet a whole line

    def read(self) -> list[float] | None:
        """Return the fractions in what the child wrote since, or None at its end of output."""
        assert self.proc.stdout is not None
        data = os.read(self.proc.stdout.fileno(), 4096)
        if not data:
            return None
        *lines, self.pending = (self.pending + data).split(b"\n")
        text = (line.decode(errors="replace") for line in lines)
        return [float(t[len(PROGRESS) :]) for t in text if t.startswith(PROGRESS)]

    def finish(self) -> None:
        """Wait for the child; raise ModelLoadError with its last error line if it failed."""
        code = self.proc.wait()
        self.errors.seek(0)
        said = self.errors.read().decode(errors="replace").splitlines()
        self.close()
        if code == 0:
            config = json.loads((self.job.folder / "config.json").read_text())
            log.info(
                "trained %s/%s: task accuracy %.4f in %.1fs",
                self.job.name,
                self.job.which,
                config["task_accuracy"],
                config["train_seconds"],
            )
            return
        lines = [s for s in said if s.strip()]
        last = lines[-1] if lines else f"exit status {code}"
        raise ModelLoadError(f"training zoo model {self.job.name}/{self.job.which} failed: {last}")

    def stop(self) -> None:
        """Kill the child if it still runs, and let its files go."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.close()

    def close(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.errors.close()


def training_workers(jobs: int) -> int:
    """Return how many children train at once: one per core this process may use, at most 4."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(jobs, cores or 1, 4))


def train_all(jobs: list[Job], report: Callable[[float], None], workers: int = 1) -> None:
    """Train every job in pinned children, ``workers`` at a time; each writes its folder.

    Each child trains on one thread, so the weights do not depend on how many run at once.
    report: called with the fraction of all the training done (the mean over the jobs).

    Raises:
        ModelLoadError: the first child that fails (the others are stopped).
    """
    waiting = list(enumerate(jobs))
    done = [0.0] * len(jobs)
    running: dict[int, _Child] = {}
    with selectors.DefaultSelector() as selector:
        try:
            while waiting or running:
                while waiting and len(running) < max(1, workers):
                    k, job = waiting.pop(0)
                    running[k] = _Child(job)
                    assert running[k].proc.stdout is not None
                    selector.register(running[k].proc.stdout, selectors.EVENT_READ, k)
                for key, _ in selector.select():
                    child = running[key.data]
                    fractions = child.read()
                    if fractions is None:
                        selector.unregister(key.fileobj)
                        del running[key.data]
                        child.finish()
                        done[key.data] = 1.0
                    elif fractions:
                        done[key.data] = fractions[-1]
                    else:
                        continue
                    report(sum(done) / len(jobs))
        finally:
            for child in running.values():
                child.stop()


def train_pinned(name: str, which: str, folder: Path, report: Callable[[float], None]) -> None:
    """Train model ``which`` of zoo pair ``name`` in a pinned child; it writes ``folder``.

    report: called with the fraction trained, as the child's epochs end.

    Raises:
        ModelLoadError: if the child fails (its last error line is in the message).
    """
    train_all([Job(name, which, folder)], report)


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
