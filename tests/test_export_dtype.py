"""The dtype an export writes the merged weights in: the models' own as stored, or as asked.

Float16 and bfloat16 models are read and merged in float32 (statistics in half precision lose
matchings); the export writes the merge back in the dtype both models are stored in, so a merge
of two bfloat16 models is a bfloat16 folder of their size, not a float32 one of twice it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import heterogui
from heterogui.errors import ConfigError
from heterogui.models.headers import read_safetensors_header, stored_dtype
from heterogui.run_export import export_dtype
from heterogui.sources.gguf_files import FLOAT_FILE_TYPES, quantized_bits
from tests.conftest import DEPTH_PAIRS, make, save_decoder, tiny_decoder

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "for k in range(10):\n    print(k * k)\n",
    "A merge of two models of different depth.",
]


def test_stored_dtype_is_the_dtype_that_holds_most_numbers(tmp_path):
    half = tmp_path / "half.safetensors"  # float16 weights, a float32 norm, integer ids
    tensors = {"w": torch.zeros(8, 8, dtype=torch.float16), "norm.weight": torch.zeros(8)}
    save_file(tensors | {"position_ids": torch.zeros(3, dtype=torch.int64)}, half)
    assert stored_dtype([half]) == "float16"
    fp8 = tmp_path / "fp8.safetensors"
    save_file({"w": torch.zeros(4, 4).to(torch.float8_e4m3fn)}, fp8)
    assert stored_dtype([fp8]) is None  # FP8: written as float32
    ids = tmp_path / "ids.safetensors"
    save_file({"position_ids": torch.zeros(3, dtype=torch.int64)}, ids)
    assert stored_dtype([ids]) is None


def test_a_gguf_file_of_floats_is_not_called_quantized():
    assert quantized_bits("F16") is None and quantized_bits("BF16") is None
    assert quantized_bits("Q4_1").group(1) == "4" and quantized_bits("IQ2_XS").group(1) == "2"
    assert FLOAT_FILE_TYPES == {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def pair_of(*stored):
    return SimpleNamespace(
        models=[SimpleNamespace(name=f"m{k}", stored_dtype=d) for k, d in enumerate(stored)]
    )


@pytest.mark.parametrize(
    ("stored", "asked", "written", "why"),
    [
        (("float16", "float16"), "auto", "float16", "the dtype both source models are stored in"),
        (("bfloat16",) * 3, "auto", "bfloat16", "the dtype all source models are stored in"),
        (("float16", "bfloat16"), "auto", "float32", "m0: float16, m1: bfloat16"),
        (("float16", None), "auto", "float32", "m1: quantized or FP8"),
        (("float16", "float16"), "float32", "float32", "as asked"),
        (("float32", "float32"), "bfloat16", "bfloat16", "as asked"),
    ],
)
def test_auto_keeps_the_dtype_every_model_is_stored_in(stored, asked, written, why):
    weights = export_dtype(pair_of(*stored), asked)
    assert weights.name == written and why in weights.why
    assert "computed in float32" in weights.why
    assert weights.flag == ("" if asked == "auto" else f" --export-dtype {written}")


def test_an_unknown_export_dtype_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="export dtype 'int8' is unknown; use one of auto, "):
        export_dtype(pair_of("float32", "float32"), "int8")


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """A merge of two bfloat16 decoders of different depth and width, as a recipe runs it."""
    from heterogui import run
    from heterogui.recipe_parse import recipe_from_dict

    root = tmp_path_factory.mktemp("bf16")
    a = tiny_decoder(hidden=32, layers=4, heads=4, kv=2, seed=1).to(torch.bfloat16)
    b = tiny_decoder(hidden=48, layers=2, heads=6, kv=3, seed=2).to(torch.bfloat16)
    (root / "calib.txt").write_text("\n".join(TEXTS * 3) + "\n")
    recipe = recipe_from_dict(
        {
            "model_a": {"path": str(save_decoder(a, root / "a"))},
            "model_b": {"path": str(save_decoder(b, root / "b"))},
            "calibration": {"source": str(root / "calib.txt"), "size": 12, "batch_size": 6},
            "device": "cpu",
        }
    )
    return run.merge(recipe, evaluate=False), root


def dtypes_of(folder, name="model.safetensors"):
    return {v["dtype"] for v in read_safetensors_header(folder / name).values()}


def test_a_merge_of_bfloat16_models_is_written_in_bfloat16(bf16_run):
    from transformers import AutoModelForCausalLM

    from heterogui.run_export import export

    done, root = bf16_run
    assert {m.stored_dtype for m in done.pair.models} == {"bfloat16"}
    assert next(done.result.model.parameters()).dtype == torch.float32  # merged in float32
    auto = export(done, root / "auto")
    full = export(done, root / "full", dtype="float32")
    assert dtypes_of(auto) == {"BF16"} and dtypes_of(full) == {"F32"}
    assert json.loads((auto / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((auto / "report.json").read_text())["weights_dtype"] == "bfloat16"
    card = (auto / "README.md").read_text()
    assert "Weights: stored in bfloat16, the dtype both source models are stored in" in card
    assert "--export-dtype" not in card  # the default: the rerun command needs no flag
    assert "--export-dtype float32` repeats this merge" in (full / "README.md").read_text()
    # the same merge, rounded once: every bfloat16 number is its float32 number rounded
    rounded, exact = load_file(auto / "model.safetensors"), load_file(full / "model.safetensors")
    assert rounded.keys() == exact.keys()
    for key, value in exact.items():
        assert torch.equal(rounded[key], value.to(torch.bfloat16)), key
    loaded = AutoModelForCausalLM.from_pretrained(auto)
    assert loaded.dtype == torch.bfloat16  # transformers reads the dtype from config.json


def test_the_heterogui_format_takes_the_dtype_asked_for(bf16_run):
    from heterogui.run_export import export

    done, root = bf16_run
    half = export(done, root / "half", fmt="heterogui", dtype="float16")
    assert dtypes_of(half) == {"F16"}
    assert json.loads((half / "report.json").read_text())["weights_dtype"] == "float16"


def test_the_api_widens_half_precision_networks_and_inputs_to_float32():
    config_a, config_b, shape = DEPTH_PAIRS["mlp"]
    a, b = make(config_a, 0), make(config_b, 1)
    half = [copy.deepcopy(n.module).to(torch.bfloat16) for n in (a, b)]
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(32, *shape, generator=gen) for _ in range(4)]

    def as_net(net, module):
        return dataclasses.replace(net, module=module)

    half_nets = [as_net(a, half[0]), as_net(b, half[1])]
    widened = [as_net(a, copy.deepcopy(half[0]).float()), as_net(b, copy.deepcopy(half[1]).float())]
    merged = heterogui.merge(*half_nets, [x.to(torch.float16) for x in batches])
    reference = heterogui.merge(*widened, [x.to(torch.float16).float() for x in batches])
    assert all(p.dtype == torch.bfloat16 for p in half[0].parameters())  # the caller's, as given
    state, expected = merged.model.state_dict(), reference.model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_the_cli_reruns_a_recorded_recipe_to_the_same_bfloat16_folder(bf16_run, capsys):
    from heterogui.cli import main
    from heterogui.run_export import export

    done, root = bf16_run
    first = export(done, root / "first")
    recipe = root / "recorded.yaml"
    recipe.write_text(done.recipe.to_yaml())
    assert main(["merge", str(recipe), "--out", str(root / "again"), "--threads", "1"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("(bfloat16 weights)")
    again = root / "again"
    assert (again / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    out = root / "cli-half"
    assert main(["merge", str(recipe), "--out", str(out), "--export-dtype", "float16"]) == 0
    assert dtypes_of(out) == {"F16"}


def test_fp8_weights_are_said_to_be_read_as_float32(tmp_path):
    from transformers import BertTokenizer

    from heterogui.sources.registry import load
    from tests.conftest import tiny_hf

    folder = tmp_path / "fp8"
    model = tiny_hf(layers=2)
    model.save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    low = {
        k: v.to(torch.float8_e4m3fn) if k.endswith("dense.weight") else v for k, v in state.items()
    }
    save_file(low, folder / "model.safetensors", metadata={"format": "pt"})
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "merge"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    loaded = load(str(folder))
    assert "its weights are stored in FP8 (F8_E4M3): heterogui reads" in loaded.note
    assert next(loaded.net.module.parameters()).dtype == torch.float32
