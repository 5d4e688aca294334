"""Header-only pre-flight: model cards from config + safetensors headers, and pair verdicts."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from heterogui.errors import ModelLoadError  # noqa: E402
from heterogui.sources import minilm  # noqa: E402
from heterogui.sources.pair_rules import check_pair  # noqa: E402
from heterogui.sources.preflight import inspect_model, read_safetensors_header  # noqa: E402


@pytest.fixture(scope="session")
def l3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Same folder as test_hf_minilm's fixture: the ONNX model is converted once per session.
    return minilm.minilm_l3_path(tmp_path_factory.getbasetemp() / "hf" / minilm.L3_NAME)


def tiny(folder: Path, kind: str = "bert", **overrides: object) -> Path:
    """Save a tiny random BERT (or ViT) with safetensors into `folder` and return it."""
    from transformers import BertConfig, BertModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    if kind == "vit":
        model = ViTModel(ViTConfig(**shape, image_size=16, patch_size=4, **overrides))
    else:
        model = BertModel(BertConfig(**{**shape, "vocab_size": 100, **overrides}))
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.slow
def test_minilm_pair_is_mergeable_with_a_depth_note(l3_dir: Path) -> None:
    a, b = inspect_model(minilm.minilm_l6_path()), inspect_model(l3_dir)
    assert (a.family, a.depth, a.hidden, a.heads, a.head_dim) == ("bert", 6, 384, 12, 32)
    assert (b.depth, b.intermediate, b.norm, b.dtypes) == (3, 1536, "post", ("F32",))
    assert a.vocab_hash == b.vocab_hash is not None
    verdict = check_pair(a, b)
    assert verdict.ok and verdict.reasons == ()
    assert any("depths differ (6 vs 3)" in n for n in verdict.notes)
    assert any("estimate" in n for n in verdict.notes)


@pytest.mark.slow
@pytest.mark.parametrize("name", minilm.NAMES)
def test_parameter_count_matches_loaded_model(name: str, l3_dir: Path) -> None:
    model, _ = minilm.load_minilm(name, cache=l3_dir)
    path = minilm.minilm_l6_path() if name == minilm.L6_NAME else l3_dir
    card = inspect_model(path)
    assert card.num_params == sum(p.numel() for p in model.parameters())
    assert card.file_bytes == (path / "model.safetensors").stat().st_size
    assert card.est_merge_bytes > 3 * 4 * card.num_params and card.est_merge_seconds > 0


def test_a_recipe_s_memory_estimate_holds_the_statistics_within_their_budget(monkeypatch):
    # TinyLlama-1.1B's shape with a 16-layer copy: a recipe merges it within 15.3 GiB on a
    # 24 GiB machine (statistics part by part), and the estimate of 37.7 GiB refused it there;
    # the workbench holds every statistic at once, and is still refused
    from heterogui.sources.preflight import estimate_merge

    a = {"depth": 22, "hidden": 2048, "intermediate": 5632, "num_params": 1_100_048_384}
    b = {"depth": 16, "hidden": 2048, "intermediate": 5632, "num_params": 836_000_000}
    weights = 4 * (a["num_params"] + b["num_params"] + a["num_params"])
    held, _ = estimate_merge(a, b, 32000, 32000)
    in_parts, _ = estimate_merge(a, b, 32000, 32000, budget=6 * 2**30)  # 24 GiB / 4
    assert in_parts == weights + 6 * 2**30 < 18 * 2**30 < 37 * 2**30 < held


def test_the_verdict_gives_both_estimates(tmp_path: Path) -> None:
    # a recipe's merge is checked against the budgeted one (run.load_pair), the workbench's
    # and an N-way merge's against the one that holds every statistic
    folder = tiny(tmp_path / "a")
    verdict = check_pair(inspect_model(folder), inspect_model(folder))
    assert verdict.ok and 0 < verdict.statistics < verdict.memory
    assert verdict.memory_within(100) == verdict.memory - verdict.statistics + 100
    assert verdict.memory_within(2**60) == verdict.memory


def test_a_recipe_s_pair_is_checked_with_its_statistics_within_the_budget(tmp_path, monkeypatch):
    from heterogui import host_memory, run

    checked = []
    monkeypatch.setattr(host_memory, "check_fits", checked.append)
    monkeypatch.setenv("HETEROGUI_STATS_BUDGET_MB", "0.001")
    folder = tiny(tmp_path / "a")
    with pytest.raises(ModelLoadError, match="has no tokenizer"):  # checked before loading
        run.load_pair(str(folder), str(folder))
    verdict = check_pair(inspect_model(folder), inspect_model(folder))
    assert checked == [verdict.memory_within(int(0.001 * 2**20))] and checked[0] < verdict.memory


def test_tiny_bert_card_counts_parameters(tmp_path: Path) -> None:
    from transformers import AutoModel

    card = inspect_model(tiny(tmp_path / "a"))
    model = AutoModel.from_pretrained(tmp_path / "a", local_files_only=True)
    assert card.num_params == sum(p.numel() for p in model.parameters())
    assert (card.vocab_size, card.head_dim, card.max_positions) == (100, 8, 512)


@pytest.mark.parametrize(
    ("kind", "overrides", "words"),
    [
        ("bert", {"vocab_size": 120}, "vocabularies differ (100 vs 120"),
        ("bert", {"num_attention_heads": 2}, "head dimensions differ (8 vs 16)"),
        ("bert", {"hidden_act": "relu"}, "activation functions differ"),
        ("bert", {"max_position_embeddings": 128}, "position embedding sizes differ"),
        ("vit", {}, "model families differ (bert vs vit)"),
    ],
)
def test_incompatible_pairs_are_refused(
    tmp_path: Path, kind: str, overrides: dict, words: str
) -> None:
    verdict = check_pair(
        inspect_model(tiny(tmp_path / "a")), inspect_model(tiny(tmp_path / "b", kind, **overrides))
    )
    assert not verdict.ok
    assert any(words in r for r in verdict.reasons), verdict.reasons


def test_vit_card_is_pre_norm_with_patch_positions(tmp_path: Path) -> None:
    card = inspect_model(tiny(tmp_path / "v", "vit"))
    assert (card.family, card.norm, card.vocab_size, card.max_positions) == ("vit", "pre", None, 17)


def test_same_size_different_vocabulary_is_refused(tmp_path: Path) -> None:
    a, b = tiny(tmp_path / "a"), tiny(tmp_path / "b")
    (a / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(100)))
    (b / "vocab.txt").write_text("\n".join(f"other{i}" for i in range(100)))
    verdict = check_pair(inspect_model(a), inspect_model(b))
    assert not verdict.ok and "vocabularies differ" in verdict.reasons[0]


def test_width_and_depth_differences_are_notes(tmp_path: Path) -> None:
    a = inspect_model(tiny(tmp_path / "a"))
    wide = dict(hidden_size=64, num_attention_heads=8, intermediate_size=128, num_hidden_layers=3)
    b = inspect_model(tiny(tmp_path / "b", **wide))
    verdict = check_pair(a, b)
    assert verdict.ok, verdict.reasons
    text = " ".join(verdict.notes)
    for words in ("depths differ (2 vs 3)", "hidden widths differ (32 vs 64)", "head counts"):
        assert words in text


def test_missing_folder_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist; pass a folder that contains"):
        inspect_model(tmp_path / "nope")


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("vocab_size", "many", "vocab_size must be a whole number of at least 1, got 'many'"),
        ("num_attention_heads", 0, "num_attention_heads must be a whole number of at least 1"),
        ("hidden_size", "384", "hidden_size must be a whole number of at least 1, got '384'"),
        ("layer_norm_eps", "x", "layer_norm_eps must be a positive number, got 'x'"),
        ("num_hidden_layers", True, "num_hidden_layers must be a whole number"),
    ],
)
def test_a_config_number_of_the_wrong_type_is_named(tmp_path: Path, field, value, words) -> None:
    folder = tiny(tmp_path / "a")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ModelLoadError, match=words) as err:
        inspect_model(folder)
    assert str(err.value).startswith(f"{folder}/config.json: {field} must be")


@pytest.mark.parametrize(
    "change, words",
    [
        (
            {"num_attention_heads": 5},
            "hidden_size (32) is not a multiple of num_attention_heads (5), and no head_dim is set",
        ),
        (
            {"num_key_value_heads": 3},
            "num_attention_heads (4) is not a multiple of num_key_value_heads (3)",
        ),
        (  # a name the number checks do not know: it divided by zero
            {"num_attention_heads": None, "n_heads": 0},
            "n_heads must be a whole number of at least 1, got 0",
        ),
        ({"head_dim": 16, "num_attention_heads": 5}, None),  # head_dim set: no rule to break
    ],
)
def test_heads_that_cannot_divide_the_width_are_named_as_the_folder_s(tmp_path, change, words):
    # merged with a sound model, this was blamed on the pair: "head dimensions differ (8 vs 6)"
    folder = tiny(tmp_path / "a")  # hidden 32, 4 heads
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    if words is None:
        assert inspect_model(folder).head_dim == 16
        return
    with pytest.raises(ModelLoadError, match=re.escape(f"{folder}/config.json: {words}")):
        inspect_model(folder)


def test_a_vocab_size_the_embedding_does_not_have_is_named(tmp_path: Path) -> None:
    folder = tiny(tmp_path / "a")  # 100 tokens
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 120}))
    with pytest.raises(ModelLoadError, match="says vocab_size 120, but the weights' token emb"):
        inspect_model(folder)


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no config.json"):
        inspect_model(tmp_path)


def test_pickle_only_weights_point_to_conversion(tmp_path: Path) -> None:
    folder = tiny(tmp_path / "a")
    (folder / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        inspect_model(folder)
    # loading it (the workbench's path) says the same, not transformers' "no file named ..."
    from heterogui.models.hf.common import load_pretrained

    with pytest.raises(ModelLoadError, match=r"only as PyTorch pickles .*weights_only=True"):
        load_pretrained(folder, "AutoModelForSequenceClassification", "BERT")


def test_torch_save_file_named_safetensors_is_refused(tmp_path: Path) -> None:
    folder = tiny(tmp_path / "a")
    torch.save({"w": torch.zeros(2)}, folder / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"torch\.save\), not safetensors"):
        inspect_model(folder)


def test_header_longer_than_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(ModelLoadError, match="not a valid safetensors file: header length 10000"):
        read_safetensors_header(bad)


def test_corrupt_header_json_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(struct.pack("<Q", 6) + b"{nope!" + b"\0" * 16)
    with pytest.raises(ModelLoadError, match="corrupt safetensors header"):
        read_safetensors_header(bad)


def test_a_header_nested_thousands_deep_is_one_line(tmp_path: Path) -> None:
    header = b'{"__metadata__":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ModelLoadError, match=r"corrupt safetensors header \(nested too deeply\)"):
        read_safetensors_header(bad)


def test_a_config_nested_thousands_deep_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ModelLoadError, match=r"config.json is not valid JSON \(nested too deep"):
        inspect_model(tmp_path)


def test_a_weight_stored_as_integers_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "model.safetensors"  # a dtype written over, or a quantized model
    tensors = {"position_ids": torch.arange(4), "layer.weight": torch.zeros(2, dtype=torch.int32)}
    save_file(tensors, str(bad))
    with pytest.raises(ModelLoadError, match=r"stores layer.weight as I32, but weights are float"):
        read_safetensors_header(bad)
    save_file({"position_ids": torch.arange(4), "layer.weight": torch.zeros(2)}, str(bad))
    assert read_safetensors_header(bad)["position_ids"]["dtype"] == "I64"  # a buffer may be


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [4], "data_offsets": [0, 32]},  # 16 bytes of data
        {"dtype": "F32", "shape": None, "data_offsets": [0, 16]},  # a TypeError before
        {"dtype": "F32", "shape": [4], "data_offsets": [0]},  # an IndexError before
        {"dtype": "F32", "shape": [4], "data_offsets": None},
        {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]},
        {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]},
        {"dtype": 7, "shape": [4], "data_offsets": [0, 16]},
    ],
)
def test_a_malformed_header_entry_is_refused(tmp_path: Path, entry: dict) -> None:
    header = json.dumps({"w": entry}).encode()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(ModelLoadError, match="corrupt safetensors entry for 'w'"):
        read_safetensors_header(bad)
    good = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    header = json.dumps({"w": good}).encode()
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    assert read_safetensors_header(bad) == {"w": good}


def test_a_text_config_without_vocab_size_or_with_odd_architectures_is_named(tmp_path) -> None:
    folder = tiny(tmp_path / "a")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": -1}))
    with pytest.raises(ModelLoadError, match="architectures must be a list of class names, got"):
        inspect_model(folder)
    del config["vocab_size"]  # the pair check compared None with a number: a TypeError
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="config.json has no vocab_size"):
        inspect_model(folder)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ("{nope", "not a valid safetensors index"),
        ("[1, 2]", 'needs a "weight_map" of tensor names'),
        ('{"weight_map": {"w": 3}}', 'needs a "weight_map" of tensor names'),
        ('{"weight_map": {"w": "../outside.safetensors"}}', "not a file beside the index"),
        ('{"weight_map": {"w": "/etc/hostname"}}', "not a file beside the index"),
    ],
)
def test_a_bad_shard_index_is_refused_with_the_fix(tmp_path: Path, index: str, message: str):
    """A sharded folder's index must map tensor names to files beside it: anything else is a
    one-line ModelLoadError that says how to repair the folder, and no file outside is read."""
    folder = tiny(tmp_path / "a")
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(index)
    with pytest.raises(ModelLoadError, match=message) as caught:
        inspect_model(folder)
    assert "save_pretrained(..., safe_serialization=True)" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_sharded_folder_is_read_through_its_index(tmp_path: Path) -> None:
    folder = tiny(tmp_path / "a")
    whole = inspect_model(folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    header = read_safetensors_header(folder / "model-00001-of-00001.safetensors")
    weight_map = {name: "model-00001-of-00001.safetensors" for name in header}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = inspect_model(folder)
    assert sharded == whole and whole.num_params > 0  # the same card, read through the index


def test_a_pair_blocked_twice_is_told_both_reasons_at_once(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from heterogui.sources.registry import preflight

    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    config = BertConfig(**shape, vocab_size=100, num_labels=2, id2label={0: "neg", 1: "pos"})
    BertForSequenceClassification(config).save_pretrained(tmp_path / "a")
    b = tiny(tmp_path / "b", vocab_size=120)  # an embedding model of another vocabulary
    verdict = preflight(str(tmp_path / "a"), str(b))
    assert not verdict.ok and len(verdict.reasons) == 2  # not the task's alone, then the other
    assert "is scored on text classification" in verdict.reasons[0]
    assert "vocabularies differ (100 vs 120" in verdict.reasons[1]


def test_a_merge_the_free_memory_cannot_hold_is_refused_before_loading(tmp_path, monkeypatch):
    # Over a container's limit, the system's out-of-memory killer ended merges (and the
    # workbench, with every session) without a word; the estimate was only a note.
    from heterogui import host_memory
    from heterogui.errors import ConfigError
    from heterogui.run import load_pair
    from heterogui.sources.registry import preflight

    a, b = tiny(tmp_path / "a"), tiny(tmp_path / "b", num_hidden_layers=1)
    needed = preflight(str(a), str(b)).memory
    assert needed is not None and needed > 0
    monkeypatch.setattr(host_memory, "available_memory", lambda: needed - 1)
    monkeypatch.delenv("HETEROGUI_MEMORY_CHECK", raising=False)
    with pytest.raises(ConfigError, match=r"this merge needs about .* GiB of memory by the pre"):
        load_pair(str(a), str(b))
    # Past the check, the loading goes on (and stops at these folders' missing tokenizer):
    # when the user says so, and when the memory is there.
    monkeypatch.setenv("HETEROGUI_MEMORY_CHECK", "off")
    with pytest.raises(ModelLoadError, match="has no tokenizer"):
        load_pair(str(a), str(b))
    monkeypatch.delenv("HETEROGUI_MEMORY_CHECK")
    monkeypatch.setattr(host_memory, "available_memory", lambda: needed)
    with pytest.raises(ModelLoadError, match="has no tokenizer"):
        load_pair(str(a), str(b))


def test_the_memory_figures_heed_an_address_space_limit():
    import resource
    import subprocess
    import sys

    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, "
        "resource.getrlimit(resource.RLIMIT_AS)[1])); from heterogui import host_memory as h; "
        "print(h.machine_memory(), h.available_memory() or 0, h.stats_budget())"
    )
    if resource.getrlimit(resource.RLIMIT_AS)[1] not in (resource.RLIM_INFINITY,) and (
        resource.getrlimit(resource.RLIMIT_AS)[1] < 3 * 2**30
    ):
        pytest.skip("a hard address-space limit below 3 GiB here")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    machine, free, budget = map(int, done.stdout.split())
    assert machine <= 3 * 2**30 and free <= 3 * 2**30 and budget == machine // 4
