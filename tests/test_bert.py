"""The BERT family on tiny random encoders: adapter, permuted copies, heads, widths, export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from heterogui.errors import ExportError, IncompatibleModelsError, MatcherError  # noqa: E402
from heterogui.export.job import HF_BERT_FORMAT, ExportJob  # noqa: E402
from heterogui.export.registry import write_export  # noqa: E402
from heterogui.models.hf.bert_io import network_from_hf  # noqa: E402
from heterogui.models.permute import permute_network, random_permutations  # noqa: E402
from heterogui.pipeline import ZipSettings, prepare, zip_prepared  # noqa: E402
from heterogui.zip.heads import match_head_group  # noqa: E402
from tests.conftest import check_merge, real, tiny_hf, token_batch  # noqa: E402
from tests.conftest import token_batches as batches  # noqa: E402


def export_bert(model, out):
    """Write a merged BERT as a Hugging Face BertModel folder (the hf-bert output format)."""
    return write_export(ExportJob(model), out, HF_BERT_FORMAT)


@pytest.mark.parametrize("labels", [None, 3])
def test_adapter_computes_what_transformers_computes(labels):
    hf = tiny_hf(labels=labels)
    net = network_from_hf(hf)
    x = token_batch(99)
    with torch.no_grad():
        if labels:
            diff = (hf(**x).logits - net.module(**x)).abs().max()
        else:
            ref = hf(**x).last_hidden_state
            diff = (real(ref, x) - real(net.module.hidden_states(**x), x)).abs().max()
    assert diff < 1e-5


@pytest.mark.parametrize("matcher", ["zip", "permute"])
@pytest.mark.parametrize("labels", [None, 3])
def test_zipping_a_permuted_copy_gives_the_model_back(matcher, labels):
    a = network_from_hf(tiny_hf(labels=labels), "A")
    perms = random_permutations(a.graph(), torch.Generator().manual_seed(5))
    assert not torch.equal(perms["stream"], torch.arange(32))
    assert not torch.equal(perms["layer1.ffn"], torch.arange(64))
    assert not torch.equal(perms["layer0.qk"][::8] // 8, torch.arange(4))  # heads moved
    assert torch.equal(perms["layer0.qk"][::8] // 8, perms["layer0.vo"][::8] // 8)  # one order
    b = permute_network(a, perms)
    x = token_batch(99)
    with torch.no_grad():
        ha, hb = a.module.hidden_states(**x), b.module.hidden_states(**x)
        assert (real(ha[..., perms["stream"]], x) - real(hb, x)).abs().max() < 1e-5
    prep = prepare(a, b, batches(), device="cpu")
    result = zip_prepared(prep, ZipSettings(matcher=matcher))
    with torch.no_grad():
        out_a, out_b = result.model(**x)
        assert (out_a - a.module(**x)).abs().max() < 1e-4
        assert (out_b - b.module(**x)).abs().max() < 1e-4
    for space, (n_a, n_b, r) in result.widths().items():
        assert n_a == n_b == r, space


def test_head_matcher_keeps_heads_whole_and_shares_the_pairing():
    gen = torch.Generator().manual_seed(0)
    feats_a = torch.randn(500, 3 * 4, generator=gen, dtype=torch.float64)
    # B = A's heads in order (2, 0, 1), features reversed inside each head, plus noise
    order = torch.tensor([2, 0, 1])
    idx = (order[:, None] * 4 + torch.arange(3, -1, -1)[None]).flatten()
    feats_b = feats_a[:, idx] + 0.1 * torch.randn(500, 12, generator=gen, dtype=torch.float64)
    corr = torch.corrcoef(torch.cat([feats_a, feats_b], 1).T)
    matches = match_head_group({"qk": corr, "vo": corr}, 12, 12, 4)
    for match in matches.values():
        assert match.width == 12
        groups_b = match.groups[12:].view(3, 4)
        assert torch.equal(groups_b // 4, order[:, None].expand(3, 4))  # head q of B -> A's head
        assert torch.equal(groups_b % 4, torch.arange(3, -1, -1).expand(3, 4))
    side = match_head_group({"qk": corr}, 12, 12, 4, rho=0.0)["qk"]
    assert side.width == 24 and side.counts().cross == 0
    half = match_head_group({"qk": corr}, 12, 12, 4, rho=0.5)["qk"]  # round(1.5) = 2 pairs
    assert half.width == 16 and half.counts().cross == 8


def test_width_heterogeneous_pair_merges_into_a_valid_bert_model(tmp_path: Path):
    from transformers import AutoModel

    a = network_from_hf(tiny_hf(hidden=32, heads=4, inter=64, layers=3, seed=0), "A")
    b = network_from_hf(tiny_hf(hidden=64, heads=8, inter=96, layers=2, seed=1), "B")
    prep = prepare(a, b, batches(), device="cpu")
    assert prep.padded_b.identity_blocks  # depth differs too: B was padded
    result = zip_prepared(prep, ZipSettings(rho=1.0))
    config = result.spec.trunk_config
    assert config.hidden == 64 and max(config.heads) == 8 and max(config.intermediate) == 96
    out = export_bert(result.model, tmp_path / "merged")
    hf = AutoModel.from_pretrained(out, local_files_only=True).eval()
    assert (hf.config.hidden_size, hf.config.num_attention_heads) == (64, 8)
    assert (hf.config.num_hidden_layers, hf.config.intermediate_size) == (3, 96)
    x = token_batch(7)
    with torch.no_grad():
        ours = result.model.features(**x)[0]
        theirs = hf(**x).last_hidden_state
    assert (real(ours, x) - real(theirs, x)).abs().max() < 1e-5


def test_export_pads_narrow_layers_and_keeps_both_classifier_heads(tmp_path: Path):
    from safetensors.torch import load_file
    from transformers import AutoModel

    a = network_from_hf(tiny_hf(labels=3, seed=0), "A")
    b = network_from_hf(tiny_hf(labels=2, layers=2, seed=1), "B")
    prep = prepare(a, b, batches(), device="cpu")
    result = zip_prepared(prep, ZipSettings(rho=0.5))  # wider merged layers beside kept ones
    assert len(set(result.spec.trunk_config.intermediate)) > 1
    out = export_bert(result.model, tmp_path / "merged")
    hf = AutoModel.from_pretrained(out, local_files_only=True).eval()
    extra = load_file(str(out / "unmerge.safetensors"))
    assert extra["head_a.classifier.weight"].shape == (3, 32)
    assert extra["head_b.classifier.weight"].shape == (2, 32)
    x = token_batch(8)
    with torch.no_grad():
        state = result.model.features(**x)
        theirs = hf(**x).last_hidden_state
        assert (real(state[0], x) - real(theirs, x)).abs().max() < 1e-5
        logits_b = result.model(**x)[1]
        pooled = torch.tanh(
            theirs[:, 0] @ extra["unmerge_b"].T @ extra["head_b.pooler.dense.weight"].T
            + extra["head_b.pooler.dense.bias"]
        )
        by_hand = pooled @ extra["head_b.classifier.weight"].T + extra["head_b.classifier.bias"]
    assert (logits_b - by_hand).abs().max() < 1e-5


def test_export_refuses_a_partial_zip_and_an_existing_folder(tmp_path: Path):
    a = network_from_hf(tiny_hf(seed=0), "A")
    b = network_from_hf(tiny_hf(seed=1), "B")
    prep = prepare(a, b, batches(3), device="cpu")
    with pytest.raises(ExportError, match="needs every layer merged"):
        export_bert(zip_prepared(prep, ZipSettings(stop=2)).model, tmp_path / "p")
    full = zip_prepared(prep, ZipSettings())
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")  # an empty folder is written into
    with pytest.raises(ExportError, match=r"already holds files heterogui did not write \(notes"):
        export_bert(full.model, tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_pipeline_refuses_bert_models_with_different_head_sizes():
    a = network_from_hf(tiny_hf(hidden=32, heads=4), "A")
    b = network_from_hf(tiny_hf(hidden=32, heads=8), "B")
    with pytest.raises(IncompatibleModelsError, match="head dimensions differ"):
        prepare(a, b, batches(2), device="cpu")


def test_head_matcher_widths_and_errors():
    corr = torch.eye(16, dtype=torch.float64)
    avg = match_head_group({"vo": corr}, 8, 8, 4, matcher="average")["vo"]
    assert torch.equal(avg.groups, torch.arange(8).repeat(2))
    assert match_head_group({"vo": corr}, 8, 8, 4, width=12)["vo"].width == 12
    with pytest.raises(MatcherError, match="whole heads"):
        match_head_group({"vo": corr}, 8, 8, 4, width=10)
    with pytest.raises(MatcherError, match="equal head counts"):
        match_head_group({"vo": torch.eye(20, dtype=torch.float64)}, 8, 12, 4, matcher="permute")


@pytest.mark.gpu
def test_bert_merge_runs_on_cuda():
    a = network_from_hf(tiny_hf(layers=3, seed=0), "A")
    b = network_from_hf(tiny_hf(layers=2, seed=1), "B")
    cpu = zip_prepared(prepare(a, b, batches(), device="cpu"), ZipSettings())
    gpu = zip_prepared(prepare(a, b, batches(), device="cuda"), ZipSettings())
    x = token_batch(9)
    with torch.no_grad():
        ref = cpu.model(**x)
        out = gpu.model(**{k: v.cuda() for k, v in x.items()})
    assert max((o.cpu() - r).abs().max().item() for o, r in zip(out, ref, strict=True)) < 1e-3


@pytest.mark.parametrize("labels", [None, 3])
def test_bert_pairs_pass_check_merge(labels, tmp_path: Path):
    a = network_from_hf(tiny_hf(layers=3, seed=0, labels=labels), "A")
    b = network_from_hf(tiny_hf(hidden=48, heads=6, layers=2, seed=1, labels=labels), "B")
    check_merge(a, b, batches(), token_batch(9), tmp_path, ZipSettings(rho=0.5))
