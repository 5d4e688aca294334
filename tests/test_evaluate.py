"""Classification metrics (docs/method.md sec. 11) on hand-made logits (exact expected values)."""

from __future__ import annotations

import pytest
import torch

from heterogui.datasets.images import Split
from heterogui.errors import ConfigError
from heterogui.models.family import Head, Network
from heterogui.models.mlp import MLPConfig
from heterogui.tasks.classification import (
    classification_metrics,
    evaluate_merged,
    evaluate_models,
    head_metrics,
)

CLASSES_A = (0, 2)
CLASSES_B = (1, 3)
# Six inputs: labels 0, 2, 0 (task A) and 1, 3, 3 (task B).
LABELS = torch.tensor([0, 2, 0, 1, 3, 3])
# A's head: right on inputs 0 and 1, wrong on input 2; very confident on input 3 (a B input).
LOGITS_A = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.0, 5.0], [9.0, 0.0], [0.0, 0.1], [0.0, 0.1]])
# B's head: right on inputs 3 and 4, wrong on input 5; weak on the A inputs.
LOGITS_B = torch.tensor([[0.0, 0.1], [0.1, 0.0], [0.0, 0.1], [5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])


def test_metrics_of_two_heads_are_exact() -> None:
    m = classification_metrics(LOGITS_A, LOGITS_B, LABELS, CLASSES_A, CLASSES_B)
    assert m.task_a == pytest.approx(2 / 3)
    assert m.task_b == pytest.approx(2 / 3)
    assert m.avg == pytest.approx(2 / 3)
    # Joint: 0 -> A class 0 (right), 1 -> A class 2 (right), 2 -> A class 2 (wrong),
    # 3 -> A is surer (0.9999 vs 0.9933) -> class 0 (wrong), 4 -> B class 3 (right),
    # 5 -> B class 1 (wrong): 3 of 6.
    assert m.joint == pytest.approx(3 / 6)
    assert (m.count_a, m.count_b) == (3, 3)


def test_single_head_has_no_other_task() -> None:
    a = classification_metrics(LOGITS_A, None, LABELS, CLASSES_A, CLASSES_B)
    assert a.task_b is None and a.avg is None
    assert a.task_a == pytest.approx(2 / 3)
    assert a.joint == pytest.approx(2 / 6)  # only A's classes can be predicted
    b = classification_metrics(None, LOGITS_B, LABELS, CLASSES_A, CLASSES_B)
    assert b.task_a is None and b.joint == pytest.approx(2 / 6)


def test_ties_go_to_the_first_class() -> None:
    zeros_a, zeros_b = torch.zeros(2, 2), torch.zeros(2, 2)
    m = classification_metrics(zeros_a, zeros_b, torch.tensor([0, 1]), CLASSES_A, CLASSES_B)
    assert m.joint == 0.5  # both predict class 0: right on the first input only
    assert m.task_a == 1.0 and m.task_b == 1.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ConfigError):
        classification_metrics(None, None, LABELS, CLASSES_A, CLASSES_B)
    with pytest.raises(ConfigError):
        classification_metrics(LOGITS_A, LOGITS_B, LABELS, (0, 1), (1, 3))
    with pytest.raises(ConfigError):
        classification_metrics(
            LOGITS_A, LOGITS_B, torch.tensor([0, 2, 0, 1, 3, 7]), CLASSES_A, CLASSES_B
        )
    with pytest.raises(ConfigError):
        classification_metrics(LOGITS_A[:, :1], LOGITS_B, LABELS, CLASSES_A, CLASSES_B)


class _Fixed(torch.nn.Module):
    """Return fixed logits per input index (the input holds the index)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x.flatten(1)[:, 0].long()]


class _Both(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = x.flatten(1)[:, 0].long()
        return LOGITS_A[idx], LOGITS_B[idx]


def _split() -> Split:
    inputs = torch.arange(6, dtype=torch.float32).view(6, 1)
    return Split(inputs, LABELS, 4, ("0", "1", "2", "3"), "hand-made")


def test_evaluate_merged_and_models_run_in_batches() -> None:
    split = _split()
    heads_a, heads_b = (Head("A", CLASSES_A),), (Head("B", CLASSES_B),)
    merged = evaluate_merged(_Both(), split, (heads_a, heads_b), batch_size=4)
    assert merged == classification_metrics(LOGITS_A, LOGITS_B, LABELS, CLASSES_A, CLASSES_B)
    config = MLPConfig(1, (2,), 2)
    net_a = Network(config, _Fixed(LOGITS_A), CLASSES_A, label="A")
    net_b = Network(config, _Fixed(LOGITS_B), CLASSES_B, label="B")
    assert evaluate_models(net_a, net_b, "ensemble", split, batch_size=4) == merged
    alone = evaluate_models(net_a, net_b, "a", split, batch_size=5)
    assert alone.task_b is None and alone.joint == pytest.approx(2 / 6)
    with pytest.raises(ConfigError):
        evaluate_models(net_a, net_b, "c", split)


def test_three_heads_are_three_tasks() -> None:
    # A merged model of two models, A of which was itself a merge: three task heads.
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    heads = ((0, 1), (2, 3), (4, 5))
    right = [torch.tensor([[3.0, 0], [0, 3.0], [0, 0], [0, 0], [0, 0], [0, 0]])]
    right += [torch.tensor([[0.0, 0], [0, 0], [3.0, 0], [0, 0.5], [0, 0], [0, 0]])]
    right += [torch.tensor([[0.0, 0], [0, 0], [0, 0], [0, 0], [0, 3.0], [0, 3.0]])]
    m = head_metrics(right, labels, heads, ("h0", "h1", "h2"))
    assert m.tasks == (1.0, 1.0, 0.5) and m.counts == (2, 2, 2)
    assert m.avg == pytest.approx(2.5 / 3)
    # Joint: inputs 0-2 right; input 3: h1's class 3 has 0.62, more than any 0.5 -> right;
    # input 4: h2 says 5 with 0.95 -> wrong; input 5 -> 5, right.
    assert m.joint == pytest.approx(5 / 6)
    data = m.as_dict()
    assert [t["name"] for t in data["tasks"]] == ["h0", "h1", "h2"]
    assert "task_a" not in data  # per-model keys only for the two-task protocol
    alone = head_metrics([right[0], None, None], labels, heads, ("h0", "h1", "h2"))
    assert alone.tasks == (1.0, None, None) and alone.avg is None


@pytest.mark.parametrize(
    ("count", "batch", "sizes"),
    [(130, 64, [64, 66]), (5, 4, [5]), (129, 64, [64, 65]), (128, 64, [64, 64]), (3, 64, [3])],
)
def test_calibration_batches_hold_every_input_once_in_order(count, batch, sizes):
    """A last batch under 4 inputs joins the one before it (130 / 64 once dropped inputs 0-63
    and used 64-127 twice)."""
    from heterogui.datasets.refs import make_batches

    inputs = torch.arange(count, dtype=torch.float32).unsqueeze(1)
    batches = make_batches(inputs, batch)
    assert [len(b) for b in batches] == sizes
    assert torch.equal(torch.cat(batches), inputs)
