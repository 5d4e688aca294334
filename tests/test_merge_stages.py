"""The stages a merge times (the copy to its device, a discarded padding) and meta shells."""

from __future__ import annotations

import torch
from torch import nn

from heterogui.bench.speed_pair import bert_pair, token_id_batches
from heterogui.models.storage import on_meta
from heterogui.pipeline import ZipSettings, prepare, zip_prepared


class _Mixed(nn.Module):
    """A module with meta parameters and a buffer made on the CPU and filled in place."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 5)
        self.linear = nn.Linear(5, 3)
        self.register_buffer("scale", torch.zeros(3, device="cpu").fill_(2.0))


def test_meta_shells_have_the_shapes_and_keep_real_tensors_and_the_random_state():
    state = torch.random.get_rng_state()
    shell = on_meta(_Mixed)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert shell.embed.weight.is_meta and shell.embed.weight.shape == (11, 5)
    assert shell.linear.weight.shape == (3, 5) and shell.linear.bias.is_meta
    assert torch.equal(shell.scale, torch.full((3,), 2.0))  # a real tensor is initialised


def test_a_merge_times_the_copy_to_its_device_and_keeps_a_discarded_padding():
    a, b = bert_pair((6, 3), 64)
    batches = token_id_batches(64, 8, 8)  # 8 batches: the first one's CKA places the layers
    prep = prepare(a, b, batches, device="cpu")
    assert "to_device" in prep.timings  # the models are copied (built in training mode)
    # on this pair the whole CKA places the layers elsewhere than the first batch's: the
    # guess's padding is kept as its own stage next to the final padding and feature pass
    assert {"probe", "analysis", "probe_padding", "padding", "features"} <= set(prep.timings)
    assert zip_prepared(prep, ZipSettings()).model is not None
