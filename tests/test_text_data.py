"""The built-in text data: graded sentence pairs and the two template classification tasks."""

from __future__ import annotations

from collections import Counter

import pytest

from heterogui.datasets.refs import text_sha256
from heterogui.datasets.sentence_pairs import load_pairs
from heterogui.datasets.text_tasks import TASK_CLASSES, calibration_sentences, make_task
from heterogui.errors import ConfigError
from heterogui.tasks.sentences import spearman


def test_sentence_pairs_are_many_graded_and_distinct():
    pairs = load_pairs()
    assert len(pairs) >= 150
    counts = Counter(p.score for p in pairs)
    assert sorted(counts) == [0, 1, 2, 3, 4, 5] and min(counts.values()) >= 20
    assert len({(p.first, p.second) for p in pairs}) == len(pairs)
    assert all(p.first != p.second and p.first.strip() and p.second.strip() for p in pairs)


def test_bad_pair_files_are_refused(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("7\tone\ttwo\n")
    with pytest.raises(ConfigError, match="outside"):
        load_pairs(path)
    path.write_text("3\tonly one sentence\n")
    with pytest.raises(ConfigError, match="pairs.tsv line 1: 2 tab-separated fields, expected 3"):
        load_pairs(path)


def test_spearman_of_a_monotone_map_is_one():
    assert spearman([0.1, 0.5, 0.2, 0.9], [1, 3, 2, 5]) == pytest.approx(1.0)


@pytest.mark.parametrize("task", list(TASK_CLASSES))
def test_text_tasks_are_seeded_balanced_and_disjoint(task):
    first, again, other = make_task(task, seed=0), make_task(task, seed=0), make_task(task, seed=1)
    assert first == again and first != other
    seen: set[str] = set()
    for split in first.values():
        assert not seen & set(split.sentences)  # no sentence in two splits
        seen |= set(split.sentences)
        counts = Counter(split.labels)
        assert sorted(counts) == list(TASK_CLASSES[task]) and len(set(counts.values())) == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_sentences_come_from_both_tasks_and_never_from_test(seed: int):
    # the text-task pair trains and is tested on seed 0's splits: another seed re-split the
    # tasks, and its draw held about 35 test and 60-70 training sentences
    sentences = calibration_sentences(256, seed)
    assert len(sentences) == len(set(sentences)) == 256
    seen = {s for t in TASK_CLASSES for k in ("test", "train") for s in make_task(t)[k].sentences}
    assert not seen & set(sentences)
    task_of = {s: t for t in TASK_CLASSES for s in make_task(t)["calibration"].sentences}
    assert Counter(task_of[s] for s in sentences) == {t: 128 for t in TASK_CLASSES}
    if seed:  # another draw, not the first sentences of each split
        assert set(sentences) != set(calibration_sentences(256, 0))
    else:  # the draw recorded recipes hold (before and after seeds 1+ changed)
        digest = "e46c508d9ffb74c90fd43d8bce95f7c07a530d903251562620f8baeb363e4e25"
        assert text_sha256(sentences) == digest


def test_a_recorded_draw_of_another_seed_says_the_draw_changed():
    from heterogui.config import DataRef
    from heterogui.datasets.refs import load_sentences

    old = "9a23c98ec5e8" + "0" * 52  # a draw of seed 1 recorded before the change
    with pytest.raises(ConfigError, match="seeds other than 0 draw from the text tasks' own"):
        load_sentences(DataRef(source="sentences", size=64, seed=1, sha256=old))
    with pytest.raises(ConfigError, match="restore them or remove sha256"):  # seed 0: as before
        load_sentences(DataRef(source="sentences", size=64, seed=0, sha256=old))


@pytest.fixture(scope="session")
def l3_dir(tmp_path_factory: pytest.TempPathFactory):
    from heterogui.sources import minilm

    return minilm.minilm_l3_path(tmp_path_factory.getbasetemp() / "hf" / minilm.L3_NAME)


@pytest.mark.slow
def test_fine_tuned_classifier_loads_as_a_bert_classifier(tmp_path, l3_dir):
    import torch

    from heterogui.sources.registry import load
    from heterogui.tasks.classification import head_metrics
    from heterogui.tasks.text_classes import built_in_test_set, run_outputs
    from heterogui.zoo.text_pair import FinetuneSettings, finetune

    record = finetune(l3_dir, "sentiment", tmp_path / "b", FinetuneSettings(epochs=1))
    assert record["test_accuracy"] > 0.9
    loaded = load(str(tmp_path / "b"))  # its id2label names the sentiment classes
    net = loaded.net
    assert loaded.task == "text_classification" and net.head_classes() == TASK_CLASSES["sentiment"]
    assert net.config.num_labels == 2 and net.graph().spaces["logits"].width == 2
    test = built_in_test_set()
    keep = torch.isin(test.labels, torch.tensor(TASK_CLASSES["sentiment"]))
    sentences = [s for s, k in zip(test.sentences, keep.tolist(), strict=True) if k]
    (logits,) = run_outputs(lambda b: net.module(**b), loaded.tokenizer, sentences, "cpu")
    metrics = head_metrics([logits], test.labels[keep], [net.head_classes()])
    assert metrics.tasks[0] == pytest.approx(record["test_accuracy"])


def test_a_short_last_calibration_batch_joins_the_one_before():
    from conftest import char_tokenizer

    from heterogui.datasets.refs import batch_slices, tokenize
    from heterogui.tasks.lm_metrics import token_batches

    def sizes(batches):
        return [len(b["input_ids"]) for b in batches]

    assert batch_slices(9, 4) == [slice(0, 4), slice(4, 9)]  # 1 left over: joins
    assert batch_slices(8, 4) == [slice(0, 4), slice(4, 8)]
    assert batch_slices(3, 4) == [slice(0, 3)]  # all there is (CKA then says: 4 at least)
    assert batch_slices(9, 4, fold=False) == [slice(0, 4), slice(4, 8), slice(8, 9)]
    texts = [f"text number {i}" for i in range(10)]
    tok = char_tokenizer()
    # 10 texts in batches of 4: 4 + 6 for calibration (2 would be too few for CKA)
    assert sizes(token_batches(tok, texts, 4, fold=True)) == [4, 6]
    assert sizes(token_batches(tok, texts, 4)) == [4, 4, 2]  # scoring keeps its batches
    assert sizes(tokenize(tok, texts[:5], 4, fold=True)) == [5]
    assert sizes(tokenize(tok, texts[:5], 4)) == [4, 1]
