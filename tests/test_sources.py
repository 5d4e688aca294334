"""Model references: one source reads each kind, and a wrong reference says what is wrong."""

from __future__ import annotations

import json

import pytest
import torch

from heterogui.errors import ConfigError, IncompatibleModelsError, ModelLoadError
from heterogui.models.io import save_network
from heterogui.models.mlp import MLPConfig
from heterogui.models.vgg import VGGConfig
from heterogui.run import load_pair
from heterogui.sources.registry import describe, find_source, load, preflight
from heterogui.sources.upload import receive
from tests.conftest import make


def test_each_kind_of_reference_has_its_source(tmp_path):
    save_network(make(MLPConfig(64, (8,), 5), 0), tmp_path / "mlp")
    assert find_source("zoo:tiny-digits-vgg-depth/a").kind == "zoo"
    assert find_source("minilm:all-MiniLM-L6-v2").kind == "minilm"
    assert find_source(str(tmp_path / "mlp")).kind == "folder"
    loaded = load(str(tmp_path / "mlp"))
    assert loaded.name == "mlp" and loaded.sha256 and loaded.task == "image_classification"


@pytest.mark.parametrize(
    "setup, words",
    [
        (lambda p: p, "does not exist"),
        (lambda p: (p.write_text("x"), p)[1], "is a file"),
        (lambda p: (p.mkdir(), p)[1], "has no config.json"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text("{}"), p)[2], "neither"),
    ],
)
def test_a_wrong_reference_says_what_is_wrong(tmp_path, setup, words):
    path = setup(tmp_path / "model")
    with pytest.raises(ModelLoadError, match=words):
        find_source(str(path))
    with pytest.raises(ConfigError, match="give a model"):
        find_source("  ")


def test_a_hub_id_offline_says_so():
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        describe("someone/some-model")


def test_the_preflight_reads_headers_only_and_names_every_reason(tmp_path):
    save_network(make(MLPConfig(64, (8,), 5), 0), tmp_path / "mlp")
    save_network(make(VGGConfig(1, ((8,), (8,)), 5), 0), tmp_path / "vgg")
    (tmp_path / "vgg" / "model.safetensors").write_bytes(b"not read by the pre-flight")
    verdict = preflight(str(tmp_path / "mlp"), str(tmp_path / "vgg"))
    assert not verdict.ok and "same family" in verdict.reasons[0]
    with pytest.raises(IncompatibleModelsError, match="same family"):
        load_pair(str(tmp_path / "mlp"), str(tmp_path / "vgg"))
    assert preflight("zoo:tiny-digits-vgg-depth/a", "zoo:tiny-digits-vgg-width/b").ok


def test_an_upload_becomes_a_folder_of_its_own(tmp_path):
    save_network(make(MLPConfig(64, (8,), 5), 0), tmp_path / "mlp")
    files = [str(tmp_path / "mlp" / n) for n in ("config.json", "model.safetensors")]
    folder = receive(files, tmp_path)
    assert folder.parent.parent == tmp_path and (folder / "config.json").is_file()
    assert torch.equal(
        load(str(folder)).net.module.blocks[0].linear.weight,
        load(str(tmp_path / "mlp")).net.module.blocks[0].linear.weight,
    )
    import zipfile

    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../escape.txt", "x")
        zf.writestr("config.json", json.dumps({}))
    with pytest.raises(ModelLoadError, match="outside the archive"):
        receive([str(bad)], tmp_path)
    assert not (tmp_path / "escape.txt").exists()
    left = sorted(p.name for p in tmp_path.iterdir())  # the refused upload left nothing behind
    assert left == sorted(["evil.zip", "mlp", folder.parent.name])
    # archives zipfile cannot unpack here: one line each, without the server's folders
    long_name = tmp_path / "long.zip"
    with zipfile.ZipFile(long_name, "w") as zf:
        zf.writestr("x" * 300, "x")
    packed = tmp_path / "method.zip"
    with zipfile.ZipFile(packed, "w") as zf:
        zf.writestr("config.json", "{}")
    data = bytearray(packed.read_bytes())
    central = data.find(b"PK\x01\x02")  # the central directory's entry, then the local one
    data[central + 10 : central + 12] = data[8:10] = (99).to_bytes(2, "little")  # method 99
    packed.write_bytes(bytes(data))
    for archive, words in (
        (long_name, "which cannot be unpacked here"),
        (packed, "cannot be unpacked"),
    ):
        with pytest.raises(ModelLoadError, match=words) as refused:
            receive([str(archive)], tmp_path)
        assert str(tmp_path) not in str(refused.value).replace(str(archive), "")


def test_an_upload_keeps_the_chat_template_transformers_saves(tmp_path):
    # transformers 5 saves a decoder's chat template as chat_template.jinja beside its
    # tokenizer (so do heterogui's decoder exports): the upload refused the whole folder
    save_network(make(MLPConfig(64, (8,), 5), 0), tmp_path / "m")
    (tmp_path / "m" / "chat_template.jinja").write_text("{{ messages }}")
    files = [str(p) for p in sorted((tmp_path / "m").iterdir())]
    (tmp_path / "work").mkdir()
    folder = receive(files, tmp_path / "work")
    assert (folder / "chat_template.jinja").read_text() == "{{ messages }}"


def _tiny_bert(folder, seed, shard_size=None):
    """Save a tiny BERT with its vocabulary (sharded when ``shard_size`` is given)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    model = BertModel(BertConfig(**shape, vocab_size=100))
    extra = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(folder, safe_serialization=True, **extra)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(95)]
    (folder / "vocab.txt").write_text("\n".join(words))
    return folder


def test_a_sharded_folder_gets_a_weights_hash_that_a_recipe_checks(tmp_path):
    """A sharded Hugging Face folder is hashed over its shards (name and sha256 of each), so a
    recipe records it and refuses the folder once a shard changes, as for a single file."""
    from heterogui.config import ModelRef
    from heterogui.run import check_hash

    folder = _tiny_bert(tmp_path / "bert", seed=0, shard_size="20KB")
    assert not (folder / "model.safetensors").exists()
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    first = load(str(folder))
    assert first.sha256 and load(str(folder)).sha256 == first.sha256
    single = load(str(_tiny_bert(tmp_path / "single", seed=0)))
    assert single.sha256 != first.sha256  # a single file is hashed as itself
    other = _tiny_bert(tmp_path / "other", seed=1, shard_size="20KB")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.write_bytes((other / shard.name).read_bytes())  # one shard replaced
    changed = load(str(folder))
    assert changed.sha256 != first.sha256
    with pytest.raises(ConfigError, match="changed: sha256"):
        check_hash(ModelRef(str(folder), first.sha256), changed)


def test_a_bare_name_that_is_no_folder_says_hub_ids_name_their_owner():
    with pytest.raises(ModelLoadError, match="hub ids name their owner .openai-community/gpt2"):
        find_source("gpt2")
