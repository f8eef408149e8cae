"""Test-time use of what sleep time learned: the learned context for a planner, and precomputed
answers served only above a calibrated similarity threshold.

Where things live in the memory store (one SQLite file, the source of truth):

* block ``sleeptime/learned/<context_id>``: the learned context of one attached context (derived
  facts, summary, predicted questions with answers), CAS-versioned;
* block ``sleeptime/facts``: durable facts consolidated from past episodes;
* events of session ``sleeptime/<context_id>``: kind ``context`` (the attached text),
  ``learned`` (a job step's text), ``anticipation`` (text = a predicted question, meta.answer =
  its precomputed answer), ``sleeptime_step`` (the marker that a job step is done);
* events of session ``sleeptime/facts``: kind ``fact``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from agentrt.llm import ChatModel, Usage
from agentrt.memory_store import Filters, MemoryStore
from agentrt.sleeptime import _prompts

__all__ = [
    "DEFAULT_MATCH_THRESHOLD",
    "DEFAULT_VERIFY_FLOOR",
    "FACTS_BLOCK",
    "Calibration",
    "LearnedMemory",
    "Match",
    "calibrate_threshold",
    "context_session",
    "learned_label",
    "verify_match",
]

#: Cosine similarity (the store's embedder; all-MiniLM-L6-v2 by default) above which a query is
#: served from a predicted question's precomputed answer when no calibration was run: only
#: near-verbatim repeats of a predicted question. It is a conservative prior, not a measured
#: optimum: a wrong served answer costs more than a computed one, and two different questions
#: about the same context can be very similar in embedding space (e.g. "How much does she earn a
#: day?" vs "How much does she spend a day?"). Calibrate on the deployment's own (query, best
#: prediction, answer correct?) triples with :func:`calibrate_threshold`; the bench does so
#: (results/sleeptime.json, ``calibration``).
DEFAULT_MATCH_THRESHOLD = 0.95
#: Cosine similarity from which a best predicted question below the threshold is checked by one
#: short LLM call (:func:`verify_match`) instead of being dropped. Measured with all-MiniLM-L6-v2
#: on Stateful GSM8K (this repo, 2026-11-30): the query's own predicted question, paraphrased,
#: scored 0.64-0.72; unrelated predictions of the same problem 0.46-0.53. Questions that differ in
#: one word score higher still (0.86), which is why cosine alone never serves below the threshold.
DEFAULT_VERIFY_FLOOR = 0.55
FACTS_BLOCK = "sleeptime/facts"


def context_session(context_id: str) -> str:
    """The memory-store session holding one context's sleep-time events."""
    return f"sleeptime/{context_id}"


def learned_label(context_id: str) -> str:
    """The block holding one context's learned context."""
    return f"sleeptime/learned/{context_id}"


@dataclass
class Match:
    """A predicted question close enough to the query: serve ``answer`` without an LLM call.

    Attributes:
        question: the predicted question.
        answer: its precomputed answer.
        similarity: cosine similarity of query and predicted question (the store's embedder).
        threshold: the threshold it passed.
        context_id: the context it was predicted for.
        event_id: the anticipation event in the store.
        work: the worked calculation or evidence stored with the answer ("" if none).
        verified: True when a verification call (:func:`verify_match`) accepted it (its
            similarity was below the threshold); False when the similarity alone served it.
        usage: the verification call's token usage (``agentrt.llm.Usage``), None without a call.
    """

    question: str
    answer: str
    similarity: float
    threshold: float
    context_id: str
    event_id: int
    work: str = ""
    verified: bool = False
    usage: Usage | None = None


@dataclass
class Calibration:
    """How a match threshold was chosen (:func:`calibrate_threshold`).

    Attributes:
        threshold: the chosen cosine threshold (``math.inf`` when no threshold reaches the
            target precision: never serve).
        target_precision: the precision asked for.
        precision: precision of serving above ``threshold`` on the calibration pairs.
        coverage: fraction of calibration pairs served (score >= threshold).
        pairs: number of calibration pairs; positives: how many were correct answers.
    """

    threshold: float
    target_precision: float
    precision: float
    coverage: float
    pairs: int
    positives: int

    def as_dict(self) -> dict:
        return {"threshold": None if math.isinf(self.threshold) else round(self.threshold, 4),
                "target_precision": self.target_precision, "precision": round(self.precision, 4),
                "coverage": round(self.coverage, 4), "pairs": self.pairs, "positives": self.positives}


def calibrate_threshold(scores: Sequence[float], correct: Sequence[bool], *, target_precision: float = 0.9,
                        min_served: int = 2) -> Calibration:
    """The lowest similarity threshold whose served answers are correct at ``target_precision``.

    Args:
        scores: for each calibration query, the similarity of its best predicted question.
        correct: whether that predicted question's precomputed answer is a correct answer to
            the query (judged by the caller: exact numeric match, token F1, a person...).
        target_precision: required precision of served answers (among queries at or above the
            threshold).
        min_served: a threshold must serve at least this many calibration queries (a precision
            measured on one query says nothing).

    Returns:
        A :class:`Calibration`; ``threshold = inf`` (never serve) when no threshold qualifies.

    This is selective prediction with a confidence threshold (serve when confident, else
    compute): the threshold is chosen on held-out queries, then applied to new ones; the
    benchmark calibrates on one half of its queries and measures on the other.
    """
    if len(scores) != len(correct):
        raise ValueError("scores and correct must have the same length")
    pairs = sorted(zip(scores, correct), key=lambda p: -p[0])
    n = len(pairs)
    best = Calibration(math.inf, target_precision, 1.0, 0.0, n, sum(bool(c) for _, c in pairs))
    hits = 0
    for i, (s, c) in enumerate(pairs, 1):
        hits += bool(c)
        # only cut between distinct scores: ties are all served or none is
        if i < n and pairs[i][0] == s:
            continue
        prec = hits / i
        if i >= min_served and prec >= target_precision:
            best = Calibration(float(s), target_precision, prec, i / n, n, best.positives)
    return best


class LearnedMemory:
    """Reads what sleep time wrote, for a run: ``learned_context(question)`` and ``match(question)``.

    Args:
        store: the memory store sleep-time jobs write to (with an embedder, for ``match``).
        threshold: cosine threshold for serving a precomputed answer (default
            :data:`DEFAULT_MATCH_THRESHOLD`; set it from :func:`calibrate_threshold`).
        max_chars: at most this many characters of learned context per call.
        passage_chars: with a question and a context, also up to this many characters of the
            context's own passages closest to the question (stored by ``anticipate``; hybrid
            search), so details no note kept still reach the answer (0: none).

    Read-only and thread-safe (the store's readers are per thread).
    """

    def __init__(self, store: MemoryStore, *, threshold: float = DEFAULT_MATCH_THRESHOLD,
                 max_chars: int = 3000, passage_chars: int = 800) -> None:
        self.store = store
        self.threshold = threshold
        self.max_chars = max_chars
        self.passage_chars = passage_chars

    def contexts(self) -> list[str]:
        """Ids of the contexts that have a learned block, in label order."""
        prefix = learned_label("")
        return [b.label[len(prefix):] for b in self.store.blocks.list() if b.label.startswith(prefix)]

    def learned_context(self, question: str | None = None, *, context_id: str | None = None) -> str:
        """Text for the planner (``LLMCompiler.run(question, context=...)``); ``""`` when nothing is learned.

        With ``context_id``: that context's learned block. Without it: the learned block of the
        context whose predictions and learned notes are closest to ``question`` (hybrid search),
        or of the only context. Durable consolidated facts (block ``sleeptime/facts``) follow.
        At most ``max_chars`` characters: when the learned text is longer and a question is
        given, its lines most similar to the question (cosine, the store's embedder) are kept, in
        their original order, so the planner's prompt stays small however much was learned. With
        a question, up to ``passage_chars`` more characters of the context's passages closest to
        it follow.
        """
        parts = []
        cid = context_id
        if cid is None:
            cids = self.contexts()
            if len(cids) == 1:
                cid = cids[0]
            elif cids and question:
                res = self.store.search(question, k=1, filters=Filters(
                    session=[context_session(c) for c in cids], kind=["anticipation", "learned"]))
                if res.hits:
                    cid = res.hits[0].event.session[len(context_session("")):]
        if cid is not None:
            value = self.store.blocks.get(learned_label(cid)).value
            if value:
                parts.append(value)
        facts = self.store.blocks.get(FACTS_BLOCK).value
        if facts:
            parts.append("Facts from past conversations:\n" + facts)
        text = "\n\n".join(parts)
        if len(text) > self.max_chars:
            if question and self.store.embedder is not None:
                text = self._select(text, question)
            else:
                text = text[: self.max_chars - 3] + "..."
        if question and cid is not None and self.passage_chars > 0:
            passages = self._passages(question, cid)
            if passages:
                text = (text + "\n\n" if text else "") + "Passages of the context closest to the question:\n" + passages
        return text

    def _passages(self, question: str, cid: str) -> str:
        """The context's stored passages closest to ``question`` within ``passage_chars``, in text order."""
        res = self.store.search(question, k=8, filters=Filters(session=context_session(cid), kind="passage"),
                                use_cache=False)
        keep, size = [], 0
        for hit in res.hits:
            if hit.event.expired_at is not None or size + len(hit.event.text) + 1 > self.passage_chars:
                continue
            keep.append(hit.event)
            size += len(hit.event.text) + 1
        return "\n".join(e.text for e in sorted(keep, key=lambda e: e.id))

    def _select(self, text: str, question: str) -> str:
        """The lines of ``text`` most similar to ``question`` (a predicted ``Q:``/``Work:``/``A:``
        item is one unit) that fit in ``max_chars``, in their original order."""
        units: list[str] = []
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith(("Work: ", "A: ")) and units and units[-1].startswith("Q: ") \
                    and "\nA: " not in units[-1]:
                units[-1] += "\n" + line
            else:
                units.append(line)
        vecs = self.store.embedder.embed([question, *units])
        order = sorted(range(len(units)), key=lambda i: -float(vecs[0] @ vecs[i + 1]))
        keep, size = set(), 0
        for i in order:
            if size + len(units[i]) + 1 > self.max_chars:
                continue
            keep.add(i)
            size += len(units[i]) + 1
        return "\n".join(units[i] for i in sorted(keep))

    def best(self, question: str, *, context_id: str | None = None) -> Match | None:
        """The predicted question most similar to ``question`` whatever its score (None if none)."""
        sessions: str | list[str]
        if context_id is not None:
            sessions = context_session(context_id)
        else:
            cids = self.contexts()
            if not cids:
                return None
            sessions = [context_session(c) for c in cids]
        res = self.store.search(question, k=1, filters=Filters(session=sessions, kind="anticipation"),
                                mode="vector", use_cache=False)
        if not res.hits:
            return None
        hit = res.hits[0]
        meta = hit.event.meta or {}
        sim = float(hit.dense if hit.dense is not None else hit.score)
        return Match(hit.event.text, str(meta.get("answer", "")), sim, self.threshold,
                     hit.event.session[len(context_session("")):], hit.event.id, work=str(meta.get("work", "")))

    def match(self, question: str, *, context_id: str | None = None,
              threshold: float | None = None) -> Match | None:
        """The precomputed answer for ``question`` if a predicted question is at least
        ``threshold`` (default ``self.threshold``) similar; else None (compute the answer)."""
        m = self.best(question, context_id=context_id)
        tau = self.threshold if threshold is None else threshold
        if m is None or m.similarity < tau or not m.answer:
            return None
        m.threshold = tau
        return m

    async def amatch(self, question: str, *, context_id: str | None = None, model: ChatModel | None = None,
                     threshold: float | None = None, verify_floor: float | None = None) -> Match | None:
        """Like :meth:`match`, and a best candidate in ``[verify_floor, threshold)`` is served when
        ``model`` confirms it (:func:`verify_match`, one short call; ``Match.verified``/``usage``).

        Without ``model`` or ``verify_floor`` this is :meth:`match`. The store search runs in a
        worker thread.

        Raises:
            ModelError: the verification call failed.
        """
        import anyio.to_thread

        m = await anyio.to_thread.run_sync(lambda: self.best(question, context_id=context_id))
        tau = self.threshold if threshold is None else threshold
        if m is None or not m.answer:
            return None
        m.threshold = tau
        if m.similarity >= tau:
            return m
        if model is None or verify_floor is None or m.similarity < verify_floor:
            return None
        ok, usage = await verify_match(model, question, m)
        m.usage = usage
        if not ok:
            return None
        m.verified = True
        return m


async def verify_match(model: ChatModel, question: str, m: Match, *, max_tokens: int = 4) -> tuple[bool, Usage]:
    """Ask ``model`` whether ``m``'s precomputed answer answers ``question`` (same thing asked).

    One call at temperature 0, at most ``max_tokens`` output tokens, accepted when the reply
    starts with "yes" (unconstrained: under a JSON ``"yes"|"no"`` grammar the local 1.5B model
    answered "no" to every pair, see ``_prompts.VERIFY_SYSTEM``); the prompt holds the two
    questions and the prepared work and answer, never the context (~100-200 tokens).

    Returns:
        (accepted, the call's usage).

    Raises:
        ModelError: the call failed.
    """
    c = await model.complete(_prompts.verify_messages(question, m.question, m.work, m.answer),
                             max_tokens=max_tokens, temperature=0.0)
    ok = (c.content or "").strip().strip('"\'*').lower().startswith("yes")
    return ok, c.usage or Usage()
