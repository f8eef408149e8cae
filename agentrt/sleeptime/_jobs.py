"""Sleep-time jobs: ``anticipate`` (learn from an attached context), ``consolidate`` (episodes ->
durable facts), ``maintain`` (index snapshot, garbage collection).

Checkpoints: a job is a sequence of steps; each step's output is appended to the store in ONE
transaction together with a ``sleeptime_step`` marker event naming the job and step (and the
tokens it used). A step whose marker exists is done; a pre-empted, timed-out or killed job
resumes at the first step without a marker, so no step's output is ever stored twice and a crash
leaves either all of a step or none of it. Blocks derived from the steps are (re)published with
compare-and-swap at the end of each job, merging with whatever a run wrote meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from agentrt.errors import MemoryConflict, SleepBudgetExhausted, UsageLimitExceeded
from agentrt.llm import ChatModel, Completion
from agentrt.memory_store import Block, Event, Filters, MemoryStore, StoredEvent
from agentrt.sleeptime import _prompts
from agentrt.sleeptime._learned import FACTS_BLOCK, context_session, learned_label
from agentrt.sleeptime._reuse import reusable
from agentrt.tools import Tool
from agentrt.tracing import Budget, Span, Tracer

__all__ = [
    "RUNS_SECTION",
    "Anticipate",
    "BudgetExhausted",
    "Consolidate",
    "Job",
    "JobContext",
    "Maintain",
    "add_note",
    "cas_update",
]

log = logging.getLogger(__name__)

#: Heading under which notes written by runs live in a learned block; sleep-time jobs rewrite the
#: part above it and keep everything below it.
RUNS_SECTION = "\n\n## Added during runs\n"
UPDATED_BY = "sleeptime"


BudgetExhausted = SleepBudgetExhausted  # the short name used in this package


def cas_update(store: MemoryStore, label: str, make: Callable[[Block], str], *, updated_by: str,
               retries: int = 20) -> Block:
    """Compare-and-swap ``label`` to ``make(current block)``, re-reading and re-making on conflict.

    ``make`` must be a pure function of the block it is given, so a concurrent writer's change
    is seen by the retry and kept (never a write-back of a stale snapshot).

    Raises:
        MemoryConflict: still conflicting after ``retries`` attempts.
    """
    last: MemoryConflict | None = None
    for _ in range(retries):
        block = store.blocks.get(label)
        try:
            return store.blocks.set(label, make(block), block.version, updated_by=updated_by)
        except MemoryConflict as exc:
            last = exc
    assert last is not None
    raise last


def add_note(store: MemoryStore, context_id: str, note: str, *, updated_by: str = "run") -> Block:
    """Append ``note`` to a context's learned block under :data:`RUNS_SECTION` (CAS with retry).

    For runs (the Agent) that learn something sleep time must not erase: later ``anticipate``
    jobs rewrite only the part above that heading.
    """
    def make(block: Block) -> str:
        value = block.value
        if RUNS_SECTION not in value:
            value += RUNS_SECTION
        return value + note.strip() + "\n"
    return cas_update(store, learned_label(context_id), make, updated_by=updated_by)


def _publish(store: MemoryStore, label: str, ours: str) -> Block:
    """Write a job's text above :data:`RUNS_SECTION`, keeping what runs wrote (CAS + merge)."""
    def make(block: Block) -> str:
        if RUNS_SECTION in block.value:
            kept = block.value.split(RUNS_SECTION, 1)[1]
        elif block.value and block.updated_by != UPDATED_BY:
            kept = block.value  # a run created the block before sleep time did: keep all of it
        else:
            kept = ""
        return ours + (RUNS_SECTION + kept if kept.strip() else "")
    return cas_update(store, label, make, updated_by=UPDATED_BY)


@dataclass
class JobState:
    """What a job has spent over all its attempts (kept by the scheduler across pre-emptions)."""

    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0  # of input_tokens, served from the engine's prompt cache
    seconds: float = 0.0
    attempts: int = 0
    preemptions: int = 0
    status: str = "pending"  # pending | running | done | preempted | budget | timeout | error
    error: str | None = None
    steps_done: list[str] = field(default_factory=list)


class JobContext:
    """What a running job uses: the store, the model under the job's token budget, its checkpoints.

    Args:
        store, model: where to write, what to call.
        key: the job's idempotence key (markers are matched on it).
        session: the memory-store session the job writes to.
        budget: the job's token budget for this attempt (``agentrt.tracing.Budget``).
        tracer: spans go here; each LLM call is a ``chat`` span under the job's span.
        state: the job's cumulative state (tokens are added to it as calls finish).
        on_progress: called with short progress lines (the CLI prints them).
    """

    def __init__(self, store: MemoryStore, model: ChatModel, key: str, session: str, budget: Budget,
                 tracer: Tracer, state: JobState, on_progress: Callable[[str], None] | None = None) -> None:
        self.store, self.model, self.key, self.session = store, model, key, session
        self.budget, self.tracer, self.state = budget, tracer, state
        self.on_progress = on_progress or (lambda _msg: None)
        self._step_tokens = 0
        self.usage = {"input_tokens": 0, "output_tokens": 0, "calls": 0}

    def done_steps(self) -> dict[str, StoredEvent]:
        """``{step: marker event}`` of this job's finished steps (read from the store)."""
        out = {}
        after = 0
        while True:
            evs = self.store.events(session=self.session, kind="sleeptime_step", after_id=after, limit=1000)
            if not evs:
                break
            for ev in evs:
                meta = ev.meta or {}
                if meta.get("job") == self.key and ev.expired_at is None:
                    out[meta["step"]] = ev
            after = evs[-1].id
        return out

    def step_events(self, marker: StoredEvent) -> list[StoredEvent]:
        """The events a step stored with its marker (they follow it in the same transaction)."""
        n = int((marker.meta or {}).get("n_events", 0))
        return self.store.get_many(list(range(marker.id + 1, marker.id + 1 + n))) if n else []

    async def call(self, messages: list[dict], *, max_tokens: int, step: str,
                   response_format: dict | None = None, min_tokens: int = 16) -> Completion:
        """One LLM call under the job's token budget, as a ``chat`` span.

        The worst case (prompt estimated at chars/3 tokens, plus ``max_tokens``) is reserved
        first; ``max_tokens`` is lowered to what the budget has left.

        Raises:
            BudgetExhausted: fewer than ``min_tokens`` output tokens would fit in the budget.
            ModelError: the call failed.
        """
        prompt_est = sum(len(m.get("content") or "") for m in messages) // 3 + 16
        left = self.budget.remaining_tokens
        if left is not None:
            max_tokens = min(max_tokens, left - prompt_est)
        if max_tokens < min_tokens:
            raise BudgetExhausted(f"sleep-time job {self.key}: {left} tokens left, step {step!r} needs about "
                                  f"{prompt_est} prompt + {min_tokens} output tokens")
        name = getattr(self.model, "model_name", "model")
        with self.tracer.chat(name, max_tokens=max_tokens) as span:
            span.set("agentrt.sleeptime.step", step)
            try:
                hold = self.budget.reserve(name, prompt_tokens=prompt_est, max_tokens=max_tokens, local=True)
            except UsageLimitExceeded as exc:
                raise BudgetExhausted(str(exc)) from exc
            with hold:
                try:
                    completion = await self.model.complete(messages, max_tokens=max_tokens,
                                                           response_format=response_format, temperature=0.0)
                except anyio.get_cancelled_exc_class():
                    # pre-empted mid-call: the prompt was (at least partly) processed; charge it
                    hold.settle(input_tokens=prompt_est, output_tokens=0)
                    self.state.tokens += prompt_est
                    self.state.input_tokens += prompt_est
                    span.set("agentrt.sleeptime.cancelled", True)
                    raise
                u = completion.usage
                hold.settle(input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                            cached_input_tokens=u.cached_tokens)
            span.record_usage(input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                              cached_input_tokens=u.cached_tokens)
        used = u.input_tokens + u.output_tokens
        self.state.tokens += used
        self._step_tokens += used
        self.usage["input_tokens"] += u.input_tokens
        self.usage["output_tokens"] += u.output_tokens
        self.usage["calls"] += 1
        self.state.input_tokens += u.input_tokens
        self.state.output_tokens += u.output_tokens
        self.state.cached_input_tokens += u.cached_tokens or 0
        return completion

    async def save(self, step: str, events: Sequence[Event], **meta: Any) -> list[int]:
        """Store a finished step: its marker and ``events`` in one transaction; returns the events' ids."""
        marker = Event(f"{self.key} step {step} done", session=self.session, role="system", kind="sleeptime_step",
                       meta={"job": self.key, "step": step, "n_events": len(events), "tokens": self._step_tokens,
                             **meta})
        ids = await anyio.to_thread.run_sync(self.store.append_many, [marker, *events])
        self._step_tokens = 0
        self.state.steps_done.append(step)
        self.on_progress(f"{self.key}: step {step} stored ({len(events)} events)")
        return ids[1:]


class Job(Protocol):
    """A sleep-time job: ``kind``, an idempotence ``key``, the ``session`` it writes to, and ``run``."""

    kind: str
    key: str
    session: str
    context_id: str | None

    async def run(self, jc: JobContext) -> dict: ...


class Anticipate:
    """Learn from an attached context before questions come (the sleep-time paper's method).

    Steps: ``context`` (store the text), ``notes`` (the model works out quantities, inferences
    and key facts), ``predict`` (the ``questions`` most likely questions with precomputed
    answers, as JSON). Then the learned block ``sleeptime/learned/<context_id>`` is published
    (CAS, keeping run notes). Re-attaching changed text forgets the old context's predictions.

    With ``tools`` (only those declaring ``read_only`` and ``idempotent`` are used) a step
    ``tools`` follows: the calls in ``prefetch`` plus up to ``max_tool_calls`` calls the model
    proposes for the predicted questions are run on ``backend`` under each tool's limits, and
    the successful results are stored (kind ``tool_result``, with their arguments, a TTL of
    ``tool_ttl_s`` seconds and this job's key as the context version) so a run of the same call
    reuses them while valid (:class:`agentrt.sleeptime.ReusingBackend`); they are also listed in
    the learned block.

    Args:
        context_id: names the context (a document, a data set, a conversation).
        text: the context.
        questions: how many questions to predict (0: notes only).
        notes_tokens, predict_tokens: ``max_tokens`` of the two LLM calls.
        passage_chars: the text is also stored as passages of about this many characters
            (whole lines; kind ``passage``, embedded by the store) so a query can be given the
            few passages closest to it instead of the whole text (0: none).
        tools: tools the job may call (non read-only or non idempotent ones are ignored).
        prefetch: ``(tool name, args)`` calls to run whatever the model proposes.
        max_tool_calls: at most this many model-proposed calls (0: only ``prefetch``).
        backend: runs the calls (default: `agentrt.executor.LocalBackend`).
        tool_ttl_s: validity of stored results, seconds (default: ``results.ttl_s``).
        results: the :class:`agentrt.sleeptime.ToolResultStore` writing them (default: one on
            the job's store).
    """

    kind = "anticipate"

    def __init__(self, context_id: str, text: str, *, questions: int = 5, notes_tokens: int = 512,
                 predict_tokens: int = 384, passage_chars: int = 400, tools: Sequence[Tool] = (),
                 prefetch: Sequence[tuple[str, dict]] = (), max_tool_calls: int = 4, backend: Any = None,
                 tool_ttl_s: float | None = None, results: Any = None) -> None:
        self.context_id, self.text, self.questions = context_id, text, questions
        self.passage_chars = passage_chars
        self.tools = {t.name: t for t in tools if reusable(t)}
        self.prefetch = [(n, dict(a)) for n, a in prefetch]
        self.max_tool_calls, self.backend, self.tool_ttl_s = max_tool_calls, backend, tool_ttl_s
        self.results = results
        self.notes_tokens, self.predict_tokens = notes_tokens, predict_tokens
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        self.key = f"anticipate:{context_id}:{digest}:{questions}"
        self.session = context_session(context_id)

    def _forget_stale(self, store: MemoryStore) -> int:
        n = 0
        for kind in ("anticipation", "learned", "passage", "tool_result", "sleeptime_step", "context"):
            after = 0
            while True:
                evs = store.events(session=self.session, kind=kind, after_id=after, limit=1000)
                if not evs:
                    break
                for ev in evs:
                    job = (ev.meta or {}).get("job")
                    if ev.expired_at is None and job is not None and job != self.key:
                        store.forget(ev.id)
                        n += 1
                after = evs[-1].id
        return n

    async def run(self, jc: JobContext) -> dict:
        done = jc.done_steps()
        if "context" not in done:
            stale = await anyio.to_thread.run_sync(self._forget_stale, jc.store)
            passages = [Event(t, session=self.session, role="user", kind="passage", meta={"job": self.key})
                        for t in split_passages(self.text, self.passage_chars)] if self.passage_chars else []
            await jc.save("context", [Event(self.text, session=self.session, role="user", kind="context",
                                            meta={"job": self.key}), *passages], stale_forgotten=stale)
        if "notes" in done:
            notes = "\n".join(e.text for e in jc.step_events(done["notes"]))
        else:
            jc.on_progress(f"{self.key}: thinking about the context")
            c = await jc.call(_prompts.anticipate_messages(self.text), max_tokens=self.notes_tokens, step="notes")
            notes = _dedupe_lines(c.content.strip())
            await jc.save("notes", [Event(notes, session=self.session, role="assistant", kind="learned",
                                          meta={"job": self.key})])
        qa: list[tuple[str, str, str]] = []
        if self.questions > 0:
            if "predict" in done:
                qa = [(e.text, str((e.meta or {}).get("work", "")), str((e.meta or {}).get("answer", "")))
                      for e in jc.step_events(done["predict"])]
            else:
                jc.on_progress(f"{self.key}: predicting questions")
                c = await jc.call(_prompts.predict_messages(self.text, notes, self.questions),
                                  max_tokens=self.predict_tokens, step="predict",
                                  response_format={"type": "json_schema", "json_schema": {
                                      "name": "predicted_questions", "schema": _prompts.QA_SCHEMA}})
                qa = _parse_qa(c.content)[: self.questions]
                await jc.save("predict", [Event(q, session=self.session, role="assistant", kind="anticipation",
                                                meta={"job": self.key, "work": w, "answer": a}) for q, w, a in qa])
        fetched: list[StoredEvent] = []
        if self.tools and (self.prefetch or self.max_tool_calls > 0):
            if "tools" in done:
                fetched = jc.step_events(done["tools"])
            else:
                fetched = await self._fetch(jc, [q for q, _, _ in qa])
        ours = notes
        if qa:
            ours += "\n\nPredicted questions with precomputed answers:\n" + "\n".join(
                f"Q: {q}\n" + (f"Work: {w}\n" if w else "") + f"A: {a}" for q, w, a in qa)
        if fetched:
            ours += "\n\nTool results fetched while idle:\n" + "\n".join(
                f"{e.text} -> {_short(e.meta.get('value'))}" for e in fetched if e.meta)
        block = await anyio.to_thread.run_sync(_publish, jc.store, learned_label(self.context_id), ours)
        return {"notes_chars": len(notes), "predicted": len(qa), "tool_results": len(fetched),
                "block_version": block.version}

    async def _fetch(self, jc: JobContext, questions: list[str]) -> list[StoredEvent]:
        """The ``tools`` step: run the prefetch calls and the model's proposed ones, store the results."""
        from agentrt.executor import LocalBackend, Task
        from agentrt.sleeptime._reuse import ToolResultStore

        calls = [(n, a) for n, a in self.prefetch if n in self.tools]
        if self.max_tool_calls > 0:
            jc.on_progress(f"{self.key}: choosing tool calls")
            specs = [{"name": t.name, "description": t.description, "parameters": json.dumps(t.parameters)}
                     for t in self.tools.values()]
            c = await jc.call(_prompts.tools_messages(self.text, questions, specs, self.max_tool_calls),
                              max_tokens=48 * self.max_tool_calls + 16, step="tools",
                              response_format={"type": "json_schema", "json_schema": {
                                  "name": "tool_calls",
                                  "schema": _prompts.tools_schema(sorted(self.tools), self.max_tool_calls)}})
            calls += _parse_calls(c.content, self.tools)[: self.max_tool_calls]
        seen: set[str] = set()
        backend = self.backend or LocalBackend()
        results = self.results or ToolResultStore(jc.store)
        events: list[Event] = []
        for i, (name, args) in enumerate(calls, 1):
            key = json.dumps([name, args], sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            tool = self.tools[name]
            jc.on_progress(f"{self.key}: calling {name}")
            res = await backend.submit(Task(id=i, tool=name, args=args), tool, args, tool.limits)
            ev = results.event(tool, args, res, context_id=self.context_id, job=self.key, ttl_s=self.tool_ttl_s)
            if ev is not None:
                events.append(ev)
        ids = await jc.save("tools", events)
        return await anyio.to_thread.run_sync(jc.store.get_many, ids) if ids else []


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_calls(text: str, tools: dict[str, Tool]) -> list[tuple[str, dict]]:
    """``[(tool, args)]`` from the model's ``{"calls": [...]}``; unknown tools and non-object
    arguments dropped (arguments are validated when the call runs)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return []
    items = data.get("calls", []) if isinstance(data, dict) else []
    return [(it["tool"], it["args"]) for it in items if isinstance(it, dict) and it.get("tool") in tools
            and isinstance(it.get("args"), dict)]


def split_passages(text: str, size: int) -> list[str]:
    """``text`` cut into passages of whole lines, each about ``size`` characters or less (a line
    longer than ``size`` is a passage of its own); a text of one passage gives none (the text
    itself is the passage)."""
    out: list[str] = []
    cur: list[str] = []
    n = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        if cur and n + len(line) + 1 > size:
            out.append("\n".join(cur))
            cur, n = [], 0
        cur.append(line)
        n += len(line) + 1
    if cur:
        out.append("\n".join(cur))
    return out if len(out) > 1 else []


def _dedupe_lines(text: str) -> str:
    """``text`` without repeats of a non-empty line (a small model at temperature 0 can loop on one
    line until ``max_tokens``; the loop's tokens are spent, but the learned block stays clean)."""
    seen: set[str] = set()
    out = []
    for line in text.splitlines():
        key = " ".join(line.split()).lower()
        if key and key in seen:
            continue
        seen.add(key)
        out.append(line)
    return "\n".join(out)


_QA_ITEM = re.compile(r'"question"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*(?:"work"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*)?'
                      r'"answer"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _unescape(s: str) -> str:
    try:
        return str(json.loads(f'"{s}"')).strip()
    except json.JSONDecodeError:
        return s.strip()


def _parse_qa(text: str) -> list[tuple[str, str, str]]:
    """``[(question, work, answer)]`` from the model's JSON (``work`` may be ``""``); when the
    JSON was cut by ``max_tokens``, every complete item before the cut."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if data is None:
        return [(_unescape(q), _unescape(w), _unescape(a)) for q, w, a in _QA_ITEM.findall(text) if q.strip()]
    items = data.get("items", []) if isinstance(data, dict) else data if isinstance(data, list) else []
    out = []
    for it in items:
        if isinstance(it, dict) and str(it.get("question", "")).strip():
            out.append((str(it["question"]).strip(), str(it.get("work", "")).strip(),
                        str(it.get("answer", "")).strip()))
    return out


class Consolidate:
    """Turn recent episodes into durable facts, superseding outdated ones.

    Reads events of ordinary sessions (not ``sleeptime/...``) of kinds ``question``, ``answer``
    and ``message`` after the last consolidated id, in batches of about ``batch_chars``
    characters. Per batch (one step named ``upto:<last id>``): the model writes up to
    ``max_facts`` facts; each is stored as a ``fact`` event of session ``sleeptime/facts`` with
    the batch's events as provenance (meta and ``derived_from`` edges). A new fact at cosine >=
    ``supersede_at`` to a current one replaces it: the old event is forgotten (kept for
    ``as_of`` queries) and a ``ref`` edge new -> old records ``supersedes``; a near-duplicate
    (>= ``duplicate_at``) is dropped. Finally the ``sleeptime/facts`` block is rewritten by CAS.
    """

    kind = "consolidate"
    context_id = None

    def __init__(self, *, batch_chars: int = 3000, max_facts: int = 8, max_batches: int = 20,
                 supersede_at: float = 0.8, duplicate_at: float = 0.97, block_lines: int = 60) -> None:
        self.batch_chars, self.max_facts, self.max_batches = batch_chars, max_facts, max_batches
        self.supersede_at, self.duplicate_at, self.block_lines = supersede_at, duplicate_at, block_lines
        self.key = "consolidate"
        self.session = context_session("facts")

    def _after_id(self, jc: JobContext) -> int:
        ups = [int(s.split(":", 1)[1]) for s in jc.done_steps() if s.startswith("upto:")]
        return max(ups, default=0)

    def _batch(self, store: MemoryStore, after: int) -> list[StoredEvent]:
        out, size = [], 0
        while size < self.batch_chars:
            evs = store.events(after_id=after, limit=200)
            if not evs:
                break
            for ev in evs:
                after = ev.id
                if ev.session.startswith("sleeptime/") or ev.kind not in ("question", "answer", "message") \
                        or ev.expired_at is not None:
                    continue
                out.append(ev)
                size += len(ev.text)
                if size >= self.batch_chars:
                    break
        return out

    def _supersede(self, store: MemoryStore, new_ids: list[int], texts: list[str]) -> tuple[list[str], int]:
        """Forget facts the new ones replace; returns (texts of forgotten facts, how many)."""
        gone = []
        for fid, text in zip(new_ids, texts):
            res = store.search(text, k=2, filters=Filters(session=self.session, kind="fact"), mode="vector",
                               use_cache=False)
            for hit in res.hits:
                if hit.event.id == fid or hit.dense is None or hit.dense < self.supersede_at:
                    continue
                store.forget(hit.event.id)
                store.add_edge(fid, hit.event.id, "ref", meta={"supersedes": True})
                gone.append(hit.event.text)
                break
        return gone, len(gone)

    async def run(self, jc: JobContext) -> dict:
        store = jc.store
        added = superseded = batches = 0
        gone_all: list[str] = []
        new_all: list[str] = []
        while batches < self.max_batches:
            after = self._after_id(jc)
            batch = await anyio.to_thread.run_sync(self._batch, store, after)
            if not batch:
                break
            batches += 1
            upto = batch[-1].id
            records = "\n".join(f"[{time.strftime('%Y-%m-%d', time.gmtime(e.ts))}] {e.role} ({e.kind}): "
                                f"{' '.join(e.text.split())[:600]}" for e in batch)
            known = store.blocks.get(FACTS_BLOCK).value
            jc.on_progress(f"consolidate: {len(batch)} events up to id {upto}")
            c = await jc.call(_prompts.consolidate_messages(records, known[-1500:], self.max_facts),
                              max_tokens=48 * self.max_facts, step=f"upto:{upto}")
            facts = _fact_lines(c.content)[: self.max_facts]
            # drop near-duplicates of current facts before storing
            fresh = []
            for f in facts:
                res = await anyio.to_thread.run_sync(lambda f=f: store.search(
                    f, k=1, filters=Filters(session=self.session, kind="fact"), mode="vector", use_cache=False))
                if res.hits and res.hits[0].dense is not None and res.hits[0].dense >= self.duplicate_at:
                    continue
                fresh.append(f)
            sources = [e.id for e in batch]
            ids = await jc.save(f"upto:{upto}", [Event(f, session=self.session, role="system", kind="fact",
                                                       meta={"job": self.key, "sources": sources}) for f in fresh])
            q_sources = [e.id for e in batch if e.kind == "question"] or sources[:1]

            def link(ids=ids, q_sources=q_sources) -> None:
                for fid in ids:
                    for src in q_sources:
                        store.add_edge(fid, src, "derived_from")
            await anyio.to_thread.run_sync(link)
            gone, n = await anyio.to_thread.run_sync(self._supersede, store, ids, fresh)
            gone_all += gone
            new_all += fresh
            added += len(fresh)
            superseded += n
        if new_all or gone_all:
            def make(block: Block) -> str:
                lines = [ln for ln in block.value.splitlines() if ln.strip() and ln not in gone_all]
                lines += [f for f in new_all if f not in lines]
                return "\n".join(lines[-self.block_lines:])
            await anyio.to_thread.run_sync(lambda: cas_update(store, FACTS_BLOCK, make, updated_by=UPDATED_BY))
        return {"batches": batches, "facts_added": added, "superseded": superseded}


def _fact_lines(text: str) -> list[str]:
    out = []
    for ln in text.splitlines():
        ln = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", ln).strip()
        if len(ln) >= 8:
            out.append(ln)
    return out


class Maintain:
    """Memory maintenance: fold the exact buffer into a new ANN index snapshot when it is due
    (or ``force``), delete unreferenced blobs and checkpoint the WAL (``MemoryStore.gc``).
    No LLM calls; runs in a worker thread (a query pre-empting it does not wait for it)."""

    kind = "maintain"
    context_id = None
    key = "maintain"
    session = context_session("maintenance")

    def __init__(self, *, force: bool = False, gc_grace_s: float = 3600.0) -> None:
        self.force, self.gc_grace_s = force, gc_grace_s

    async def run(self, jc: JobContext) -> dict:
        store = jc.store
        out: dict[str, Any] = {}
        if self.force or store.index.needs_compaction():
            jc.on_progress("maintain: index snapshot")
            out["compact"] = await anyio.to_thread.run_sync(store.compact)
        jc.on_progress("maintain: garbage collection")
        out["gc"] = await anyio.to_thread.run_sync(lambda: store.gc(grace_s=self.gc_grace_s))
        return out


def job_span(tracer: Tracer, job: Job) -> Span:
    """The root span of one job attempt (its own trace: the store totals its tokens and cost)."""
    span = tracer.run(f"sleeptime {job.kind}", agent="agentrt-sleeptime",
                      attributes={"agentrt.sleeptime.job": job.key, "agentrt.sleeptime.kind": job.kind})
    if job.context_id is not None:
        span.set("agentrt.sleeptime.context_id", job.context_id)
    return span
