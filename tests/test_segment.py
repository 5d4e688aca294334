"""Tests of per-stage layer alignment (heterogui.align.segment)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from heterogui.align.segment import (
    SEGMENTERS,
    head,
    head_tail,
    lma,
    lma_first,
    lma_similar,
    score,
    segments,
    sma,
    uniform,
    validate_positions,
)
from heterogui.errors import AlignmentError, ConfigError

SHAPES = [(d, s) for d in range(1, 9) for s in range(1, d + 1)]


def _random_sims(seed: int, count: int) -> list[np.ndarray]:
    """Random (D, S) matrices of every shape, some with ties (values on a coarse grid)."""
    rng = np.random.default_rng(seed)
    sims = []
    for _ in range(count):
        for d, s in SHAPES:
            sim = rng.random((d, s))
            sims.append(np.round(sim * 3) / 3 if rng.random() < 0.3 else sim)
    return sims


def _sma_objective(sim: np.ndarray, positions: tuple[int, ...]) -> float:
    return sum(sim[positions[k], k] for k in range(1, len(positions)))


def _brute_sma(sim: np.ndarray) -> float:
    d, s = sim.shape
    return max(
        _sma_objective(sim, (0, *combo)) for combo in itertools.combinations(range(1, d), s - 1)
    )


def _lma_partitions(d: int, s: int) -> list[list[range]]:
    """Every split of deep blocks 1..d-1 into s-1 contiguous, non-empty, ordered segments."""
    if s == 1:
        return [[]]
    out = []
    for cuts in itertools.combinations(range(2, d), s - 2):
        bounds = [1, *cuts, d]
        out.append([range(bounds[i], bounds[i + 1]) for i in range(s - 1)])
    return out


def _brute_lma(sim: np.ndarray) -> float:
    d, s = sim.shape
    return max(
        sum(sim[l, k + 1] for k, seg in enumerate(part) for l in seg)
        for part in _lma_partitions(d, s)
    )


def _assert_valid(positions: tuple[int, ...], d: int, s: int) -> None:
    assert isinstance(positions, tuple) and len(positions) == s
    assert all(type(p) is int for p in positions)
    assert positions[0] == 0 and positions[-1] <= d - 1
    assert all(b > a for a, b in zip(positions, positions[1:], strict=False))


def test_sma_matches_brute_force() -> None:
    for sim in _random_sims(0, 4):
        d, s = sim.shape
        positions = sma(sim)
        _assert_valid(positions, d, s)
        assert _sma_objective(sim, positions) == pytest.approx(_brute_sma(sim), abs=1e-12)
        assert score(sim, positions) == pytest.approx(_brute_sma(sim), abs=1e-12)


def test_lma_matches_brute_force() -> None:
    for sim in _random_sims(1, 4):
        d, s = sim.shape
        positions = lma(sim)
        _assert_valid(positions, d, s)
        if s > 1:
            assert positions[-1] == d - 1
        assert score(sim, positions, mode="lma") == pytest.approx(_brute_lma(sim), abs=1e-12)


def _brute_lma_segments(sim: np.ndarray) -> list[range]:
    """The segments of a best LMA split (brute force; the DP breaks ties the same way here)."""
    d, s = sim.shape
    return max(
        _lma_partitions(d, s),
        key=lambda part: sum(sim[l, k + 1] for k, seg in enumerate(part) for l in seg),
    )


def test_lma_placements_put_each_block_in_its_lma_segment() -> None:
    rng = np.random.default_rng(7)
    for d, s in SHAPES:
        sim = rng.random((d, s))  # continuous values: one best split
        segs = _brute_lma_segments(sim)
        first, similar = lma_first(sim), lma_similar(sim)
        _assert_valid(first, d, s)
        _assert_valid(similar, d, s)
        assert first == (0, *(seg.start for seg in segs))
        assert similar == (
            0,
            *(max(seg, key=lambda l, k=k: sim[l, k + 1]) for k, seg in enumerate(segs)),
        )
        assert lma(sim) == (0, *(seg.stop - 1 for seg in segs))


def test_lma_placement_hand_case() -> None:
    # deep blocks 1..5, two shallow blocks after block 0: LMA splits {1, 2} | {3, 4, 5}
    sim = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.9, 0.8, 0.1],
            [0.5, 0.9, 0.2],
            [0.2, 0.1, 0.7],
            [0.1, 0.2, 0.9],
            [0.0, 0.1, 0.8],
        ]
    )
    assert lma(sim) == (0, 2, 5)
    assert lma_first(sim) == (0, 1, 3)
    assert lma_similar(sim) == (0, 2, 4)
    assert {"lma_first", "lma_similar"} <= set(SEGMENTERS)


def test_lma_brute_force_enumerates_all_partitions() -> None:
    # C(d-2, s-2) splits of d-1 blocks into s-1 non-empty runs; guards the reference itself.
    assert len(_lma_partitions(6, 3)) == 4
    assert [list(map(list, p)) for p in _lma_partitions(4, 3)] == [[[1], [2, 3]], [[1, 2], [3]]]


def test_dp_hand_cases() -> None:
    sim = np.zeros((5, 3))
    sim[1, 1], sim[4, 2] = 1.0, 1.0
    assert sma(sim) == (0, 1, 4)
    # LMA: block 1 takes deep 1..a, block 2 takes the rest; rows 2..3 are worth 5 for block 1.
    sim = np.zeros((5, 3))
    sim[1:4, 1] = [1.0, 5.0, 5.0]
    sim[1:5, 2] = [0.0, 0.0, 0.0, 1.0]
    assert lma(sim) == (0, 3, 4)
    assert score(sim, (0, 3, 4), mode="lma") == pytest.approx(12.0)


def test_segmenters_accept_torch_and_numpy() -> None:
    gen = torch.Generator().manual_seed(2)
    sim_t = torch.rand(7, 4, generator=gen)
    sim_n = sim_t.numpy().astype(np.float64)
    assert set(SEGMENTERS) == {
        "sma",
        "lma",
        "lma_first",
        "lma_similar",
        "uniform",
        "head",
        "head_tail",
    }
    for name, fn in SEGMENTERS.items():
        assert fn(sim_t) == fn(sim_n), name
        _assert_valid(fn(sim_t), 7, 4)


def test_baselines_valid_for_many_shapes() -> None:
    for d, s in [*SHAPES, (50, 1), (50, 2), (50, 49), (97, 13)]:
        for fn in (uniform, head, head_tail):
            _assert_valid(fn(d, s), d, s)
            assert validate_positions(fn(d, s), d, s) == fn(d, s)
        if s > 1:
            assert uniform(d, s)[-1] == d - 1
            assert head_tail(d, s)[-1] == (d - 1 if s > 2 else 1)


def test_baseline_hand_cases() -> None:
    assert uniform(7, 4) == (0, 2, 4, 6)
    assert uniform(6, 3) == (0, 3, 5)  # 2.5 rounds up
    assert uniform(5, 4) == (0, 1, 3, 4)
    assert uniform(5, 5) == (0, 1, 2, 3, 4)
    assert uniform(5, 1) == (0,)
    assert head(6, 3) == (0, 1, 2)
    assert head_tail(8, 5) == (0, 1, 2, 6, 7)
    assert head_tail(8, 4) == (0, 1, 2, 7)
    assert head_tail(8, 2) == (0, 1)
    assert head_tail(3, 3) == (0, 1, 2)
    assert SEGMENTERS["uniform"](np.zeros((7, 4))) == (0, 2, 4, 6)


def test_shallow_deeper_than_deep_raises() -> None:
    for call in (lambda: sma(np.zeros((3, 4))), lambda: lma(np.zeros((3, 4))), lambda: head(2, 3)):
        with pytest.raises(AlignmentError, match="swap the roles"):
            call()
    with pytest.raises(AlignmentError, match="2-D"):
        sma(np.zeros(4))
    with pytest.raises(AlignmentError, match="NaN"):
        lma(np.array([[0.0, 1.0], [np.nan, 0.0]]))


@pytest.mark.parametrize(
    ("positions", "substrings"),
    [
        ([0, 1], ["has 2 positions", "3 blocks", "one deep slot per shallow block"]),
        ([1, 2, 3], ["starts at 1", "set the first position to 0"]),
        ([0, 3, 2], ["mapping [0, 3, 2] is not monotone", "position 2 of shallow block 2",
                     "greater than 3", "strictly increasing"]),
        ([0, 2, 2], ["not monotone", "position 2 of shallow block 2 must be greater than 2"]),
        ([0, 2, 6], ["position 6 of shallow block 2 is out of range", "slots 0..5"]),
        ([0, -1, 3], ["position -1 of shallow block 1 is out of range"]),
        ([0, 2.5, 4], ["position 2.5 of shallow block 1 is not an integer", "whole deep slot"]),
        ([0, "2", 4], ["position '2' of shallow block 1 is not an integer"]),
        ([0, True, 4], ["position True of shallow block 1 is not an integer"]),
    ],
)  # fmt: skip
def test_validate_positions_errors(positions: list, substrings: list[str]) -> None:
    with pytest.raises(AlignmentError) as info:
        validate_positions(positions, 6, 3)
    for text in substrings:
        assert text in str(info.value)


def test_validate_positions_accepts_ints_floats_arrays() -> None:
    assert validate_positions([0, 2.0, 5], 6, 3) == (0, 2, 5)
    assert validate_positions(np.array([0, 1, 4]), 6, 3) == (0, 1, 4)
    assert validate_positions(torch.tensor([0, 3, 4]), 6, 3) == (0, 3, 4)
    assert all(type(p) is int for p in validate_positions(np.array([0, 1, 4]), 6, 3))
    with pytest.raises(AlignmentError, match="swap the roles"):
        validate_positions([0, 1, 2, 3], 3, 4)


def test_segments_hand_cases() -> None:
    assert segments((0, 2, 5), 6) == [[0], [1, 2], [3, 4, 5]]
    assert segments((0, 1, 3), 6) == [[0], [1], [2, 3, 4, 5]]  # slots 4, 5 trail the last block
    assert segments((0,), 4) == [[0, 1, 2, 3]]
    assert segments((0, 1, 2), 3) == [[0], [1], [2]]
    for d, s in SHAPES:
        flat = [slot for seg in segments(uniform(d, s), d) for slot in seg]
        assert flat == list(range(d))
    with pytest.raises(AlignmentError, match="not monotone"):
        segments((0, 3, 3), 5)


def test_score_hand_cases() -> None:
    sim = np.arange(12, dtype=float).reshape(4, 3)  # sim[l, k] = 3 l + k
    assert score(sim, (0, 1, 3)) == pytest.approx(4.0 + 11.0)
    assert score(torch.tensor(sim), (0, 1, 2), mode="lma") == pytest.approx(4.0 + 8.0 + 11.0)
    assert score(sim, [0, 2, 3], mode="lma") == pytest.approx(4.0 + 7.0 + 11.0)
    with pytest.raises(ConfigError, match="unknown score mode 'x'"):
        score(sim, (0, 1, 2), mode="x")
    with pytest.raises(AlignmentError, match="has 2 positions"):
        score(sim, (0, 1))
