"""Budgets of sleep-time jobs (tokens and seconds) and their allocation across contexts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ContextStats", "JobBudget", "allocate_tokens", "predictability"]


@dataclass
class JobBudget:
    """What one job may spend, over all its attempts (a pre-empted job resumes with what is left).

    Attributes:
        tokens: input + output tokens of every LLM call of the job (reserved before each call
            with ``agentrt.tracing.Budget``, so a call that could pass the limit is not sent).
        seconds: wall-clock seconds the job may run, summed over its attempts.
    """

    tokens: int = 4000
    seconds: float = 300.0


@dataclass
class ContextStats:
    """What the scheduler knows about one attached context, to share the sleep-time budget.

    Attributes:
        expected_queries: how many queries the caller expects about it (default 1).
        queries: queries seen so far that named this context.
        hits: of those, how many a precomputed answer served (``match`` above threshold).
        predictability: a fixed value in [0, 1] given by the caller; None means it is estimated
            from ``hits``/``queries`` (:func:`predictability`).
    """

    expected_queries: float = 1.0
    queries: int = 0
    hits: int = 0
    predictability: float | None = None

    def as_dict(self) -> dict:
        return {"expected_queries": self.expected_queries, "queries": self.queries, "hits": self.hits,
                "predictability": self.predictability}


def predictability(stats: ContextStats) -> float:
    """How predictable queries about a context are, in (0, 1).

    The caller's value if given; else the Laplace-smoothed past rate at which its queries
    matched a predicted question, ``(hits + 1) / (queries + 2)`` (0.5 before any query). The
    sleep-time paper (Lin et al., 2025, section on predictability) finds the gain of sleep-time
    compute grows with how predictable the query is from the context; this past hit rate is the
    cheap proxy its notes suggest (../shared/notes/memory_sleeptime.md, section 6.3).
    """
    if stats.predictability is not None:
        return min(1.0, max(0.0, stats.predictability))
    return (stats.hits + 1) / (stats.queries + 2)


def allocate_tokens(total: int, contexts: Mapping[str, ContextStats], *, floor: int = 0,
                    cap: int | None = None) -> dict[str, int]:
    """Share ``total`` tokens across contexts in proportion to expected queries x predictability.

    ``weight = max(expected_queries - queries, 0.5) * predictability(stats)``: queries still to
    come (at least half a query) times how likely precomputation is to serve them. Each share is
    then clamped to ``[floor, cap]``; clamping may make the shares sum to a little more or less
    than ``total`` (the scheduler's token budget check is what bounds the real spend).

    Returns ``{context_id: tokens}``; ``{}`` for no contexts.
    """
    if not contexts:
        return {}
    weights = {cid: max(s.expected_queries - s.queries, 0.5) * max(predictability(s), 1e-3)
               for cid, s in contexts.items()}
    norm = sum(weights.values())
    out = {}
    for cid, w in weights.items():
        share = int(total * w / norm)
        share = max(share, floor)
        if cap is not None:
            share = min(share, cap)
        out[cid] = share
    return out
