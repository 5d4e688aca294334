"""The Python API refuses bad networks, batches, settings and options in one line, up front."""

from __future__ import annotations

import copy
import re

import pytest
import torch

import heterogui
from heterogui.errors import ConfigError, IncompatibleModelsError, ModelLoadError
from heterogui.models.family import build_network
from heterogui.models.mlp import MLPConfig
from heterogui.nway import merge_group
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from tests.conftest import DEPTH_PAIRS, make, tiny_hf, token_batches

CONFIG_A, CONFIG_B, SHAPE = DEPTH_PAIRS["mlp"]


@pytest.fixture(scope="module")
def nets():
    return make(CONFIG_A, 0), make(CONFIG_B, 1)


def batches(n=4, size=32, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(size, *SHAPE, generator=gen, dtype=dtype) for _ in range(n)]


def refused(error, words, call) -> None:
    with pytest.raises(error, match=re.escape(words)) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (
            ZipSettings(overrides={"block0": {"rh": 0.0}}),
            "zip.overrides.block0: unknown keys ['rh']",
        ),
        (ZipSettings(heads="bogus"), "zip.heads 'bogus' is unknown"),
        (ZipSettings(rho="0.5"), "settings.rho = '0.5' must be a number"),
        (ZipSettings(rho=True), "settings.rho = True must be a number"),
        (ZipSettings(rho=1.5), "rho = 1.5 is out of range"),
        (ZipSettings(stop=-1), "settings.stop = -1 must be a whole number from 0"),
        ({"rho": 0.5}, "settings must be a heterogui.pipeline.ZipSettings, got a dict"),
    ],
)
def test_settings_get_the_recipes_checks(nets, settings, words, prepared):
    refused(ConfigError, words, lambda: heterogui.merge(*nets, batches(), settings=settings))
    # and so does the re-merge from cached statistics (a TypeError, an AttributeError before)
    refused(ConfigError, words, lambda: zip_prepared(prepared, settings))


@pytest.fixture(scope="module")
def prepared(nets):
    return prepare(*nets, batches())


def test_numpy_numbers_are_numbers(nets):
    import numpy as np

    settings = ZipSettings(rho=np.float32(0.5), stop=np.int64(2))
    done = heterogui.merge(*nets, batches(), settings=settings)
    assert done.spec.stop == 2


def test_a_hugging_face_model_without_values_is_refused_before_conversion():
    from transformers import BertModel

    with torch.device("meta"):
        ghost = BertModel(tiny_hf().config)
    refused(
        ConfigError,
        "model A has weights on the meta device",
        lambda: heterogui.merge(ghost, tiny_hf(), token_batches()),
    )


def test_an_override_for_a_merge_point_is_applied_not_ignored(nets):
    """The checks leave good settings alone: the override sets that point's width."""
    done = heterogui.merge(
        *nets, batches(), settings=ZipSettings(overrides={"block0": {"rho": 0.0}})
    )
    widths = done.widths()
    assert widths["block0"][-1] == widths["block0"][0] + widths["block0"][1]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (torch.randn(64, *SHAPE), "must be a list of batches, got one tensor"),
        ([], "give calibration batches"),
        (batches()[:3] + [torch.randn(1, *SHAPE)], "batch 4 of 4 holds 1 input(s)"),
        (batches()[:2] + [torch.zeros(0, *SHAPE)], "batch 3 of 3 holds 0 input(s)"),
        (batches(dtype=torch.float64), "inputs are float64 but model A computes in float32"),
        ([torch.randint(0, 255, (32, *SHAPE), dtype=torch.uint8)], "inputs are uint8"),
        ([torch.randn(32, 12)], "calibration inputs have shape (32, 12) but model A reads 64"),
        (  # NaN was blamed on the models overflowing ("check the data's scale")
            [batches()[0], batches()[1].index_fill_(0, torch.tensor([3]), float("nan"))],
            "calibration batch 2 of 2: NaN or inf in 1 input(s), the first at row 3; remove",
        ),
    ],
)
def test_bad_batches_are_refused_before_the_merge(nets, data, words):
    refused(ConfigError, words, lambda: heterogui.merge(*nets, data))


def test_a_short_last_batch_says_to_drop_it(nets):
    data = list(torch.randn(129, *SHAPE).split(32))
    refused(
        ConfigError,
        "drop it (DataLoader(..., drop_last=True))",
        lambda: heterogui.merge(*nets, data),
    )


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"device": "gpu"}, "device 'gpu' is unknown"),
        ({"device": "meta"}, "device 'meta' is unknown"),
        ({"dtype": "float16"}, "dtype 'float16' is unknown"),
        ({"rho": 0.5}, "unknown option(s) ['rho']; zip knobs go in settings=ZipSettings(rho=...)"),
        ({"devices": "cpu"}, "unknown option(s) ['devices']; it takes ['device', 'dtype', "),
        ({"mode": "LMA"}, "mode 'LMA' is unknown"),
        ({"mode": "manual"}, "mode='manual' takes a mapping"),
        ({"mode": "lma", "manual": {"a": [[0]], "b": [[0]]}}, "a mapping takes mode='manual'"),
        ({"measure": "weights"}, "measure 'weights' is unknown"),
        ({"stats_budget": "2GB"}, "stats_budget = '2GB' must be a number of bytes"),
        ({"stats_budget": -1}, "stats_budget = -1 must be positive"),
        ({"reset_input_bn": "no"}, "reset_input_bn = 'no' must be True or False"),
        ({"progress": 5}, "progress must be a function"),
    ],
)
def test_bad_options_are_refused(nets, options, words):
    refused(ConfigError, words, lambda: heterogui.merge(*nets, batches(), **options))


def test_networks_that_cannot_merge_are_refused_as_such(nets):
    a, b = nets
    wide = copy.deepcopy(b)
    wide.module.double()
    refused(
        ConfigError,
        "the models compute in different dtypes (float32, float64)",
        lambda: heterogui.merge(a, wide, batches()),
    )
    broken = copy.deepcopy(b)
    with torch.no_grad():
        next(broken.module.parameters())[0, 0] = float("nan")
    refused(
        ModelLoadError, "holds 1 NaN or inf value(s)", lambda: heterogui.merge(a, broken, batches())
    )
    with torch.device("meta"):
        ghost = build_network(MLPConfig(64, (32,), 5))
    refused(
        ConfigError,
        "model A has weights on the meta device",
        lambda: heterogui.merge(ghost, b, batches()),
    )
    head_only = build_network(MLPConfig(64, (), 5))
    refused(
        IncompatibleModelsError,
        "model A has no layer before its head",
        lambda: heterogui.merge(head_only, b, batches()),
    )
    other = build_network(MLPConfig(12, (16,), 5))
    refused(
        IncompatibleModelsError,
        "model A reads inputs of width 64 and model B of width 12",
        lambda: heterogui.merge(a, other, batches()),
    )
    # a text model beside an image model: different models, not bad data
    refused(
        IncompatibleModelsError,
        "model A is a bert and model B a mlp",
        lambda: heterogui.merge(tiny_hf(), b, token_batches()),
    )


def test_token_batches_a_model_cannot_read_are_refused():
    a, b = tiny_hf(seed=0), tiny_hf(seed=1, layers=2)
    good = token_batches()
    refused(
        ConfigError,
        "must be a list of batches, got one tokenizer output",
        lambda: heterogui.merge(a, b, good[0]),
    )
    positions = a.config.max_position_embeddings
    long = [{"input_ids": torch.ones(4, positions + 1, dtype=torch.long)}]
    refused(
        ConfigError,
        f"tokens are longer than model A's {positions} positions",
        lambda: heterogui.merge(a, b, long),
    )
    mask = [{**good[0], "attention_mask": good[0]["attention_mask"][:, :-1]}]
    refused(ConfigError, "attention_mask has shape", lambda: heterogui.merge(a, b, mask))


def test_merge_group_checks_its_input_as_merge_does(nets):
    a, b = nets
    refused(
        ConfigError,
        "model C is a torch.nn.modules.container.Sequential",
        lambda: merge_group([a, b, torch.nn.Sequential()], batches()),
    )
    refused(ConfigError, "give calibration batches", lambda: merge_group([a, b, a], []))
    refused(ConfigError, "got one tensor", lambda: merge_group([a, b, a], torch.randn(64, *SHAPE)))
    refused(
        ConfigError,
        "inputs are float64",
        lambda: merge_group([a, b, a], batches(dtype=torch.float64)),
    )
    refused(
        ConfigError,
        "zip.heads 'bogus' is unknown",
        lambda: merge_group([a, b, a], batches(), ZipSettings(heads="bogus")),
    )
    # a generator is read once, as merge reads it
    group = merge_group([a, b, a], (x for x in batches()), device="cpu")
    assert set(group.widths()) == set(merge_group([a, b, a], batches(), device="cpu").widths())


def test_a_recipe_dict_is_refused_with_the_call_that_builds_a_recipe(tmp_path):
    # run.merge(dict) failed with a TypeError about paths; heterogui.merge(dict) said this
    from heterogui import run
    from heterogui.recipe_parse import recipe_from_dict

    data = {"model_a": "zoo:tiny-digits-vgg-depth/a", "model_b": "zoo:tiny-digits-vgg-depth/b"}
    words = (
        "merge(recipe) takes a Recipe or a recipe file, not a dict: build the Recipe of a dict "
        "with heterogui.recipe_parse.recipe_from_dict(data)"
    )
    for merge in (heterogui.merge, run.merge):
        with pytest.raises(ConfigError, match=re.escape(words)):
            merge(data)
    done = heterogui.merge(recipe_from_dict(data))  # as the message says
    assert done.widths()


def test_nonfinite_rows_are_found_in_inputs_of_any_shape():
    from heterogui.datasets.images import refuse_nonfinite_rows

    for inputs in (
        torch.tensor([1.0, float("nan"), 2.0]),
        torch.ones(3, 2, 2).index_fill_(0, torch.tensor([1]), float("inf")),
    ):
        with pytest.raises(
            ConfigError, match=re.escape("x: NaN or inf in 1 input(s), the first at row 1")
        ):
            refuse_nonfinite_rows(inputs, "x")
    refuse_nonfinite_rows(torch.arange(4), "token ids")  # integers hold neither
