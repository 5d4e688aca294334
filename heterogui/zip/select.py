"""Head selection: a merged head is the copy of one parent's head, not their average.

docs/method.md sec. 8. The paper's zip pairs a head of A with a head of B and averages them;
the averaged head attends by the product of averaged queries and keys, a pattern neither parent
computes. ``zip.heads: select`` keeps the same pairing and the same widths but gives every
merged pair the weights of the pair's stronger head alone: M takes that head's features whole
(``Match.weights``), while U still copies the merged head back to both members, so the output
projections of both models read the kept head's values as they would have read their own.
Two copies of a model (a permuted copy, fine-tunes that stay close) therefore merge back
exactly, and a kept head attends as in its parent (on the merged stream).

A unit is what heads move as: a head, or in grouped-query attention a key/value head with its
query heads. A unit's strength is its output energy, E||W_o,u v_u||^2 over the calibration
data: the squared norm of what its values write through the output projection when it attends
to one token (its attention averages such writes). Ties go to A.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from heterogui.errors import MatcherError
from heterogui.zip.match import Match


def output_energies(
    second_moment: Tensor, readers: Sequence[Tensor], head_dim: int, unit_heads: int = 1
) -> np.ndarray:
    """Return the output energy of every unit of one model's attention layer.

    second_moment: (n, n) E[v vᵀ] of the model's value features, n = units * head_dim.
    readers: the tensors that read the attention output (the output projection), each with its
        read axis last: (..., n * unit_heads); query head i of unit u reads u's values.
    unit_heads: query heads per unit (1 without grouped-query attention).

    Returns:
        (units,) float64, E||W_u v_u||^2 summed over the unit's query heads and the readers.

    Raises:
        MatcherError: shapes that are not whole units.
    """
    n = second_moment.shape[0]
    if n % head_dim or second_moment.shape != (n, n):
        raise MatcherError(
            f"value moments of shape {tuple(second_moment.shape)} are not whole heads of {head_dim}"
        )
    units = n // head_dim
    s = second_moment.detach().to("cpu", torch.float64)
    blocks = torch.stack(
        [
            s[u * head_dim : (u + 1) * head_dim, u * head_dim : (u + 1) * head_dim]
            for u in range(units)
        ]
    )  # (units, d, d)
    energy = torch.zeros(units, dtype=torch.float64)
    for weight in readers:
        if weight.shape[-1] != n * unit_heads:
            raise MatcherError(
                f"an output projection reads {weight.shape[-1]} features, expected "
                f"{n * unit_heads} ({units} units of {unit_heads} heads of {head_dim})"
            )
        w = weight.detach().to("cpu", torch.float64).reshape(-1, units, unit_heads, head_dim)
        energy += torch.einsum("ouid,ude,ouie->u", w, blocks, w)
    return energy.numpy()


def select_members(match: Match, unit: int, energy_a: np.ndarray, energy_b: np.ndarray) -> Match:
    """Return ``match`` with each group's merged feature taken from its strongest unit alone.

    match: a head group's matching of one space (at most one member of each model in a group);
    unit: the space's features per unit; energy_a, energy_b: the units' output energies. A
    group's member from the unit of highest energy gets weight 1 (ties: A's), the others 0.

    Raises:
        MatcherError: energies that do not cover the space's units.
    """
    if match.more:
        raise MatcherError("head selection merges two models, not an N-way matching")
    if len(energy_a) * unit != match.n_a or len(energy_b) * unit != match.n_b:
        raise MatcherError(
            f"{len(energy_a)} + {len(energy_b)} unit energies do not cover {match.n_a} + "
            f"{match.n_b} features in units of {unit}"
        )
    groups = match.groups.numpy()
    strength = np.concatenate([np.repeat(energy_a, unit), np.repeat(energy_b, unit)])
    kept = np.flatnonzero(groups >= 0)
    # per group, its strongest member: sort by group, then strength (descending), then index
    order = kept[np.lexsort((kept, -strength[kept], groups[kept]))]
    first = np.ones(order.size, dtype=bool)
    first[1:] = groups[order[1:]] != groups[order[:-1]]
    weights = np.zeros(groups.size)
    weights[order[first]] = 1.0
    return replace(match, weights=torch.from_numpy(weights))
