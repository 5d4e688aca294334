"""Identity blocks built by depth padding skip the branches their zero projections discard.

The short path must give the same outputs and the same captured statistics as running the whole
branch, must not run the branch at all, and must step aside when a hook watches the branch.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import DEPTH_PAIRS, char_tokenizer, make, tiny_decoder, token_batches

from heterogui.models.bert import BertNetConfig
from heterogui.models.capture import run_model
from heterogui.models.family import build_network
from heterogui.models.gpt2 import GPT2NetConfig
from heterogui.models.hf.decoder_io import network_from_hf
from heterogui.models.idle import SKIPS_DISCARDED
from heterogui.models.vit import ViTNetConfig
from heterogui.pipeline import prepare
from heterogui.tasks.lm_metrics import token_batches as text_batches
from heterogui.zip.collect import collect_moments

TEXTS = ["def add(a, b):\n    return a + b", "The tutorial explains how to read files."] * 4


def _randomised(net):
    """Give the LayerNorms trained-looking values (not 1 and 0)."""
    with torch.no_grad():
        for name, p in net.module.named_parameters():
            if "norm" in name.lower() or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return net


def resnet_pair():
    deep, shallow, shape = DEPTH_PAIRS["resnet"]
    batches = [torch.randn(16, *shape) for _ in range(2)]
    return make(deep, 0), make(shallow, 1), batches, ("conv1", "conv2")


def vit_pair():
    torch.manual_seed(0)
    deep = ViTNetConfig(8, 2, 1, 16, 8, (2, 2, 2), (32, 32, 32), 5, layer_norm_eps=1e-6)
    shallow = ViTNetConfig(8, 2, 1, 16, 8, (2,), (32,), 5, layer_norm_eps=1e-6)
    nets = [_randomised(build_network(c)) for c in (deep, shallow)]
    return *nets, list(torch.randn(32, 1, 8, 8).split(16)), ("attention", "intermediate")


def bert_pair():
    torch.manual_seed(0)
    deep = BertNetConfig(100, 16, 2, 16, 8, (2, 2, 2), (32, 32, 32))
    shallow = BertNetConfig(100, 16, 2, 16, 8, (2,), (32,))
    nets = [_randomised(build_network(c)) for c in (deep, shallow)]
    return *nets, token_batches(3), ("attention.self",)  # its FFN is the exact identity's


def gpt2_pair():
    torch.manual_seed(0)
    deep = GPT2NetConfig(100, 16, 16, 8, (2, 2, 2), (32, 32, 32))
    shallow = GPT2NetConfig(100, 16, 16, 8, (2,), (32,))
    nets = [_randomised(build_network(c)) for c in (deep, shallow)]
    return *nets, token_batches(3), ("attn", "mlp")


def decoder_pair():
    deep = network_from_hf(tiny_decoder(hidden=32, layers=4, heads=4, kv=2, seed=1))
    shallow = network_from_hf(tiny_decoder(hidden=32, layers=2, heads=4, kv=2, seed=2))
    batches = text_batches(char_tokenizer(), TEXTS, 4, 32)
    return _randomised(deep), _randomised(shallow), batches, ("self_attn", "mlp")


PAIRS = [resnet_pair, vit_pair, bert_pair, gpt2_pair, decoder_pair]
IDS = ["resnet", "vit", "bert", "gpt2", "decoder"]


def _padded(make_pair):
    """Return (padded A, padded B, B with every block on the whole path, batches, branches)."""
    deep, shallow, batches, branches = make_pair()
    prepared = prepare(deep, shallow, batches, mode="sma", device="cpu")
    padded = prepared.padded_b
    assert padded.identity_blocks
    whole = copy.deepcopy(padded.module)
    for block in whole.blocks:
        setattr(block, SKIPS_DISCARDED, False)
    whole_net = dataclasses.replace(padded, module=whole)
    return prepared.padded_a, padded, whole_net, prepared.batches, branches


def _fail(*_args, **_kwargs):
    raise AssertionError("an identity block ran the branch its zero projection discards")


@pytest.mark.parametrize("make_pair", PAIRS, ids=IDS)
def test_identity_blocks_skip_their_branches_and_compute_the_same(make_pair):
    padded_a, padded, whole, batches, branches = _padded(make_pair)
    for k in padded.identity_blocks:  # the short path never calls the branches
        for name in branches:
            padded.module.blocks[k].get_submodule(name).forward = _fail
    for batch in batches:
        skipped, full = run_model(padded.module, batch), run_model(whole.module, batch)
        assert torch.equal(skipped, full)
    fast = collect_moments([padded_a, padded], batches)
    slow = collect_moments([padded_a, whole], batches)
    assert fast.keys() == slow.keys()
    for key in fast:
        assert torch.equal(fast[key].corr(), slow[key].corr()), key
        assert torch.equal(fast[key].mean(), slow[key].mean()), key


@pytest.mark.parametrize("make_pair", PAIRS, ids=IDS)
def test_a_hook_on_a_branch_or_nonzero_projections_run_the_whole_branch(make_pair):
    _, padded, _, batches, branches = _padded(make_pair)
    k = min(padded.identity_blocks)
    branch = padded.module.blocks[k].get_submodule(branches[0])
    seen = []
    handle = branch.register_forward_hook(lambda *_: seen.append(True))
    run_model(padded.module, batches[0])
    handle.remove()
    assert seen  # a capture inside the branch sees the branch itself
    branch.forward = _fail
    run_model(padded.module, batches[0])  # no hook: the short path
    with torch.no_grad():  # a projection that no longer discards: the whole branch runs
        for p in padded.module.blocks[k].parameters():
            p.add_(0.01)
    with pytest.raises(AssertionError, match="discards"):
        run_model(padded.module, batches[0])
