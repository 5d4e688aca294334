"""Text classification: classifiers of sentences, scored on Joint / per-task / Avg accuracy.

Calibration uses sentences (built-in or a .txt file), like sentence similarity. Evaluation uses
the built-in template tasks' test splits ("text-tasks": topics and sentiment, with global class
ids; ``heterogui.datasets.text_tasks``) or a .tsv file of ``label<TAB>sentence`` lines whose
labels are the classifiers' id2label names. Heads are scored as in image classification
(``heterogui.tasks.classification``): softmax per head, argmax over the union for Joint.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from heterogui.config import DataRef
from heterogui.datasets.refs import check_text_hash, subsample, text_sha256, tokenize
from heterogui.datasets.text_tasks import TASK_CLASSES, label_id, make_task
from heterogui.errors import ConfigError, ModelLoadError
from heterogui.models.capture import to_device
from heterogui.models.family import Head
from heterogui.pipeline import MergeResult, Prepared
from heterogui.progress import Progress
from heterogui.sources.base import TEXT_CLASSIFICATION, Pair
from heterogui.tasks.base import (
    METRICS,
    SWEEP,
    Calibration,
    Evaluation,
    Task,
    progress_steps,
    register,
    size_of,
)
from heterogui.tasks.classification import Metrics, score_outputs, scores_alone_and_together
from heterogui.tasks.images import IMAGES, OVERLAPPING_CLASSES, heads_disjoint
from heterogui.tasks.sentences import SENTENCES, is_sentences, text_calibration, tokenizer_of
from heterogui.text_input import read_text, text_lines

log = logging.getLogger(__name__)
BUILT_IN = "text-tasks"
EVAL_BATCH = 64
Outputs = Callable[[dict[str, torch.Tensor]], Any]


@dataclasses.dataclass(frozen=True)
class LabelledText:
    """Sentences with global class ids (N,) int64."""

    sentences: tuple[str, ...]
    labels: torch.Tensor


def built_in_test_set() -> LabelledText:
    """Return the test sentences of both template tasks and their global labels: seed 0's
    splits, the ones the text-task pair trains on (an evaluation's seed draws from them:
    ``_drawn``; another split would test on training sentences)."""
    sentences: list[str] = []
    labels: list[int] = []
    for task in TASK_CLASSES:
        split = make_task(task)["test"]
        sentences += split.sentences
        labels += split.labels
    return LabelledText(tuple(sentences), torch.tensor(labels, dtype=torch.int64))


def read_labelled(path: Path) -> LabelledText:
    """Read ``label<TAB>sentence`` lines ('#' comments) into labelled sentences.

    Raises:
        ModelLoadError: a missing file; ConfigError: a malformed line.
    """
    if not path.is_file():
        raise ModelLoadError(f"labelled sentence file {str(path)!r} does not exist")
    sentences, labels = [], []
    for number, line in enumerate(text_lines(read_text(path, "labelled sentence file")), 1):
        if not line.strip() or line.startswith("#"):
            continue
        label, sep, sentence = line.partition("\t")
        if not sep or not sentence.strip():
            raise ConfigError(f"{path.name} line {number}: expected label<TAB>sentence")
        sentences.append(sentence.strip())
        labels.append(label_id(label.strip()))
    return LabelledText(tuple(sentences), torch.tensor(labels, dtype=torch.int64))


def _drawn(data: LabelledText, ref: DataRef) -> LabelledText:
    """Return ``ref.size`` of the labelled sentences drawn with ``ref.seed`` (all when None)."""
    rows = subsample(list(range(len(data.sentences))), ref)
    if len(rows) == len(data.sentences):
        return data
    return LabelledText(tuple(data.sentences[i] for i in rows), data.labels[rows])


@torch.no_grad()
def run_outputs(
    fn: Outputs, tokenizer: Any, sentences: Sequence[str], device: torch.device | str
) -> list[torch.Tensor]:
    """Run ``fn`` on tokenised sentences; return its outputs (one per head group) on CPU."""
    parts: list[list[torch.Tensor]] = []
    for batch in tokenize(tokenizer, sentences, EVAL_BATCH):
        out = fn(to_device(batch, device))
        outs = out if isinstance(out, tuple | list) else (out,)
        parts = parts or [[] for _ in outs]
        for store, o in zip(parts, outs, strict=True):
            store.append(o.float().cpu())
    return [torch.cat(p) for p in parts]


class TextClassification(Task):
    """Sentence classifiers (BERT with a classifier head) on disjoint label sets."""

    kind = TEXT_CLASSIFICATION
    title = "text classification"
    inputs = "text"
    panels = (METRICS, SWEEP)
    metric = "Joint %"

    def data_help(self, role: str) -> str:
        """Return what text data to give."""
        if role == "evaluation":
            return f'give "{BUILT_IN}" (built-in) or a .tsv file of label<TAB>sentence lines'
        return SENTENCES.data_help(role)

    def default_calibration(self, pair: Pair, size: int | None = None) -> DataRef:
        """Return the built-in calibration sentences."""
        return SENTENCES.default_calibration(pair, size)

    def default_evaluation(self, pair: Pair) -> DataRef | None:
        """Return the built-in text tasks when the heads are theirs (else None)."""
        return None if self._unscorable(pair) else DataRef(BUILT_IN, "test", None, EVAL_BATCH)

    def unscored_reason(self, pair: Pair) -> str:
        """Return why the pair has no evaluation data (``default_evaluation``)."""
        return self._unscorable(pair) or super().unscored_reason(pair)

    @staticmethod
    def _unscorable(pair: Pair) -> str | None:
        """Return why the built-in text tasks cannot score the pair (None: they can)."""
        if not heads_disjoint(pair):
            return OVERLAPPING_CLASSES
        known = {c for classes in TASK_CLASSES.values() for c in classes}
        classes = [c for loaded in (pair.a, pair.b) for c in loaded.net.head_classes()]
        if not set(classes) <= known:
            return "the models' classes are not the built-in text tasks': not scored"
        return None

    def accepts(self, ref: DataRef) -> bool:
        """Return whether ``ref`` names sentences, the built-in tasks or a labelled .tsv."""
        return is_sentences(ref) or ref.source == BUILT_IN or ref.has_suffix(".tsv")

    def calibration(self, ref: DataRef, pair: Pair) -> Calibration:
        """Draw and tokenise the calibration sentences."""
        self.check(ref, "calibration")
        if not is_sentences(ref):
            raise ConfigError(f"calibration.source {ref.source!r}: {self.data_help('calibration')}")
        return text_calibration(ref, pair)

    def evaluation(self, ref: DataRef, pair: Pair) -> Evaluation:
        """Draw the labelled test sentences of the heads' classes.

        Raises:
            ConfigError: overlapping tasks, labels in no head, or changed sentences.
        """
        self.check(ref, "evaluation")
        if not heads_disjoint(pair):
            raise ConfigError(
                "the classifiers' labels overlap (or are unnamed: LABEL_0 ...), so Joint and "
                "per-task accuracy are undefined; give them id2label names, or leave out evaluation"
            )
        if ref.source == BUILT_IN:
            data = built_in_test_set()
        elif ref.has_suffix(".tsv"):
            data = read_labelled(Path(ref.source).expanduser())
        else:
            raise ConfigError(f"evaluation.source {ref.source!r}: {self.data_help('evaluation')}")
        data = _drawn(data, ref)
        classes = [c for loaded in (pair.a, pair.b) for c in loaded.net.head_classes()]
        keep = torch.isin(data.labels, torch.tensor(classes, dtype=torch.int64))
        if not bool(keep.any()):
            raise ConfigError(
                f"no sentence of {ref.source} has a label of the models' heads; label the "
                "sentences with the classifiers' id2label names"
            )
        dropped = int((~keep).sum())
        if dropped and ref.source != BUILT_IN:  # the built-in set holds other tasks' classes
            log.warning(
                "evaluation: %d of %d sentences of %s have a label that no head has (a typo, or "
                "another case?); they are left out of the scores: label them with the "
                "classifiers' id2label names",
                dropped,
                len(data.sentences),
                ref.source,
            )
        kept = LabelledText(
            tuple(s for s, k in zip(data.sentences, keep.tolist(), strict=True) if k),
            data.labels[keep],
        )
        lines = [f"{int(y)}\t{s}" for s, y in zip(kept.sentences, kept.labels, strict=True)]
        check_text_hash(ref, lines)
        done = dataclasses.replace(ref, sha256=text_sha256(lines))
        return Evaluation(done, kept, len(data.sentences))

    def score_models(
        self, prepared: Prepared, ev: Evaluation, pair: Pair, progress: Progress | None = None
    ) -> dict[str, Metrics]:
        """Return the metrics of A alone, B alone and their ensemble (each model runs once)."""
        a, b, dev = prepared.net_a, prepared.net_b, prepared.device
        tok, sentences, labels = tokenizer_of(pair), ev.data.sentences, ev.data.labels
        heads = (a.task_heads(), b.task_heads())
        mark = progress_steps(progress, {"a": size_of(a.module), "b": size_of(b.module)})
        mark("a")
        (out_a,) = run_outputs(lambda batch: a.module(**batch), tok, sentences, dev)
        mark("b")
        (out_b,) = run_outputs(lambda batch: b.module(**batch), tok, sentences, dev)
        mark(None)
        return scores_alone_and_together([out_a, out_b], heads, labels, ("a", "b"))

    def score_merged(
        self, result: MergeResult, ev: Evaluation, pair: Pair, progress: Progress | None = None
    ) -> Metrics:
        """Return the metrics of the merged model (one head per task)."""
        model, dev = result.model, result.prepared.device
        mark = progress_steps(progress, {"merged": 1.0})
        mark("merged")
        outputs = run_outputs(
            lambda batch: model(**batch), tokenizer_of(pair), ev.data.sentences, dev
        )
        mark(None)
        return score_outputs(outputs, result.spec.heads, ev.data.labels)

    def columns(self, scores: Metrics | None) -> dict[str, float | None]:
        """Return Joint, per-task and Avg in percent."""
        return IMAGES.columns(scores)

    def headline(self, scores: Metrics | None) -> float | None:
        """Return Joint accuracy in percent."""
        return IMAGES.headline(scores)

    def to_json(self, scores: Metrics | None) -> Any:
        """Return the metrics as a dict."""
        return IMAGES.to_json(scores)


TEXT_CLASSES = register(TextClassification())

__all__ = ["Head", "TEXT_CLASSES", "TextClassification"]
