"""Tasks: what a pair of models is scored on, with its data, metrics and workbench panels.

One ``Task`` per task kind (``heterogui.sources.base``: image classification, sentence
similarity, text classification, language modelling). A task owns its calibration and
evaluation data (what a recipe's DataRefs may name, how they are drawn and hashed), its metrics
for A, B, their ensemble and the merge, and the panels the workbench's Evaluate tab shows for
it. ``TASKS`` maps a kind to its task; the CLI, the workbench and the benchmarks all ask it, so
no code branches on dataset names (docs/architecture.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from heterogui.config import DataRef
from heterogui.errors import ConfigError
from heterogui.pipeline import MergeResult, Prepared
from heterogui.progress import Progress
from heterogui.sources.base import Pair

# Panels of the workbench's Evaluate tab (heterogui.ui.tab_evaluate draws them, the perplexity
# and generations panels with heterogui.ui.evaluate_language).
METRICS, SAMPLES, SWEEP, SPEARMAN, SIMILARITY, PERPLEXITY, GENERATIONS = (
    "metrics",
    "samples",
    "sweep",
    "spearman",
    "similarity",
    "perplexity",
    "generations",
)


@dataclass(frozen=True)
class Calibration:
    """Calibration data ready to run: the batches and the DataRef with their sha256.

    why: why ``count`` differs from ``ref.size`` when the source itself decides it (None:
    the data held fewer inputs).
    """

    ref: DataRef
    batches: list[Any]
    count: int
    why: str | None = None


@dataclass(frozen=True)
class Evaluation:
    """Evaluation data drawn once: the task's data and the DataRef with their sha256.

    count: the inputs drawn, in the unit of ``ref.size`` (images, scored sentence pairs,
    labelled sentences; texts per domain, the fewest of any domain).
    """

    ref: DataRef
    data: Any
    count: int


class Task(ABC):
    """A task kind: its data, its metrics and its panels.

    inputs: "images" or "text" (what its DataRefs name); panels: the Evaluate panels;
    metric: the name of its headline number (the sweep's y axis, the Zip tab's readout);
    lower_is_better: whether a smaller headline is better (perplexity), not a larger one;
    score_digits: the decimals every score is shown with (``score_text``).
    """

    kind: str = ""
    title: str = ""
    inputs: str = ""
    panels: tuple[str, ...] = ()
    metric: str = ""
    lower_is_better: bool = False
    score_digits: int = 2  # percentages: "96.00" beside "97.11", not "96"

    def score_text(self, value: float | None) -> str:
        """Return a score as the workbench shows it: ``score_digits`` decimals, "—" for none."""
        return "—" if value is None else f"{value:.{self.score_digits}f}"

    @abstractmethod
    def default_calibration(self, pair: Pair, size: int | None = None) -> DataRef:
        """Return the calibration data a pair uses when the user names none."""

    @abstractmethod
    def default_evaluation(self, pair: Pair) -> DataRef | None:
        """Return the evaluation data of a pair (None: the task has none for this pair)."""

    def unscored_reason(self, pair: Pair) -> str:
        """Return why ``default_evaluation`` gives ``pair`` none (what the workbench says in
        place of a score)."""
        return "no evaluation data for these models"

    @abstractmethod
    def accepts(self, ref: DataRef) -> bool:
        """Return whether ``ref`` names data of this task's kind."""

    @abstractmethod
    def calibration(self, ref: DataRef, pair: Pair) -> Calibration:
        """Draw the calibration data (checking a recorded sha256) and batch it for the models."""

    @abstractmethod
    def evaluation(self, ref: DataRef, pair: Pair) -> Evaluation:
        """Draw the evaluation data (checking a recorded sha256)."""

    @abstractmethod
    def score_models(
        self, prepared: Prepared, ev: Evaluation, pair: Pair, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Return the scores of "a", "b" and "ensemble" (progress: "evaluate", share done)."""

    @abstractmethod
    def score_merged(
        self, result: MergeResult, ev: Evaluation, pair: Pair, progress: Progress | None = None
    ) -> Any:
        """Return the scores of the merged model (progress: "evaluate", share done)."""

    @abstractmethod
    def columns(self, scores: Any) -> dict[str, float | None]:
        """Return the table columns of one model's scores (percent or a correlation)."""

    @abstractmethod
    def headline(self, scores: Any) -> float | None:
        """Return the one number that sums up a model's scores (None: not scored)."""

    @abstractmethod
    def to_json(self, scores: Any) -> Any:
        """Return the JSON-ready form of a model's scores (report.json)."""

    def merge_rows(self, merged: Any) -> list[tuple[str, Any]]:
        """Return more rows of a merge's scores for a model card: (label, scores that
        ``columns`` reads); none unless the task scores parts of a merge of its own."""
        return []

    def alarms(self, scores: dict[str, Any]) -> list[str]:
        """Return why a merge's scores look broken (scores of "a", "b", "merged"; none: [])."""
        return []

    def check(self, ref: DataRef, role: str) -> None:
        """Raise if ``ref`` is not data of this task's kind.

        Raises:
            ConfigError: naming the data, the task and what to give instead.
        """
        if not self.accepts(ref):
            raise ConfigError(
                f"{role}.source {ref.source!r} is no data for {self.title}, which these models "
                f"are scored on; {self.data_help(role)}"
            )

    def data_help(self, role: str) -> str:
        """Return what data this task takes for ``role`` ("calibration" or "evaluation")."""
        return f"give {self.inputs} data"


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task to the registry (keyed by its kind)."""
    TASKS[task.kind] = task
    return task


def task_of(kind: str) -> Task:
    """Return the task of ``kind``.

    Raises:
        ConfigError: an unknown task kind.
    """
    if kind not in TASKS:
        raise ConfigError(f"no task {kind!r}; known: {sorted(TASKS)}")
    return TASKS[kind]


def size_of(module: torch.nn.Module) -> int:
    """Return a module's parameter count (the weight of its share of an evaluation)."""
    return sum(p.numel() for p in module.parameters())


def progress_steps(
    progress: Progress | None, weights: dict[str, float]
) -> Callable[[str | None], None]:
    """Return ``mark(step)``: report the share of the work done before ``step`` (None: all).

    weights: each step's cost in order (e.g. the parameters a model runs); the fractions
    reported are true shares of the work, so a slow model does not sit at 0 %.
    """
    order, total = list(weights), sum(weights.values()) or 1.0

    def mark(step: str | None) -> None:
        if progress is not None:
            done = total if step is None else sum(weights[k] for k in order[: order.index(step)])
            progress("evaluate", done / total)

    return mark
