"""Episodes: one agent run stored as events + edges, and compact text about past runs for a planner."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agentrt.memory_store._types import Event, Filters

__all__ = ["EpisodesMixin"]


class EpisodesMixin:
    """`MemoryStore.append_episode` and `MemoryStore.relevant_episodes`."""

    def append_episode(self, session: str, question: str, plan: str | Sequence[Any] | None,
                       results: Sequence[Any], answer: str | None, *, meta: Mapping | None = None) -> int:
        """Store one agent run as events + edges in one transaction; returns the question event's id.

        Events: ``question`` (user), ``plan`` (planner), one ``tool_result`` per result (tool),
        ``answer`` (assistant). Edges: question -causal-> plan -causal-> each result -causal->
        answer; answer -derived_from-> question; every event of the run -about-> the question
        (so ``neighbors(qid, ['about'], direction='in')`` returns the whole episode).
        ``results`` items may be mappings (keys tool/name, args, ok, value, error), objects
        with those attributes, or strings.
        """
        texts: list[tuple[str, str, str]] = [("user", "question", question)]
        if plan is not None:
            texts.append(("planner", "plan", plan if isinstance(plan, str) else "\n".join(map(str, plan))))
        for r in results:
            texts.append(("tool", "tool_result", _result_text(r)))
        if answer is not None:
            texts.append(("assistant", "answer", answer))
        events = [Event(t, session=session, role=role, kind=kind, meta=meta if kind == "question" else None)
                  for role, kind, t in texts]
        prepared = self._prepare(events)
        has_plan = plan is not None

        def op(conn, op):
            now = time.time()
            ids = []
            for p in prepared:
                eid, post = self._insert(conn, p, now)
                ids.append(eid)
                op.post.append(post)
            q = ids[0]
            plan_id = ids[1] if has_plan else None
            res_ids = ids[1 + has_plan: 1 + has_plan + len(results)]
            ans_id = ids[-1] if answer is not None else None
            edges = []
            head = plan_id or q
            if plan_id:
                edges.append((q, plan_id, "causal"))
            edges += [(head, r, "causal") for r in res_ids]
            if ans_id:
                edges += [(r, ans_id, "causal") for r in res_ids] or [(head, ans_id, "causal")]
                edges.append((ans_id, q, "derived_from"))
            edges += [(e, q, "about") for e in ids[1:]]
            conn.executemany("INSERT INTO edges(src, dst, type, recorded_at) VALUES (?,?,?,?)",
                             [(s, d, t, now) for s, d, t in edges])
            return q
        qid = self._write(op)
        if self.auto_compact and self.index.needs_compaction():
            self._start_compaction()
        return qid

    def relevant_episodes(self, question: str, k: int = 3, *, session: str | None = None,
                          max_chars: int = 2000, min_similarity: float | None = None) -> str:
        """Compact text about the ``k`` past episodes most relevant to ``question`` (hybrid search
        over stored questions), for a planner prompt; ``""`` when there are none. At most
        ``max_chars`` characters.

        ``min_similarity``: keep only episodes whose stored question has at least this cosine
        similarity to ``question`` (one vector search instead of the hybrid one, so a caller's
        relevance gate and the text come from the same search)."""
        filters = Filters(kind="question", session=session)
        if self.index.total == 0:
            return ""
        if min_similarity is None:
            hits = self.search(question, k=k, filters=filters).hits
        else:
            hits = [h for h in self.search(question, k=k, filters=filters, mode="vector").hits
                    if (h.dense if h.dense is not None else h.score) >= min_similarity]
        parts = []
        for n, hit in enumerate(hits, 1):
            members = sorted(self.neighbors(hit.event.id, ["about"], direction="in"), key=lambda t: t[1].id)
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(hit.event.ts))
            lines = [f"Past episode {n} ({when} UTC):", f"Q: {_clip(hit.event.text, 300)}"]
            for _, ev in members:
                label = {"plan": "Plan", "tool_result": "Result", "answer": "A"}.get(ev.kind, ev.kind)
                lines.append(f"{label}: {_clip(ev.text, 300 if ev.kind != 'answer' else 400)}")
            parts.append("\n".join(lines))
        text = "\n\n".join(parts)
        return text if len(text) <= max_chars else text[:max_chars - 3] + "..."


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."


def _result_text(r: Any) -> str:
    if isinstance(r, str):
        return r
    get = r.get if isinstance(r, Mapping) else (lambda k, d=None: getattr(r, k, d))
    tool = get("tool") or get("name") or "?"
    args = get("args")
    ok = get("ok", True)
    body = get("value") if ok else f"error: {get('error')}"
    args_s = json.dumps(args, default=str) if args is not None else ""
    return f"{tool}({args_s}) -> {json.dumps(body, default=str) if not isinstance(body, str) else body}"
