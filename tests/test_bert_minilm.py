"""The real MiniLM pair (6 vs 3 layers) merged end to end on the CPU, then exported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from heterogui import run  # noqa: E402
from heterogui.datasets.refs import tokenize  # noqa: E402
from heterogui.errors import IncompatibleModelsError  # noqa: E402
from heterogui.recipe_parse import recipe_from_dict  # noqa: E402
from heterogui.sources import minilm  # noqa: E402
from tests.conftest import tiny_hf, token_batch  # noqa: E402


@pytest.fixture(scope="session")
def l3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return minilm.minilm_l3_path(tmp_path_factory.getbasetemp() / "hf" / minilm.L3_NAME)


def minilm_recipe(l3_dir: Path, sentences: int, **fields):
    """Return the recipe of the MiniLM pair on ``sentences`` built-in sentences, on the CPU."""
    return recipe_from_dict(
        {
            "model_a": {"path": str(minilm.minilm_l6_path())},
            "model_b": {"path": str(l3_dir)},
            "calibration": {"source": "sentences", "size": sentences, "batch_size": 32},
            "device": "cpu",
            **fields,
        }
    )


@pytest.mark.slow
def test_minilm_pair_merges_end_to_end_and_exports(l3_dir: Path, tmp_path: Path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    recipe = minilm_recipe(l3_dir, 64, evaluation={"source": "sts"})
    done = run.merge(recipe)
    result = done.result
    assert result.alignment.depths == (6,) and len(result.prepared.padded_b.identity_blocks) == 3
    config = result.spec.trunk_config
    assert (config.hidden, config.heads, config.intermediate) == (384, (12,) * 6, (1536,) * 6)
    spearman = done.scores["merged"]["merged"]
    assert spearman > 0.8  # measured 0.85 (A 0.90, B 0.87, weight average 0.81)

    out = run.export(done, tmp_path / "merged")
    for name in ("config.json", "model.safetensors", "vocab.txt", "recipe.yaml", "README.md"):
        assert (out / name).is_file(), name
    assert done.recipe.model_a.sha256 and done.recipe.alignment.mapping
    model = AutoModel.from_pretrained(out, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    sentences = ["A man is playing a guitar.", "Rain is expected.", "Someone plays music."]
    (batch,) = tokenize(tokenizer, sentences, 8)
    with torch.no_grad():
        ours = result.model.features(**batch)[0]
        theirs = model(**batch).last_hidden_state
    mask = batch["attention_mask"].bool()
    assert (ours[mask] - theirs[mask]).abs().max() < 1e-5
    # A's sentence-transformers modules came along: pooling of the merged width, normalisation.
    st = SentenceTransformer(str(out), device="cpu")
    assert [type(m).__name__ for m in st] == ["Transformer", "Pooling", "Normalize"]
    emb = torch.as_tensor(st.encode(sentences))
    weights = mask.unsqueeze(-1).float()
    pooled = (ours * weights).sum(1) / weights.sum(1)
    want = torch.nn.functional.normalize(pooled, dim=-1)
    assert (emb - want).abs().max() < 1e-5
    # a text over A's own 256 tokens: sentence-transformers cuts it where heterogui does
    long = " ".join(["the guitar player sings a song about the rain"] * 60)  # about 540 tokens
    (batch,) = tokenize(tokenizer, [long], 8)
    assert batch["input_ids"].shape[1] == 512
    with torch.no_grad():
        pooled = result.model.features(**batch)[0].mean(1)
    want = torch.nn.functional.normalize(pooled, dim=-1)
    assert (torch.as_tensor(st.encode([long])) - want).abs().max() < 1e-5


@pytest.mark.slow
def test_a_partial_minilm_merge_reads_back_from_its_folder(l3_dir: Path, tmp_path: Path):
    # A partial zip is written in the heterogui format, with B's own config for the layers
    # past the stop point (L3's converted config once had layer_norm_eps 0.0, read from the
    # ONNX LayerNorm's axis attribute, and the folder could not be read back).
    from heterogui.errors import ModelLoadError
    from heterogui.sources import registry
    from heterogui.sources.folder import load_merged

    recipe = minilm_recipe(l3_dir, 32, stop=1)
    done = run.merge(recipe)
    out = run.export(done, tmp_path / "partial")
    assert "model_type" not in json.loads((out / "config.json").read_text())
    again = load_merged(out).eval()
    (batch,) = tokenize(done.pair.a.tokenizer, ["A man is playing a guitar.", "Rain is."], 8)
    with torch.no_grad():
        want, got = done.result.model(**batch), again(**batch)
    for w, g in zip(want, got, strict=True):
        assert (w - g).abs().max() < 1e-6
    # as a model of a next merge it is refused in one line that says why and what to do
    with pytest.raises(
        ModelLoadError,
        match=r"\(--format hf-bert, or the Export tab's format\) to merge it again \(that",
    ):
        registry.load(str(out))


def test_preflight_refuses_an_incompatible_pair_before_loading(tmp_path: Path):
    tiny_hf(seed=0).save_pretrained(tmp_path / "a")
    other = tiny_hf(hidden=48, heads=4, seed=1)  # head size 12 instead of 8
    other.save_pretrained(tmp_path / "b")
    with pytest.raises(IncompatibleModelsError, match=r"head dimensions differ \(8 vs 12\)"):
        run.load_pair(str(tmp_path / "a"), str(tmp_path / "b"))


def test_a_short_draw_of_the_built_in_sentences_says_why(l3_dir: Path, caplog):
    pair = run.load_pair(str(minilm.minilm_l6_path()), str(l3_dir))
    with caplog.at_level("WARNING", logger="heterogui.run"):
        assert run.calibrate(pair, size=6).count == 6 and not caplog.text
        assert run.calibrate(pair, size=5).count == 4  # half of 5 from each of 2 tasks
    assert "4 inputs from sentences, not the 5 asked for" in caplog.text
    assert "half from each of their 2 tasks: give an even size" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="heterogui.run"):  # more than the smaller task holds
        assert run.calibrate(pair, size=320).count == 310  # 160 topics, all 150 sentiment
    assert "the built-in calibration sentences are topics 200, sentiment 150" in caplog.text
    assert "give at most 300 for equal halves" in caplog.text


@pytest.mark.slow
def test_minilm_speed_benchmark_reports_every_stage():
    from heterogui.bench.speed import format_pair
    from heterogui.bench.speed_pair import run_pair

    figures = run_pair("minilm", {"quick": True, "device": "cpu"})
    assert figures["total"] > 0 and figures["floor"] > 0 and not figures["batch_norm"]
    assert {"prepare.features", "zip.match", "zip.fuse"} <= set(figures["stages"])
    assert figures["remerge_from_cache"] > 0 and figures["realign_mode"] == "lma"
    precision = figures["precision"]
    assert precision["max_corr_diff"] < 1e-4
    assert precision["same_matching"] + len(precision["differing"]) == precision["merge_points"]
    text = format_pair(figures)
    assert "merge / floor" in text and "peak RSS" in text and "Neurons tab" in text
    assert "over the process's start" not in text  # known only in a process of its own


def test_dropping_layers_keeps_the_chosen_layers():
    from heterogui.bench.transformers import drop_layers
    from heterogui.models.hf.bert_io import network_from_hf

    full = network_from_hf(tiny_hf(layers=3), "A")
    kept = drop_layers(full, (0, 2))
    assert kept.config.num_layers == 2
    x = token_batch(3)
    with torch.no_grad():
        state = full.module.run(x, 0, 2)  # embeddings + layer 0
        want = full.module.blocks[4](full.module.blocks[3](state))  # layer 2, then the head
        assert (kept.module(**x) - want).abs().max() < 1e-6


@pytest.mark.slow
def test_minilm_slider_latency_loads_analyses_and_times_releases():
    from heterogui.ui.latency import format_latency, minilm_latency

    report = minilm_latency(moves=({"rho": 0.5}, {"rho": 0.75}), device="cpu")
    assert report["moves"] == 2 and report["device"] == "cpu" and report["prepare_s"] > 0
    for key in ("zip_s", "merge_s", "metrics_s", "total_s"):
        assert 0 < report[key]["median"] <= report[key]["max"]
    assert report["figure_bytes"] > 0  # times are reported, not asserted (machines vary)
    assert report["switch"]["mode"] == "lma"  # the switch ran no pass, or it raises
    assert "minilm" in format_latency([report])
