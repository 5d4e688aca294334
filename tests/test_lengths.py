"""Feature passes regroup token batches by length: the same tokens, less padding."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_decoder, tiny_hf, token_batch, token_batches
from test_decoder import batches as decoder_batches

from heterogui.fusion import renormalize, sequential
from heterogui.models.hf.bert_io import network_from_hf as bert_from_hf
from heterogui.models.hf.decoder_io import network_from_hf
from heterogui.models.lengths import by_length
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.zip import collect


def _sequences(batches) -> list[tuple]:
    """Every sequence as (real ids, real token types, label), sorted."""
    out = []
    for batch in batches:
        for row, mask in enumerate(batch["attention_mask"].bool()):
            out.append(
                (
                    tuple(batch["input_ids"][row][mask].tolist()),
                    tuple(batch["token_type_ids"][row][mask].tolist()),
                    int(batch["label"][row]),
                )
            )
    return sorted(out)


def _with_types_and_labels(seed: int) -> dict[str, torch.Tensor]:
    batch = token_batch(seed)
    n, t = batch["input_ids"].shape
    types = (torch.arange(t)[None] >= 2).long() * batch["attention_mask"]  # a second segment
    labels = torch.arange(n) + 100 * seed
    return batch | {"token_type_ids": types, "label": labels}


def test_regrouping_keeps_every_sequence_and_the_batch_sizes():
    batches = [_with_types_and_labels(s) for s in range(5)]
    batches[-1] = {k: v[:7] for k, v in batches[-1].items()}  # a short last batch
    regrouped = by_length(batches)
    assert [len(b["label"]) for b in regrouped] == [len(b["label"]) for b in batches]
    assert _sequences(regrouped) == _sequences(batches)
    lengths = [b["attention_mask"].sum(dim=1) for b in regrouped]
    for batch, length in zip(regrouped, lengths, strict=True):
        assert batch["attention_mask"].shape[1] == int(length.max())  # padded to its longest
        assert set(batch) == set(batches[0])
        padding = batch["attention_mask"] == 0
        assert (batch["input_ids"][padding] == 0).all()  # padded as the input was
        assert (batch["token_type_ids"][padding] == 0).all()
    flat = torch.cat(lengths)
    assert torch.equal(flat, flat.sort(descending=True).values)  # longest first
    before = sum(b["attention_mask"].numel() for b in batches)
    after = sum(b["attention_mask"].numel() for b in regrouped)
    assert after < before


def test_sequences_of_padding_only_keep_one_position():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    ids = torch.tensor([[5, 6, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    regrouped = by_length(
        [
            {"input_ids": ids[:2], "attention_mask": mask[:2]},
            {"input_ids": ids[2:], "attention_mask": mask[2:]},
        ]
    )
    assert [tuple(b["attention_mask"].shape) for b in regrouped] == [(2, 2), (2, 1)]
    assert regrouped[1]["attention_mask"].sum() == 0 and regrouped[1]["input_ids"].sum() == 0


def test_batches_it_cannot_regroup_come_back_as_they_were():
    images = [torch.randn(4, 3, 8, 8), torch.randn(2, 3, 8, 8)]
    full = [{"input_ids": torch.ones(3, 5, dtype=torch.long), "attention_mask": torch.ones(3, 5)}]
    left = token_batches(2)
    left[1] = {k: v.flip(1) for k, v in left[1].items()}  # padded on the left
    mixed = token_batches(2)
    mixed[1] = mixed[1] | {"token_type_ids": torch.zeros_like(mixed[1]["input_ids"])}
    for batches in (images, full, left, mixed, []):
        out = by_length(batches)
        assert len(out) == len(batches)
        assert all(o is b for o, b in zip(out, batches, strict=True))


def _bert_nets():
    deep = bert_from_hf(tiny_hf(hidden=32, heads=4, inter=64, layers=3, seed=0), "A")
    other = bert_from_hf(tiny_hf(hidden=32, heads=4, inter=64, layers=3, seed=1), "B")
    return deep, other, token_batches()


def _decoder_nets():
    a = network_from_hf(tiny_decoder(hidden=48, layers=3, heads=6, kv=2, inter=80, seed=1))
    b = network_from_hf(tiny_decoder(hidden=48, layers=3, heads=6, kv=2, inter=80, seed=2))
    return a, b, decoder_batches()


@pytest.mark.parametrize("pair", [_bert_nets, _decoder_nets])
def test_a_feature_pass_sums_the_same_tokens_through_less_padding(pair, monkeypatch):
    net_a, net_b, batches = pair()
    seen: list[int] = []

    def count_tokens(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append(ids.numel())

    handle = net_a.module.register_forward_pre_hook(count_tokens, with_kwargs=True)
    regrouped = collect.collect_moments([net_a, net_b], batches, dtype=torch.float64)
    tokens_regrouped = sum(seen)
    seen.clear()
    monkeypatch.setattr(collect, "by_length", list)  # the batches as given
    as_given = collect.collect_moments([net_a, net_b], batches, dtype=torch.float64)
    handle.remove()
    assert tokens_regrouped < sum(seen) == sum(b["attention_mask"].numel() for b in batches)
    assert regrouped.keys() == as_given.keys()
    for key, moments in regrouped.items():
        assert moments.count == as_given[key].count  # the same real tokens, none more
        torch.testing.assert_close(moments.mean(), as_given[key].mean(), atol=1e-6, rtol=0)
        torch.testing.assert_close(moments.corr(), as_given[key].corr(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("pair", [_bert_nets, _decoder_nets])
def test_the_refit_and_the_renormalization_merge_the_same_from_regrouped_batches(pair, monkeypatch):
    """Their sums run over the tokens too: the same merge to float32 rounding, any grouping."""
    net_a, net_b, batches = pair()
    prep = prepare(net_a, net_b, batches)
    settings = ZipSettings(fusion="least_squares_sequential", renormalize=True)
    regrouped = zip_prepared(prep, settings)
    for module in (sequential, renormalize):
        monkeypatch.setattr(module, "by_length", list)  # the batches as given
    as_given = zip_prepared(prep, settings)
    assert regrouped.renormalized == as_given.renormalized > 0
    theirs = as_given.model.state_dict()
    for name, tensor in regrouped.model.state_dict().items():
        torch.testing.assert_close(tensor, theirs[name], atol=1e-5, rtol=0, msg=name)
