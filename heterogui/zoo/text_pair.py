"""The text classifier pair: MiniLM-L6 fine-tuned on "topics", MiniLM-L3 on "sentiment".

Both start from the offline MiniLM checkpoints (``heterogui.sources.minilm``) with a fresh
classification head (BertForSequenceClassification) and are fine-tuned here on the template
tasks of ``heterogui.datasets.text_tasks`` for a few hundred steps on the CPU. The results are
``save_pretrained`` folders in the heterogui cache (never in the repository), rebuilt when the
build settings change. Together they are a depth-heterogeneous pair (6 vs 3 layers) trained on
disjoint label sets, for the classification protocol of docs/method.md sec. 11.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from heterogui.cache import cache_dir
from heterogui.datasets.text_tasks import LABELS, TASK_CLASSES, make_task
from heterogui.folders import atomic_folder, make_readable
from heterogui.sources import minilm

log = logging.getLogger(__name__)

MARKER = "heterogui_finetune.json"
PAIR = {"a": ("topics", minilm.L6_NAME), "b": ("sentiment", minilm.L3_NAME)}
_TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


@dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning knobs (part of the cache key)."""

    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 16
    seed: int = 0
    version: int = 2  # 2: id2label names the classes ("sports" ...), so heads keep their tasks


def _base_folder(name: str, l3_cache: Path | None) -> Path:
    return minilm.minilm_l6_path() if name == minilm.L6_NAME else minilm.minilm_l3_path(l3_cache)


@torch.no_grad()
def accuracy(model: Any, tokenizer: Any, sentences, targets, batch_size: int = 64) -> float:
    """Return the accuracy of a transformers classifier on sentences with head targets."""
    model.eval()
    hits = 0
    for i in range(0, len(sentences), batch_size):
        batch = tokenizer(list(sentences[i : i + batch_size]), padding=True, return_tensors="pt")
        pred = model(**batch).logits.argmax(-1)
        hits += int((pred == torch.tensor(targets[i : i + batch_size])).sum())
    return hits / len(sentences)


def finetune(
    base: Path, task: str, out: Path, settings: FinetuneSettings = FinetuneSettings()
) -> dict[str, Any]:
    """Fine-tune ``base`` with a new head on ``task``; write a save_pretrained folder ``out``.

    Returns the build record (settings, train time, test accuracy) also stored in ``out``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    classes = TASK_CLASSES[task]
    splits = make_task(task, seed=settings.seed)
    torch.manual_seed(settings.seed)
    names = {i: name for name, i in LABELS.items()}
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(classes),
        id2label={k: names[c] for k, c in enumerate(classes)},
        label2id={names[c]: k for k, c in enumerate(classes)},
        local_files_only=True,
        use_safetensors=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    train = splits["train"]
    targets = [classes.index(c) for c in train.labels]
    gen = torch.Generator().manual_seed(settings.seed)
    start = time.perf_counter()
    for _ in range(settings.epochs):
        model.train()
        order = torch.randperm(len(targets), generator=gen).tolist()
        for i in range(0, len(order), settings.batch_size):
            idx = order[i : i + settings.batch_size]
            batch = tokenizer([train.sentences[j] for j in idx], padding=True, return_tensors="pt")
            loss = model(**batch, labels=torch.tensor([targets[j] for j in idx])).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    test = splits["test"]
    acc = accuracy(model, tokenizer, test.sentences, [classes.index(c) for c in test.labels])
    record = {"task": task, "base": str(base), "settings": asdict(settings)}
    record |= {"train_seconds": round(seconds, 2), "test_accuracy": acc}
    tmp, commit = atomic_folder(out, overwrite=True)
    try:
        model.eval().save_pretrained(tmp, safe_serialization=True)
        for name in _TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copyfile(base / name, tmp / name)
        (tmp / MARKER).write_text(json.dumps(record, indent=2, sort_keys=True))
        make_readable(tmp)  # a cache entry others may read, as the other entries
        commit()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("fine-tuned %s on %s in %.1f s: test accuracy %.3f", base.name, task, seconds, acc)
    return record


def _fresh(folder: Path, settings: FinetuneSettings) -> bool:
    try:
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return record.get("settings") == asdict(settings) and (folder / "model.safetensors").is_file()


def text_pair_folders(
    cache: Path | None = None,
    settings: FinetuneSettings = FinetuneSettings(),
    l3_cache: Path | None = None,
) -> tuple[Path, Path]:
    """Return the folders of the fine-tuned pair (A: L6 on topics, B: L3 on sentiment).

    Builds them once (about a minute each on two CPU cores) into ``cache`` (default
    cache_dir("text-pair")).

    Raises:
        ModelLoadError: a MiniLM package is missing.
    """
    root = Path(cache) if cache is not None else cache_dir("text-pair")
    folders = []
    for which, (task, name) in PAIR.items():
        folder = root / f"{which}-{name}-{task}"
        if not _fresh(folder, settings):
            finetune(_base_folder(name, l3_cache), task, folder, settings)
        folders.append(folder)
    return folders[0], folders[1]
