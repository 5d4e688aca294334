"""Heads split (``zip.heads: split``): every head of both models kept, each at half its size."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from heterogui.cli import main  # noqa: E402
from heterogui.config import ZipSpec  # noqa: E402
from heterogui.errors import ConfigError  # noqa: E402
from heterogui.fusion.split_heads import split_heads, split_layer  # noqa: E402
from heterogui.models.bert import BERT_NAMES  # noqa: E402
from heterogui.models.family import build_network  # noqa: E402
from heterogui.models.hf.bert_io import network_from_hf as bert_network  # noqa: E402
from heterogui.models.hf.decoder_io import network_from_hf as decoder_network  # noqa: E402
from heterogui.models.hf.vit_io import network_from_hf as vit_network  # noqa: E402
from heterogui.models.mlp import MLPConfig  # noqa: E402
from heterogui.models.vit import VIT_NAMES  # noqa: E402
from heterogui.nway import merge_group  # noqa: E402
from heterogui.pipeline import ZipSettings, prepare, zip_prepared  # noqa: E402
from heterogui.recipe_parse import load_recipe  # noqa: E402
from heterogui.run import merge as merge_recipe  # noqa: E402
from heterogui.sizes import estimate, merged_effective_size  # noqa: E402
from heterogui.tasks.lm_metrics import token_batches as lm_batches  # noqa: E402
from tests.conftest import (  # noqa: E402
    char_tokenizer,
    run_model,
    tiny_decoder,
    tiny_hf,
    tiny_vit,
    token_batch,
    token_batches,
)
from tests.test_cli_vit import images, write_case  # noqa: E402

SPLIT = ZipSettings(heads="split")
KEPT = ZipSettings(overrides={"*.qk": {"rho": 0.0}}, heads="pair")  # every head whole, side by side


def with_biases(net, seed: int = 0):
    """Give every query, key and value bias random values (a fresh BERT's are zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.module.named_parameters():
            if name.endswith(("query.bias", "key.bias", "value.bias")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net


def bert_pair():
    a = with_biases(bert_network(tiny_hf(), "A"))
    b = with_biases(bert_network(tiny_hf(hidden=48, heads=6, inter=96, layers=2, seed=1), "B"), 1)
    return a, b


def vit_batches(n: int = 6) -> list[torch.Tensor]:
    return [images(s, 16) for s in range(n)]


def test_a_split_at_full_rank_computes_the_same_function():
    """The change of basis is exact; only the rank cut changes what a head computes. The key
    bias (a per-query constant of the scores) and value bias (a constant write) fold away."""
    a, b = bert_pair()
    kept = zip_prepared(prepare(a, b, token_batches(), device="cpu"), KEPT)
    same = split_heads(kept.model, BERT_NAMES, rank=8)
    x = token_batch(99)
    for got, want in zip(run_model(same, x), run_model(kept.model, x), strict=True):
        assert (got - want).abs().max() < 1e-5
    state = same.state_dict()
    assert not state["trunk.1.attention.self.key.bias"].any()
    assert not state["trunk.1.attention.self.value.bias"].any()
    assert kept.model.state_dict()["trunk.1.attention.self.key.bias"].any()  # left as it was

    vit = vit_network(tiny_vit(labels=3, patch=2), "A")
    other = vit_network(tiny_vit(hidden=48, heads=6, labels=3, patch=2, seed=1), "B")
    kept = zip_prepared(prepare(vit, other, vit_batches(), device="cpu"), KEPT)
    same = split_heads(kept.model, VIT_NAMES, rank=8)
    x = images(99, 8)
    for got, want in zip(run_model(same, x), run_model(kept.model, x), strict=True):
        assert (got - want).abs().max() < 1e-5


def test_each_head_keeps_the_best_low_rank_form():
    """Per head: the scaled query-key form and the value-output map are their best rank-r
    approximations (Eckart-Young: the error is the dropped singular values)."""
    gen = torch.Generator().manual_seed(3)
    hidden, heads, d, r = 12, 2, 4, 2
    names = BERT_NAMES
    layer = {
        f"{names.query}.weight": torch.randn(heads * d, hidden, generator=gen, dtype=torch.float64),
        f"{names.query}.bias": torch.randn(heads * d, generator=gen, dtype=torch.float64),
        f"{names.key}.weight": torch.randn(heads * d, hidden, generator=gen, dtype=torch.float64),
        f"{names.key}.bias": torch.randn(heads * d, generator=gen, dtype=torch.float64),
        f"{names.value}.weight": torch.randn(heads * d, hidden, generator=gen, dtype=torch.float64),
        f"{names.value}.bias": torch.randn(heads * d, generator=gen, dtype=torch.float64),
        f"{names.attn_out}.weight": torch.randn(
            hidden, heads * d, generator=gen, dtype=torch.float64
        ),
        f"{names.attn_out}.bias": torch.randn(hidden, generator=gen, dtype=torch.float64),
    }
    split = split_layer(layer, names, heads, d, r)
    assert split[f"{names.query}.weight"].shape == (heads * r, hidden)
    assert split[f"{names.attn_out}.weight"].shape == (hidden, heads * r)

    def augmented(state, proj, h, size):
        rows = slice(h * size, (h + 1) * size)
        return torch.cat([state[f"{proj}.weight"][rows], state[f"{proj}.bias"][rows, None]], 1)

    bias = layer[f"{names.attn_out}.bias"].clone()
    for h in range(heads):
        rows, cut = slice(h * d, (h + 1) * d), slice(h * r, (h + 1) * r)
        form = augmented(layer, names.query, h, d).T @ layer[f"{names.key}.weight"][rows] / d**0.5
        new = augmented(split, names.query, h, r).T @ split[f"{names.key}.weight"][cut] / r**0.5
        tail = torch.linalg.svdvals(form)[r:]
        assert math.isclose(float((form - new).norm()), float(tail.norm()), rel_tol=1e-9)
        out = layer[f"{names.attn_out}.weight"][:, rows]
        writes = out @ layer[f"{names.value}.weight"][rows]
        new = split[f"{names.attn_out}.weight"][:, cut] @ split[f"{names.value}.weight"][cut]
        tail = torch.linalg.svdvals(writes)[r:]
        assert math.isclose(float((writes - new).norm()), float(tail.norm()), rel_tol=1e-9)
        bias += out @ layer[f"{names.value}.bias"][rows]
    assert torch.allclose(split[f"{names.attn_out}.bias"], bias, atol=1e-12)


def test_a_split_merge_keeps_every_head_at_half_its_size():
    a, b = bert_pair()
    prepared = prepare(a, b, token_batches(), device="cpu")
    result = zip_prepared(prepared, SPLIT)
    config = result.spec.trunk_config
    assert config.head_dim == 4
    # layer 0 and 1: A's 4 heads and B's 6; layer 2 (B's identity slot): A's 4
    assert config.heads == (10, 10, 4)
    widths = result.widths()
    assert widths["layer0.qk"] == (32, 48, 40) and widths["layer2.vo"][2] == 16
    stream = result.matches["stream"]
    assert widths["stream"] == (stream.n_a, stream.n_b, stream.width)
    assert all(m.weights is None for m in result.matches.values())
    # the readout's plan is the model the merge makes
    planned = estimate(prepared, SPLIT)
    assert planned["widths"] == widths
    assert planned["parameters"] == sum(p.numel() for p in result.model.parameters())
    # at rho 0 nothing is shared and the planned counts are exact: so is the effective size
    apart = ZipSettings(heads="split", rho=0.0)
    assert estimate(prepared, apart)["effective"] == merged_effective_size(
        zip_prepared(prepared, apart)
    )
    # every head's output projection reads only its own 4 features: no head was averaged
    kept = zip_prepared(prepared, KEPT)
    assert kept.spec.trunk_config.heads == config.heads and kept.spec.trunk_config.head_dim == 8
    out = result.model(**token_batch(5))
    assert all(torch.isfinite(o).all() for o in out)


def test_split_is_refused_where_it_cannot_apply():
    a, b = bert_pair()
    prepared = prepare(a, b, token_batches(), device="cpu")
    for overrides, message in (
        ({"layer0.qk": {"heads": "split"}}, "one head size"),
        ({"*.qk": {"heads": "pair"}}, "one head size"),
        ({"layer1.qk": {"width": 64}}, "a width override with heads split"),
    ):
        heads = "pair" if overrides.get("layer0.qk", {}).get("heads") == "split" else "split"
        settings = ZipSettings(heads=heads, overrides=overrides)
        with pytest.raises(ConfigError, match=message):
            zip_prepared(prepared, settings)
        with pytest.raises(ConfigError, match=message):
            estimate(prepared, settings)
    # a recipe says so before any model loads
    with pytest.raises(ConfigError, match=r"zip.overrides.layer0.qk: heads 'pair' with zip.heads"):
        ZipSpec(heads="split", overrides={"layer0.qk": {"heads": "pair"}})
    with pytest.raises(ConfigError, match=r"zip.overrides.\*.qk: heads 'split' with zip.heads"):
        ZipSpec(overrides={"*.qk": {"heads": "split"}})
    # a rho on every merge point leaves a split's heads whole and halved
    halved = zip_prepared(prepared, ZipSettings(heads="split", overrides={"*": {"rho": 0.5}}))
    assert halved.spec.trunk_config.heads == (10, 10, 4)

    decoder = decoder_network(tiny_decoder("llama", hidden=48, layers=2, heads=6, kv=2))
    texts = ["def f(x):\n    return x", "Lists hold items.", "for x in y: pass", "A tuple."]
    batches = lm_batches(char_tokenizer(), texts, 4, 32)
    pair = prepare(decoder, decoder, batches, device="cpu")
    with pytest.raises(ConfigError, match="split is for BERT, ViT and GPT-2 models, not decoder"):
        zip_prepared(pair, SPLIT)
    with pytest.raises(ConfigError, match="split is for BERT, ViT and GPT-2 models"):
        estimate(pair, SPLIT)
    with pytest.raises(ConfigError, match=r"N-way merge pairs attention heads .*zip.heads: pair"):
        merge_group([a, b, a], token_batches(), SPLIT, device="cpu")


def test_a_split_merge_exports_and_repeats_bit_for_bit(tmp_path):
    from transformers import AutoModel

    recipe = write_case(tmp_path, "width", zip={"heads": "split"})
    out = tmp_path / "one"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    report = json.loads((out / "report.json").read_text())
    # 4 + 6 heads of 4 features in a stream of 48 (12 head slots: the export pads 2)
    assert report["widths"]["layer0.qk"] == [32, 48, 40]
    assert config["hidden_size"] // config["num_attention_heads"] == 4
    done = merge_recipe(recipe)
    model = AutoModel.from_pretrained(out).eval()
    x = images(7, 8)
    with torch.no_grad():
        diff = (model(pixel_values=x).last_hidden_state - done.result.model.features(x)).abs()
    assert diff.max() < 1e-5
    recorded = load_recipe(out / "recipe.yaml")
    assert recorded.zip.heads == "split"
    assert main(["merge", str(out / "recipe.yaml"), "--out", str(tmp_path / "two")]) == 0
    one = load_file(str(out / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_models_without_attention_merge_alike_with_split():
    """As with heads select, a split has nothing to act on in an MLP: the same merge."""
    torch.manual_seed(0)
    a = build_network(MLPConfig(64, (16, 8), 5), tuple(range(5)), "A")
    b = build_network(MLPConfig(64, (24, 8), 5), tuple(range(5, 10)), "B")
    batches = [torch.randn(32, 64, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    prepared = prepare(a, b, batches, device="cpu")
    split, pair = zip_prepared(prepared, SPLIT), zip_prepared(prepared, ZipSettings())
    assert split.split_rank is None and split.widths() == pair.widths()
    one, two = split.model.state_dict(), pair.model.state_dict()
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_auto_heads_are_the_familys_default():
    """``zip.heads: auto`` splits ViT heads and pairs the others'; the paper's baselines, heads
    chosen per layer and merges of more than two models pair them."""
    from heterogui.models.family import FAMILIES
    from heterogui.zip.plan import family_settings

    vit, bert = FAMILIES["vit"], FAMILIES["bert"]
    assert ZipSettings().heads == "auto"
    assert family_settings(ZipSettings(), vit).heads == "split"
    assert family_settings(ZipSettings(), bert).heads == "pair"
    assert family_settings(ZipSettings(), vit, models=3).heads == "pair"
    assert family_settings(ZipSettings(matcher="permute"), vit).heads == "pair"
    per_layer = ZipSettings(overrides={"layer0.qk": {"heads": "select"}})
    assert family_settings(per_layer, vit).heads == "pair"
    assert family_settings(ZipSettings(heads="select"), vit).heads == "select"  # as asked
    # a setting that merges nothing keeps every head whole (a split would halve them all)
    assert family_settings(ZipSettings(rho=0.0), vit).heads == "pair"
    merging = ({"stream": {"rho": 0.5}}, {"stream": {"width": 40}}, {"mlp": {"matcher": "permute"}})
    for overrides in merging:
        assert family_settings(ZipSettings(rho=0.0, overrides=overrides), vit).heads == "split"
    assert (
        family_settings(ZipSettings(rho=0.0, overrides={"s": {"alpha": 0.3}}), vit).heads == "pair"
    )
    assert family_settings(ZipSettings(rho=0.0, heads="split"), vit).heads == "split"  # as asked


def test_sizing_attention_layers_pairs_a_vit_s_heads():
    """A rho, width or matcher set on attention layers asks for whole heads: "auto" pairs
    them (a split keeps every head halved, whatever the override says, and used to ignore
    it); other overrides keep the split."""
    a = vit_network(tiny_vit(), "A")
    b = vit_network(tiny_vit(hidden=48, heads=6, layers=2, seed=1), "B")
    prepared = prepare(a, b, vit_batches(), device="cpu")
    kept = zip_prepared(prepared, ZipSettings(overrides={"*.qk": {"rho": 0.0}}, fusion="average"))
    assert kept.settings.heads == "pair"
    qk = kept.matches["layer0.qk"]
    assert qk.width == qk.n_a + qk.n_b  # every head of both, whole
    paired = ZipSettings(overrides={"*.qk": {"rho": 0.0}}, heads="pair", fusion="average")
    assert kept.settings == zip_prepared(prepared, paired).settings
    one = zip_prepared(prepared, ZipSettings(overrides={"layer0.qk": {"width": 56}}))
    assert one.settings.heads == "pair" and one.matches["layer0.qk"].width == 56
    graph = prepared.padded_a.graph()
    from heterogui.models.family import FAMILIES
    from heterogui.zip.plan import family_settings

    vit = FAMILIES["vit"]
    for overrides in ({"layer1.vo": {"matcher": "permute"}}, {"layer7.qk": {"rho": 0.5}}):
        assert family_settings(ZipSettings(overrides=overrides), vit, graph=graph).heads == "pair"
    for overrides in ({"*.qk": {"alpha": 0.3}}, {"stream": {"rho": 0.5}}, {"*.ffn": {"rho": 0}}):
        assert family_settings(ZipSettings(overrides=overrides), vit, graph=graph).heads == "split"
    assert zip_prepared(prepared, ZipSettings()).settings.heads == "split"


def test_a_vit_merge_at_rho_0_keeps_every_parameter_of_both_models():
    a = vit_network(tiny_vit(), "A")
    b = vit_network(tiny_vit(hidden=48, heads=6, layers=2, seed=1), "B")
    prepared = prepare(a, b, vit_batches(), device="cpu")
    result = zip_prepared(prepared, ZipSettings(rho=0.0, fusion="average"))
    assert result.settings.heads == "pair"
    both = sum(p.numel() for n in (a, b) for p in n.module.parameters())
    assert merged_effective_size(result)["parameters"] == both
    # ViT's default, the sequential refit, fits each layer on the merged stream, which one
    # LayerNorm normalises over both models' features: its readers take every merged feature
    refit = zip_prepared(prepared, ZipSettings(rho=0.0))
    assert refit.settings.fusion == "least_squares_sequential"
    stored = sum(p.numel() for p in refit.model.parameters())
    assert both < merged_effective_size(refit)["parameters"] <= stored


def test_a_partial_split_merge_keeps_its_tails_and_reads_back_exactly(tmp_path):
    """Stopped before the last layer: the trunk's heads are halved, the tails keep their models'
    heads; the folder reads back the same function. Statistics collected part by part (a
    budget) give the same merge."""
    from heterogui.export.network import save_merged
    from heterogui.sources.folder import load_merged

    vit = vit_network(tiny_vit(labels=3, patch=2), "A")
    other = vit_network(tiny_vit(hidden=48, heads=6, labels=3, patch=2, seed=1), "B")
    prepared = prepare(vit, other, vit_batches(), device="cpu")
    result = zip_prepared(prepared, ZipSettings(heads="split", stop=2))
    assert result.spec.trunk_config.head_dim == 4 and result.spec.stop == 2
    assert [c.head_dim for c in result.spec.tail_configs] == [8, 8]
    x = images(5, 8)
    outputs = run_model(result.model, x)
    folder = save_merged(result.model, tmp_path / "partial")
    again = run_model(load_merged(folder), x)
    assert all(torch.equal(o, a) for o, a in zip(outputs, again, strict=True))
    parted = prepare(vit, other, vit_batches(), device="cpu", stats_budget=1)
    assert not parted.stats  # collected per part at each merge
    same = zip_prepared(parted, ZipSettings(heads="split", stop=2))
    for o, s in zip(outputs, run_model(same.model, x), strict=True):
        assert (o - s).abs().max() < 1e-5
