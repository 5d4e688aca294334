"""Shared test setup: offline, analytics-free environment; skips for missing GPU or browser;
tiny models of every family and the ``check_merge`` helper every family's tests use.

The cache ($HETEROGUI_CACHE, else ~/.cache/heterogui) is deliberately left alone so that zoo models
built by one run are reused by the next.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

# Set before any test module imports gradio or huggingface_hub, which read them at import.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402

from heterogui.fusion.bn import BN_TYPES  # noqa: E402
from heterogui.models.family import Network, build_network  # noqa: E402
from heterogui.models.mlp import MLPConfig  # noqa: E402
from heterogui.models.permute import permute_network, random_permutations  # noqa: E402
from heterogui.models.resnet import cifar_resnet  # noqa: E402
from heterogui.models.vgg import VGGConfig  # noqa: E402
from heterogui.pipeline import ZipSettings, prepare, zip_prepared  # noqa: E402
from heterogui.sizes import estimate  # noqa: E402

# The test models are tiny: one thread is faster than two, and with two the OpenMP pool
# collapses (100x slower) whenever anything else runs on the machine.
torch.set_num_threads(1)

CHROMIUM_PATH = Path("/usr/bin/chromium")
# Flags for Debian's chromium in containers and CI; never `playwright install`.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IMAGE = (1, 8, 8)
VOCAB = 100
# Tiny configs per family: (config, input shape of one sample).
SAME_ARCH = {
    "mlp": (MLPConfig(64, (24, 32, 16), 5), (64,)),
    "vgg": (VGGConfig(1, ((8, 8), (16, 16)), 5), IMAGE),
    "resnet": (cifar_resnet((2, 2), 1, 5, 1, base=8), IMAGE),
    "vgg1d": (VGGConfig(1, ((6, 6), (12,)), 5, spatial_dims=1), (1, 16)),
}
DEPTH_PAIRS = {
    "mlp": (MLPConfig(64, (24, 32, 16, 20), 5), MLPConfig(64, (16, 28), 5), (64,)),
    "vgg": (VGGConfig(1, ((8, 8, 8), (16, 16)), 5), VGGConfig(1, ((12,), (16, 24, 16)), 5), IMAGE),
    "resnet": (cifar_resnet((3, 3), 1, 5, 1, base=8), cifar_resnet((2, 1), 2, 5, 1, base=8), IMAGE),
}


def realistic(net: Network, seed: int) -> Network:
    """Give BatchNorm layers non-trivial parameters and statistics (as a trained model has).

    MLP hidden layers get small positive biases: a random deep ReLU MLP has many units that
    never fire on random inputs (a trained one has few), and a unit that is constant on the
    calibration data cannot be matched by correlation.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in list(net.module.blocks)[:-1] if net.family.name == "mlp" else ():
            block.linear.bias.copy_(
                torch.rand(block.linear.out_features, generator=gen) * 0.2 + 0.1
            )
        for m in net.module.modules():
            if isinstance(m, BN_TYPES):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    net.module.eval()
    return net


def make(config: Any, seed: int, label: str = "model", classes=None) -> Network:
    """Return a seeded network of a heterogui family (MLP, VGG, ResNet) with realistic BN."""
    torch.manual_seed(seed)
    return realistic(build_network(config, classes, label=label), seed)


def calibration(shape, n_batches=6, size=64, seed=0) -> list[torch.Tensor]:
    """Return random input batches (size, *shape)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(size, *shape, generator=gen) for _ in range(n_batches)]


def tiny_hf(hidden=32, heads=4, inter=64, layers=3, seed=0, labels=None):
    """Return a random transformers BERT (a classifier when ``labels`` is given), eval mode."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        **({"num_labels": labels} if labels else {}),
    )
    model = BertForSequenceClassification(config) if labels else BertModel(config)
    with torch.no_grad():  # trained models have non-trivial LayerNorms; so should the tests
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(torch.rand_like(p) + 0.5)
            elif "LayerNorm.bias" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


DECODER_CHARS = "".join(chr(c) for c in range(32, 127)) + "\n\t"


def char_tokenizer(chars: str = DECODER_CHARS):
    """Return a character tokenizer: <unk>, <s> (added in front of every text), </s>, chars."""
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_decoder(
    model_type="llama",
    hidden=32,
    layers=2,
    heads=4,
    kv=2,
    inter=64,
    seed=0,
    vocab=None,
    head_dim=8,
    **extra,
):
    """Return a random transformers causal LM (Llama, Qwen2, Mistral) eval mode.

    Norm weights are random (trained models' are not all 1) and the initialisation is wide, so
    next-token distributions are peaked: greedy continuations have no near-ties.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab or len(DECODER_CHARS) + 3,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,
        tie_word_embeddings=False,
        **extra,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                p.copy_(torch.rand_like(p) + 0.5)
    return model.eval()


def save_decoder(model, folder: Path, tokenizer=None) -> Path:
    """Write a causal LM and its tokenizer (a character tokenizer by default) to ``folder``."""
    model.save_pretrained(folder)
    (tokenizer or char_tokenizer()).save_pretrained(folder)
    return folder


def tiny_vit(hidden=32, heads=4, inter=64, layers=3, seed=0, labels=None, patch=4):
    """Return a random transformers ViT of 8 x 8 grey images (a classifier with ``labels``)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=patch,
        num_channels=1,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        **({"num_labels": labels} if labels else {}),
    )
    model = ViTForImageClassification(config) if labels else ViTModel(config)
    with torch.no_grad():  # non-trivial LayerNorms and embeddings, like trained models
        for name, p in model.named_parameters():
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(torch.rand_like(p) + 0.5)
            elif "layernorm" in name or "cls_token" in name or "position" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


def token_batch(seed: int, n: int = 16, length: int = 12) -> dict[str, torch.Tensor]:
    """Return random token ids with padded rows of different lengths."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=gen)
    lens = torch.randint(3, length + 1, (n,), generator=gen)
    mask = (torch.arange(length)[None] < lens[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def token_batches(count: int = 6) -> list[dict[str, torch.Tensor]]:
    """Return ``count`` random token batches."""
    return [token_batch(s) for s in range(count)]


def real(x: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return the rows of token states (B, T, H) at real tokens."""
    return x[batch["attention_mask"].bool()]


def run_model(module: torch.nn.Module, inputs: Any) -> Any:
    """Run a module on a tensor or on a tokenizer dict, without gradients."""
    with torch.no_grad():
        return module(**inputs) if isinstance(inputs, dict) else module(inputs)


def drawn(fig: Any, *path: str) -> Any:
    """Return a layout setting of ``fig`` as the browser draws it: the figure's own, else its
    template's (``drawn(fig, "xaxis2", "gridcolor")``: a numbered axis takes the template's
    first axis)."""
    own, template = fig.layout, fig.layout.template.layout
    for key in path:
        own = own[key] if own is not None else None
        template = template[key.rstrip("0123456789")]
    return own if own is not None else template


def table_cells(view: Any, shown: bool = False) -> list[list[Any]]:
    """Return a workbench table's cells (a view's Dataframe value or its ``gr.update``) as the
    page gets them: the values (None for an empty cell), or with ``shown`` the texts on screen."""
    import gradio as gr

    value = view["value"] if isinstance(view, dict) else view
    data = gr.Dataframe(interactive=False).postprocess(value)
    if shown:
        return data.metadata["display_value"] if data.metadata else data.data
    return [[None if c != c else c for c in row] for row in data.data]  # NaN: an empty cell


def max_diff(xs, ys) -> float:
    """Return the largest absolute difference of paired tensors."""
    return max((x - y).abs().max().item() for x, y in zip(xs, ys, strict=True))


def check_merge(
    net_a: Network,
    net_b: Network,
    batches: list[Any],
    inputs: Any,
    tmp_path: Path,
    settings: ZipSettings | None = None,
    permuted_copy: bool = True,
    tol: float = 1e-4,
) -> Any:
    """Merge A and B and check what every merge must satisfy; return the result.

    - every tensor of the merged model is finite;
    - every merge point has the width the width planner gives (the readout's estimate: an
      attention space's heads halved by a heads split);
    - written in the heterogui format and read back through the sources (a full zip of
      classifiers: as one network with every head), it computes the same function;
    - a permuted copy of A, merged with A by the zip at rho = 1, gives A's function back
      (checked on a calibration batch: a feature that is constant on every calibration input,
      a dead ReLU of a random model, may be paired with any other such feature).
    """
    from heterogui.export.network import save_merged
    from heterogui.fusion.merged import as_network
    from heterogui.models.family import family_of
    from heterogui.sources.folder import load_merged, text_format
    from heterogui.sources.registry import load

    settings = settings or ZipSettings()
    prepared = prepare(net_a, net_b, batches, device="cpu")
    result = zip_prepared(prepared, settings)
    state = result.model.state_dict()
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert result.widths() == estimate(prepared, settings)["widths"]
    folder = save_merged(result.model, tmp_path / f"check-{len(list(tmp_path.iterdir()))}")
    outputs = run_model(result.model, inputs)
    assert max_diff(run_model(load_merged(folder), inputs), outputs) == 0.0
    if _foldable(result.model.spec):  # a full zip of classifiers: one network, every head
        family = result.model.spec.trunk_config
        # a merge of text models folds the same way, but the sources refuse it as a model to
        # merge again (the heterogui format keeps no tokenizer): fold it directly
        text = text_format(family_of(family).name) is not None
        loaded = as_network(load_merged(folder)) if text else load(str(folder)).net
        # heads of the same outputs (a language model's tokens) are averaged, others side by side
        shared = loaded.family.shared_outputs
        joined = (outputs[0] + outputs[1]) / 2 if shared else torch.cat(outputs, 1)
        assert max_diff([run_model(loaded.module, inputs)], [joined]) < tol
    if permuted_copy:
        perm = random_permutations(net_a.graph(), torch.Generator().manual_seed(5))
        copy = permute_network(net_a, perm)
        again = prepare(net_a, copy, batches, device="cpu")
        back = zip_prepared(again, ZipSettings(heads="pair"))  # the paper's zip
        seen = batches[0]
        # Each head answers in its own model's space (an embedding head of the copy gives
        # permuted features); BatchNorm of both was re-estimated by the preparation.
        refs = [run_model(n.module.eval(), seen) for n in (again.net_a, again.net_b)]
        assert max_diff(run_model(back.model, seen), refs) < tol
    return result


def _foldable(spec: Any) -> bool:
    from heterogui.errors import ModelLoadError
    from heterogui.fusion.merged import network_config

    try:
        network_config(spec)
    except ModelLoadError:
        return False
    return True


def _browser_skip_reason() -> str | None:
    """Say why browser tests cannot run here, or return None when they can."""
    if not CHROMIUM_PATH.exists():
        return f"{CHROMIUM_PATH} is missing (apt-get update && apt-get install -y chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (pip install -e '.[test]')"
    return None


def _gpu_skip_reason() -> str | None:
    """Say why GPU tests cannot run here, or return None when they can."""
    if not torch.cuda.is_available():
        return "CUDA is not available (torch.cuda.is_available() is False)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without CUDA and `browser` tests without Chromium or playwright."""
    checks = {"gpu": _gpu_skip_reason, "browser": _browser_skip_reason}
    reasons: dict[str, str | None] = {}
    for item in items:
        for marker, check in checks.items():
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in reasons:
                reasons[marker] = check()
            if reasons[marker] is not None:
                item.add_marker(pytest.mark.skip(reason=reasons[marker]))


@pytest.fixture(scope="session")
def chromium_browser():
    """Yield a headless playwright Chromium browser running Debian's /usr/bin/chromium."""
    reason = _browser_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM_PATH), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
