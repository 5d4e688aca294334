"""The quality benchmark end to end on the tiny zoo: every number comes from the run."""

from __future__ import annotations

import json
import math

import pytest

from heterogui.bench.quality_markdown import fmt
from heterogui.bench.quality_report import METRICS, stats
from heterogui.cli import main

DEPTH = "tiny-digits-vgg-depth"
REFERENCE = "tiny-digits-vgg-homogeneous"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Run ``heterogui bench quality --tiny`` once for the module (a few seconds)."""
    root = tmp_path_factory.mktemp("quality")
    mp = pytest.MonkeyPatch()
    mp.setenv("HETEROGUI_CACHE", str(root / "cache"))
    try:
        code = main(
            [
                "bench",
                "quality",
                "--tiny",
                "--pairs",
                DEPTH,
                "--seeds",
                "2",
                "--out",
                str(root / "docs"),
                "--threads",
                "1",
            ]
        )
    finally:
        mp.undo()
    assert code == 0
    data = json.loads((root / "docs" / "quality.json").read_text())
    return data, (root / "docs" / "quality.md").read_text()


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


# a VGG pair's variants: the paper's fusion, least squares and the sequential refit (in
# BatchNorm units, the default), the paper's fusion in BatchNorm units, the refits without
SUFFIXES = (
    "",
    ", least squares",
    ", sequential least squares",
    ", BatchNorm units",
    ", least squares, without BatchNorm units",
    ", sequential least squares, without BatchNorm units",
    ", least squares, heads refit",
)


def test_json_has_every_row_with_valid_values(report) -> None:
    data, _ = report
    assert set(data["pairs"]) == {DEPTH, REFERENCE}  # the reference pair is added
    rows = data["pairs"][DEPTH]["rows"]
    expected = {
        "A alone",
        "B alone",
        "ensemble",
        "ensemble (BN re-estimated)",
        "weight average",
        "permute",
        *(
            f"zip ({mode}{suffix})"
            for mode in ("SMA", "LMA", "LMA first", "LMA similar", "uniform", "head")
            for suffix in SUFFIXES
        ),
        *(f"homogeneous zip ({REFERENCE}{suffix})" for suffix in SUFFIXES),
        "padding control",
        "padding control, sequential least squares",
    }
    assert expected == set(rows)
    for label, row in rows.items():
        assert len(row["joint"]["values"]) == 2, label
        for key in METRICS:
            for v in row[key]["values"]:
                assert v is None or 0.0 <= v <= 1.0, (label, key)
    assert rows["A alone"]["task_b"]["mean"] is None
    assert rows["zip (SMA)"]["params"]["mean"] < rows["ensemble"]["params"]["mean"]
    assert all(math.isfinite(x) for x in _numbers(data))
    for section in ("rho", "knobs", "bn_kept", "calibration"):
        assert data["pairs"][DEPTH][section], section


def test_rho_zero_is_the_ensemble(report) -> None:
    data, _ = report
    for result in data["pairs"].values():
        rho0 = result["rho"]["0.0"]
        ensemble = result["rows"]["ensemble (BN re-estimated)"]
        for key in METRICS:
            assert rho0[key]["values"] == ensemble[key]["values"]
        assert max(rho0["max_logit_gap"]["values"]) < 1e-4
        full = result["rho"]["1.0"]["params"]["mean"]
        assert rho0["params"]["mean"] > full
    rho_checks = [c for c in data["checks"] if c["check"].startswith("rho = 0")]
    assert len(rho_checks) == 2 and all(c["passed"] for c in rho_checks)


def test_markdown_numbers_come_from_the_json(report) -> None:
    data, md = report
    assert md.splitlines()[2].startswith("Command: `heterogui bench quality --tiny")
    section = md.split(f"### {DEPTH}")[1].split("###")[0]
    for label, row in data["pairs"][DEPTH]["rows"].items():
        cells = [fmt(row, k) for k in METRICS]
        line = next(x for x in section.splitlines() if x.startswith(f"| {label} |"))
        assert line.split(" | ")[1:5] == cells
    for check in data["checks"]:
        assert check["detail"] in md


def test_fusion_table_shares_come_from_the_rows(report) -> None:
    data, md = report
    table = md.split("## Fusion")[1].split("## Checks")[0]
    for pair, result in data["pairs"].items():
        rows = result["rows"]
        ensemble = max(
            rows["ensemble"]["joint"]["mean"], rows["ensemble (BN re-estimated)"]["joint"]["mean"]
        )
        line = next(x for x in table.splitlines() if x.startswith(f"| {pair} |"))
        cells = [c.strip() for c in line.split("|")[1:-1]]
        for variant, column in (("", 3), (", least squares", 5), (", sequential least squares", 7)):
            best = max(
                v["joint"]["mean"]
                for k, v in rows.items()
                if k.startswith("zip (")
                and k[k.index("(") + 1 : -1].partition(", ")[2] == variant[2:]
            )
            assert cells[column] == f"{best / ensemble:.3f}", (pair, variant)
    gains = []
    for result in data["pairs"].values():
        joints = {k: v["joint"]["mean"] for k, v in result["rows"].items() if k.startswith("zip (")}
        ls = max(v for k, v in joints.items() if k.endswith(", least squares)"))
        gains.append(ls - max(v for k, v in joints.items() if ", " not in k))
    above = sum(g > 0 for g in gains)
    assert f"- least squares: best zip above the paper's fusion on {above} of 2 pairs" in md
    checks = [c for c in data["checks"] if c["check"].startswith("best zip at least 95%")]
    assert len(checks) == 2
    # the depth pair's padding control against the reference's zip, both sequential
    control = data["pairs"][DEPTH]["rows"]["padding control, sequential least squares"]
    same = data["pairs"][REFERENCE]["rows"]["zip (SMA, sequential least squares)"]
    (check,) = [c for c in data["checks"] if c["check"].startswith("padding control within")]
    assert check["pair"] == DEPTH
    gap = control["joint"]["mean"] - same["joint"]["mean"]
    assert check["passed"] == (gap >= -0.01) and f"{100 * gap:+.1f} points" in check["detail"]
    # the depth check also says what each best zip loses against its own ensemble, and its Avg
    (check,) = [c for c in data["checks"] if c["check"].startswith("best heterogeneous zip")]
    losses, avgs = [], []
    for pair in (DEPTH, REFERENCE):
        rows = data["pairs"][pair]["rows"]
        best = max(
            (k for k in rows if k.startswith("zip (")), key=lambda k: rows[k]["joint"]["mean"]
        )
        ensemble = max(rows[e]["joint"]["mean"] for e in ("ensemble", "ensemble (BN re-estimated)"))
        losses.append(f"{100 * (ensemble - rows[best]['joint']['mean']):.1f}")
        avgs.append(f"{100 * rows[best]['avg']['mean']:.1f}")
    assert f"ensemble minus merge {losses[0]} vs {losses[1]} points" in check["detail"]
    assert f"Avg of Task A and Task B {avgs[0]} vs {avgs[1]}" in check["detail"]
    placements = md.split("## Where LMA places")[1].split("## Checks")[0]
    line = next(x for x in placements.splitlines() if x.startswith(f"| {DEPTH} |"))
    rows = data["pairs"][DEPTH]["rows"]
    cells = [fmt(rows[f"zip (LMA{p})"]) for p in ("", " first", " similar")]
    assert line.split(" | ")[1:4] == cells


def test_stats() -> None:
    assert stats([0.5, 0.7]) == {
        "mean": pytest.approx(0.6),
        "std": pytest.approx(0.1414213),
        "values": [0.5, 0.7],
    }
    assert stats([0.5, None])["mean"] is None
    assert stats([0.25])["std"] == 0.0


def test_a_transformer_pair_gets_kept_rows_and_their_section(tmp_path, monkeypatch):
    """A ViT pair: zips that keep every attention head, the stream or the MLPs unmerged, wider
    than rho = 1's."""
    monkeypatch.setenv("HETEROGUI_CACHE", str(tmp_path / "cache"))
    pair = "tiny-digits-vit-depth"
    args = ["bench", "quality", "--tiny", "--pairs", pair, "--seeds", "1"]
    assert main([*args, "--out", str(tmp_path / "docs"), "--threads", "1"]) == 0
    data = json.loads((tmp_path / "docs" / "quality.json").read_text())
    rows = data["pairs"][pair]["rows"]
    kept = {k: v for k, v in rows.items() if k.startswith("heads kept (")}
    assert set(kept) == {"heads kept (LMA)", "heads kept (LMA, sequential least squares)"}
    paper_width = rows["zip (LMA)"]["params"]["mean"]
    for row in kept.values():  # every head of both models kept: 2 + 2 heads of 8 per layer
        assert row["params"]["mean"] > paper_width
        assert 0.0 <= row["joint"]["mean"] <= 1.0
    # the stream and the MLPs kept whole, one at a time: sequential least squares, heads split
    # (the ViT family's default), so they differ from that zip at the paper's width only there
    split = rows["zip (LMA, sequential least squares, heads split)"]
    for part in ("stream", "MLPs"):
        row = rows[f"{part} kept (LMA, sequential least squares, heads split)"]
        assert row["params"]["mean"] > split["params"]["mean"]
        assert 0.0 <= row["joint"]["mean"] <= 1.0
    # The checks read the zips at the paper's width only.
    assert not any(" kept" in c["detail"] for c in data["checks"])
    # heads selected (zip.select): the paper's width, a row per fusion, in the fusion table
    for fusion in ("", ", least squares", ", sequential least squares"):
        row = rows[f"zip (LMA{fusion}, heads selected)"]
        assert row["params"]["mean"] == paper_width and 0.0 <= row["joint"]["mean"] <= 1.0
    # heads searched (head_search): with sequential least squares only, at the paper's width
    searched = [k for k in rows if "heads searched" in k]
    assert "zip (LMA, sequential least squares, heads searched)" in searched
    assert all("sequential least squares, heads searched" in k for k in searched)
    assert rows[searched[0]]["params"]["mean"] == paper_width
    md = (tmp_path / "docs" / "quality.md").read_text()
    section = md.split("## Where a transformer merge loses")[1].split("\n## ")[0]
    assert f"| {pair} |" in section and "heads kept, sequential least squares" in section
    assert "stream kept, sequential least squares, heads split" in section
    assert "MLPs kept, sequential least squares, heads split" in section
    fusion = md.split("## Fusion and renormalization")[1].split("\n## ")[0]
    assert "best zip, sequential least squares, heads selected" in fusion
    assert "best zip, sequential least squares, heads searched" in fusion


def test_head_groups_name_one_space_per_attention_layer():
    from heterogui.models.family import build_network
    from heterogui.models.vgg import VGGConfig
    from heterogui.models.vit import ViTNetConfig
    from heterogui.zip.plan import head_group_firsts

    vit = build_network(
        ViTNetConfig(
            image_size=8,
            patch_size=2,
            num_channels=1,
            hidden=16,
            head_dim=8,
            heads=(2, 2),
            intermediate=(32, 32),
            num_labels=5,
        )
    )
    graph = vit.graph()
    firsts = head_group_firsts(graph)
    assert firsts == ["layer0.qk", "layer1.qk"]
    assert {graph.spaces[s].group for s in firsts} == {
        s.group for s in graph.spaces.values() if s.head_dim
    }
    assert head_group_firsts(build_network(VGGConfig(1, ((8,), (16,)), 5)).graph()) == []
