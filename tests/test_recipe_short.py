"""Recipes as people write them by hand: plain paths and data names, and where an evaluation
reads from when it does not say (the held-out split, never the calibration data silently)."""

from __future__ import annotations

import logging

import pytest
from safetensors.torch import save_file

from heterogui import run
from heterogui.config import DataRef
from heterogui.errors import ConfigError
from heterogui.recipe_parse import parse_recipe, recipe_from_dict
from heterogui.run_checks import reads_calibration

PAIR = "zoo:tiny-digits-vgg-depth"


def test_plain_paths_and_data_names_mean_their_mappings():
    short = parse_recipe(
        f"model_a: {PAIR}/a\nmodel_b: {PAIR}/b\ncalibration: digits\nevaluation: digits\n"
    )
    spelt = recipe_from_dict(
        {
            "model_a": {"path": f"{PAIR}/a"},
            "model_b": {"path": f"{PAIR}/b"},
            "calibration": {"source": "digits"},
            "evaluation": {"source": "digits", "split": "test", "size": None},
        }
    )
    assert short == spelt
    assert short.calibration == DataRef("digits")  # the calibration's own defaults
    listed = recipe_from_dict({"models": [f"{PAIR}/a", f"{PAIR}/b"], "calibration": "mnist1d"})
    assert listed.calibration.source == "mnist1d" and listed.model_b.path == f"{PAIR}/b"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("model_a: {sha256: abc}\nmodel_b: x\n", "recipe.model_a needs path: write model_a: {path"),
        ("model_a: null\nmodel_b: x\n", "recipe.model_a is empty (null); write model_a: PATH or"),
        ("model_a: x\nmodel_b: y\nalignment: null\n", "or leave alignment out"),
        ("models: [{sha256: abc}, x]\n", "recipe.models[0] needs path: list each as {path"),
        ("model_a: x\nmodel_b: y\nzip: {overrides: null}\n", "overrides is empty (null)"),
        ("model_a: x\nmodel_b: y\nzip: {rho: [1]}\n", "must be a number, got [1] (list)"),
        (  # a width would win over rho without a word
            "model_a: x\nmodel_b: y\nzip: {overrides: {block0: {rho: 0.2, width: 40}}}\n",
            "zip.overrides.block0 sets both rho and width: give one",
        ),
    ],
)
def test_a_missing_or_doubled_field_is_named_in_recipe_words(text, said):
    with pytest.raises(ConfigError) as refused:
        parse_recipe(text)
    message = str(refused.value)
    assert said in message and "__init__" not in message and "NoneType" not in message


def test_numbers_with_an_exponent_are_numbers_in_yaml_and_json():
    # YAML 1.1 reads 1e-3 as a string; a JSON recipe (or a YAML 1.2 reader) means a number
    yaml_text = f"model_a: {PAIR}/a\nmodel_b: {PAIR}/b\nzip: {{rho: 5e-1, ridge: 1e-3}}\n"
    json_text = f'{{"model_a": "{PAIR}/a", "model_b": "{PAIR}/b", "zip": {{"ridge": 2.5E-2}}}}'
    assert (parse_recipe(yaml_text).zip.rho, parse_recipe(yaml_text).zip.ridge) == (0.5, 0.001)
    assert parse_recipe(json_text).zip.ridge == 0.025
    with pytest.raises(ConfigError, match="ridge"):  # 1e400 is inf: refused as out of range
        parse_recipe(f"model_a: {PAIR}/a\nmodel_b: {PAIR}/b\nzip: {{ridge: 1e400}}\n")


@pytest.mark.parametrize(
    ("given", "split", "size"),
    [
        ({"source": "digits"}, "test", None),
        ({"source": "digits", "size": 100}, "test", 100),
        ({"source": "digits", "split": "calibration"}, "calibration", None),
        ("sts", "test", None),
    ],
)
def test_an_evaluation_reads_the_held_out_split_unless_it_says(given, split, size):
    recipe = recipe_from_dict({"model_a": "a", "model_b": "b", "evaluation": given})
    assert (recipe.evaluation.split, recipe.evaluation.size) == (split, size)
    assert recipe_from_dict({"model_a": "a", "model_b": "b"}).evaluation is None


def test_a_recorded_recipe_repeats_its_evaluation_as_written():
    recipe = recipe_from_dict(
        {
            "model_a": "a",
            "model_b": "b",
            "evaluation": {"source": "digits", "split": "calibration", "size": 64},
        }
    )
    assert parse_recipe(recipe.to_yaml()) == recipe
    assert (recipe.evaluation.split, recipe.evaluation.size) == ("calibration", 64)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("model_a: x\nmodel_b: y\ncalibration: [digits]\n", "recipe.calibration must be a mapping"),
        ("model_a: x\nmodel_b: y\nzip: 0.5\n", "write zip: {KEY: VALUE, ...} with keys ["),
        (
            "model_a: [x]\nmodel_b: y\n",
            "model_a must be a mapping, got list ['x']; write model_a: PATH or",
        ),
    ],
)
def test_a_scalar_where_a_mapping_belongs_says_how_to_write_it(text, words):
    with pytest.raises(ConfigError, match=None) as caught:
        parse_recipe(text)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_reading_the_calibration_data_is_named(tmp_path):
    cal = DataRef("digits", "calibration")
    assert reads_calibration(DataRef("digits", "calibration", None), cal)
    assert not reads_calibration(DataRef("digits", "test"), cal)
    assert not reads_calibration(DataRef("mnist1d", "calibration"), cal)
    file = tmp_path / "data.safetensors"
    file.write_bytes(b"")
    on_file = DataRef(str(file), "calibration")
    assert reads_calibration(DataRef(str(file), "test"), on_file)  # a file has no splits


def test_a_merge_scored_on_its_calibration_data_warns(caplog, tmp_path):
    text = f"model_a: {PAIR}/a\nmodel_b: {PAIR}/b\ncalibration: {{source: digits, size: 64}}\n"
    recipe = parse_recipe(text + "evaluation: {source: digits, split: calibration, size: 64}\n")
    pair = run.load_pair(recipe.model_a, recipe.model_b)
    with caplog.at_level(logging.WARNING, logger="heterogui.run"):
        run._recipe_data(pair, recipe)
    said = "evaluation reads the calibration data (digits, split calibration)"
    assert said in caplog.text and "evaluate on split: test" in caplog.text
    caplog.clear()
    held_out = parse_recipe(text + "evaluation: digits\n")
    with caplog.at_level(logging.WARNING, logger="heterogui.run"):
        _, evaluation = run._recipe_data(pair, held_out)
    assert "calibration data" not in caplog.text and evaluation.ref.split == "test"
    assert "train split" not in caplog.text
    trained = parse_recipe(text + "evaluation: {source: digits, split: train, size: 64}\n")
    with caplog.at_level(logging.WARNING, logger="heterogui.run"):
        run._recipe_data(pair, trained)
    assert "evaluation reads the train split of digits: the models may have been" in caplog.text
    # a file has no splits: the fix is another file
    from heterogui.datasets.images import load_split

    split = load_split("digits", "calibration")
    data = tmp_path / "drawn.safetensors"
    save_file({"inputs": split.inputs[:64], "labels": split.labels[:64]}, str(data))
    on_file = f"calibration: {{source: {data}}}\nevaluation: {{source: {data}, split: test}}\n"
    recipe = parse_recipe(f"model_a: {PAIR}/a\nmodel_b: {PAIR}/b\n" + on_file)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="heterogui.run"):
        run._recipe_data(pair, recipe)
    assert f"calibration data ({data}): the merge" in caplog.text
    assert "evaluate on another file" in caplog.text and "split: test" not in caplog.text


@pytest.mark.parametrize(
    ("models", "source", "size"),
    [
        ((f"{PAIR}/a", f"{PAIR}/b"), "digits", 256),
        (("minilm:all-MiniLM-L6-v2", "minilm:paraphrase-MiniLM-L3-v2"), "sentences", 64),
    ],
)
def test_a_recipe_without_calibration_reads_the_models_own_data(models, source, size):
    text = f"model_a: {models[0]}\nmodel_b: {models[1]}\n"
    recipe = parse_recipe(text)
    assert recipe.calibration is None
    assert parse_recipe(text + "calibration: null\n") == recipe
    assert parse_recipe(recipe.to_yaml()) == recipe
    pair = run.load_pair(recipe.model_a, recipe.model_b)
    calibration, _ = run._recipe_data(pair, recipe)
    assert (calibration.ref.source, calibration.ref.split) == (source, "calibration")
    assert calibration.count == size == calibration.ref.size


def test_a_path_beside_the_recipe_but_not_here_says_what_to_write(tmp_path, monkeypatch):
    from heterogui.recipe_parse import load_recipe

    sub = tmp_path / "recipes"
    sub.mkdir()
    (sub / "cal.txt").write_text("one\ntwo\nthree\nfour\n")
    (sub / "model-b").mkdir()
    recipe = sub / "r.yaml"
    recipe.write_text("model_a: minilm:x\nmodel_b: model-b\ncalibration: cal.txt\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_recipe(recipe)
    message = str(caught.value)
    assert "'model-b' is not in the current folder but beside the recipe" in message
    assert "write 'recipes/model-b' or an absolute path" in message and "\n" not in message
    monkeypatch.chdir(sub)  # from the recipe's folder the same text reads
    assert load_recipe(recipe.name).calibration.source == "cal.txt"
    (tmp_path / "model-b").mkdir()  # a folder of that name here: it is the one read
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="write 'recipes/cal.txt'"):
        load_recipe(recipe)


def test_a_chain_s_recorded_recipe_run_from_its_output_folder_names_the_folder_to_run_from(
    tmp_path, monkeypatch
):
    # m2's recipe names m1 relative to the folder both merges ran in; run from inside m2 it
    # said "model folder 'm1' does not exist, and hub ids name their owner ..."
    from heterogui.recipe_parse import load_recipe

    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    recipe = tmp_path / "m2" / "recipe.yaml"
    recipe.write_text("model_a: m1\nmodel_b: minilm:x\ncalibration: sentences\n")
    monkeypatch.chdir(tmp_path / "m2")
    with pytest.raises(ConfigError) as caught:
        load_recipe("recipe.yaml")
    here = tmp_path.resolve()
    assert str(caught.value).startswith(f"'m1' is not in the current folder but in {here},")
    assert f"run heterogui from {here}, or write '../m1'" in str(caught.value)
    monkeypatch.chdir(tmp_path)  # as it says
    assert load_recipe(recipe).model_a.path == "m1"


@pytest.mark.parametrize(
    ("typed", "path"),
    [
        ("  /data/models/a \n", "/data/models/a"),
        ('"/data/my models/a"', "/data/my models/a"),
        ("'~/a'", "~/a"),
        ("'unbalanced", "'unbalanced"),
        ("it's", "it's"),
        (None, ""),
    ],
)
def test_a_typed_path_loses_surrounding_space_and_quotes(typed, path):
    from heterogui.text_input import typed_path

    assert typed_path(typed) == path
