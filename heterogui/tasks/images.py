"""Image classification: digits and MNIST-1D (built in) or a .safetensors file of images.

Models on disjoint class sets are scored with the Joint / per-task / Avg protocol
(``heterogui.tasks.classification``) on the test split restricted to their heads' classes. The
calibration inputs come from a dataset's calibration split (never its test split) or from a
file; their shape is checked against what the models read before anything runs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch

from heterogui.config import DataRef
from heterogui.datasets.images import DATASETS, Split, task_subset
from heterogui.datasets.refs import is_text, load_inputs, make_batches, tensor_data_sha256
from heterogui.errors import ConfigError, excerpt
from heterogui.export.card import class_ranges
from heterogui.export.hf_heads import head_folders_hint
from heterogui.fusion.merged import MergedModel
from heterogui.models.family import Head, Network
from heterogui.models.storage import on_meta
from heterogui.pipeline import MergeResult, Prepared
from heterogui.progress import Progress
from heterogui.sources.base import IMAGE_CLASSIFICATION, Pair, model_key
from heterogui.tasks.base import (
    METRICS,
    SAMPLES,
    SWEEP,
    Calibration,
    Evaluation,
    Task,
    progress_steps,
    register,
    size_of,
)
from heterogui.tasks.classification import (
    Metrics,
    evaluate_merged,
    joint_argmax,
    net_outputs,
    nets_split,
    scores_alone_and_together,
    split_heads,
)

log = logging.getLogger(__name__)
CALIBRATION_SIZE = 256
CALIBRATION_BATCH = 64
EVAL_BATCH = 512


def input_shape(net: Network) -> tuple[int, ...] | None:
    """Return the shape of one input ``net`` reads, where its config fixes it (else None)."""
    c = net.config
    if hasattr(c, "image_size"):  # ViT
        return (c.num_channels, c.image_size, c.image_size)
    if hasattr(c, "in_features"):  # MLP: any shape of that many values (flattened)
        return (c.in_features,)
    return None


def guess_dataset(net: Network) -> str | None:
    """Return the built-in dataset whose inputs fit ``net`` (digits 1x8x8, MNIST-1D 1x40)."""
    for name, info in DATASETS.items():
        shape = input_shape(net)
        if shape is not None:
            fits = shape == info.input_shape or (
                len(shape) == 1 and shape[0] == int(torch.tensor(info.input_shape).prod())
            )
        else:
            c = net.config
            fits = (getattr(c, "in_channels", None), getattr(c, "spatial_dims", None)) == (
                info.input_shape[0],
                len(info.input_shape) - 1,
            )
        if fits:
            return name
    return None


def check_inputs(net: Network, inputs: torch.Tensor, where: str) -> None:
    """Raise if ``inputs`` (N, ...) are not of the shape ``net`` reads.

    Raises:
        ConfigError: saying the shape found and the shape expected.
    """
    shape = tuple(inputs.shape[1:])
    want = input_shape(net)
    c = net.config
    if want is not None and len(want) == 1:
        ok = int(torch.tensor(shape).prod()) == want[0]
        expect = f"{want[0]} values per input"
    elif want is not None:
        ok, expect = shape == want, f"(N, {', '.join(map(str, want))})"
    else:
        dims = getattr(c, "spatial_dims", len(shape) - 1)
        ok = len(shape) == dims + 1 and shape[0] == getattr(c, "in_channels", shape[0])
        axes = {1: "length", 2: "height, width"}.get(dims, ", ".join(["size"] * dims))
        expect = f"(N, {getattr(c, 'in_channels', 'C')}, {axes})"
    who = net.label if net.label.startswith("model ") else f"model {net.label}"
    if not ok:
        raise ConfigError(
            f"{where} inputs have shape {tuple(inputs.shape)} but {who} reads {expect}; give "
            "inputs of that shape"
        )
    if want is None:  # a convolution network takes many sizes, but not every size
        _check_size_runs(net, shape, where, who)


def _warn_of_another_size(inputs: torch.Tensor, pair: Pair, where: str) -> None:
    """Log a warning when inputs a convolution network takes differ in size from its training
    data's (the zoo records the dataset): they run, but the features mean other things."""
    info = DATASETS.get(pair.dataset or "")
    shape = tuple(inputs.shape[1:])
    if info is not None and len(shape) == len(info.input_shape) and shape != info.input_shape:
        log.warning(
            "%s inputs have shape %s but the models were trained on %s, %s: they run, but "
            "their layers see other sizes than in training; give inputs of that shape",
            where,
            shape,
            info.name,
            info.input_shape,
        )


def _check_size_runs(net: Network, shape: tuple[int, ...], where: str, who: str) -> None:
    """Raise if ``net`` cannot run one input of ``shape`` (a map pooled or cut below 1 x 1):
    a forward on the meta device, which has shapes and no values, so nothing is computed."""
    model = on_meta(lambda: net.family.build(net.config)).eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape), device="meta"))
    except RuntimeError as exc:
        raise ConfigError(
            f"{where} inputs of shape {shape} are too small for {who} ({excerpt(exc, 120)}); "
            "give inputs of the size it was trained on"
        ) from None


def is_classifier(net: Network) -> bool:
    """Return whether ``net`` ends in a classifier (a ViT feature model does not)."""
    return getattr(net.config, "num_labels", 0) is not None


# why a pair whose heads share classes is not scored (a merge's merge with one of its parents)
OVERLAPPING_CLASSES = (
    "the models' heads share classes, so Joint and per-task accuracy are undefined: not scored"
)


def without_classifier(names: Sequence[str], noun: str = "classifier") -> str:
    """Return "NAME has no classifier (a feature model)", or its plural for several names."""
    if len(names) == 1:
        return f"{names[0]} has no {noun} (a feature model)"
    return f"{' and '.join(names)} have no {noun}s (feature models)"


def heads_disjoint(pair: Pair) -> bool:
    """Return whether the tasks of the models' heads have disjoint classes (the protocol's case)."""
    classes = [c for loaded in pair.models for c in loaded.net.head_classes()]
    return len(set(classes)) == len(classes)


class ImageClassification(Task):
    """Classifiers of images (MLP, VGG, ResNet, ViT) on disjoint class sets."""

    kind = IMAGE_CLASSIFICATION
    title = "image classification"
    inputs = "image"
    panels = (METRICS, SAMPLES, SWEEP)
    metric = "Joint %"

    def data_help(self, role: str) -> str:
        """Return what image data to give."""
        return (
            f"give a dataset ({', '.join(sorted(DATASETS))}) or a .safetensors file with an "
            "'inputs' tensor (N, C, H, W)" + (" and 'labels'" if role == "evaluation" else "")
        )

    def default_calibration(self, pair: Pair, size: int | None = None) -> DataRef:
        """Return the calibration split of the pair's dataset.

        Raises:
            ConfigError: no built-in dataset fits the models (name a file instead).
        """
        guesses = (guess_dataset(m.net) for m in pair.models)
        dataset = pair.dataset or next((d for d in guesses if d is not None), None)
        if dataset is None:
            raise ConfigError(
                f"no built-in dataset fits {pair.a.name}; name calibration images: "
                f"{self.data_help('calibration')}"
            )
        return DataRef(
            dataset, "calibration", CALIBRATION_SIZE if size is None else size, CALIBRATION_BATCH
        )

    def default_evaluation(self, pair: Pair) -> DataRef | None:
        """Return the test split of the pair's dataset (None: no dataset or overlapping tasks)."""
        dataset = pair.dataset or guess_dataset(pair.a.net)
        if dataset is None or self._unscorable(pair):
            return None
        return DataRef(dataset, "test", None, EVAL_BATCH)

    def unscored_reason(self, pair: Pair) -> str:
        """Return why the pair has no evaluation data (``default_evaluation``)."""
        return self._unscorable(pair) or "no built-in dataset fits these models' inputs: not scored"

    @staticmethod
    def _unscorable(pair: Pair) -> str | None:
        """Return why no data can score the pair (None: a dataset of its inputs can)."""
        features = [m.name for m in pair.models if not is_classifier(m.net)]
        if features:
            return f"{without_classifier(features)}: not scored"
        return None if heads_disjoint(pair) else OVERLAPPING_CLASSES

    def accepts(self, ref: DataRef) -> bool:
        """Return whether ``ref`` names images (a dataset or a .safetensors file)."""
        return not is_text(ref)

    def calibration(self, ref: DataRef, pair: Pair) -> Calibration:
        """Draw the calibration images and batch them.

        Raises:
            ConfigError: text data, images of the wrong shape, or changed data.
            ModelLoadError: a missing or corrupt file.
        """
        self.check(ref, "calibration")
        inputs, labels = load_inputs(ref)
        for loaded in pair.models:
            check_inputs(loaded.net, inputs, "calibration")
        _warn_of_another_size(inputs, pair, "calibration")
        done = dataclasses.replace(ref, sha256=tensor_data_sha256(inputs, labels))
        return Calibration(done, make_batches(inputs, ref.batch_size), int(inputs.shape[0]))

    def evaluation(self, ref: DataRef, pair: Pair) -> Evaluation:
        """Draw the labelled test images of the heads' classes.

        Raises:
            ConfigError: no labels, overlapping tasks, images of the wrong shape, changed data.
        """
        self.check(ref, "evaluation")
        features = [m.name for m in pair.models if not is_classifier(m.net)]
        if features:
            hints = "".join(head_folders_hint(m.folder) for m in pair.models)
            raise ConfigError(
                f"{without_classifier(features, 'classifier head')}: image classification "
                f"scores classifiers; leave out evaluation{hints}"
            )
        if not heads_disjoint(pair):
            whose = "the models'" if pair.more else "A's and B's"
            raise ConfigError(
                f"the tasks of {whose} heads share classes, so Joint and per-task accuracy "
                "are undefined; merge models trained on disjoint classes, or leave out evaluation"
            )
        inputs, labels = load_inputs(ref)
        if labels is None:
            raise ConfigError(f"evaluation data {ref.source} has no 'labels' tensor; add one")
        for loaded in pair.models:
            check_inputs(loaded.net, inputs, "evaluation")
        _warn_of_another_size(inputs, pair, "evaluation")
        num = max(int(labels.max()) + 1, *(c + 1 for c in _classes(pair)))
        names = tuple(str(i) for i in range(num))
        if ref.source in DATASETS:
            names = DATASETS[ref.source].class_names
            beyond = sorted(c for c in _classes(pair) if c >= len(names))
            if beyond:  # its samples would drop out of the scores without a word
                raise ConfigError(
                    f"the models' heads list class {excerpt(beyond, 40)}, but {ref.source} has "
                    f"classes 0 to {len(names) - 1}; evaluate on data with those classes, or "
                    "fix the heads' class ids"
                )
        split = Split(inputs, labels.long(), num, names, ref.source)
        done = dataclasses.replace(ref, sha256=tensor_data_sha256(inputs, labels))
        kept = _scored_part(split, _classes(pair), ref.source)
        return Evaluation(done, kept, int(inputs.shape[0]))

    def score_models(
        self, prepared: Prepared, ev: Evaluation, pair: Pair, progress: Progress | None = None
    ) -> dict[str, Metrics]:
        """Return the metrics of A alone, B alone and their ensemble."""
        nets = (prepared.net_a, prepared.net_b)
        return self.score_group(nets, ev, prepared.device, progress)

    def score_group(
        self,
        nets: Sequence[Network],
        ev: Evaluation,
        device: torch.device | str,
        progress: Progress | None = None,
        merged: MergedModel | None = None,
    ) -> dict[str, Metrics]:
        """Return the metrics of each model alone, of their ensemble and of the merge.

        Keys: "a", "b", "c", ... (each model alone), "ensemble" (all of them, each head on its
        task) and, given ``merged`` (a merged model with one output per model), "merged".
        """
        keys = [model_key(k) for k in range(len(nets))]
        weights = {k: float(size_of(net.module)) for k, net in zip(keys, nets, strict=True)}
        if merged is not None:
            weights["merged"] = float(size_of(merged))
        mark = progress_steps(progress, weights)
        heads, split = nets_split(nets, ev.data)
        outputs = []
        for key, net in zip(keys, nets, strict=True):  # each model runs once
            mark(key)
            outputs.append(net_outputs(net, split, EVAL_BATCH, device))
        scores = scores_alone_and_together(outputs, heads, split.labels, keys)
        if merged is not None:
            mark("merged")
            scores["merged"] = evaluate_merged(
                merged, ev.data, merged.spec.heads, EVAL_BATCH, device
            )
        mark(None)
        return scores

    def score_merged(
        self, result: MergeResult, ev: Evaluation, pair: Pair, progress: Progress | None = None
    ) -> Metrics:
        """Return the metrics of the merged model (one head per task)."""
        mark = progress_steps(progress, {"merged": 1.0})
        mark("merged")
        with torch.no_grad():
            scores = evaluate_merged(
                result.model, ev.data, result.spec.heads, EVAL_BATCH, result.prepared.device
            )
        mark(None)
        return scores

    def columns(self, scores: Metrics | None) -> dict[str, float | None]:
        """Return Joint, per-task and Avg in percent (two tasks: "Task A", "Task B")."""
        names = _column_names(scores)
        if scores is None:
            return {n: None for n in ("Joint", *names, "Avg")}
        tasks = dict(zip(names, scores.tasks, strict=True))
        return {k: _pct(v) for k, v in {"Joint": scores.joint, **tasks, "Avg": scores.avg}.items()}

    def headline(self, scores: Metrics | None) -> float | None:
        """Return Joint accuracy in percent."""
        return None if scores is None else _pct(scores.joint)

    def to_json(self, scores: Metrics | None) -> Any:
        """Return the metrics as a dict (None when not scored)."""
        return None if scores is None else scores.as_dict()

    def predictions(
        self, prepared: Prepared, result: MergeResult | None, inputs: torch.Tensor
    ) -> dict[str, list[tuple[int, float]]]:
        """Return each model's (class, confidence) on ``inputs`` (k, ...).

        Keys: "A", "B", "ensemble" and, with a result, "merged" (argmax over the softmax of
        every head it has, as in the Joint protocol).
        """
        heads = (prepared.net_a.task_heads(), prepared.net_b.task_heads())
        x = inputs.to(prepared.device)
        with torch.no_grad():
            la = prepared.net_a.module(x).float().cpu()
            lb = prepared.net_b.module(x).float().cpu()
            out = {
                "A": joint_predictions([la], [heads[0]]),
                "B": joint_predictions([lb], [heads[1]]),
                "ensemble": joint_predictions([la, lb], heads),
            }
            if result is not None:
                ma, mb = result.model(x)
                out["merged"] = joint_predictions([ma.float().cpu(), mb.float().cpu()], heads)
        return out


def joint_predictions(
    outputs: Sequence[torch.Tensor], heads: Sequence[Sequence[Head]]
) -> list[tuple[int, float]]:
    """Return (class, confidence) per input: the Joint protocol over every head.

    outputs: per model, (k, sum of its head sizes) logits; heads: per model, its heads.
    """
    logits = [x for out, hs in zip(outputs, heads, strict=True) for x in split_heads(out, hs)]
    flat = [h.classes for hs in heads for h in hs]
    classes, conf = joint_argmax(logits, flat)
    return [(int(c), float(p)) for c, p in zip(classes, conf, strict=True)]


def _scored_part(split: Split, classes: tuple[int, ...], source: str) -> Split:
    """Return the inputs of ``split`` whose label is one of the models' ``classes``.

    A built-in dataset's other classes are other tasks' (a pair of a three-task group), left
    out as the scores define them; a file's are warned about.

    Raises:
        ConfigError: no input has such a label (every score would be undefined).
    """
    kept = task_subset(split, classes)
    left = len(split) - len(kept)
    if len(kept) == 0:
        raise ConfigError(
            f"none of the {len(split)} labels of {source} is a class the models predict "
            f"({class_ranges(classes)}); label the inputs with the models' class ids"
        )
    if left and source not in DATASETS:
        log.warning(
            "evaluation: %d of %d inputs of %s have a label no model predicts (classes %s); "
            "they are left out of the scores",
            left,
            len(split),
            source,
            class_ranges(classes),
        )
    return kept


def _classes(pair: Pair) -> tuple[int, ...]:
    return tuple(c for loaded in pair.models for c in loaded.net.head_classes())


def _column_names(scores: Metrics | None) -> tuple[str, ...]:
    if scores is None or len(scores.tasks) == 2:
        return ("Task A", "Task B")
    return tuple(scores.names)


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


IMAGES = register(ImageClassification())
