"""The norms of a pre-norm identity layer take no part in a merge's averages.

An identity layer of a pre-norm transformer (ViT, decoders) zeroes its output projections, so
its norms feed only its dead spaces: their values (1 and 0 as built) change nothing. A merged
layer that meets it keeps the real layer's norms; averaging the 1s in would rescale what the
real layer reads (on SmolLM2, whose gains suppress a few large stream features, the merge's
perplexity went from tens to tens of thousands).
"""

from __future__ import annotations

import pytest
import torch
from conftest import char_tokenizer, tiny_decoder

from heterogui.models.bert import BertNetConfig
from heterogui.models.family import build_network, family_of
from heterogui.models.gpt2 import GPT2NetConfig
from heterogui.models.hf.decoder_io import network_from_hf
from heterogui.models.vit import ViTNetConfig
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.tasks.lm_metrics import token_batches

TEXTS = ["def add(a, b):\n    return a + b", "The tutorial explains how to read files."] * 4


def decoder_pair():
    deep = network_from_hf(tiny_decoder(hidden=32, layers=4, heads=4, kv=2, seed=1))
    shallow = network_from_hf(tiny_decoder(hidden=32, layers=2, heads=4, kv=2, seed=2))
    return deep, shallow, token_batches(char_tokenizer(), TEXTS, 4, 32), "input_layernorm"


def vit_pair():
    torch.manual_seed(0)
    config = ViTNetConfig(8, 2, 1, 16, 8, (2, 2, 2), (32, 32, 32), 5, layer_norm_eps=1e-6)
    shallow = ViTNetConfig(8, 2, 1, 16, 8, (2,), (32,), 5, layer_norm_eps=1e-6)
    deep, shallow = build_network(config, tuple(range(5))), build_network(shallow, (5, 6, 7, 8, 9))
    with torch.no_grad():  # trained LayerNorms are not 1 and 0
        for module in (deep.module, shallow.module):
            for name, p in module.named_parameters():
                if "layernorm" in name:
                    p.add_(torch.randn_like(p) * 0.5)
    return deep, shallow, list(torch.randn(64, 1, 8, 8).split(32)), "layernorm_before"


def test_only_the_norms_of_pre_norm_identity_layers_are_inert():
    decoder = network_from_hf(tiny_decoder(hidden=32, layers=3, heads=4, kv=2))
    graph = decoder.family.graph(decoder.config, frozenset({2}))
    assert graph.inert == {
        "blocks.2.input_layernorm.weight",
        "blocks.2.post_attention_layernorm.weight",
    }
    vit = ViTNetConfig(8, 2, 1, 16, 8, (2, 2), (32, 32), 5)
    assert family_of(vit).graph(vit, frozenset({1})).inert == {
        f"blocks.1.{norm}.{p}"
        for norm in ("layernorm_before", "layernorm_after")
        for p in ("weight", "bias")
    }
    assert not family_of(vit).graph(vit).inert
    gpt2 = GPT2NetConfig(50, 16, 16, 8, (2, 2), (32, 32))
    assert family_of(gpt2).graph(gpt2, frozenset({2})).inert == {
        f"blocks.2.{norm}.{p}" for norm in ("ln_1", "ln_2") for p in ("weight", "bias")
    }
    # a post-LN (BERT) identity layer's second LayerNorm writes the stream: not inert
    bert = BertNetConfig(50, 16, 2, 16, 8, (2, 2), (32, 32))
    assert not family_of(bert).graph(bert, frozenset({1})).inert


@pytest.mark.parametrize("make", [decoder_pair, vit_pair], ids=["decoder", "vit"])
@pytest.mark.parametrize("rho", [1.0, 0.5])
def test_a_layer_meeting_an_identity_layer_keeps_the_real_layers_norms(make, rho):
    deep, shallow, batches, norm = make()
    prepared = prepare(deep, shallow, batches, mode="sma", device="cpu")
    identity = sorted(prepared.padded_b.identity_blocks)
    assert identity and not prepared.padded_a.identity_blocks
    # the fused gains themselves (weighed RMSNorms divide them by the stream's scales:
    # tests/test_norm_weights.py)
    plain = ZipSettings(rho=rho, fusion="average", norm_weights=False)
    result = zip_prepared(prepared, plain)
    groups = result.matches["stream"].groups
    n_a = result.matches["stream"].n_a
    merged = dict(result.model.named_parameters())
    for block in identity:
        key = f"blocks.{block}.{norm}.weight"
        real = prepared.padded_a.module.state_dict()[key]
        built = prepared.padded_b.module.state_dict()[key]
        got = merged[f"trunk.{block}.{norm}.weight"].detach()
        averaged = torch.zeros_like(got)
        for g in range(result.matches["stream"].width):
            own = real[groups[:n_a] == g]
            # a group with a member of A takes the mean of A's members; B's alone keep theirs
            want = own.mean() if own.numel() else built[groups[n_a:] == g].mean()
            assert torch.allclose(got[g], want, atol=1e-6), (block, g)
            averaged[g] = torch.cat([own, built[groups[n_a:] == g]]).mean()
        assert not torch.allclose(got, averaged, atol=1e-3)  # what averaging the 1s in gives
