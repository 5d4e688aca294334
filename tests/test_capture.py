"""Tests of the capture pass that stops a forward at its last needed output."""

from __future__ import annotations

import threading

import torch
from torch import nn

from heterogui.align.cka import gram
from heterogui.align.similarity import captured_grams
from heterogui.models.capture import CapturePass, capture_outputs, per_input, to_device, to_rows


class Twice(nn.Module):
    """Runs ``inner`` twice: its last output is the one a capture keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(self.inner(x)))


def _counting(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_later_batches_stop_after_the_last_needed_output():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 100))
    head_calls = _counting(net[3])
    capture = CapturePass(net, ["0", "2"])
    batches = [torch.randn(5, 4) for _ in range(3)]
    outs = [capture(b) for b in batches]
    assert head_calls[0] == 1  # only the first batch ran the head (to learn the order)
    for batch, out in zip(batches, outs, strict=True):
        assert torch.equal(out["0"], net[0](batch))
        assert torch.equal(out["2"], net[2](net[1](net[0](batch))))


def test_a_module_run_twice_keeps_every_pass_whole():
    torch.manual_seed(0)
    net = Twice()
    head_calls = _counting(net.head)
    capture = CapturePass(net, ["inner"])
    batch = torch.randn(2, 4)
    outs = [capture(batch) for _ in range(2)]
    assert head_calls[0] == 2
    assert all(torch.equal(o["inner"], net.inner(net.inner(batch))) for o in outs)


def test_another_threads_forward_neither_feeds_a_capture_nor_is_stopped_by_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3))
    mine, theirs = torch.randn(5, 4), torch.randn(7, 4)
    capture = CapturePass(net, ["0", "2"])
    capture(mine)  # learns the order: later batches stop after "2"
    registered, forward_done = threading.Event(), threading.Event()
    seen: dict[str, torch.Tensor] = {}

    def other_pass() -> None:  # a pass that holds its hooks while the main thread runs
        with capture_outputs(net, ["0", "2"], lambda _name: None) as found:
            registered.set()
            forward_done.wait(10)
            seen.update(found)

    worker = threading.Thread(target=other_pass)
    worker.start()
    assert registered.wait(10)
    out = net(theirs)  # runs whole: the other thread's hooks ignore it
    forward_done.set()
    worker.join(10)
    assert out.shape == (7, 3) and seen == {}
    again = capture(mine)  # this thread's own pass still stops and captures as before
    assert torch.equal(again["2"], net[2](net[1](net[0](mine))))


def test_image_batches_go_channels_last_and_their_rows_are_views():
    torch.manual_seed(0)
    images = torch.randn(3, 4, 5, 6)
    moved = to_device(images, "cpu")
    assert moved.is_contiguous(memory_format=torch.channels_last) and not moved.is_contiguous()
    assert torch.equal(moved, images)  # the same values, only their memory order differs
    tokens = {"input_ids": torch.ones(2, 3, dtype=torch.long)}
    assert to_device(tokens, "cpu")["input_ids"].is_contiguous()  # other batches as they are
    conv = nn.Conv2d(4, 7, 3, padding=1)
    with torch.no_grad():
        feats = conv(moved)
    assert feats.is_contiguous(memory_format=torch.channels_last)
    rows = to_rows(feats, "channels")
    assert rows.data_ptr() == feats.data_ptr()  # (positions, channels) without a copy
    assert torch.equal(rows, to_rows(feats.contiguous(), "channels"))
    flat = per_input(feats, "flat")
    assert flat.data_ptr() == feats.data_ptr()
    # the rows hold each input's values in another order: a Gram matrix does not see it
    contiguous = feats.contiguous().flatten(1)
    assert torch.allclose(gram(flat.double()), gram(contiguous.double()), rtol=1e-12, atol=0)
    assert torch.allclose(gram(flat), gram(contiguous), rtol=1e-6, atol=1e-6)


def test_grams_of_channels_last_features_match_the_contiguous_ones_for_both_measures():
    torch.manual_seed(1)
    images = torch.randn(6, 3, 8, 8)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 5, 3, padding=1))
    for measure in ("outputs", "updates"):
        grams = [
            captured_grams(CapturePass(net, ["0", "2"])(x), ["0", "2"], x, measure)
            for x in (images, to_device(images, "cpu"))
        ]
        assert torch.allclose(grams[0], grams[1], rtol=1e-5, atol=1e-5)  # two conv layouts
