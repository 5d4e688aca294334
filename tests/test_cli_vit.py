"""``heterogui merge RECIPE.yaml --out DIR`` with Hugging Face ViT folders (the CLI contract)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from heterogui.cli import main  # noqa: E402
from heterogui.errors import ConfigError, IncompatibleModelsError  # noqa: E402
from heterogui.recipe_parse import load_recipe  # noqa: E402
from heterogui.run import merge as merge_recipe  # noqa: E402
from tests.conftest import tiny_vit  # noqa: E402

# (layers, hidden, heads, intermediate) of A and B; head size 8 throughout.
PAIRS = {"depth": ((3, 32, 4, 64), (1, 32, 4, 64)), "width": ((2, 32, 4, 64), (2, 48, 6, 96))}


def write_vit(folder: Path, shape: tuple[int, int, int, int], seed: int, patch: int = 2) -> None:
    """Write a tiny random ViTModel (8 x 8 grey images) as a save_pretrained folder."""
    layers, hidden, heads, inter = shape
    model = tiny_vit(hidden, heads, inter, layers, seed, patch=patch)
    model.save_pretrained(folder, safe_serialization=True)


def images(seed: int, n: int) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def write_case(tmp_path: Path, pair: str, patch_b: int = 2, **fields) -> Path:
    """Write two ViT folders, an image file and a recipe; return the recipe path."""
    shape_a, shape_b = PAIRS[pair]
    write_vit(tmp_path / "a", shape_a, 0)
    write_vit(tmp_path / "b", shape_b, 1, patch=patch_b)
    save_file({"inputs": images(0, 48)}, str(tmp_path / "calib.safetensors"))
    recipe = {
        "model_a": {"path": str(tmp_path / "a")},
        "model_b": {"path": str(tmp_path / "b")},
        "calibration": {"source": str(tmp_path / "calib.safetensors"), "batch_size": 16},
        "device": "cpu",
        **fields,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("pair", list(PAIRS))
def test_cli_writes_a_vit_folder_that_automodel_loads(tmp_path, pair, capsys):
    from transformers import AutoModel

    recipe = write_case(tmp_path, pair, zip={"rho": 0.5})
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "recipe.yaml", "report.json", "README.md"} <= names
    assert "unmerge.safetensors" in names
    card = (out / "README.md").read_text()
    assert "tags: [heterogui, model-merging, vit]" in card and "# Merge of a and b" in card
    # a ViTModel's head gives its pooled features, no classes
    assert "| head | outputs | from |" in card and "| embedding dimensions 0-" in card
    report = json.loads((out / "report.json").read_text())
    assert report["calibration_count"] == 48 and report["parameters"]["merged"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "vit" and config["hidden_size"] == report["widths"]["stream"][2]
    assert config["num_hidden_layers"] == max(PAIRS[pair][0][0], PAIRS[pair][1][0])
    done = merge_recipe(recipe)  # the same recipe in Python: the same merge
    model = AutoModel.from_pretrained(out).eval()
    x = images(7, 8)
    with torch.no_grad():
        diff = (model(pixel_values=x).last_hidden_state - done.result.model.features(x)).abs()
    assert diff.max() < 1e-5


def test_recorded_vit_recipe_repeats_the_merge_bit_for_bit(tmp_path):
    recipe = write_case(tmp_path, "depth", alignment={"mode": "lma"})
    assert main(["merge", str(recipe), "--out", str(tmp_path / "one")]) == 0
    recorded = load_recipe(tmp_path / "one" / "recipe.yaml")
    assert recorded.model_a.sha256 and recorded.model_b.sha256 and recorded.calibration.sha256
    assert recorded.alignment.mapping and recorded.transformer.pooling == "cls"
    assert recorded.versions["transformers"]
    again = ["merge", str(tmp_path / "one" / "recipe.yaml"), "--out", str(tmp_path / "two")]
    assert main(again) == 0
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert load_recipe(tmp_path / "two" / "recipe.yaml") == recorded


def test_different_patch_sizes_are_refused_and_leave_no_folder(tmp_path, capsys):
    recipe = write_case(tmp_path, "depth", patch_b=4)
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "patch sizes differ (2 vs 4)" in err and "patch_size" in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]


def test_text_data_and_bert_identities_are_refused_for_vits(tmp_path):
    recipe = write_case(tmp_path, "depth")
    data = yaml.safe_load(recipe.read_text())
    (tmp_path / "text.yaml").write_text(
        yaml.safe_dump({**data, "calibration": {"source": "sentences"}})
    )
    with pytest.raises(ConfigError, match="'sentences' is no data for image classification"):
        merge_recipe(tmp_path / "text.yaml")
    ls = {**data, "transformer": {"identity": "ls"}}
    (tmp_path / "ls.yaml").write_text(yaml.safe_dump(ls))
    with pytest.raises(ConfigError, match="exact"):
        merge_recipe(tmp_path / "ls.yaml")
    evaluation = {**data, "evaluation": {"source": "digits", "size": 16}}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(evaluation))
    with pytest.raises(ConfigError, match="no classifier head"):
        merge_recipe(tmp_path / "eval.yaml")


def test_digits_calibrate_a_vit_pair(tmp_path):
    recipe = write_case(tmp_path, "width")
    data = yaml.safe_load(recipe.read_text())
    data["calibration"] = {"source": "digits", "size": 32, "batch_size": 16}
    (tmp_path / "digits.yaml").write_text(yaml.safe_dump(data))
    done = merge_recipe(tmp_path / "digits.yaml")
    assert done.report["calibration_count"] == 32 and done.recipe.calibration.sha256


def write_classifier(folder: Path, labels: tuple[int, ...], seed: int) -> None:
    """Write a tiny ViT classifier whose id2label names its digit classes."""
    model = tiny_vit(layers=2 + seed, seed=seed, labels=len(labels), patch=2)
    model.config.id2label = {k: str(c) for k, c in enumerate(labels)}
    model.config.label2id = {str(c): k for k, c in enumerate(labels)}
    model.save_pretrained(folder, safe_serialization=True)


def classifiers_recipe(tmp_path: Path, **fields) -> dict:
    """Write two ViT classifiers of disjoint digits (a: 0-4, b: 5-9) and a recipe merging them
    on digits (r.yaml, with ``fields``); return the recipe."""
    write_classifier(tmp_path / "a", (0, 1, 2, 3, 4), 0)
    write_classifier(tmp_path / "b", (5, 6, 7, 8, 9), 1)
    recipe = {
        "model_a": {"path": str(tmp_path / "a")},
        "model_b": {"path": str(tmp_path / "b")},
        "calibration": {"source": "digits", "size": 32, "batch_size": 16},
        "device": "cpu",
        **fields,
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    return recipe


def test_vit_classifiers_on_digits_are_scored_and_their_merge_merges_again(tmp_path):
    recipe = classifiers_recipe(
        tmp_path, evaluation={"source": "digits", "split": "test", "size": 64}
    )
    # the ViT default splits the heads (half their size): a partner of other heads is refused
    (tmp_path / "split").mkdir()
    assert main(["merge", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "split" / "m")]) == 0
    # its card said it merges again like any merge; it says what the split asks of the next
    assert "make it with `zip.heads: pair`" in (tmp_path / "split" / "m" / "README.md").read_text()
    split = {**recipe, "model_a": {"path": str(tmp_path / "split" / "m")}, "evaluation": None}
    (tmp_path / "split.yaml").write_text(yaml.safe_dump(split))
    with pytest.raises(IncompatibleModelsError, match=r"\(4 vs 8\).*make it with zip.heads: pair"):
        merge_recipe(tmp_path / "split.yaml")
    recipe["zip"] = {"heads": "pair"}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    done = merge_recipe(tmp_path / "r.yaml")
    heads = [h["classes"] for h in done.report["heads"]]
    assert heads == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]  # from id2label: disjoint tasks
    merged = done.report["metrics"]["merged"]
    assert merged["count_a"] + merged["count_b"] == 64 and 0 <= merged["joint"] <= 1
    assert done.report["metrics"]["a"]["task_b"] is None
    first = tmp_path / "first"
    assert (
        main(["merge", str(tmp_path / "r.yaml"), "--out", str(first), "--format", "heterogui"]) == 0
    )
    # not the Hugging Face folder these models get by default: the card's rerun says so
    threads = torch.get_num_threads()
    rerun = (
        f"`heterogui merge recipe.yaml --out OUT --format heterogui --threads {threads}` repeats"
    )
    assert rerun in (first / "README.md").read_text()
    assert "zip.heads: split" not in (first / "README.md").read_text()  # paired: no such note
    assert "the merge and its scores were computed in float32" in (first / "README.md").read_text()
    again = {**recipe, "model_a": {"path": str(first)}, "evaluation": None}
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(again))
    second = merge_recipe(tmp_path / "again.yaml")  # a merge is model A of the next merge
    assert second.pair.a.source == "merged"
    assert [h["name"] for h in second.report["heads"]] == ["a", "b", "b"]


def test_the_root_of_a_classifier_merge_s_export_is_a_feature_model_pointing_to_its_heads(
    tmp_path,
):
    # merged again, its card called it a classifier of "classes 0-15" (its feature width), the
    # other model's classes "embedding dimensions", and the workbench found the tasks overlap
    from heterogui.sources.base import Pair
    from heterogui.sources.registry import load
    from heterogui.tasks.images import IMAGES, OVERLAPPING_CLASSES
    from heterogui.ui.loading import verdict

    recipe = classifiers_recipe(tmp_path, zip={"heads": "pair"})
    root = tmp_path / "first"
    assert main(["merge", str(tmp_path / "r.yaml"), "--out", str(root), "--format", "hf-vit"]) == 0
    heads = f"{root}/head_a and {root}/head_b: merge one of those to keep that classifier"
    again = {**recipe, "model_a": {"path": str(root)}, "evaluation": {"source": "digits"}}
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(again))
    with pytest.raises(ConfigError, match="first has no classifier head") as refused:
        merge_recipe(tmp_path / "again.yaml")
    assert str(refused.value).endswith(heads)
    (tmp_path / "again.yaml").write_text(yaml.safe_dump({**again, "evaluation": None}))
    assert main(["merge", str(tmp_path / "again.yaml"), "--out", str(tmp_path / "second")]) == 0
    card = (tmp_path / "second" / "README.md").read_text()
    assert "(the merge was computed in float32)" in card  # not scored: no scores named
    assert "| first | embedding dimensions 0-31 | A |" in card
    assert "| b | classes 5, 6, 7, 8, 9 | B |" in card
    a, b = load(str(root)), load(str(tmp_path / "b"))
    shown = verdict(a, b)[1]
    assert "classes overlap" not in shown and "A (first) has no classifier" in shown
    assert heads in shown
    # what the workbench says in place of a score (it said "no evaluation data")
    assert IMAGES.unscored_reason(Pair(a, b)) == (
        "first has no classifier (a feature model): not scored"
    )
    assert IMAGES.unscored_reason(Pair(b, b)) == OVERLAPPING_CLASSES


def test_a_float64_merge_runs_its_sequential_refit_in_float64(tmp_path):
    single = merge_recipe(write_case(tmp_path / "f32", "depth")).result.model
    double = merge_recipe(write_case(tmp_path / "f64", "depth", dtype="float64")).result.model
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    x = images(5, 8)  # float32 images, as the parents read them
    with torch.no_grad():
        a, b = single.features(x)[0], double.features(x)[0]
    assert b.dtype == torch.float64
    assert torch.allclose(a.double(), b, atol=1e-3 * float(b.abs().max()))
