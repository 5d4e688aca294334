"""Tests of the capture pass that stops a forward at its last needed output."""

from __future__ import annotations

import threading

import torch
from torch import nn

from heterogui.models.capture import CapturePass, capture_outputs


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
