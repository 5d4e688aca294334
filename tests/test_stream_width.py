"""A transformer's merged stream gets a width its own transformers config holds, at every rho.

On a 0.05 grid of rho, 16 of 21 merges of BERT, ViT and GPT-2 pairs could not be written as the
models' own folders (hidden_size must be heads x head size), and decoders' exports padded their
heads up to a divisor of the stream (to 74 heads for a merge of 10).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import real, tiny_decoder, tiny_hf, tiny_vit, token_batches
from test_decoder import batches as text_batches
from test_decoder import real_rows, tiny_gpt2

from heterogui.export.job import ExportJob
from heterogui.export.registry import write_export
from heterogui.models.hf.bert_io import network_from_hf as bert_network
from heterogui.models.hf.decoder_io import network_from_hf as decoder_network
from heterogui.models.hf.gpt2_io import network_from_hf as gpt2_network
from heterogui.models.hf.vit_io import network_from_hf as vit_network
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.zip.plan import plan_widths, stop_point
from heterogui.zip.stream_width import STREAM, stream_rule
from heterogui.zip.widths import target_width

RHOS = [k / 20 for k in range(21)]


def pairs() -> dict[str, tuple]:
    """Return per family two networks of one depth, widths 32 and 48 (heads of 8)."""
    return {
        "bert": (bert_network(tiny_hf(32, 4, seed=0)), bert_network(tiny_hf(48, 6, seed=1))),
        "vit": (vit_network(tiny_vit(32, 4)), vit_network(tiny_vit(48, 6, seed=1))),
        "gpt2": (gpt2_network(tiny_gpt2()), gpt2_network(tiny_gpt2(hidden=48, heads=6, seed=1))),
        "llama": (
            decoder_network(tiny_decoder(hidden=32, heads=4, kv=2, seed=0)),
            decoder_network(tiny_decoder(hidden=48, heads=6, kv=3, seed=1)),
        ),
    }


@pytest.mark.parametrize("family", ["bert", "vit", "gpt2", "llama"])
@pytest.mark.parametrize("heads", ["pair", "split"])
def test_every_rho_plans_a_stream_the_format_holds_near_its_target(family, heads):
    if heads == "split" and family == "llama":
        pytest.skip("decoders pair their heads")
    a, b = pairs()[family]
    ga, gb = a.graph(), b.graph()
    stop = stop_point(ga, ZipSettings())  # every block
    for rho in RHOS:
        settings = ZipSettings(rho=rho, heads=heads)
        plan = plan_widths(ga, gb, settings, stop)
        n_a, n_b, width = plan[STREAM]
        target = target_width(n_a, n_b, rho)
        assert stream_rule(plan, ga, heads == "split")[1](width), (rho, plan)
        step = 10 if family == "llama" else 8  # at most: the head count / a head's size
        assert abs(width - target) <= step // 2, (rho, width, target)
        if rho in (0.0, 1.0):  # the ensemble and the paper's width stay exactly
            assert width == target
    hand = ZipSettings(rho=0.5, overrides={STREAM: {"width": 57}}, heads=heads)
    assert plan_widths(ga, gb, hand, stop)[STREAM][2] == 57  # a width set by hand stays
    if heads == "pair" and family != "llama":
        # every head kept: no stream near rho's holds them (a BERT's heads fill its width),
        # so rho's width stays; it moved up to the heads' 80 features, as if rho were 0
        kept = ZipSettings(rho=0.6, overrides={"*.qk": {"rho": 0.0}}, heads=heads)
        n_a, n_b, width = plan_widths(ga, gb, kept, stop)[STREAM]
        assert width == target_width(n_a, n_b, 0.6)


def test_merges_between_the_grid_points_export_as_the_models_own_folders(tmp_path):
    """rho 0.35 and 0.6: a BertModel and a GPT2LMHeadModel folder that compute the merge (they
    fell back to the heterogui format), a Llama folder with the merge's own head count."""
    from transformers import AutoModel, AutoModelForCausalLM

    from heterogui.tasks.language import merged_logits

    nets = pairs()
    tokens = token_batches(3)
    prepared = prepare(*nets["bert"], tokens, device="cpu")
    for rho in (0.35, 0.6):
        model = zip_prepared(prepared, ZipSettings(rho=rho)).model
        out = write_export(ExportJob(model), tmp_path / f"bert-{rho}", "hf-bert")
        batch = tokens[0]
        with torch.no_grad():
            got = AutoModel.from_pretrained(out)(**batch).last_hidden_state
            want = model.features(**batch)[0]
        assert (real(got, batch) - real(want, batch)).abs().max() < 1e-5
    text = text_batches()
    batch = text[0]
    for family in ("gpt2", "llama"):
        prepared = prepare(*nets[family], text, device="cpu")
        model = zip_prepared(prepared, ZipSettings(rho=0.6)).model
        out = write_export(ExportJob(model), tmp_path / f"{family}-0.6", "hf-causal-lm")
        config = json.loads((out / "config.json").read_text())
        heads = config.get("num_attention_heads", config.get("n_head"))
        group = 2 if family == "llama" else 1  # the Llamas' query heads per key/value head
        assert heads == -(-max(model.spec.trunk_config.heads) // group) * group
        with torch.no_grad():
            exported = AutoModelForCausalLM.from_pretrained(out)(**batch).logits
        assert real_rows((exported - merged_logits(model)(batch)).abs(), batch).max() < 1e-4
