"""zip.heads: search — each merged head pair's kept head chosen on the calibration data."""

from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from heterogui import head_search  # noqa: E402
from heterogui.cli import main  # noqa: E402
from heterogui.config import ZipSpec  # noqa: E402
from heterogui.errors import ConfigError  # noqa: E402
from heterogui.models.hf.bert_io import network_from_hf as bert_network  # noqa: E402
from heterogui.models.hf.decoder_io import network_from_hf as decoder_network  # noqa: E402
from heterogui.models.hf.vit_io import network_from_hf as vit_network  # noqa: E402
from heterogui.models.mlp import MLPConfig  # noqa: E402
from heterogui.pipeline import ZipSettings, prepare, zip_prepared  # noqa: E402
from heterogui.recipe_parse import load_recipe  # noqa: E402
from heterogui.tasks.lm_metrics import token_batches as lm_batches  # noqa: E402
from tests.conftest import (  # noqa: E402
    calibration,
    char_tokenizer,
    make,
    run_model,
    tiny_decoder,
    tiny_hf,
    tiny_vit,
    token_batches,
)
from tests.test_cli_vit import write_case  # noqa: E402
from tests.test_head_select import TEXTS, permuted_copy, vit_images  # noqa: E402

SEARCH = ZipSettings(heads="search", fusion="average")


def vit_pair():
    a = vit_network(tiny_vit(labels=3, patch=2), "A")
    b = vit_network(tiny_vit(labels=3, patch=2, seed=1), "B")
    return prepare(a, b, [vit_images(s) for s in range(6)], device="cpu")


def flipped(kept, first, unit):
    bits = list(kept[first])
    bits[unit] = 1 - bits[unit]
    return {**kept, first: tuple(bits)}


def test_searching_the_heads_of_a_permuted_copy_gives_the_model_back():
    a = bert_network(tiny_hf(labels=3), "A")
    b, _ = permuted_copy(a)
    prepared = prepare(a, b, token_batches(), device="cpu")
    result = zip_prepared(prepared, SEARCH)
    tried, value = result.searched
    pairs = sum(bit >= 0 for bits in result.settings.kept_heads.values() for bit in bits)
    assert pairs == 3 * 4  # every head of three layers is in a pair with its copy
    assert tried == 1 + pairs  # the energies' choice is exact: one sweep, no flip kept
    assert value < 1e-8
    x = token_batches()[0]
    out_a, out_b = run_model(result.model, x)
    assert (out_a - run_model(a.module, x)).abs().max() < 1e-4
    assert (out_b - run_model(b.module, x)).abs().max() < 1e-4


def test_a_partial_zip_searches_the_heads_of_its_merged_layers_only():
    # blocks: embeddings, layers 0-2, head; a stop at 2 merges the embeddings and layer 0, and
    # each model keeps its own layers 1 and 2 (before, the search asked for their matches)
    a = bert_network(tiny_hf(labels=3), "A")
    b, _ = permuted_copy(a)
    prepared = prepare(a, b, token_batches(), device="cpu")
    result = zip_prepared(prepared, dataclasses.replace(SEARCH, stop=2))
    assert set(result.settings.kept_heads) == {"layer0.qk"}
    assert result.searched[0] == 1 + 4  # the first merge, then one flip per pair of layer 0
    x = token_batches()[0]
    out_a, out_b = run_model(result.model, x)
    assert (out_a - run_model(a.module, x)).abs().max() < 1e-4
    assert (out_b - run_model(b.module, x)).abs().max() < 1e-4


def test_the_divergence_of_shards_added_up_is_the_whole_data_s(monkeypatch):
    # what every process of a torchrun scores: its shard's sums, added to the others' sums
    prepared = vit_pair()
    model = zip_prepared(prepared, ZipSettings(rho=0.5, fusion="average")).model
    whole = head_search.divergence(model, prepared, None)
    shards = [dataclasses.replace(prepared, batches=prepared.batches[r::2]) for r in range(2)]
    sums = []
    monkeypatch.setattr(head_search, "all_reduce_sum_", lambda t: sums.append(t.clone()) or t)
    alone = [head_search.divergence(model, shard, None) for shard in shards]
    assert all(abs(v - whole) > 1e-3 * whole for v in alone)  # a shard alone scores otherwise
    monkeypatch.setattr(head_search, "all_reduce_sum_", lambda t: t.copy_(sums[0] + sums[1]))
    for shard in shards:
        assert head_search.divergence(model, shard, None) == pytest.approx(whole, rel=1e-9)


def test_a_grouped_query_decoder_searches_whole_key_value_groups():
    net = decoder_network(tiny_decoder(), "D")
    batches = lm_batches(char_tokenizer(), TEXTS, 4, 48)
    prepared = prepare(net, permuted_copy(net)[0], batches, device="cpu")
    result = zip_prepared(prepared, SEARCH)
    assert result.searched[1] < 1e-8
    assert len(result.settings.kept_heads) == 2  # one head group per layer
    for bits in result.settings.kept_heads.values():
        assert len(bits) == 2 and all(b >= 0 for b in bits)  # two key/value groups, both paired
    batch = batches[0]
    out_a, _ = run_model(result.model, batch)
    reference = run_model(net.module, batch)
    mask = batch["attention_mask"].bool()
    assert (out_a[mask] - reference[mask]).abs().max() < 1e-4


def test_the_search_ends_where_no_single_flip_is_better_and_its_choice_repeats_the_merge():
    prepared = vit_pair()
    selected = zip_prepared(prepared, ZipSettings(heads="select", fusion="average"))
    result = zip_prepared(prepared, SEARCH)
    targets = head_search.parent_outputs(prepared)
    best = head_search.divergence(result.model, prepared, targets)
    assert best == pytest.approx(result.searched[1], rel=1e-9)
    assert best <= head_search.divergence(selected.model, prepared, targets)
    kept = dict(result.settings.kept_heads)
    assert set(kept) == {"layer0.qk", "layer1.qk", "layer2.qk"}
    for first, bits in kept.items():
        for unit, bit in enumerate(bits):
            if bit < 0:
                continue
            other = zip_prepared(
                prepared, dataclasses.replace(SEARCH, kept_heads=flipped(kept, first, unit))
            )
            assert other.searched is None  # a merge with its kept heads given runs no search
            assert head_search.divergence(other.model, prepared, targets) >= best
    again = zip_prepared(prepared, dataclasses.replace(SEARCH, kept_heads=kept))
    one, two = result.model.state_dict(), again.model.state_dict()
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_kept_heads_decide_which_parent_each_merged_pair_copies():
    prepared = vit_pair()
    result = zip_prepared(prepared, SEARCH)
    kept = result.settings.kept_heads
    for first, bits in kept.items():
        match = result.matches[first]
        owners = match.owners()
        unit = prepared.padded_a.graph().spaces[first].unit
        for u, bit in enumerate(bits):
            if bit < 0:
                continue
            group = int(match.groups[u * unit])
            members = (match.groups == group) & (match.weights == 1)
            assert owners[members].tolist() == [1 - bit]  # the kept member is A's (0) or B's (1)


def test_logits_compare_by_kl_divergence_and_embeddings_by_relative_error():
    vit = vit_network(tiny_vit(labels=3, patch=2), "A")
    encoder = bert_network(tiny_hf(), "E")
    assert head_search.writes_logits(vit) and not head_search.writes_logits(encoder)

    class Shifted(torch.nn.Module):
        """Outputs the parents' own outputs, B's moved by ``shift``."""

        def __init__(self, shift):
            super().__init__()
            self.shift = shift

        def forward(self, x):
            return vit.module(x), vit.module(x) + self.shift

    pair = SimpleNamespace(
        net_a=vit, net_b=vit, batches=[vit_images(s) for s in range(3)], device="cpu"
    )
    assert head_search.divergence(Shifted(0.0), pair, None) == 0.0
    assert head_search.divergence(Shifted(5.0), pair, None) < 1e-6  # a softmax ignores a shift
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = sum(
            float(
                F.kl_div(
                    F.log_softmax(vit.module(x) + noise, -1),
                    F.log_softmax(vit.module(x), -1),
                    log_target=True,
                    reduction="sum",
                )
            )
            for x in pair.batches
        ) / (3 * 16)
    assert head_search.divergence(Shifted(noise), pair, None) == pytest.approx(expected, rel=1e-5)

    class Scaled(torch.nn.Module):
        def forward(self, x):
            return encoder.module(x), 2 * encoder.module(x)

    texts = SimpleNamespace(net_a=encoder, net_b=encoder, batches=token_batches(), device="cpu")
    with torch.no_grad():
        outs = [encoder.module(x) for x in texts.batches]
    relative = sum(float(o.pow(2).sum()) for o in outs) / sum(
        float((o - o.mean(0)).pow(2).sum()) for o in outs
    )
    assert head_search.divergence(Scaled(), texts, None) == pytest.approx(relative, rel=1e-5)


def test_padded_tokens_do_not_count():
    net = decoder_network(tiny_decoder(), "D")
    tokenizer = char_tokenizer()
    batches = [dict(b) for b in lm_batches(tokenizer, TEXTS, 2, 24)]
    for b in batches:  # the last 5 positions of every text are padding
        b["attention_mask"] = torch.ones_like(b["input_ids"])
        b["attention_mask"][:, -5:] = 0

    class PaddingChanged(torch.nn.Module):
        def forward(self, x):
            out = net.module(x)
            return out, out + 7.0 * (x["attention_mask"] == 0).unsqueeze(-1) * torch.arange(
                out.shape[-1]
            )

    pair = SimpleNamespace(net_a=net, net_b=net, batches=batches, device="cpu")
    assert head_search.divergence(PaddingChanged(), pair, None) < 1e-9


def test_search_is_a_recipe_setting_that_a_recorded_recipe_repeats(tmp_path):
    assert ZipSpec(heads="search").heads == "search"
    with pytest.raises(ConfigError, match=r"use one of \('auto', 'pair', 'select', 'search', 'sp"):
        ZipSpec(heads="searched")
    recipe = write_case(tmp_path, "width", zip={"heads": "search"})
    assert main(["merge", str(recipe), "--out", str(tmp_path / "one")]) == 0
    assert load_recipe(tmp_path / "one" / "recipe.yaml").zip.heads == "search"
    assert (
        main(["merge", str(tmp_path / "one" / "recipe.yaml"), "--out", str(tmp_path / "two")]) == 0
    )
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_a_pair_without_attention_runs_one_plain_merge():
    a = make(MLPConfig(64, (24, 32, 16), 5), 0, "A")
    b = make(MLPConfig(64, (16, 28), 5), 1, "B")
    prepared = prepare(a, b, calibration((64,)), device="cpu")
    result = zip_prepared(prepared, ZipSettings(heads="search"))
    assert result.searched is None and not result.settings.kept_heads
    assert all(m.weights is None for m in result.matches.values())


def test_a_search_reports_its_progress_so_that_cancel_can_stop_it():
    """The workbench's Cancel raises from the progress callback: the search calls it per flip."""

    class Stop(Exception):
        pass

    seen = []

    def progress(stage, fraction):
        seen.append((stage, fraction))
        if stage == "search" and len([s for s, _ in seen if s == "search"]) == 3:
            raise Stop

    with pytest.raises(Stop):
        zip_prepared(vit_pair(), SEARCH, progress=progress)
    fractions = [f for s, f in seen if s == "search"]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] < 1.0
