"""Decoder language models (Llama, Qwen2, Mistral): invariants of merging, export, pre-flight.

Tiny random models built from config, with a character tokenizer (no download).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import char_tokenizer, check_merge, save_decoder, tiny_decoder
from transformers import AutoModelForCausalLM

from heterogui.config import DataRef
from heterogui.errors import ModelLoadError
from heterogui.export.job import ExportJob, folder_parameters
from heterogui.export.registry import write_export
from heterogui.fusion.merged import as_network
from heterogui.models.hf.decoder_io import network_from_hf
from heterogui.models.permute import permute_network, random_permutations
from heterogui.pipeline import ZipSettings, prepare, zip_prepared
from heterogui.sources import registry
from heterogui.tasks.language import merged_logits, network_logits
from heterogui.tasks.lm_metrics import generate, token_batches

TEXTS = [
    "def add(a, b):\n    return a + b",
    "The tutorial explains how to read files.",
    "for item in items:\n    print(item)",
    "Python has lists, tuples and dictionaries.",
    "class Point:\n    x: int\n    y: int",
    "Exceptions are raised with the raise statement.",
    "import os\nprint(os.getcwd())",
    "A module is a file of definitions and statements.",
]


def batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    return token_batches(char_tokenizer(), TEXTS * n, 4, 48)


def logits(module, batch):
    with torch.no_grad():
        return module(**batch)


def real_rows(x: torch.Tensor, batch) -> torch.Tensor:
    return x[batch["attention_mask"].bool()]


@pytest.mark.parametrize(
    "kind,extra",
    [
        ("llama", {}),
        ("qwen2", {}),
        ("mistral", {"sliding_window": None}),
        ("llama", {"mlp_bias": True, "attention_bias": True}),
    ],
)
def test_a_decoder_is_its_transformers_model_and_a_permuted_copy_merges_back(kind, extra, tmp_path):
    hf = tiny_decoder(kind, hidden=48, layers=3, heads=6, kv=2, **extra)
    net = network_from_hf(hf)
    batch = batches()[0]
    with torch.no_grad():
        want = hf(**batch).logits
    assert real_rows((logits(net.module, batch) - want).abs(), batch).max() < 1e-5
    permuted = permute_network(
        net, random_permutations(net.graph(), torch.Generator().manual_seed(3))
    )
    assert real_rows((logits(permuted.module, batch) - want).abs(), batch).max() < 1e-4
    result = check_merge(net, permuted, batches(), batch, tmp_path)
    out_a, out_b = logits(result.model, batch)
    assert real_rows((out_a - want).abs(), batch).max() < 1e-4
    assert real_rows((out_b - want).abs(), batch).max() < 1e-4
    tok = char_tokenizer()
    prompt = "def read(path):"
    assert generate(merged_logits(result.model), tok, prompt, 12) == generate(
        lambda b: net.module(**b), tok, prompt, 12
    )


def test_depth_and_width_heterogeneous_decoders_merge_and_export_exactly(tmp_path):
    deep = network_from_hf(tiny_decoder(hidden=48, layers=4, heads=6, kv=2, inter=80, seed=1))
    wide = network_from_hf(tiny_decoder(hidden=72, layers=2, heads=9, kv=3, inter=96, seed=2))
    calib = batches()
    for mode in ("sma", "lma"):
        prepared = prepare(deep, wide, calib, mode=mode, device="cpu")
        # identity layers of a pre-norm decoder are exact: the padded model is the model
        batch = calib[0]
        diff = logits(prepared.padded_b.module, batch) - logits(prepared.net_b.module, batch)
        assert prepared.padded_b.identity_blocks and diff.abs().max() == 0.0
    result = zip_prepared(prepared, ZipSettings(rho=0.5))
    config = result.spec.trunk_config
    assert config.hidden == 48 + 72 - round(0.5 * 48)
    # key/value groups merge whole with their query heads: 2 + 3 - round(0.5 * 2) groups
    assert set(config.kv_heads) <= {2, 3, 4} and max(config.kv_heads) == 4
    assert all(h == 3 * g for h, g in zip(config.heads, config.kv_heads, strict=True))
    mean = merged_logits(result.model)(batch)
    one = as_network(result.model)
    assert real_rows((logits(one.module, batch) - mean).abs(), batch).max() < 1e-4
    job = ExportJob(result.model, source_folder=None)
    out = write_export(job, tmp_path / "merged", "hf-causal-lm")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        exported = loaded(**batch).logits
    assert real_rows((exported - mean).abs(), batch).max() < 1e-4
    assert folder_parameters(out) == loaded.num_parameters()  # untied: both matrices count
    # the heterogui format keeps no tokenizer: it is not taken back as a model to merge
    kept = write_export(job, tmp_path / "kept", "heterogui")
    with pytest.raises(
        ModelLoadError,
        match=re.escape("export the merge in the hf-causal-lm format (--format hf-causal-lm"),
    ):
        registry.load(str(kept))
    written = json.loads((out / "config.json").read_text())
    assert written["hidden_size"] == config.hidden
    assert written["num_hidden_layers"] == config.num_layers
    assert written["tie_word_embeddings"] is False
    assert (out / "generation_config.json").is_file()


def test_an_export_takes_the_merges_tensors_instead_of_copies_and_leaves_the_random_state():
    """Writing a merge builds no second copy of its weights (a SmolLM2 export peaked 2.2 GiB
    over the merge): the one network and the transformers model hold the merge's own tensors
    where no padding or cast is needed, a cast gives the asked dtype, and nothing draws from
    the caller's random generator (the transformers model is never initialised)."""
    from heterogui.errors import ExportError
    from heterogui.models.hf.common import holding
    from heterogui.models.hf.decoder_io import causal_lm

    deep = network_from_hf(tiny_decoder(hidden=48, layers=4, heads=6, kv=2, inter=80, seed=1))
    wide = network_from_hf(tiny_decoder(hidden=72, layers=2, heads=9, kv=3, inter=96, seed=2))
    result = zip_prepared(prepare(deep, wide, batches(), device="cpu"), ZipSettings(rho=0.5))
    merged = result.model.state_dict()
    one = as_network(result.model)
    held = one.module.state_dict()
    trunk = [k for k in merged if k.startswith("trunk.")]
    assert trunk and all(
        held[f"blocks.{k[len('trunk.') :]}"].data_ptr() == merged[k].data_ptr() for k in trunk
    )
    before = torch.get_rng_state()
    hf = causal_lm(one, torch.float32)
    assert torch.equal(torch.get_rng_state(), before)
    embed = held["blocks.0.embed_tokens.weight"]
    assert hf.model.embed_tokens.weight.data_ptr() == embed.data_ptr()
    half = causal_lm(one, torch.bfloat16)
    assert half.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(half.model.embed_tokens.weight, embed.to(torch.bfloat16))
    state = dict(hf.state_dict())
    del state["model.norm.weight"]
    with pytest.raises(ExportError, match=r"missing \['model.norm.weight'\]"):
        holding(lambda: AutoModelForCausalLM.from_config(hf.config), state, torch.float32)


def test_converting_a_loaded_model_copies_it_unless_it_was_loaded_only_to_be_converted():
    """A caller's transformers model stays its own (copy); a model a folder was loaded into
    only to be converted gives its tensors to the network (held once, not twice). Neither
    initialises a network it then overwrites, nor draws from the random generator."""
    hf = tiny_decoder(hidden=48, layers=3, heads=6, kv=2)
    embed = hf.model.embed_tokens.weight
    before = torch.get_rng_state()
    copied, taken = network_from_hf(hf), network_from_hf(hf, copy=False)
    assert torch.equal(torch.get_rng_state(), before)
    for net, shared in ((copied, False), (taken, True)):
        weight = net.module.state_dict()["blocks.0.embed_tokens.weight"]
        assert torch.equal(weight, embed) and (weight.data_ptr() == embed.data_ptr()) is shared
    batch = batches()[0]
    with torch.no_grad():
        want = hf(**batch).logits
    for net in (copied, taken):
        assert real_rows((logits(net.module, batch) - want).abs(), batch).max() < 1e-5


def test_last_position_logits_are_the_full_logits_last_column_and_generate_the_same():
    """Generation reads the head at the last position only: for a network, a full merge and a
    partial merge (the tails hold decoder layers), the same logits and the same continuations."""
    from heterogui.models.hf.gpt2_io import network_from_hf as gpt2_network

    deep = network_from_hf(tiny_decoder(hidden=48, layers=4, heads=6, kv=2, inter=80, seed=1))
    wide = network_from_hf(tiny_decoder(hidden=72, layers=2, heads=9, kv=3, inter=96, seed=2))
    prepared = prepare(deep, wide, batches(), mode="sma", device="cpu")
    full = zip_prepared(prepared, ZipSettings(rho=0.5))
    partial = zip_prepared(prepared, ZipSettings(rho=0.5, stop=2))
    assert any(len(t) > 2 for t in partial.model.tails)  # decoder layers after the stop point
    tok = char_tokenizer()
    (batch,) = token_batches(tok, ["def add(a, b):", "The tutorial"], 2, 48)
    batch = {k: v[:, :9] for k, v in batch.items()}  # both rows real up to the last position
    gpt2 = gpt2_network(tiny_gpt2()).module
    pairs = [(network_logits(m), network_logits(m, last=True)) for m in (deep.module, gpt2)]
    pairs += [(merged_logits(r.model), merged_logits(r.model, last=True)) for r in (full, partial)]
    for every, last in pairs:
        with torch.no_grad():
            want, got = every(batch)[:, -1:], last(batch)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-5
        for prompt in ("def f(x):", "Python has"):
            assert generate(last, tok, prompt, 12) == generate(every, tok, prompt, 12)
    # a context cut reads the prompt's last tokens only: a long prompt then continues as its end
    seen = []

    def watched(batch):
        seen.append(batch["input_ids"].shape[1])
        return pairs[0][1](batch)

    long = "x = 1\n" * 40 + "def f(x):"  # 249 characters: one token each
    cut = generate(watched, tok, long, 6, context=16)
    assert max(seen) == 16 and cut == generate(pairs[0][1], tok, long[-16:], 6, context=16)


def test_a_full_merge_scores_with_its_heads_folded_into_one_and_a_partial_one_does_not():
    """merged_logits folds a full zip's two language-model heads into mean_m W_m U_m: the mean
    of the heads' logits to float rounding, one product; a partial zip keeps its tails."""
    deep = network_from_hf(tiny_decoder(hidden=48, layers=4, heads=6, kv=2, inter=80, seed=1))
    wide = network_from_hf(tiny_decoder(hidden=72, layers=2, heads=9, kv=3, inter=96, seed=2))
    prepared = prepare(deep, wide, batches(), mode="sma", device="cpu")
    batch = batches()[0]
    for rho in (0.5, 1.0):
        model = zip_prepared(prepared, ZipSettings(rho=rho)).model
        folded = model.shared_head()
        r = model.spec.trunk_config.hidden
        assert folded is not None and folded.shape == (deep.config.vocab_size, r)
        with torch.no_grad():
            a, b = model.heads(model.features(**batch))
            got = merged_logits(model)(batch)
        assert got.shape == a.shape
        assert real_rows((got - (a + b) / 2).abs(), batch).max() < 1e-5
    partial = zip_prepared(prepared, ZipSettings(rho=0.5, stop=2)).model
    assert partial.shared_head() is None  # its tails hold decoder layers and norms


def test_preflight_refuses_other_tokenizers_head_sizes_and_groupings(tmp_path):
    a = save_decoder(tiny_decoder(), tmp_path / "a")
    other_chars = "".join(reversed([chr(c) for c in range(32, 127)])) + "\n\t"
    b = save_decoder(tiny_decoder(), tmp_path / "b", char_tokenizer(other_chars))
    verdict = registry.preflight(str(a), str(b))
    assert not verdict.ok
    assert "first differing tokens id 3: ' ' vs '~'" in verdict.reasons[0]
    c = save_decoder(tiny_decoder(hidden=64, heads=4, kv=2, head_dim=16), tmp_path / "c")
    verdict = registry.preflight(str(a), str(c))
    assert not verdict.ok and any("head dimensions differ (8 vs 16)" in r for r in verdict.reasons)
    assert "need the same head_dim (hidden_size / num_attention_heads where" in verdict.reasons[0]
    d = save_decoder(tiny_decoder(heads=4, kv=4), tmp_path / "d")
    verdict = registry.preflight(str(a), str(d))
    assert any("query heads per key/value head differ (2 vs 1)" in r for r in verdict.reasons)
    same = save_decoder(tiny_decoder(hidden=48, heads=6, kv=3, layers=3, seed=4), tmp_path / "e")
    verdict = registry.preflight(str(a), str(same))
    assert verdict.ok, verdict.reasons
    # another end-of-sequence token: a note (the merge generates until A's)
    config = json.loads((same / "config.json").read_text()) | {"eos_token_id": 5}
    (same / "config.json").write_text(json.dumps(config))
    verdict = registry.preflight(str(a), str(same))
    assert verdict.ok and "end-of-sequence tokens differ (2 vs 5)" in " ".join(verdict.notes)
    # biases: told by the headers, before both models load (they were refused after)
    for field in ("attention_bias", "mlp_bias"):
        biased = save_decoder(tiny_decoder(**{field: True}), tmp_path / field)
        verdict = registry.preflight(str(a), str(biased))
        assert not verdict.ok and verdict.reasons[0].startswith("bias settings differ (")
        assert f"{field} true" in verdict.reasons[0]


def as_transformers_4(folder):
    """Rewrite a decoder folder's config.json as transformers 4 wrote it (the hub's
    checkpoints): rope_theta and rope_scaling ("type", or null) instead of rope_parameters."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = int(rope.pop("rope_theta"))  # 10000, as many hub configs write it
    kind = rope.pop("rope_type")
    rope.pop("type", None)
    config["rope_scaling"] = None if kind == "default" else {"type": kind, **rope}
    path.write_text(json.dumps(config))
    return folder


def test_rotary_settings_compare_the_same_in_both_config_layouts(tmp_path):
    """A merge (written by transformers 5) pairs with a hub checkpoint of the same rotary
    settings (written by 4): the pre-flight refused the pair for the layout alone."""
    a = save_decoder(tiny_decoder(), tmp_path / "a")
    old = as_transformers_4(save_decoder(tiny_decoder(layers=3, seed=4), tmp_path / "old"))
    assert json.loads((old / "config.json").read_text())["rope_scaling"] is None
    assert registry.preflight(str(a), str(old)).ok, registry.preflight(str(a), str(old)).reasons
    linear = {"rope_type": "linear", "factor": 2.0}
    a2 = save_decoder(tiny_decoder(rope_scaling=linear), tmp_path / "a2")
    old2 = save_decoder(tiny_decoder(layers=3, seed=4, rope_scaling=linear), tmp_path / "old2")
    as_transformers_4(old2)
    assert json.loads((old2 / "config.json").read_text())["rope_scaling"]["type"] == "linear"
    assert registry.preflight(str(a2), str(old2)).ok
    verdict = registry.preflight(str(a), str(old2))  # the scaling itself still differs
    assert any("rotary position settings differ" in r for r in verdict.reasons)


def test_settings_the_merged_layers_share_must_agree(tmp_path):
    """A merged layer runs with one norm epsilon and one attention window: B's would change."""
    import heterogui
    from heterogui.errors import IncompatibleModelsError, ModelLoadError

    a = save_decoder(tiny_decoder(), tmp_path / "a")
    eps = save_decoder(tiny_decoder(rms_norm_eps=1e-2), tmp_path / "eps")
    verdict = registry.preflight(str(a), str(eps))
    assert any("norm epsilons differ (1e-06 vs 0.01)" in r for r in verdict.reasons)
    with pytest.raises(IncompatibleModelsError, match=r"RMSNorm epsilons differ \(1e-06 vs 0.01\)"):
        heterogui.merge(registry.load(str(a)).net, registry.load(str(eps)).net, [])
    windowed = save_decoder(tiny_decoder("mistral", sliding_window=16), tmp_path / "w")
    full = tiny_decoder("mistral", sliding_window=None)
    verdict = registry.preflight(str(windowed), str(save_decoder(full, tmp_path / "f")))
    assert any("attention windows differ (16 vs None)" in r for r in verdict.reasons)
    with pytest.raises(IncompatibleModelsError, match=r"attention windows differ \(16 vs None\)"):
        heterogui.merge(registry.load(str(windowed)).net, full, [])
    # a config.json without sliding_window has transformers' default window, as a model has
    default = save_decoder(tiny_decoder("mistral", sliding_window=4096), tmp_path / "d4096")
    bare = save_decoder(tiny_decoder("mistral", sliding_window=4096, seed=1), tmp_path / "bare")
    config = json.loads((bare / "config.json").read_text())
    del config["sliding_window"]
    (bare / "config.json").write_text(json.dumps(config))
    assert registry.preflight(str(default), str(bare)).ok
    windows = {"use_sliding_window": True, "sliding_window": 16}
    qwen = save_decoder(tiny_decoder("qwen2", max_window_layers=0, **windows), tmp_path / "q")
    with pytest.raises(ModelLoadError, match="has layers with sliding-window attention"):
        registry.load(str(qwen))
    # every layer below max_window_layers attends fully: such a model loads
    full = save_decoder(tiny_decoder("qwen2", **windows), tmp_path / "full")
    assert registry.load(str(full)).net.config.model_type == "qwen2"


def test_the_language_task_scores_domains_and_calibrates_on_text(tmp_path, caplog):
    from heterogui.run import calibrate, load_pair

    a = save_decoder(tiny_decoder(seed=1), tmp_path / "a")
    b = save_decoder(tiny_decoder(hidden=48, heads=6, kv=3, layers=3, seed=2), tmp_path / "b")
    pair = load_pair(str(a), str(b))
    assert pair.task == "language_modeling"
    with caplog.at_level("WARNING", logger="heterogui.run"):
        calib = calibrate(pair, DataRef("domains", "calibration", 8, 4))
        assert calib.count == 8 and calib.ref.sha256 and not caplog.text
        few = calibrate(pair, DataRef("domains", "calibration", 5, 4))  # 4 from each domain
    assert few.count == 8
    assert "8 inputs from domains, not the 5 asked for ('domains' draws as many" in (caplog.text)
    assert "at least 4: give a multiple of 2, 8 or more" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="heterogui.run"):  # more than the domains hold
        many = calibrate(pair, DataRef("domains", "calibration", 100_001, 4))
    assert f"{many.count} inputs from domains, not the 100001" in caplog.text
    assert "draws as many" not in caplog.text  # no reason that does not explain the count


def write_recipe(tmp_path, **fields) -> object:
    import yaml

    a = save_decoder(tiny_decoder(hidden=32, layers=4, heads=4, kv=2, seed=1), tmp_path / "a")
    b = save_decoder(tiny_decoder(hidden=48, layers=2, heads=6, kv=3, seed=2), tmp_path / "b")
    (tmp_path / "calib.txt").write_text("\n".join(TEXTS * 3) + "\n")
    recipe = {
        "model_a": {"path": str(a)},
        "model_b": {"path": str(b)},
        "calibration": {"source": str(tmp_path / "calib.txt"), "size": 16, "batch_size": 8},
        "device": "cpu",
        **fields,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def scored_recipe(tmp_path, a, b):
    """Write a recipe merging decoder folders ``a`` and ``b`` on the test texts, scored on 4
    texts of the built-in domains; return its path."""
    import yaml

    (tmp_path / "calib.txt").write_text("\n".join(TEXTS * 3) + "\n")
    recipe = {
        "model_a": {"path": str(a)},
        "model_b": {"path": str(b)},
        "calibration": {"source": str(tmp_path / "calib.txt"), "size": 16, "batch_size": 8},
        "evaluation": {"source": "domains", "split": "test", "size": 4, "batch_size": 4},
        "device": "cpu",
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_pad_token_added_past_the_vocabulary_pads_nothing_the_models_read(tmp_path):
    """A fine-tuning's tokenizer with ``<pad>`` added at id vocab_size (its models' embeddings
    end before it): the merge ran into an IndexError in the embedding. Padding is masked, so
    the batches pad with token 0 and the pair merges and scores."""

    from heterogui.cli import main

    tok = char_tokenizer()
    tok.add_special_tokens({"pad_token": "<pad>"})
    vocab = tiny_decoder().config.vocab_size
    assert tok.pad_token_id == vocab
    batches = token_batches(tok, ["ab", "abcdef"], 2)
    assert batches[0]["input_ids"].max() < vocab and batches[0]["attention_mask"][0, -1] == 0
    assert tok.pad_token_id == vocab  # the tokenizer itself unchanged
    a = save_decoder(tiny_decoder(layers=3, seed=1), tmp_path / "a", tok)
    b = save_decoder(tiny_decoder(hidden=48, heads=6, kv=3, seed=2), tmp_path / "b", tok)
    out = tmp_path / "merged"
    assert main(["merge", str(scored_recipe(tmp_path, a, b)), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["merged"]["python-docs"]["perplexity"] > 1


def test_a_pair_whose_tokenizers_or_end_tokens_differ_is_told_so(tmp_path, caplog):
    """B's tokenizer adds no start token where A's does, and B ends texts with another token:
    the merge runs on A's tokenization and stops at A's end token. The workbench said so; a
    recipe's merge said nothing, in its output, its report or its model card."""
    from tokenizers import processors

    from heterogui.cli import main

    bare = char_tokenizer()
    bare.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A")
    assert bare("ab")["input_ids"] == char_tokenizer()("ab")["input_ids"][1:]
    other_end = tiny_decoder(hidden=48, heads=6, kv=3, seed=2)
    other_end.config.eos_token_id = other_end.generation_config.eos_token_id = 0
    a = save_decoder(tiny_decoder(layers=3, seed=1), tmp_path / "a")
    b = save_decoder(other_end, tmp_path / "b", bare)
    out = tmp_path / "merged"
    with caplog.at_level("WARNING", logger="heterogui.run"):
        assert main(["merge", str(scored_recipe(tmp_path, a, b)), "--out", str(out)]) == 0
    said = caplog.text
    report = json.loads((out / "report.json").read_text())
    card = (out / "README.md").read_text()
    for words in ("A and B tokenize text differently", "end-of-sequence tokens differ (2 vs 0)"):
        assert f"note on the pair: {words}" in said, said
        assert any(note.startswith(words) for note in report["notes"]), report["notes"]
        assert words[1:] in card  # a sentence there: "End-of-sequence ..."


def test_a_tokenizer_that_fails_on_the_comparison_text_is_a_note_not_a_failure():
    # a WordPiece vocabulary without its unknown token raises on any word it lacks; B's
    # tokenizer is never run by the merge, which worked before the comparison existed
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from heterogui.sources.vocab import encoding_difference

    words = Tokenizer(models.WordPiece(vocab={"[PAD]": 0, "hello": 1}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    failing = PreTrainedTokenizerFast(tokenizer_object=words)
    with pytest.raises(Exception, match="Missing"):
        failing("hello world")
    said = encoding_difference(char_tokenizer(), failing)
    assert said.startswith("A's and B's tokenizers could not be compared (")
    assert encoding_difference(char_tokenizer(), char_tokenizer()) is None


def test_cli_merges_causal_lm_folders_into_one_automodelforcausallm_folder(tmp_path, capsys):
    from transformers import AutoTokenizer

    from heterogui.cli import main
    from heterogui.recipe_parse import load_recipe
    from heterogui.run import merge

    recipe = write_recipe(
        tmp_path,
        zip={"rho": 0.5},
        evaluation={"source": "domains", "split": "test", "size": 4, "batch_size": 4},
    )
    out = tmp_path / "merged"
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "recipe.yaml"} <= names
    assert {"tokenizer.json", "tokenizer_config.json", "report.json", "README.md"} <= names
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "language_modeling"
    assert set(report["metrics"]) == {"a", "b", "ensemble", "merged"}
    for key in ("a", "b", "ensemble", "merged"):
        assert set(report["metrics"][key]) >= {"python-docs", "python-source"}
        assert report["metrics"][key]["python-docs"]["perplexity"] > 1
    assert 0 <= report["metrics"]["merged"]["repetition"] <= 1
    assert isinstance(report["alarms"], list)
    # the heads read the whole vocabulary: report.json lists every id, the printed summary and
    # the model card one range (not a line per token id)
    vocab = AutoTokenizer.from_pretrained(out).vocab_size
    assert [h["classes"] for h in report["heads"]] == [list(range(vocab))] * 2
    summary = json.loads(printed[: printed.rindex("wrote")])
    assert [h["classes"] for h in summary["heads"]] == [f"0-{vocab - 1}"] * 2
    card = (out / "README.md").read_text()
    assert f"| token ids 0-{vocab - 1} | A |" in card and "| [0, 1, 2" not in card
    assert "| head | outputs | from |" in card  # not classes: a language model's outputs
    recorded = load_recipe(out / "recipe.yaml")
    assert recorded.calibration.sha256 and recorded.evaluation.sha256
    assert recorded.versions["transformers"]
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    batch = token_batches(tok, TEXTS[:4], 4, 48)[0]
    done = merge(recipe)
    with torch.no_grad():
        exported = model(**batch).logits
    mean = merged_logits(done.result.model)(batch)
    assert real_rows((exported - mean).abs(), batch).max() < 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == report["widths"]["stream"][2]
    assert config["num_hidden_layers"] == 4 and config["architectures"] == ["LlamaForCausalLM"]


def tiny_gpt2(hidden=32, layers=3, heads=4, seed=0, positions=64):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    vocab = char_tokenizer().vocab_size
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=positions,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.copy_(torch.rand_like(p) + 0.5)
    return model


def test_gpt2_is_its_transformers_model_merges_back_and_exports(tmp_path):
    from heterogui.errors import ExportError
    from heterogui.models.hf.gpt2_io import gpt2_lm
    from heterogui.models.hf.gpt2_io import network_from_hf as gpt2_network

    hf = tiny_gpt2()
    net = gpt2_network(hf)
    batch = batches()[0]
    with torch.no_grad():
        want = hf(**batch).logits
    assert real_rows((logits(net.module, batch) - want).abs(), batch).max() < 1e-5
    check_merge(
        net,
        permute_network(net, random_permutations(net.graph(), torch.Generator().manual_seed(2))),
        batches(),
        batch,
        tmp_path,
    )
    other = gpt2_network(tiny_gpt2(hidden=48, layers=2, heads=6, seed=1))
    prepared = prepare(net, other, batches(), device="cpu")
    result = zip_prepared(prepared, ZipSettings(rho=0.5))
    out = write_export(ExportJob(result.model), tmp_path / "gpt2", "hf-causal-lm")
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(out)(**batch).logits
    mean = merged_logits(result.model)(batch)
    assert real_rows((exported - mean).abs(), batch).max() < 1e-4
    assert json.loads((out / "config.json").read_text())["reorder_and_upcast_attn"] is False
    hf.config.reorder_and_upcast_attn = True  # half precision's attention: kept, not dropped
    assert gpt2_lm(gpt2_network(hf)).config.reorder_and_upcast_attn is True
    # more heads than n_embd / head size: a GPT-2 cannot hold them, and nothing is written
    wide_heads = ZipSettings(rho=1.0, overrides={"layer0.qk": {"rho": 0.0}})
    crowded = zip_prepared(prepare(net, net, batches(), device="cpu"), wide_heads)
    with pytest.raises(
        ExportError, match=r"holds 4 heads of 8 but a layer has 8: a GPT-2.s n_embd"
    ):
        write_export(ExportJob(crowded.model), tmp_path / "refused", "hf-causal-lm")
    assert not (tmp_path / "refused").exists()


def test_gpt2_heads_split_is_exact_at_full_rank_and_exports_at_half(tmp_path):
    """GPT-2's fused q/k/v is held as three projections, so ``zip.heads: split`` cuts its heads
    as BERT's: at full rank the change of basis leaves the merge's function as it was (biases
    random, so the key bias folds away for real); at half, A's 4 and B's 6 heads of 4 features
    each sit side by side and the exported transformers folder computes the merge's logits."""
    from heterogui.fusion.split_heads import split_heads
    from heterogui.models.gpt2 import GPT2_NAMES
    from heterogui.models.hf.gpt2_io import network_from_hf as gpt2_network

    gen = torch.Generator().manual_seed(4)
    pair = [tiny_gpt2(), tiny_gpt2(hidden=48, layers=2, heads=6, seed=1)]  # heads of 8
    for hf in pair:
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith("c_attn.bias"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    a, b = (gpt2_network(hf, label) for hf, label in zip(pair, "AB", strict=True))
    prepared = prepare(a, b, batches(), device="cpu")
    batch = batches()[0]
    kept = zip_prepared(prepared, ZipSettings(overrides={"*.qk": {"rho": 0.0}}, heads="pair"))
    same = split_heads(kept.model, GPT2_NAMES, rank=8)
    state = same.state_dict()
    assert not state["trunk.1.attn.key.bias"].any()
    assert kept.model.state_dict()["trunk.1.attn.key.bias"].any()  # left as it was
    gap = merged_logits(same)(batch) - merged_logits(kept.model)(batch)
    assert real_rows(gap.abs(), batch).max() < 1e-4

    split = zip_prepared(prepared, ZipSettings(heads="split"))
    assert split.spec.trunk_config.head_dim == 4
    # A's 4 heads and B's 6 in B's two layers' slots; B's identity slot: A's 4 alone
    assert sorted(split.spec.trunk_config.heads) == [4, 10, 10]
    out = write_export(ExportJob(split.model), tmp_path / "split", "hf-causal-lm")
    config = json.loads((out / "config.json").read_text())
    assert config["n_embd"] // config["n_head"] == 4
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(out)(**batch).logits
    mean = merged_logits(split.model)(batch)
    assert real_rows((exported - mean).abs(), batch).max() < 1e-4
    paired = merged_logits(zip_prepared(prepared, ZipSettings(heads="pair")).model)(batch)
    assert real_rows((mean - paired).abs(), batch).max() > 1e-3  # the split is another merge


def test_gpt2_position_tables_of_other_sizes_are_refused_by_the_headers(tmp_path):
    """GPT-2 names its position table n_positions: the pre-flight read only
    max_position_embeddings and passed the pair, refused only once both had loaded."""
    a = save_decoder(tiny_gpt2(), tmp_path / "a")
    b = save_decoder(tiny_gpt2(hidden=48, layers=2, heads=6, positions=128), tmp_path / "b")
    verdict = registry.preflight(str(a), str(b))
    assert not verdict.ok
    assert verdict.reasons[0].startswith("position embedding sizes differ (64 vs 128 positions)")
    same = save_decoder(tiny_gpt2(hidden=48, layers=2, heads=6, seed=1), tmp_path / "c")
    assert registry.preflight(str(a), str(same)).ok


def test_texts_longer_than_a_gpt2_position_table_are_cut_at_it(tmp_path):
    """A GPT-2 of 64 positions scored on the built-in domains (texts of hundreds of characters,
    a token each here) and continuing a long prompt: texts are cut at 64 tokens and generation
    reads the last 64, where both used to index past the position table."""

    from heterogui.cli import main

    a = save_decoder(tiny_gpt2(), tmp_path / "a")  # n_positions 64
    b = save_decoder(tiny_gpt2(hidden=48, layers=2, heads=6, seed=1), tmp_path / "b")
    loaded = registry.load(str(a))
    assert loaded.tokenizer.model_max_length == 64
    assert token_batches(loaded.tokenizer, ["x" * 300], 1, 128)[0]["input_ids"].shape == (1, 64)
    prompt = "def f(x):\n    return x\n" * 6  # 144 characters
    logits_fn = lambda batch: loaded.net.module(**batch)  # noqa: E731
    assert len(generate(logits_fn, loaded.tokenizer, prompt, 8, stop_at_eos=False)) > 0
    assert main(["merge", str(scored_recipe(tmp_path, a, b)), "--out", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for key in ("a", "b", "ensemble", "merged"):
        for domain in ("python-docs", "python-source"):
            score = report["metrics"][key][domain]
            # 4 texts a domain, each cut at 64 tokens: 63 predicted tokens each
            assert score["tokens"] == 4 * 63 and score["perplexity"] > 1


def test_a_gpt2_folder_loads_through_the_sources_and_refuses_a_llama_partner(tmp_path):
    g = save_decoder(tiny_gpt2(), tmp_path / "g")
    loaded = registry.load(str(g))
    assert loaded.net.family.name == "gpt2" and loaded.task == "language_modeling"
    assert loaded.export_format == "hf-causal-lm"
    llama = save_decoder(tiny_decoder(), tmp_path / "l")
    verdict = registry.preflight(str(g), str(llama))
    assert not verdict.ok and "is a gpt2 and model B (l) a decoder" in verdict.reasons[0]


def test_every_family_loaded_through_transformers_records_its_version():
    from pathlib import Path

    import heterogui.models.hf as hf_adapters
    from heterogui.models.family import FAMILIES
    from heterogui.versions import versions

    adapted = {
        p.stem.removesuffix("_io") for p in Path(hf_adapters.__file__).parent.glob("*_io.py")
    }
    assert adapted == {"bert", "vit", "decoder", "gpt2"} and adapted <= set(FAMILIES)
    for family in FAMILIES:
        assert ("transformers" in versions((family,))) == (family in adapted), family


def test_nan_in_a_weight_is_named_as_the_models_files_name_it(tmp_path):
    model = tiny_decoder()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    folder = save_decoder(model, tmp_path / "broken")
    words = "tensor model.layers.0.mlp.up_proj.weight holds 1 NaN or inf value(s)"
    with pytest.raises(ModelLoadError, match=re.escape(words)):
        registry.load(str(folder))


def test_a_cut_weights_file_is_refused_in_one_line(tmp_path):
    folder = save_decoder(tiny_decoder(), tmp_path / "cut")
    weights = folder / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    with pytest.raises(ModelLoadError) as info:
        registry.load(str(folder))
    assert "\n" not in str(info.value) and "save_pretrained" in str(info.value)
