"""Head selection (``zip.heads: select``): a merged head is one parent's head, chosen by energy."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from heterogui.cli import main  # noqa: E402
from heterogui.config import ZipSpec  # noqa: E402
from heterogui.errors import ConfigError, MatcherError  # noqa: E402
from heterogui.fusion.fuse import SpaceTransform  # noqa: E402
from heterogui.models.hf.bert_io import network_from_hf as bert_network  # noqa: E402
from heterogui.models.hf.decoder_io import network_from_hf as decoder_network  # noqa: E402
from heterogui.models.hf.vit_io import network_from_hf as vit_network  # noqa: E402
from heterogui.models.permute import permute_network, random_permutations  # noqa: E402
from heterogui.pipeline import ZipSettings, prepare, zip_prepared  # noqa: E402
from heterogui.recipe_parse import load_recipe, recipe_from_dict  # noqa: E402
from heterogui.run import settings_of  # noqa: E402
from heterogui.tasks.lm_metrics import token_batches as lm_batches  # noqa: E402
from heterogui.zip.heads import head_match  # noqa: E402
from heterogui.zip.match import Match  # noqa: E402
from heterogui.zip.select import output_energies, select_members  # noqa: E402
from tests.conftest import (  # noqa: E402
    char_tokenizer,
    real,
    run_model,
    tiny_decoder,
    tiny_hf,
    tiny_vit,
    token_batch,
    token_batches,
)
from tests.test_cli_vit import write_case  # noqa: E402

TEXTS = [
    "def add(a, b):\n    return a + b",
    "The tutorial explains how to read files.",
    "for item in items:\n    print(item)",
    "Python has lists, tuples and dictionaries.",
]

SELECT = ZipSettings(heads="select")


@pytest.mark.parametrize("unit_heads", [1, 3])
def test_output_energy_is_the_mean_squared_write_of_each_unit(unit_heads):
    gen = torch.Generator().manual_seed(0)
    units, d, samples = 4, 5, 300
    x = torch.randn(samples, units * d, generator=gen, dtype=torch.float64) + 0.3
    x[:, d : 2 * d] *= 4  # a unit with larger values
    readers = [
        torch.randn(7, units * unit_heads * d, generator=gen, dtype=torch.float64),
        torch.randn(2, 3, units * unit_heads * d, generator=gen, dtype=torch.float64),
    ]
    got = output_energies(x.T @ x / samples, readers, d, unit_heads)
    want = np.zeros(units)
    for w in readers:
        w = w.reshape(-1, units, unit_heads, d)
        for u in range(units):
            for i in range(unit_heads):  # query head i of unit u reads u's values
                writes = x[:, u * d : (u + 1) * d] @ w[:, u, i, :].T
                want[u] += float((writes**2).sum(1).mean())
    np.testing.assert_allclose(got, want, rtol=1e-10)
    with pytest.raises(MatcherError, match="output projection reads"):
        output_energies(x.T @ x / samples, [torch.zeros(3, units * d + 1)], d, unit_heads)


def pairing() -> Match:
    """A's 3 heads of 2 features and B's 4: A0-B2 and A2-B0 paired, B1 and B3 kept whole."""
    perm = np.tile(np.arange(2), (3, 4, 1))
    perm[0, 2] = [1, 0]  # A0's features with B2's in reverse order
    return head_match([(0, 2), (2, 0)], perm, 3, 4, 2)


def test_each_merged_pair_takes_its_stronger_head_whole():
    match = pairing()
    energy_a, energy_b = np.array([1.0, 5.0, 2.0]), np.array([2.0, 9.0, 0.5, 0.1])
    chosen = select_members(match, 2, energy_a, energy_b)
    assert torch.equal(chosen.groups, match.groups) and chosen.width == match.width
    w = chosen.weights.numpy()
    np.testing.assert_array_equal(w[0:2], [1, 1])  # A0 (1.0) beats B2 (0.5)
    np.testing.assert_array_equal(w[4:6], [1, 1])  # A2 (2.0) ties B0 (2.0): A's
    np.testing.assert_array_equal(w[6:8], [0, 0])  # B0
    np.testing.assert_array_equal(w[10:12], [0, 0])  # B2
    np.testing.assert_array_equal(w[[2, 3, 8, 9, 12, 13]], 1)  # heads kept whole
    m = chosen.merge()
    assert torch.equal(m.sum(1), torch.ones(chosen.width, dtype=torch.float64))
    assert set(m.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(chosen.unmerge(), match.unmerge())  # U copies to both members still
    # B wins where it writes more: swap the energies of A0 and B2
    swapped = select_members(match, 2, np.array([0.5, 5.0, 2.0]), np.array([2.0, 9.0, 1.0, 0.1]))
    np.testing.assert_array_equal(swapped.weights.numpy()[[0, 1, 10, 11]], [0, 0, 1, 1])
    with pytest.raises(MatcherError, match="do not cover"):
        select_members(match, 2, energy_a[:2], energy_b)


@pytest.mark.parametrize(
    "weights,message",
    [
        ([0.5] * 14, "sum to 1"),
        ([-1.0] + [1.0] * 13, "finite numbers >= 0"),
        ([1.0] * 13, "14 finite numbers"),
    ],
)
def test_merge_weights_are_checked(weights, message):
    with pytest.raises(MatcherError, match=message):
        Match(pairing().groups, 6, 8, pairing().width, weights=torch.tensor(weights))


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_weighted_merges_equal_their_dense_matrices(dim):
    match = select_members(pairing(), 2, np.array([1.0, 5.0, 2.0]), np.array([2, 9, 3.0, 0.1]))
    gen = torch.Generator().manual_seed(1)
    m = match.merge()
    assert torch.allclose(
        match.average_columns(x := torch.randn(5, 14, generator=gen, dtype=torch.float64)),
        x @ m.T,
    )
    transform = SpaceTransform.from_match(match, torch.float64)
    for model, rows in enumerate((match.rows_of(0), match.rows_of(1))):
        shape = [3, 4, 5]
        shape[dim] = rows.stop - rows.start
        t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        want = torch.tensordot(m[:, rows], t.movedim(dim, 0), 1).movedim(0, dim)
        assert torch.allclose(transform.along(model, "out", t, dim), want, atol=1e-12)


def vit_images(seed: int) -> torch.Tensor:
    return torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def permuted_copy(net):
    """Return a copy of ``net`` with its features permuted (feature j is net's perms[j])."""
    perms = random_permutations(net.graph(), torch.Generator().manual_seed(5))
    return permute_network(net, perms), perms


def test_selecting_heads_of_a_permuted_copy_gives_the_model_back():
    """Every pair holds a head and its copy: either one, read by both outputs, is exact."""
    a = bert_network(tiny_hf(labels=3), "A")
    b, _ = permuted_copy(a)
    x = token_batch(99)
    result = zip_prepared(prepare(a, b, token_batches(), device="cpu"), SELECT)
    selected = [m for m in result.matches.values() if m.weights is not None]
    assert len(selected) == 6  # the qk and vo spaces of three layers
    out_a, out_b = run_model(result.model, x)
    assert (out_a - run_model(a.module, x)).abs().max() < 1e-4
    assert (out_b - run_model(b.module, x)).abs().max() < 1e-4

    vit = vit_network(tiny_vit(labels=3, patch=2), "A")
    result = zip_prepared(
        prepare(vit, permuted_copy(vit)[0], [vit_images(s) for s in range(6)], device="cpu"),
        SELECT,
    )
    out_a, _ = run_model(result.model, vit_images(99))
    assert (out_a - run_model(vit.module, vit_images(99))).abs().max() < 1e-4


def test_gpt2_selects_heads_through_its_fused_projections():
    from heterogui.models.hf.gpt2_io import network_from_hf as gpt2_network
    from tests.test_decoder import tiny_gpt2

    net = gpt2_network(tiny_gpt2())
    batches = lm_batches(char_tokenizer(), TEXTS, 4, 48)
    result = zip_prepared(prepare(net, permuted_copy(net)[0], batches, device="cpu"), SELECT)
    assert sum(m.weights is not None for m in result.matches.values()) == 6  # 3 layers: qk, vo
    batch = batches[0]
    out_a, _ = run_model(result.model, batch)
    assert (real(out_a, batch) - real(run_model(net.module, batch), batch)).abs().max() < 1e-4


def test_grouped_query_decoders_select_whole_key_value_groups():
    net = decoder_network(tiny_decoder("llama", hidden=48, layers=2, heads=6, kv=2))
    batches = lm_batches(char_tokenizer(), TEXTS, 4, 48)
    result = zip_prepared(prepare(net, permuted_copy(net)[0], batches, device="cpu"), SELECT)
    batch = batches[0]
    out_a, _ = run_model(result.model, batch)
    assert (real(out_a, batch) - real(run_model(net.module, batch), batch)).abs().max() < 1e-4
    # the q, k, v and o spaces of a layer follow one choice per key/value group
    layer = {n: m for n, m in result.matches.items() if n.startswith("layer0.")}
    taken = {
        n: m.weights[m.rows_of(0)].reshape(2, -1)[:, 0].tolist()
        for n, m in layer.items()
        if m.weights is not None
    }
    assert len(taken) == 4 and len({tuple(t) for t in taken.values()}) == 1, taken


def test_a_head_that_writes_more_is_the_one_kept():
    a = bert_network(tiny_hf(), "A")
    b, perms = permuted_copy(a)
    graph = b.graph()
    ((name, dim),) = [
        (t.name, ax.dim)
        for t in graph.tensors
        for ax in t.axes
        if ax.space == "layer1.vo" and ax.role == "in"
    ]
    state = b.module.state_dict()
    strong = int(torch.nonzero(perms["layer1.vo"] == 0)) // 8  # B's copy of A's head 0
    with torch.no_grad():
        state[name].narrow(dim, strong * 8, 8).mul_(3.0)  # B's copy writes 9 times the energy
    result = zip_prepared(prepare(a, b, token_batches(), device="cpu"), SELECT)
    for space in ("layer1.qk", "layer1.vo"):
        match = result.matches[space]
        w = match.weights
        assert torch.equal(w[match.n_a + strong * 8 : match.n_a + strong * 8 + 8], torch.ones(8))
        assert torch.equal(w[0:8], torch.zeros(8))  # A's head 0, its twin, gives way
    plain = zip_prepared(prepare(a, b, token_batches(), device="cpu"), ZipSettings())
    assert all(m.weights is None for m in plain.matches.values())


def test_a_selected_head_is_its_parents_head_on_the_merged_stream():
    """Two different encoders: every merged query row is one parent's row, not an average."""
    a, b = bert_network(tiny_hf(), "A"), bert_network(tiny_hf(seed=1), "B")
    settings = ZipSettings(heads="select", fusion="average")
    result = zip_prepared(prepare(a, b, token_batches(), device="cpu"), settings)
    qk, stream = result.matches["layer0.qk"], result.matches["stream"]
    merged = result.model.state_dict()["trunk.1.attention.self.query.weight"].double()
    owners = qk.owners()
    chosen = [int(owners[(qk.groups == g) & (qk.weights == 1)]) for g in range(qk.width)]
    assert 0 < sum(chosen) < qk.width  # both models give heads here
    for g, model in enumerate(chosen):
        net = (a, b)[model]
        feature = int(torch.nonzero((qk.groups == g) & (owners == model))) - (qk.n_a * model)
        row = net.module.state_dict()["blocks.1.attention.self.query.weight"][feature].double()
        assert torch.allclose(merged[g], row @ stream.u_of(model), atol=1e-6)
    paired = zip_prepared(result.prepared, ZipSettings(fusion="average"))
    assert not torch.allclose(
        paired.model.state_dict()["trunk.1.attention.self.query.weight"].double(), merged
    )


def test_heads_setting_is_checked_and_recorded(tmp_path):
    with pytest.raises(ConfigError, match=r"zip.heads 'average' is unknown; use one of"):
        ZipSpec(heads="average")
    with pytest.raises(ConfigError, match=r"zip.overrides.\*.qk.heads 'bogus' is unknown"):
        ZipSpec(overrides={"*.qk": {"heads": "bogus"}})
    spec = recipe_from_dict(
        {"model_a": {"path": "a"}, "model_b": {"path": "b"}, "zip": {"heads": "select"}}
    )
    assert settings_of(spec).heads == "select"
    recipe = write_case(tmp_path, "width", zip={"heads": "select"})
    assert main(["merge", str(recipe), "--out", str(tmp_path / "one")]) == 0
    recorded = load_recipe(tmp_path / "one" / "recipe.yaml")
    assert recorded.zip.heads == "select"
    assert (
        main(["merge", str(tmp_path / "one" / "recipe.yaml"), "--out", str(tmp_path / "two")]) == 0
    )
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert all(torch.equal(one[k], two[k]) for k in one)
    (tmp_path / "p").mkdir()
    paired = write_case(tmp_path / "p", "width")
    assert main(["merge", str(paired), "--out", str(tmp_path / "pair")]) == 0
    pair = load_file(str(tmp_path / "pair" / "model.safetensors"))
    assert pair.keys() == one.keys() and not all(torch.equal(pair[k], one[k]) for k in one)


def test_an_override_selects_the_heads_of_one_attention_layer():
    a, b = bert_network(tiny_hf(), "A"), bert_network(tiny_hf(seed=1), "B")
    prepared = prepare(a, b, token_batches(), device="cpu")
    one = zip_prepared(prepared, ZipSettings(overrides={"layer1.qk": {"heads": "select"}}))
    assert {n for n, m in one.matches.items() if m.weights is not None} == {
        "layer1.qk",
        "layer1.vo",
    }
    every = zip_prepared(prepared, ZipSettings(overrides={"*.qk": {"heads": "select"}}))
    selected = {n for n, m in every.matches.items() if m.weights is not None}
    assert selected == {f"layer{i}.{s}" for i in range(3) for s in ("qk", "vo")}
    # pair on a layer overrides a global select
    mixed = zip_prepared(
        prepared, ZipSettings(heads="select", overrides={"layer0.qk": {"heads": "pair"}})
    )
    assert mixed.matches["layer0.qk"].weights is None
    assert mixed.matches["layer2.vo"].weights is not None


def test_a_prepared_pair_forms_its_head_energies_once(monkeypatch):
    """Re-merges with heads selected reuse the energies; a pair that keeps nothing forms them
    again. A and B differ in width and depth, so A's and B's rows must split where A ends."""
    import heterogui.matching as matching

    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return output_energies(*args, **kwargs)

    monkeypatch.setattr(matching, "output_energies", counted)
    a = bert_network(tiny_hf(), "A")
    b = bert_network(tiny_hf(hidden=48, heads=6, inter=96, layers=2, seed=1), "B")
    prepared = prepare(a, b, token_batches(), device="cpu")
    first = zip_prepared(prepared, SELECT)
    formed = len(calls)
    assert formed >= 2  # A's and B's energies of at least one attention layer
    again = zip_prepared(prepared, ZipSettings(heads="select", alpha=0.3))
    assert len(calls) == formed
    for name, match in first.matches.items():
        if match.weights is not None:
            assert torch.equal(match.weights, again.matches[name].weights)
    graph = prepared.padded_a.graph()
    value = graph.spaces["layer0.vo"]
    full = graph.num_blocks - 1  # the full zip's stop point: the merges' key
    energy_a, energy_b = matching.head_energies(prepared, value, value, full)
    assert len(calls) == formed
    assert energy_a.shape == (value.width // value.head_dim,)
    assert energy_b.shape == (prepared.padded_b.graph().spaces["layer0.vo"].width // 8,)
    matching.head_energies(prepared, value, value, full + 1)
    assert len(calls) == formed + 2  # another stop is another key
    fresh = prepare(a, b, token_batches(), device="cpu")
    fresh.keep_correlations = False
    zip_prepared(fresh, SELECT)
    zip_prepared(fresh, SELECT)
    assert len(calls) == 3 * formed + 2
