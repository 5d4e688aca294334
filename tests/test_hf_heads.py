"""A Hugging Face export of merged classifiers: one transformers classifier folder per model.

Each ``head_X/`` folder is the merged trunk with model X's head folded onto the merged space and
X's label names: it must compute exactly the merge's head X, and the card's snippet must give
the merge's Joint predictions (the accuracy report.json states).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from heterogui import run
from heterogui.run_export import export
from tests.conftest import tiny_vit
from tests.test_ui_text import classifier_folder

TOPICS = ("sports", "food", "technology", "weather")
MOODS = ("negative", "positive")


def _merge(tmp_path: Path, recipe: dict) -> run.RunResult:
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    return run.merge(tmp_path / "r.yaml")


def _snippet(card: str) -> str:
    """Return the card's Joint snippet (the Python block after the head folders' paragraph)."""
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    return next(b for b in blocks if "probs = torch.cat" in b)


@pytest.fixture(scope="module")
def bert_pair(tmp_path_factory):
    """A merged BERT classifier pair (topics 3 layers, sentiment 2), exported as hf-bert."""
    tmp = tmp_path_factory.mktemp("heads")
    a = classifier_folder(tmp / "a", TOPICS, 3, 0)
    b = classifier_folder(tmp / "b", MOODS, 2, 1)
    done = _merge(
        tmp,
        {
            "model_a": {"path": str(a)},
            "model_b": {"path": str(b)},
            "calibration": {"source": "sentences", "size": 32, "batch_size": 16},
            "evaluation": {"source": "text-tasks", "split": "test", "size": 48},
            "device": "cpu",
        },
    )
    return done, export(done, tmp / "out"), a


def test_each_bert_head_folder_computes_its_merged_head_with_its_labels(bert_pair):
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    done, out, a = bert_pair
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(
        ["sports food", "the weather was positive", "w1 w2 w3"], padding=True, return_tensors="pt"
    )
    merged = done.result.model.eval()
    with torch.no_grad():
        want = merged(**batch)
        for m, labels in enumerate((TOPICS, MOODS)):
            head = AutoModelForSequenceClassification.from_pretrained(out / f"head_{'ab'[m]}")
            assert head.config.id2label == dict(enumerate(labels))
            assert head.config.architectures == ["BertForSequenceClassification"]
            torch.testing.assert_close(head(**batch).logits, want[m], atol=2e-5, rtol=1e-4)
        # the root is still the merged trunk that AutoModel loads
        trunk = AutoModel.from_pretrained(out)(**batch).last_hidden_state
        torch.testing.assert_close(trunk, merged.features(**batch)[0], atol=2e-5, rtol=1e-4)
    assert (out / "head_a" / "vocab.txt").read_bytes() == (a / "vocab.txt").read_bytes()


def test_the_cards_snippet_gives_the_reported_joint_accuracy(bert_pair, capsys):
    done, out, _ = bert_pair
    card = (out / "README.md").read_text()
    assert "| sports, food, technology, weather |" in card and "| negative, positive |" in card
    assert "`head_a/`, `head_b/`" in card and "head_a/ and head_b/ hold them again" in card
    evaluation = run.evaluation_data(done.pair, done.recipe.evaluation)
    sentences = list(evaluation.data.sentences)
    code = _snippet(card).replace('["a sentence"]', "SENTENCES")
    exec(code, {"DIR": str(out), "SENTENCES": sentences})  # noqa: S102 - the card's own code
    printed = eval(capsys.readouterr().out)  # noqa: S307 - the list the snippet printed
    names = {k: n for k, n in enumerate(TOPICS)} | {4: "negative", 5: "positive"}
    truth = [names[int(y)] for y in evaluation.data.labels]
    joint = sum(p == t for p, t in zip(printed, truth, strict=True)) / len(truth)
    assert joint == pytest.approx(done.report["metrics"]["merged"]["joint"], abs=1e-9)


def test_each_vit_head_folder_computes_its_merged_head(tmp_path):
    from transformers import AutoModelForImageClassification

    for name, classes, seed in (("a", (0, 1, 2, 3, 4), 0), ("b", (5, 6, 7, 8, 9), 1)):
        model = tiny_vit(layers=2 + seed, seed=seed, labels=len(classes), patch=2)
        model.config.id2label = {k: str(c) for k, c in enumerate(classes)}
        model.save_pretrained(tmp_path / name, safe_serialization=True)
    done = _merge(
        tmp_path,
        {
            "model_a": {"path": str(tmp_path / "a")},
            "model_b": {"path": str(tmp_path / "b")},
            "calibration": {"source": "digits", "size": 32, "batch_size": 16},
            "zip": {"heads": "pair", "rho": 0.5},
            "device": "cpu",
        },
    )
    out = export(done, tmp_path / "out")
    images = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = done.result.model.eval()(images)
        for m, first in enumerate((0, 5)):
            head = AutoModelForImageClassification.from_pretrained(out / f"head_{'ab'[m]}")
            assert head.config.id2label == {k: str(first + k) for k in range(5)}
            torch.testing.assert_close(
                head(pixel_values=images).logits, want[m], atol=2e-5, rtol=1e-4
            )
    assert "AutoModelForImageClassification" in (out / "README.md").read_text()


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_merged_score_pools_as_the_exported_folder_does(tmp_path, pooling):
    # with pooling cls the "merged" Spearman was taken from mean-pooled states, unlike A's, B's
    # and what the exported folder's sentence-transformers modules give
    from transformers import AutoModel, AutoTokenizer

    from heterogui.tasks.sentences import sts_spearman
    from tests.test_ui_text import tiny_bert_folder

    a = tiny_bert_folder(tmp_path / "a", layers=3, seed=0)
    b = tiny_bert_folder(tmp_path / "b", layers=2, seed=1)
    done = _merge(
        tmp_path,
        {
            "model_a": {"path": str(a)},
            "model_b": {"path": str(b)},
            "calibration": {"source": "sentences", "size": 32, "batch_size": 16},
            "evaluation": {"source": "sts", "split": "test"},
            "transformer": {"pooling": pooling},
            "device": "cpu",
        },
    )
    out = export(done, tmp_path / "out")
    trunk = AutoModel.from_pretrained(out).eval()

    def embed(batch):
        states = trunk(**batch).last_hidden_state
        if pooling == "cls":
            return states[:, 0]
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (states * mask).sum(1) / mask.sum(1)

    pairs = run.evaluation_data(done.pair, done.recipe.evaluation).data
    with torch.no_grad():
        score = sts_spearman(embed, AutoTokenizer.from_pretrained(out), pairs)
    assert score == pytest.approx(done.report["metrics"]["merged"]["merged"], abs=1e-4)
    card = (out / "README.md").read_text()  # each model's head after unmerging, too
    assert "bn_units" not in done.report["settings"] and "| bn_units |" not in card  # no BN
    merged = done.report["metrics"]["merged"]
    assert f"| merged, head A | {merged['head A']:.4f} |" in card
    assert f"| merged, head B | {merged['head B']:.4f} |" in card


def test_zoo_vit_heads_are_labelled_by_their_class_ids(tmp_path):
    # the zoo's models carry no id2label: the folders said LABEL_0 ..., where head A's LABEL_3
    # and head B's are different digits
    from transformers import AutoModelForImageClassification

    done = _merge(
        tmp_path,
        {
            "model_a": {"path": "zoo:tiny-digits-vit-depth/a"},
            "model_b": {"path": "zoo:tiny-digits-vit-depth/b"},
            "calibration": {"source": "digits", "size": 32, "batch_size": 16},
            "zip": {"heads": "pair"},
            "device": "cpu",
        },
    )
    out = export(done, tmp_path / "out", fmt="hf-vit")
    for m, heads in enumerate(done.result.model.spec.heads):
        head = AutoModelForImageClassification.from_pretrained(out / f"head_{'ab'[m]}")
        want = [str(c) for h in heads for c in h.classes]
        assert list(head.config.id2label.values()) == want
    card = (out / "README.md").read_text()
    assert "AutoModelForImageClassification`)" in card and "pipeline" not in card


def test_a_heterogui_format_bert_merge_is_refused_naming_the_format_to_write(bert_pair, tmp_path):
    # it said "the merged heads are not classifier layers ...; merge the exported Hugging Face
    # folder instead", of classifiers, with no Hugging Face folder written
    from heterogui.errors import ModelLoadError
    from heterogui.sources import registry

    done, _, _ = bert_pair
    kept = export(done, tmp_path / "kept", fmt="heterogui")
    with pytest.raises(ModelLoadError, match=r"kept holds a merge of bert text models .* hf-bert"):
        registry.load(str(kept))


def test_each_heads_classes_are_named_by_its_own_models_labels(tmp_path):
    # B's label "3" is global class 3, A's "weather" too: the card named A's class "3"
    a = classifier_folder(tmp_path / "a", TOPICS, 2, 0)
    b = classifier_folder(tmp_path / "b", ("3", "4"), 2, 1)
    done = _merge(
        tmp_path,
        {
            "model_a": {"path": str(a)},
            "model_b": {"path": str(b)},
            "calibration": {"source": "sentences", "size": 32, "batch_size": 16},
            "device": "cpu",
        },
    )
    card = (export(done, tmp_path / "out") / "README.md").read_text()
    assert "| a | sports, food, technology, weather | A |" in card and "| b | 3, 4 | B |" in card


def test_an_export_prints_no_progress_bars_of_transformers(bert_pair, tmp_path, capfd):
    # the Python API showed six "Writing model shards" bars per classifier export
    done, _, _ = bert_pair
    capfd.readouterr()
    export(done, tmp_path / "again")
    assert "Writing model shards" not in capfd.readouterr().err


def test_the_export_s_root_merged_with_a_classifier_points_to_its_head_folders(bert_pair, tmp_path):
    # refused as "scored on sentence similarity" against a classifier, with no way on
    from heterogui.errors import IncompatibleModelsError

    _, out, _ = bert_pair
    c = classifier_folder(tmp_path / "c", MOODS, 2, 2)
    recipe = {
        "model_a": {"path": str(out)},
        "model_b": {"path": str(c)},
        "calibration": {"source": "sentences", "size": 32, "batch_size": 16},
        "device": "cpu",
    }
    heads = f"{out}/head_a and {out}/head_b: merge one of those to keep that classifier"
    with pytest.raises(IncompatibleModelsError, match="on sentence similarity and model B") as no:
        _merge(tmp_path, recipe)
    assert str(no.value).endswith(heads)
    done = _merge(tmp_path, {**recipe, "model_a": {"path": str(out / "head_a")}})  # as it says
    assert [h["classes"] for h in done.report["heads"]] == [[0, 1, 2, 3], [4, 5]]
    assert done.report["heads"][0]["name"] == f"{out.name}/head_a"  # named "head_a" alone
