"""The layer placements a session holds feature statistics for, and the one to collect next.

A placement is where the alignment puts every block of A and B (its positions); its statistics
come from one feature pass over the padded pair. A session holds the current placement's
(``session.prepared``), those it visited before (``session.visited``, the latest first) and those
of the merges it keeps, all from the same analysis (the same CKA and calibration batches).
Switching to a placement held (``work.set_alignment``) runs no pass. ``missing_placement`` names
the automatic placement to collect while nobody waits (``ui.prefetch``) and ``adopt_placement``
hands it to the session.
"""

from __future__ import annotations

from heterogui.align.alignment import Alignment, align
from heterogui.host_memory import stats_budget
from heterogui.pipeline import Prepared
from heterogui.ui.session import Session

# The statistics of earlier placements a session keeps for switching back (up to as large as the
# current one's: 138 MB for MiniLM, less the merge points they share with it; a merge kept for
# the Compare tab keeps its own anyway), the latest first, while they take at most half the
# statistics budget (``host_memory.stats_budget``).
VISITED_ALIGNMENTS = 2

# The modes whose placements the workbench collects ahead, while idle: the paper's two, which
# the Alignment tab offers first.
PREFETCH_MODES = ("sma", "lma")


def within_budget(visited: list[Prepared], budget: int) -> list[Prepared]:
    """Return the longest prefix of ``visited`` whose statistics fit in ``budget`` bytes.

    A merge point's statistics that several placements share (``zip.reuse``) count once.
    """
    kept, used, counted = [], 0, set()
    for prepared in visited:
        fresh = {id(m): m for m in prepared.stats.values() if id(m) not in counted}
        used += sum(m.nbytes for m in fresh.values())
        counted.update(fresh)
        if used > budget:
            break
        kept.append(prepared)
    return kept


def same_analysis(one: Prepared, other: Prepared) -> bool:
    """Return True when both come from one analysis (the same CKA and calibration batches)."""
    return one.similarities is other.similarities and one.batches is other.batches


def same_placement(session: Session, prepared: Prepared, alignment: Alignment) -> Prepared | None:
    """Return statistics of this analysis collected for ``alignment``'s placement, if any.

    Candidates: the current ones, the placements visited before and those of kept merges;
    only those of the same analysis as ``prepared`` count.
    """
    kept = [r.prepared for r in (session.result, *session.kept.values()) if r is not None]
    for candidate in (prepared, *session.visited, *kept):
        if (
            same_analysis(candidate, prepared)
            and candidate.alignment.placement == alignment.placement
        ):
            return candidate
    return None


def remember(session: Session, placements: list[Prepared]) -> None:
    """Put ``placements`` first among the visited ones, within the count and the budget."""
    ids = {id(p) for p in placements}
    visited = [*placements, *(p for p in session.visited if id(p) not in ids)]
    session.visited = within_budget(visited[:VISITED_ALIGNMENTS], stats_budget() // 2)


def missing_placement(session: Session) -> tuple[Prepared, str] | None:
    """Return the session's statistics and a mode of ``PREFETCH_MODES`` whose placement it lacks.

    None when it holds them all, has no analysis, or keeps no statistics (pairs whose
    statistics exceed the budget collect them part by part at every merge).
    """
    prepared = session.prepared
    if prepared is None or not prepared.stats:
        return None
    graphs = prepared.net_a.graph(), prepared.net_b.graph()
    for mode in PREFETCH_MODES:
        if same_placement(session, prepared, align(*graphs, prepared.similarity, mode)) is None:
            return prepared, mode
    return None


def adopt_placement(session: Session, collected: Prepared) -> bool:
    """Keep ``collected`` (a placement collected ahead) as visited; True if the session took it.

    The session takes it only while its analysis is the one ``collected`` came from and it does
    not hold that placement yet; the current placement and its merges stay as they are.
    """
    current = session.prepared
    if current is None or not same_analysis(current, collected) or not collected.stats:
        return False
    if same_placement(session, current, collected.alignment) is not None:
        return False
    remember(session, [collected])
    return any(p is collected for p in session.visited)
