"""Merging large models: the engine shares the caller's weights, and ``heterogui bench scale``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import DEPTH_PAIRS, calibration, make, tiny_decoder, tiny_hf, token_batches

from heterogui.align import pad
from heterogui.bench.scale import ScaleOptions, format_scale, run_scale, scale_report
from heterogui.cli import main
from heterogui.models.hf.bert_io import network_from_hf as bert_network
from heterogui.models.hf.decoder_io import network_from_hf as decoder_network
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.tasks.language import merged_logits

TINY = ScaleOptions(
    layers_a=3,
    layers_b=2,
    hidden=32,
    intermediate=48,
    heads=4,
    kv_heads=2,
    vocab=64,
    texts=8,
    tokens=8,
    batch=4,
    budget_mb=0.05,
    threads=1,
)


def snapshot(module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[bool]]:
    state = {k: v.clone() for k, v in module.state_dict().items()}
    return state, [m.training for m in module.modules()]


def assert_unchanged(module: torch.nn.Module, before) -> None:
    state, flags = before
    after = module.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert [m.training for m in module.modules()] == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def decoder_pair():
    deep = decoder_network(tiny_decoder(hidden=48, layers=4, heads=6, kv=2, inter=80, seed=1))
    shallow = decoder_network(tiny_decoder(hidden=72, layers=2, heads=9, kv=3, inter=96, seed=2))
    return deep, shallow


def test_prepare_shares_eval_models_and_padding_reuses_their_blocks():
    a, b = decoder_pair()
    before = snapshot(a.module), snapshot(b.module)
    batches = token_batches(3)
    prep = prepare(a, b, batches, device="cpu")
    assert prep.net_a.module is a.module and prep.net_b.module is b.module  # no copies
    assert prep.net_a is not a and prep.net_b is not b
    new = prep.padded_b.identity_blocks
    assert new and prep.padded_b.module is not b.module
    reused = [blk for k, blk in enumerate(prep.padded_b.module.blocks) if k not in new]
    assert len(reused) == len(b.module.blocks)
    assert all(x is y for x, y in zip(reused, b.module.blocks, strict=True))
    assert not {id(p) for k in new for p in prep.padded_b.module.blocks[k].parameters()} & {
        id(p) for p in b.module.parameters()
    }
    with torch.no_grad():
        for batch in batches:
            assert torch.equal(prep.padded_b.module(**batch), b.module(**batch))
    zip_prepared(prep, ZipSettings(rho=0.5))
    zip_prepared(prep, ZipSettings(rho=0.0, stop=2))
    assert_unchanged(a.module, before[0])
    assert_unchanged(b.module, before[1])


def test_fitted_bert_identities_leave_the_shared_model_unchanged():
    a = bert_network(tiny_hf(layers=5, seed=0), "A")
    b = bert_network(tiny_hf(layers=2, seed=1), "B")
    for mode in ("exact", "ls"):
        b_mode = dataclasses.replace(b, config=dataclasses.replace(b.config, identity=mode))
        before = snapshot(b.module)
        prep = prepare(a, b_mode, token_batches(), device="cpu")
        assert prep.net_b.module is b.module
        zip_prepared(prep, ZipSettings())
        assert_unchanged(b.module, before)


def test_models_that_prepare_would_modify_are_copied():
    config_a, config_b, shape = DEPTH_PAIRS["resnet"]  # BatchNorm: re-estimated on a copy
    a, b = make(config_a, 0), make(config_b, 1)
    before = snapshot(a.module)
    prep = prepare(a, b, calibration(shape, 2), device="cpu")
    assert prep.net_a.module is not a.module
    assert_unchanged(a.module, before)
    assert prepare(
        a, b, calibration(shape, 2), device="cpu", reset_input_bn=False
    ).net_a.module is (a.module)
    config_a, config_b, shape = DEPTH_PAIRS["mlp"]  # no BatchNorm, but in training mode
    a, b = make(config_a, 0), make(config_b, 1)
    a.module.train()
    b.module.blocks[0].train()  # one submodule in training mode is enough
    before = snapshot(a.module), snapshot(b.module)
    prep = prepare(a, b, calibration(shape, 2), device="cpu")
    assert prep.net_a.module is not a.module and prep.net_b.module is not b.module
    assert not any(m.training for m in prep.net_a.module.modules())
    assert_unchanged(a.module, before[0])
    assert_unchanged(b.module, before[1])


@pytest.mark.parametrize("name", list(DEPTH_PAIRS))
def test_identity_blocks_are_the_same_every_time_and_leave_the_rng_alone(name, monkeypatch):
    config_a, config_b, shape = DEPTH_PAIRS[name]
    b = make(config_b, 1)
    stages = zip(make(config_a, 0).graph().stages, b.graph().stages, strict=True)
    depths = [max(len(sa), len(sb)) for sa, sb in stages]
    positions = tuple(tuple(range(len(s))) for s in b.graph().stages)
    rng = torch.get_rng_state()
    first, second = (pad.pad_network(b, positions, tuple(depths)) for _ in range(2))
    assert torch.equal(rng, torch.get_rng_state())
    assert first.identity_blocks
    for k, (x, y) in enumerate(zip(first.module.blocks, second.module.blocks, strict=True)):
        assert (x is y) == (k not in first.identity_blocks)
    s1, s2 = first.module.state_dict(), second.module.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    x = torch.randn(8, *shape)
    monkeypatch.setattr(pad, "_blocks_only", lambda _module: False)  # the whole-copy fallback
    copied = pad.pad_network(b, positions, tuple(depths))
    assert not {id(p) for p in copied.module.parameters()} & {id(p) for p in b.module.parameters()}
    with torch.no_grad():
        assert torch.equal(copied.module(x), first.module(x))
        assert (first.module(x) - b.module(x)).abs().max().item() < 1e-6


def test_scale_benchmark_merges_a_tiny_llama_pair_part_by_part():
    m = run_scale(TINY)
    assert m["params_b"] < m["params_merged"] < m["params_a"] + m["params_b"]
    assert m["params_a"] > m["params_b"] and m["identity_layers"] == 1
    assert m["stats_one_pass_mib"] > m["stats_budget_mib"] == pytest.approx(0.05, abs=1e-5)
    assert m["stats_passes"] > 1
    assert m["merged_logits_finite"] is True
    assert m["threads"] == 1 and m["device"] == "cpu"
    assert m["rss_after_build_mib"] > 0 and m["rss_after_prepare_mib"] > 0
    assert m["peak_rss_mib"] > 0
    assert {"build A and B", "similarity", "padding", "features", "match", "fuse"} <= set(
        m["stages_s"]
    )
    assert m["total_s"] == pytest.approx(m["prepare_s"] + m["zip_s"])
    assert all(w > 0 for w in m["weights_mib"].values())
    text = format_scale(m)
    assert "statistics pass(es)" in text and "peak RSS (ru_maxrss)" in text


def test_scale_benchmark_is_reproducible_and_its_json_is_the_last_line(capsys):
    last = json.loads(scale_report(TINY, as_json=True).splitlines()[-1])
    assert last["params_merged"] == run_scale(TINY)["params_merged"]
    args = ["bench", "scale", "--layers-a", "3", "--layers-b", "2", "--hidden", "32"]
    args += ["--intermediate", "48", "--heads", "4", "--kv-heads", "2", "--vocab", "64"]
    args += ["--texts", "8", "--tokens", "8", "--batch", "4", "--budget-mb", "0.05"]
    assert main([*args, "--threads", "1", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["stats_passes"] == last["stats_passes"] > 1
    assert printed["params_a"] == last["params_a"]


def test_scale_benchmark_refuses_shapes_that_are_no_llama():
    from heterogui.errors import ConfigError

    with pytest.raises(ConfigError, match="query heads must divide"):
        run_scale(dataclasses.replace(TINY, heads=5))
    with pytest.raises(ConfigError, match="--texts >= 1"):
        run_scale(dataclasses.replace(TINY, texts=0))


def test_a_merged_tiny_llama_of_the_benchmark_predicts_like_a_model():
    from heterogui.bench.scale import build_llama, llama_config
    from heterogui.bench.scale import token_batches as random_ids

    a = build_llama(llama_config(TINY, 3), 0, "A")
    b = build_llama(llama_config(TINY, 2), 1, "B")
    batches = random_ids(TINY)
    prep = prepare(a, b, batches, device="cpu", stats_budget=int(0.05 * 2**20))
    one = prepare(a, b, batches, device="cpu")  # statistics in one pass: the same merge
    chunked, whole = zip_prepared(prep), zip_prepared(one)
    with torch.no_grad():
        got, want = merged_logits(chunked.model)(batches[0]), merged_logits(whole.model)(batches[0])
    assert got.shape == (TINY.batch, TINY.tokens, TINY.vocab)
    assert torch.equal(got, want)


def test_scale_benchmark_exports_a_folder_transformers_loads_and_refuses_a_taken_one(tmp_path):
    """``--export DIR`` writes the merge as a causal-LM folder whose logits are the merge's
    (the mean of its two heads), and a folder that exists is refused before anything is built."""
    from transformers import AutoModelForCausalLM

    from heterogui.bench.scale import build_llama, llama_config
    from heterogui.bench.scale import token_batches as random_ids
    from heterogui.errors import ConfigError

    out = tmp_path / "merged"
    m = run_scale(dataclasses.replace(TINY, export=str(out)))
    assert m["export_s"] > 0 and m["peak_rss_after_export_mib"] >= m["peak_rss_mib"]
    assert "export (" in format_scale(m)
    a = build_llama(llama_config(TINY, 3), 0, "A")
    b = build_llama(llama_config(TINY, 2), 1, "B")
    batches = random_ids(TINY)
    merged = zip_prepared(prepare(a, b, batches, device="cpu", stats_budget=int(0.05 * 2**20)))
    loaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        want = merged_logits(merged.model)(batches[0])
        got = loaded(**batches[0]).logits
    assert (got - want).abs().max().item() < 1e-4
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="taken exists: name a new folder") as refused:
        run_scale(dataclasses.replace(TINY, export=str(taken)))
    assert "--overwrite" not in str(refused.value)  # bench scale has no such option
    assert (taken / "notes.txt").read_text() == "mine"


def test_any_number_of_texts_from_4_calibrates_and_fewer_are_refused():
    # a last batch under 4 joins the one before (it asked for a multiple of --batch)
    from heterogui.bench.scale import check_options, token_batches
    from heterogui.errors import ConfigError

    options = dataclasses.replace(TINY, texts=10, batch=4)
    check_options(options)
    assert [len(b["input_ids"]) for b in token_batches(options)] == [4, 6]
    for texts, batch in ((3, 4), (8, 2)):
        with pytest.raises(ConfigError, match="use --batch and --texts of at least 4"):
            check_options(dataclasses.replace(TINY, texts=texts, batch=batch))
