"""Tests of the memory layouts passes run convolutions in: the same values, channels-last.

A one-channel image batch is laid out both ways at once, so the models' convolution weights
decide the layout (``capture.channels_last_weights``); the 1-D families run their
convolutions and BatchNorms as 2-D ones of height 1 (``models.conv.LineConv``,
``LineBatchNorm``). Each must compute exactly the function of the module it stands for.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from heterogui.fusion.bn import reestimate_batch_norm
from heterogui.models.capture import per_input, run_model, to_device
from heterogui.models.conv import LineBatchNorm, LineConv, batch_norm, channels_last_weights, conv
from heterogui.models.storage import allocate
from heterogui.tasks.classification import collect_outputs


def _digits_like_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, stride=2, padding=1),
    ).eval()


def test_a_pass_lays_out_conv_weights_channels_last_and_keeps_the_values():
    net = _digits_like_net()
    before = copy.deepcopy(net.state_dict())
    images = to_device(torch.randn(5, 1, 8, 8), "cpu")  # one channel: both layouts at once
    with torch.no_grad():
        expected = net(images)
        assert not expected.is_contiguous(memory_format=torch.channels_last)  # the trap
        out = run_model(net, images)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name]), name  # the same values, another memory order
    assert net[3].weight.is_contiguous(memory_format=torch.channels_last)
    weight = net[3].weight
    assert channels_last_weights(net)[3].weight is weight  # laid out once: left as it is


def test_evaluation_lays_out_the_model_it_runs():
    net = _digits_like_net()
    inputs = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        expected = net(inputs).flatten(1)
    head = nn.Sequential(net, nn.Flatten())
    (out,) = collect_outputs(head, inputs, batch_size=4, device="cpu")
    assert net[3].weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (3, 2), (1, 2), (5, 1)])
def test_line_conv_computes_a_conv1d(kernel, stride):
    torch.manual_seed(kernel + stride)
    plain = nn.Conv1d(6, 10, kernel, stride=stride, padding=kernel // 2, bias=False)
    line = conv(1, 6, 10, kernel, stride)
    assert isinstance(line, LineConv) and isinstance(line, nn.Conv1d)
    line.load_state_dict(plain.state_dict())  # the same parameters and names
    x = torch.randn(4, 6, 23, requires_grad=True)
    out = line(x)
    assert out.shape == plain(x).shape
    assert torch.allclose(out, plain(x), rtol=1e-5, atol=1e-5)
    assert out.movedim(1, -1).is_contiguous()  # channels-last (B, C, L)
    # it trains as a Conv1d does: the same gradients for the weight and the input
    grads = [torch.autograd.grad(m(x).square().sum(), (m.weight, x)) for m in (line, plain)]
    for ours, theirs in zip(*grads, strict=True):
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_line_batch_norm_computes_a_batchnorm1d_in_train_and_eval_mode():
    torch.manual_seed(3)
    plain, line = nn.BatchNorm1d(5), batch_norm(1, 5)
    assert isinstance(line, LineBatchNorm)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 2.0)
        plain.bias.normal_()
    line.load_state_dict(plain.state_dict())
    x = torch.randn(7, 5, 11) * 3 + 1
    layouts = (x, x.transpose(1, 2).contiguous().transpose(1, 2))  # channels-first and -last
    for inputs in layouts:
        for mode in (True, False):
            plain.train(mode), line.train(mode)
            assert torch.allclose(line(inputs), plain(inputs), rtol=1e-5, atol=1e-5)
    # the running statistics moved alike (train mode, twice each)
    assert torch.allclose(line.running_mean, plain.running_mean, rtol=1e-6, atol=1e-6)
    assert torch.allclose(line.running_var, plain.running_var, rtol=1e-6, atol=1e-6)
    flat = torch.randn(9, 5)  # (B, C) features, as a BatchNorm1d takes them
    assert torch.allclose(line.eval()(flat), plain.eval()(flat), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected 2D, 3D or 4D input"):
        line(torch.randn(2, 5, 1, 1, 3))


def test_a_1d_resnet_block_runs_channels_last_through_and_re_estimates_alike():
    torch.manual_seed(4)
    line = nn.Sequential(conv(1, 1, 8, 3), batch_norm(1, 8), nn.ReLU(), conv(1, 8, 8, 3, 2))
    plain = nn.Sequential(
        nn.Conv1d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Conv1d(8, 8, 3, stride=2, padding=1, bias=False),
    )
    plain.load_state_dict(line.state_dict())
    batches = [torch.randn(6, 1, 40) for _ in range(3)]
    for model in (line, plain):
        reestimate_batch_norm(model, batches)
    assert torch.allclose(line[1].running_var, plain[1].running_var, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        out, expected = line.eval()(batches[0]), plain.eval()(batches[0])
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.movedim(1, -1).is_contiguous() and not out.is_contiguous()
    flat = per_input(out, "flat")
    assert flat.data_ptr() == out.data_ptr()  # a Gram's rows without a copy
    assert torch.equal(flat, out.transpose(1, 2).flatten(1))


def test_storage_for_a_meta_model_keeps_channels_last_weights_and_dense_buffers():
    with torch.device("meta"):
        net = nn.Sequential(conv(2, 1, 6, 3), nn.BatchNorm2d(6), conv(2, 6, 6, 3))
    net.register_buffer("ids", torch.arange(5, device="meta").expand(3, -1))  # stride 0
    allocate(net, torch.device("cpu"))
    for layer in (net[0], net[2]):
        assert not layer.weight.is_meta
        assert layer.weight.is_contiguous(memory_format=torch.channels_last)
    assert net[2].weight.stride() == (54, 1, 18, 6)
    assert net.ids.is_contiguous() and net.ids.stride() == (5, 1)  # storage of its own
    net.ids.copy_(torch.arange(5).expand(3, -1))  # loadable: no element shares memory
    assert torch.equal(net.ids[2], torch.arange(5))
