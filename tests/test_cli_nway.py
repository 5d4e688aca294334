"""Recipes with a list of three models, through the CLI and the Python API (heterogui.run_group).

One merge of the tiny VGG trio (three disjoint digit tasks) is shared by the tests: its folder,
its report and the in-memory merge its completed recipe repeats.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

import heterogui
from heterogui.cli import main
from heterogui.config import Recipe
from heterogui.errors import ConfigError
from heterogui.models.io import state_sha256
from heterogui.nway import GroupMergeResult
from heterogui.recipe_parse import load_recipe, parse_recipe, recipe_from_dict
from heterogui.run import merge as run_merge
from heterogui.sources.folder import load_merged
from heterogui.sources.registry import load

TRIO = [f"zoo:tiny-digits-vgg-trio/{k}" for k in "abc"]
CALIBRATION = {"source": "digits", "size": 64, "batch_size": 32}
EVALUATION = {"source": "digits", "split": "test", "size": 256}


def trio_recipe(**fields) -> dict:
    """Return a recipe dict merging the trio (plain paths and a mapping, as users write)."""
    return {
        "models": [TRIO[0], {"path": TRIO[1]}, TRIO[2]],
        "calibration": CALIBRATION,
        "evaluation": EVALUATION,
        "device": "cpu",
        **fields,
    }


def write(folder: Path, data: dict, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def cli(args: list[str]) -> tuple[int, str, str]:
    """Run the CLI; return its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """The trio merged once through the CLI, and again in memory from its completed recipe."""
    root = tmp_path_factory.mktemp("trio")
    out = root / "merged"
    code, printed, err = cli(["merge", str(write(root, trio_recipe())), "-o", str(out)])
    assert code == 0, err
    again = heterogui.merge(out / "recipe.yaml")  # the Python API, from the recorded recipe
    return {"root": root, "out": out, "printed": printed, "again": again}


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_the_cli_writes_a_scored_folder_of_three_models(trio):
    out = trio["out"]
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "model.safetensors",
        "recipe.yaml",
        "report.json",
        "README.md",
        "widths.svg",
        ".heterogui-output",
    }
    report = json.loads((out / "report.json").read_text())
    metrics = report["metrics"]
    assert list(metrics) == ["a", "b", "c", "ensemble", "merged"]
    for k, key in enumerate("abc"):  # each model alone is scored on its own task only
        accuracies = [t["accuracy"] for t in metrics[key]["tasks"]]
        assert [a is not None for a in accuracies] == [j == k for j in range(3)]
    joint, ensemble = metrics["merged"]["joint"], metrics["ensemble"]["joint"]
    print(f"trio Joint accuracy: merged {joint:.4f}, ensemble {ensemble:.4f}")
    assert isinstance(joint, float) and 0.0 <= joint <= 1.0
    assert sum(t["count"] for t in metrics["merged"]["tasks"]) == 256
    assert report["reference"] == "c"  # the deepest: 3+3 convs
    assert report["alignment"]["models"]["c"] is None
    # each model's mapping names the reference's slots and its own
    assert report["alignment"]["models"]["a"]["mapping"] == {
        "c": [[0, 1, 2], [0, 1, 2]],
        "a": [[0], [0]],
    }
    assert set(report["parameters"]) == {"a", "b", "c", "ensemble", "merged"}
    assert report["parameters"]["ensemble"] == sum(report["parameters"][k] for k in "abc")
    assert all(len(w) == 4 for w in report["widths"].values())
    assert [h["model"] for h in report["heads"]] == ["A", "B", "C"]
    assert {"prepare.features", "zip.match", "total", "evaluation"} <= set(
        report["timings_seconds"]
    )
    summary = json.loads(trio["printed"].rsplit("wrote", 1)[0])
    assert list(summary["metrics"]) == ["a", "b", "c", "ensemble", "merged"]
    merged_tasks = {t["name"]: round(t["accuracy"], 4) for t in metrics["merged"]["tasks"]}
    assert summary["metrics"]["merged"]["tasks"] == merged_tasks  # name -> accuracy, rounded
    assert summary["metrics"]["merged"]["joint"] == round(joint, 4)
    card = (out / "README.md").read_text()
    assert "| width C |" in card and "| ensemble |" in card and "heterogui format only" in card


def test_the_folder_loads_back_and_computes_the_merge(trio):
    again = trio["again"]
    assert isinstance(again, GroupMergeResult)
    reloaded = load_merged(trio["out"])
    x = inputs()
    with torch.no_grad():
        outs, mine = reloaded(x), again.model(x)
        assert len(outs) == 3
        for a, b in zip(outs, mine, strict=True):
            assert torch.equal(a, b)
        one = load(str(trio["out"])).net  # one network with every task head side by side
        assert torch.allclose(one.module(x), torch.cat(mine, 1), atol=1e-5)
    assert state_sha256(reloaded.state_dict()) == state_sha256(again.model.state_dict())
    assert [h.name for h in one.task_heads()] == [f"tiny-digits-vgg-trio/{k}" for k in "abc"]


def test_the_merge_merges_again_as_model_a(trio, tmp_path):
    second = {
        "model_a": {"path": str(trio["out"])},
        "model_b": {"path": "zoo:tiny-digits-vgg-depth/b"},
        "calibration": CALIBRATION,
        "device": "cpu",
    }
    out = tmp_path / "second"
    code, _, err = cli(["merge", str(write(tmp_path, second)), "-o", str(out)])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert [h["model"] for h in report["heads"]] == ["A", "A", "A", "B"]
    with torch.no_grad():
        assert load(str(out)).net.module(inputs()).shape == (16, 15)


def test_a_list_of_models_round_trips():
    recipe = recipe_from_dict(trio_recipe(zip={"rho": 0.5}))
    assert [m.path for m in recipe.models] == TRIO and len(recipe.more_models) == 1
    data = recipe.to_dict()
    assert [m["path"] for m in data["models"]] == TRIO
    assert not {"model_a", "model_b", "more_models"} & set(data)
    assert parse_recipe(recipe.to_yaml()) == recipe
    assert recipe_from_dict(json.loads(recipe.to_json())) == recipe
    two = recipe_from_dict(trio_recipe(models=TRIO[:2]))  # a list of two: model_a, model_b
    assert two.more_models == () and "models" not in two.to_dict()
    assert set(two.to_dict()) == {f.name for f in Recipe.__dataclass_fields__.values()} - {
        "more_models"
    }


def test_a_recorded_trio_recipe_round_trips(trio):
    done = load_recipe(trio["out"] / "recipe.yaml")
    assert [m.path for m in done.models] == TRIO and all(m.sha256 for m in done.models)
    assert done.alignment.mode == "sma" and done.evaluation.sha256 and done.versions["torch"]
    assert done.alignment.measure == "outputs"  # "auto", resolved as the merge resolved it
    assert parse_recipe(done.to_yaml()) == done
    assert "models:" in done.to_yaml() and "model_a" not in done.to_yaml()


def test_a_trio_recipe_records_the_measure_its_alignment_compared(tmp_path):
    # it recorded "auto" whatever the recipe asked, and a rerun aligned by the outputs
    recipe = write(tmp_path, trio_recipe(alignment={"mode": "sma", "measure": "updates"}))
    code, _, err = cli(["merge", str(recipe), "-o", str(tmp_path / "m")])
    assert code == 0, err
    done = load_recipe(tmp_path / "m" / "recipe.yaml")
    assert (done.alignment.mode, done.alignment.measure) == ("sma", "updates")
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["alignment"]["measure"] == "updates"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"models": [TRIO[0]]}, "two or more"),
        ({"model_a": {"path": TRIO[0]}}, "not both (found models and model_a)"),
        ({"models": [TRIO[0], TRIO[1], 3]}, "recipe.models[2].path must be text"),
        ({"models": "zoo:x/a"}, "recipe.models must be a list"),
        ({"more_models": [{"path": TRIO[2]}]}, "models: [A, B, C]"),
    ],
)
def test_bad_model_lists_name_the_field(change, words):
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(trio_recipe(**change))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_rho_zero_scores_as_the_ensemble():
    scores = run_merge(recipe_from_dict(trio_recipe(zip={"rho": 0.0}))).scores
    merged, ensemble = scores["merged"], scores["ensemble"]
    assert merged.joint == pytest.approx(ensemble.joint, abs=1e-12)
    assert merged.tasks == pytest.approx(ensemble.tasks, abs=1e-12)


def test_an_n_way_result_gives_its_widths_like_a_two_model_result(trio):
    # the README's Python example reads result.widths(); an N-way result had none
    done = run_merge(recipe_from_dict(trio_recipe(evaluation=None)))
    widths = done.result.widths()
    assert widths and all(len(w) == 4 for w in widths.values())  # A, B, C, merged
    assert {k: list(v) for k, v in widths.items()} == done.report["widths"]
    for match in done.result.matches.values():  # every model's within-model merges counted
        counts = match.counts()
        assert len(counts.within) == 3 and counts.within[:2] == (counts.within_a, counts.within_b)
        for m, within in enumerate(counts.within):  # its features less the groups they join
            groups = match.groups[match.rows_of(m)]
            groups = groups[groups >= 0]
            assert within == len(groups) - len(set(groups.tolist()))


def test_a_model_listed_twice_is_warned_about(caplog):
    data = trio_recipe(models=[TRIO[0], TRIO[0], TRIO[2]], evaluation=None)
    with caplog.at_level("WARNING", logger="heterogui.run_group"):
        run_merge(recipe_from_dict(data))
    assert f"models lists {TRIO[0]} more than once" in caplog.text


def bert_folders(root: Path) -> list[str]:
    from tests.conftest import tiny_hf

    for k in range(3):
        tiny_hf(seed=k, layers=2 + k).save_pretrained(root / f"bert{k}")
    return [str(root / f"bert{k}") for k in range(3)]


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("one", "give two or more models"),
        ("both", "not both (found models and model_a)"),
        ("bert", "image classifiers"),
        ("hf-bert", "heterogui format only"),
        ("manual", "automatic mode"),
        ("manual without a mapping", "recipe.alignment: an N-way merge aligns every model"),
    ],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(tmp_path, case, words):
    data, args = trio_recipe(), []
    if case == "one":
        data["models"] = TRIO[:1]
    elif case == "both":
        data["model_a"] = {"path": TRIO[0]}
    elif case == "bert":
        data.update(models=bert_folders(tmp_path), calibration={"source": "sentences"})
        data.pop("evaluation")
    elif case == "hf-bert":
        args = ["--format", "hf-bert"]
    elif case == "manual":
        data["alignment"] = {"mode": "manual", "mapping": {"a": [[0]], "b": [[0]]}}
    else:  # it asked for a mapping first, then refused the mode
        data["alignment"] = {"mode": "manual"}
    out = tmp_path / "out"
    code, printed, err = cli(["merge", str(write(tmp_path, data)), "-o", str(out), *args])
    assert code == 2 and printed == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
    assert not out.exists()
    if case == "bert":
        assert "two at a time" in err


def test_overwrite_replaces_an_earlier_trio_folder(trio, tmp_path):
    recipe = write(tmp_path, trio_recipe(evaluation=None))
    out = tmp_path / "out"
    assert cli(["merge", str(recipe), "-o", str(out)])[0] == 0
    code, _, err = cli(["merge", str(recipe), "-o", str(out)])
    assert code == 2 and "already exists" in err
    assert cli(["merge", str(recipe), "-o", str(out), "--overwrite"])[0] == 0
    assert "metrics" not in json.loads((out / "report.json").read_text())


def test_zoo_list_names_the_groups_and_their_references(trio):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["zoo", "list", "--tiny"]) == 0
    text = out.getvalue()
    assert "groups of three or more models" in text
    # the trio fixture built the tiny group: listed as built, with its three references
    line = next(row for row in text.splitlines() if row.startswith("tiny-digits-vgg-trio "))
    assert line.split()[1:] == ["yes", "zoo:tiny-digits-vgg-trio/a|b|c"]
    assert "digits-resnet-trio " not in text  # the full-size groups are listed without --tiny
