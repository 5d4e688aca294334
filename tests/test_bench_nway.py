"""``heterogui bench nway`` end to end on the tiny three-task group: numbers from the run."""

from __future__ import annotations

import json
import math

import pytest

from heterogui.cli import main

GROUP = "tiny-digits-vgg-trio"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Run ``heterogui bench nway`` once on the tiny group, one seed (a few seconds)."""
    root = tmp_path_factory.mktemp("nway")
    out = root / "docs"
    code = main(["bench", "nway", "--groups", GROUP, "--seeds", "1", "--out", str(out)])
    assert code == 0
    return json.loads((out / "nway.json").read_text()), (out / "nway.md").read_text()


def test_every_row_has_real_accuracies(report) -> None:
    data, _ = report
    rows = data["groups"][GROUP]["rows"]
    merges = [k for k in rows if k.startswith(("N-way", "sequential"))]
    assert len(merges) == 4 + 8  # four fusions at once, four fusions x two orders
    for label, row in rows.items():
        joint = row["joint"]["mean"]
        assert 0.0 <= joint <= 1.0 and not math.isnan(joint), label
    ensemble = rows["ensemble"]
    for k, letter in enumerate("ABC"):
        alone = rows[f"{letter} alone"]
        # each head of the ensemble is its model's own head on its task: the same accuracy
        assert ensemble[f"task_{k}"]["mean"] == alone[f"task_{k}"]["mean"]
        others = [j for j in range(3) if j != k]
        assert all(alone[f"task_{j}"]["mean"] is None for j in others)
    params = {k: v["params"]["mean"] for k, v in rows.items()}
    # at rho = 1 every merge has the widest, deepest model's shape: one size for all
    assert len({params[k] for k in merges}) == 1
    assert params[merges[0]] < params["ensemble"]


def test_markdown_numbers_come_from_the_json(report) -> None:
    data, markdown = report
    rows = data["groups"][GROUP]["rows"]
    for label, row in rows.items():
        joint = row["joint"]["mean"]
        share = joint / rows["ensemble"]["joint"]["mean"]
        assert f"| {label} | {100 * joint:.1f} |" in markdown  # one seed: no ± 0.0
        assert f"| {share:.3f} |" in markdown
    assert "Best N-way merge" in markdown and "Best sequential merge" in markdown
