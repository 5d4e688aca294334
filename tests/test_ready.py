"""Step 1: BatchNorm re-estimated, and for pairs the CKA places, the CKA from the same pass."""

from __future__ import annotations

import copy
import dataclasses

import torch
from conftest import DEPTH_PAIRS, calibration, make

from heterogui.align.alignment import align
from heterogui.align.similarity import layer_similarity
from heterogui.fusion.bn import BN_TYPES, reestimate_batch_norm
from heterogui.pipeline import prepare


def _bns(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, BN_TYPES)]


def _train_mode_copy(net):
    """A copy whose BatchNorms accumulate fresh statistics in train mode (the rest in eval)."""
    module = copy.deepcopy(net.module).eval()
    for bn in _bns(module):
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    return dataclasses.replace(net, module=module)


def test_the_cka_comes_from_the_batch_norm_pass_and_changes_no_statistic():
    cfg_a, cfg_b, shape = DEPTH_PAIRS["resnet"]
    net_a, net_b, data = make(cfg_a, 0, "A"), make(cfg_b, 1, "B"), calibration(shape, 4)
    before = [copy.deepcopy(n.module.state_dict()) for n in (net_a, net_b)]
    prep = prepare(net_a, net_b, data)
    for net, state in zip((net_a, net_b), before, strict=True):  # the caller's models untouched
        assert all(torch.equal(v, net.module.state_dict()[k]) for k, v in state.items())
    for net, ready in ((net_a, prep.net_a), (net_b, prep.net_b)):
        alone = copy.deepcopy(net.module)
        reestimate_batch_norm(alone, data)  # the BatchNorm pass on its own: the same statistics
        for ours, theirs in zip(_bns(ready.module), _bns(alone), strict=True):
            assert torch.equal(ours.running_mean, theirs.running_mean)
            assert torch.equal(ours.running_var, theirs.running_var)
        assert not ready.module.training and not any(b.training for b in _bns(ready.module))
    # the CKA of the models with batch statistics (train-mode BatchNorm), every forward whole
    a, b = _train_mode_copy(net_a), _train_mode_copy(net_b)
    want = layer_similarity(a, b, data, whole=True)
    torch.testing.assert_close(prep.similarity, want, rtol=0, atol=1e-12)
    # against a separate pass of the re-estimated models: close, and the same alignments here
    separate = layer_similarity(prep.net_a, prep.net_b, data)
    assert float((prep.similarity - separate).abs().max()) < 0.1
    ga, gb = prep.net_a.graph(), prep.net_b.graph()
    for mode in ("sma", "lma"):
        ours, theirs = align(ga, gb, prep.similarity, mode), align(ga, gb, separate, mode)
        assert (ours.positions_a, ours.positions_b) == (theirs.positions_a, theirs.positions_b)


def test_keeping_the_trained_batch_norm_keeps_a_cka_pass_of_its_own():
    cfg_a, cfg_b, shape = DEPTH_PAIRS["resnet"]
    net_a, net_b, data = make(cfg_a, 0, "A"), make(cfg_b, 1, "B"), calibration(shape, 3)
    prep = prepare(net_a, net_b, data, reset_input_bn=False)
    assert "similarity" in prep.timings and "bn_similarity" not in prep.timings
    torch.testing.assert_close(prep.similarity, layer_similarity(prep.net_a, prep.net_b, data))


def test_a_model_without_batch_norm_takes_no_batch_norm_pass():
    calls = []
    model = torch.nn.Linear(4, 2)
    model.register_forward_hook(lambda *_: calls.append(1))
    reestimate_batch_norm(model, [torch.randn(3, 4)] * 5)
    assert not calls
    with_bn = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2)).eval()
    with_bn.register_forward_hook(lambda *_: calls.append(1))
    reestimate_batch_norm(with_bn, [torch.randn(3, 4)] * 5)
    assert len(calls) == 5 and not with_bn.training and int(with_bn[1].num_batches_tracked) == 5


def test_batch_norm_statistics_weigh_each_batch_by_the_values_it_holds():
    # a 1-image last batch weighed as much as a 50-image one: the statistics (and so the
    # merge) moved with how the calibration size divides by the batch size
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    big, small = torch.randn(50, 3, 4, 4) * 2 + 1, torch.randn(1, 3, 4, 4) * 5 - 3
    reestimate_batch_norm(bn, [big, small])
    counts = torch.tensor([50.0 * 16, 1.0 * 16])
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in (big, small)])
    variances = torch.stack([x.transpose(0, 1).reshape(3, -1).var(dim=1) for x in (big, small)])
    want_mean = (counts[:, None] * means).sum(0) / counts.sum()
    want_var = (counts[:, None] * variances).sum(0) / counts.sum()
    torch.testing.assert_close(bn.running_mean, want_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, want_var, rtol=1e-5, atol=1e-6)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 2  # restored; both counted
    reestimate_batch_norm(bn, [big, small], per_batch=True)  # the zoo's training: per batch
    torch.testing.assert_close(bn.running_mean, means.mean(0), rtol=1e-5, atol=1e-6)
    # equal batches: bit for bit the per-batch (momentum None) average, as before
    quarters = list(torch.randn(40, 3, 4, 4).split(10))
    reestimate_batch_norm(bn, quarters, per_batch=True)
    plain = (bn.running_mean.clone(), bn.running_var.clone())
    reestimate_batch_norm(bn, quarters)
    assert torch.equal(bn.running_mean, plain[0]) and torch.equal(bn.running_var, plain[1])
