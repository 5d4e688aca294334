"""The ViT family on tiny random ViTs: adapter, permuted copies, exact padding, widths, export."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from heterogui.errors import ExportError  # noqa: E402
from heterogui.export.job import HF_VIT_FORMAT, ExportJob  # noqa: E402
from heterogui.export.registry import write_export  # noqa: E402
from heterogui.models.hf.vit_io import network_from_hf  # noqa: E402
from heterogui.models.permute import permute_network, random_permutations  # noqa: E402
from heterogui.pipeline import ZipSettings, prepare, zip_prepared  # noqa: E402
from tests.conftest import check_merge, tiny_vit  # noqa: E402


def export_vit(model, out):
    """Write a merged ViT as a Hugging Face ViTModel folder (the hf-vit output format)."""
    return write_export(ExportJob(model), out, HF_VIT_FORMAT)


def images(seed: int, n: int = 16) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def batches(count: int = 6) -> list[torch.Tensor]:
    return [images(s) for s in range(count)]


@pytest.mark.parametrize("labels", [None, 3])
def test_adapter_computes_what_transformers_computes(labels):
    hf = tiny_vit(labels=labels)
    net = network_from_hf(hf)
    x = images(99)
    with torch.no_grad():
        if labels:
            diff = (hf(pixel_values=x).logits - net.module(x)).abs().max()
        else:
            diff = (hf(pixel_values=x).last_hidden_state - net.module.hidden_states(x)).abs().max()
    assert diff < 1e-5


@pytest.mark.parametrize("labels", [None, 3])
def test_zipping_a_permuted_copy_gives_the_model_back(labels):
    a = network_from_hf(tiny_vit(labels=labels), "A")
    perms = random_permutations(a.graph(), torch.Generator().manual_seed(5))
    assert not torch.equal(perms["stream"], torch.arange(32))
    b = permute_network(a, perms)
    x = images(99)
    with torch.no_grad():
        ha, hb = a.module.hidden_states(x), b.module.hidden_states(x)
        assert (ha[..., perms["stream"]] - hb).abs().max() < 1e-5
    paper = ZipSettings(heads="pair")  # the paper's heads: a split halves them (tested apart)
    result = zip_prepared(prepare(a, b, batches(), device="cpu"), paper)
    with torch.no_grad():
        out_a, out_b = result.model(x)
        assert (out_a - a.module(x)).abs().max() < 1e-4
        assert (out_b - b.module(x)).abs().max() < 1e-4
    for space, (n_a, n_b, r) in result.widths().items():
        assert n_a == n_b == r, space


def test_padded_shallow_vit_equals_itself_exactly():
    deep = network_from_hf(tiny_vit(layers=4, seed=0), "deep")
    shallow = network_from_hf(tiny_vit(layers=2, seed=1), "shallow")
    prep = prepare(deep, shallow, batches(), mode="uniform", device="cpu")
    padded = prep.padded_b
    assert padded.config.num_layers == 4 and len(padded.identity_blocks) == 2
    x = images(7)
    with torch.no_grad():
        assert torch.equal(padded.module(x), shallow.module(x))


def test_width_heterogeneous_vits_merge_into_a_valid_vit_model(tmp_path):
    from transformers import ViTModel

    a = network_from_hf(tiny_vit(hidden=32, heads=4, inter=64, seed=0), "A")
    b = network_from_hf(tiny_vit(hidden=48, heads=6, inter=96, seed=1), "B")
    result = zip_prepared(prepare(a, b, batches(), device="cpu"), ZipSettings(rho=0.5))
    assert result.widths()["stream"][:2] == (32, 48)
    out = export_vit(result.model, tmp_path / "merged")
    hf = ViTModel.from_pretrained(out).eval()
    assert hf.config.hidden_size == result.spec.trunk_config.hidden
    x = images(3)
    with torch.no_grad():
        diff = (hf(pixel_values=x).last_hidden_state - result.model.features(x)).abs().max()
    assert diff < 1e-5
    with pytest.raises(ExportError, match="already exists"):
        export_vit(result.model, out)
    from heterogui.sources.registry import load

    again = load(str(out))  # the export is a model: the Hugging Face source reads it back
    assert again.source == "hf" and again.export_format == "hf-vit"
    with torch.no_grad():
        states = again.net.module.hidden_states(x)
    assert (states - result.model.features(x)).abs().max() < 1e-5


def test_export_pads_narrow_layers_and_refuses_a_partial_zip(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModel

    a = network_from_hf(tiny_vit(layers=3, seed=0, labels=3), "A")
    b = network_from_hf(tiny_vit(layers=1, seed=1, inter=32, labels=2), "B")
    prep = prepare(a, b, batches(), device="cpu")
    result = zip_prepared(prep, ZipSettings(rho=0.5))  # wider merged layers beside kept ones
    assert len(set(result.spec.trunk_config.intermediate)) > 1  # layers of different widths
    out = export_vit(result.model, tmp_path / "merged")
    hf = AutoModel.from_pretrained(out).eval()
    extra = load_file(str(out / "unmerge.safetensors"))
    x = images(4)
    with torch.no_grad():
        theirs = hf(pixel_values=x).last_hidden_state
        assert (theirs - result.model.features(x)).abs().max() < 1e-5
        cls_b = theirs[:, 0] @ extra["unmerge_b"].T
        by_hand = cls_b @ extra["head_b.classifier.weight"].T + extra["head_b.classifier.bias"]
        assert (result.model(x)[1] - by_hand).abs().max() < 1e-5
    with pytest.raises(ExportError, match="every layer merged"):
        export_vit(zip_prepared(prep, ZipSettings(stop=2)).model, tmp_path / "partial")
    assert not (tmp_path / "partial").exists()


@pytest.mark.parametrize("labels", [None, 3])
def test_vit_pairs_pass_check_merge(labels, tmp_path):
    a = network_from_hf(tiny_vit(layers=3, seed=0, labels=labels), "A")
    b = network_from_hf(tiny_vit(hidden=48, heads=6, layers=2, seed=1, labels=labels), "B")
    check_merge(a, b, batches(), images(9), tmp_path, ZipSettings(rho=0.5))
