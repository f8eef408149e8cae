"""The local trace store: one SQLite file (WAL), written by a background thread, and its queries.

`TraceStore.submit` is the tracer's sink: one `queue.SimpleQueue.put`, never blocking. A daemon
writer thread drains the queue in batches (one transaction per batch), prices inference spans that
carry usage but no cost (genai-prices), adds a per-token energy estimate to remote inference spans
without energy, and, when a run's root span arrives, computes the run's totals (`summarize`).

Tables: ``runs`` (one row per run, totals as columns) and ``spans`` (one row per span; model, tool,
tokens, cost and energy copied into columns for aggregate queries; all attributes as JSON).
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any

from agentrt.tracing import _semconv as sc
from agentrt.tracing._analysis import RunSummary, summarize
from agentrt.tracing._span import Span, SpanRecord, Tracer

__all__ = ["TraceStore", "default_store_path"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT, started_ns INTEGER NOT NULL, ended_ns INTEGER,
    status TEXT NOT NULL DEFAULT 'running',
    input_tokens INTEGER DEFAULT 0, output_tokens INTEGER DEFAULT 0, cached_tokens INTEGER DEFAULT 0,
    reasoning_tokens INTEGER DEFAULT 0, cost_usd REAL, unpriced_calls INTEGER DEFAULT 0,
    energy_j REAL, energy_method TEXT, llm_calls INTEGER DEFAULT 0, tool_calls INTEGER DEFAULT 0,
    span_count INTEGER DEFAULT 0, critical_path TEXT, critical_path_s REAL, parallel_efficiency REAL,
    question TEXT
);
CREATE INDEX IF NOT EXISTS runs_started ON runs(started_ns);
CREATE TABLE IF NOT EXISTS spans (
    run_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT, operation TEXT,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, status TEXT,
    model TEXT, tool TEXT, input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, energy_j REAL,
    attributes TEXT, links TEXT, PRIMARY KEY (run_id, span_id)
);
CREATE INDEX IF NOT EXISTS spans_start ON spans(start_ns);
"""
_RUN_COLS = ("run_id", "name", "started_ns", "ended_ns", "status", "input_tokens", "output_tokens",
             "cached_tokens", "reasoning_tokens", "cost_usd", "unpriced_calls", "energy_j", "energy_method",
             "llm_calls", "tool_calls", "span_count", "critical_path", "critical_path_s", "parallel_efficiency",
             "question")


def default_store_path() -> Path:
    """``Settings.trace_path`` (``AGENTRT_TRACE_PATH``), else ``<Settings.data_dir>/traces.sqlite``."""
    from agentrt.config import get_settings

    settings = get_settings()
    return settings.trace_path or settings.data_dir / "traces.sqlite"


def _enrich(rec: SpanRecord) -> None:
    """Price an inference span and estimate a remote one's energy, where not already set."""
    a = rec.attributes
    if rec.operation not in sc.INFERENCE_OPERATIONS or sc.USAGE_INPUT_TOKENS not in a:
        return
    model = a.get(sc.RESPONSE_MODEL) or a.get(sc.REQUEST_MODEL)
    local = bool(a.get(sc.MODEL_LOCAL))
    if sc.COST_USD not in a and sc.COST_STATUS not in a and model:
        from agentrt.tracing._cost import price

        try:
            c = price(str(model), input_tokens=int(a[sc.USAGE_INPUT_TOKENS]),
                      output_tokens=int(a.get(sc.USAGE_OUTPUT_TOKENS, 0)),
                      cached_input_tokens=int(a.get(sc.USAGE_CACHE_READ_INPUT_TOKENS, 0)),
                      reasoning_tokens=int(a.get(sc.USAGE_REASONING_OUTPUT_TOKENS, 0)),
                      provider=a.get(sc.PROVIDER_NAME), local=local)
        except ValueError as exc:
            logger.warning("span %s: cannot price usage: %s", rec.span_id, exc)
            c = None
        if c is not None:
            a[sc.COST_STATUS] = c.status
            if c.usd is not None:
                a[sc.COST_USD] = str(c.usd)
                a[sc.USAGE_COST_AMOUNT] = float(c.usd)
                a[sc.USAGE_COST_CURRENCY] = "USD"
                a[sc.USAGE_COST_SOURCE] = "local"  # computed here, not reported by the provider
    if sc.ENERGY_JOULES not in a and not local:
        from agentrt.tracing._energy import energy_for_tokens

        e = energy_for_tokens(int(a.get(sc.USAGE_OUTPUT_TOKENS, 0)))
        a[sc.ENERGY_JOULES] = e.joules
        a[sc.ENERGY_METHOD] = e.method


def _span_row(r: SpanRecord) -> tuple[Any, ...]:
    a = r.attributes
    cost = a.get(sc.COST_USD)
    return (r.run_id, r.span_id, r.parent_id, r.name, r.operation, r.start_ns, r.end_ns, r.status,
            a.get(sc.RESPONSE_MODEL) or a.get(sc.REQUEST_MODEL), a.get(sc.TOOL_NAME),
            a.get(sc.USAGE_INPUT_TOKENS), a.get(sc.USAGE_OUTPUT_TOKENS),
            None if cost is None else float(Decimal(str(cost))), a.get(sc.ENERGY_JOULES),
            json.dumps(a, default=str, separators=(",", ":")), json.dumps(r.links) if r.links else None)


def _record(row: sqlite3.Row | tuple[Any, ...]) -> SpanRecord:
    return SpanRecord(run_id=row[0], span_id=row[1], parent_id=row[2], name=row[3], operation=row[4],
                      start_ns=row[5], end_ns=row[6], status=row[7] or "ok",
                      attributes=json.loads(row[8]) if row[8] else {},
                      links=json.loads(row[9]) if row[9] else [])


def _summary(row: tuple[Any, ...]) -> RunSummary:
    d = dict(zip(_RUN_COLS, row, strict=True))
    d["critical_path"] = json.loads(d["critical_path"]) if d["critical_path"] else []
    d["critical_path_s"] = d["critical_path_s"] or 0.0
    for k in ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "unpriced_calls",
              "llm_calls", "tool_calls", "span_count"):
        d[k] = d[k] or 0
    return RunSummary(**d)


class TraceStore:
    """A SQLite trace store (WAL) with a background writer and read queries.

    Args:
        path: the database file; default `default_store_path()`. Its directory is created.

    Use `tracer()` to get a `Tracer` writing here. Call `flush` before reading what was just
    recorded, and `close` at the end (also registered to run at interpreter exit).
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con, con:
            con.executescript(_SCHEMA)
            columns = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
            if "question" not in columns:  # a store written before runs kept their question
                con.execute("ALTER TABLE runs ADD COLUMN question TEXT")
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._open_runs: dict[str, list[SpanRecord]] = {}
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self.dropped = 0  # spans that could not be written (logged)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    # -- writing ---------------------------------------------------------------------------------
    def tracer(self, *, enabled: bool = True) -> Tracer:
        """A `Tracer` whose finished spans are written here."""
        return Tracer(self.submit, enabled=enabled)

    def submit(self, span: Span) -> None:
        """Queue a finished span for writing (non-blocking; starts the writer on first use)."""
        if self._thread is None:
            self._start()
        self._queue.put(span)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                import atexit

                self._thread = threading.Thread(target=self._run, name="agentrt-trace-writer", daemon=True)
                self._thread.start()
                atexit.register(self.close)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written; False on timeout."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer. The store can still be read."""
        if self._thread is not None and not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        con = self._connect()
        try:
            while True:
                items = [self._queue.get()]
                while len(items) < 5000:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = self._write(con, items, self._open_runs)
                if stop:
                    return
        finally:
            con.close()

    def _write(self, con: sqlite3.Connection, items: list[Any], open_runs: dict[str, list[SpanRecord]]) -> bool:
        spans: list[tuple[Any, ...]] = []
        runs_started: list[tuple[Any, ...]] = []
        runs_ended: list[RunSummary] = []
        events: list[threading.Event] = []
        stop = False
        for it in items:
            if it is None:
                stop = True
            elif isinstance(it, threading.Event):
                events.append(it)
            else:
                try:
                    rec = it.to_record()
                    _enrich(rec)
                except Exception:  # a bad attribute must not kill the writer
                    logger.exception("trace writer: cannot record span %r", it)
                    self.dropped += 1
                    continue
                spans.append(_span_row(rec))
                run = open_runs.setdefault(rec.run_id, [])
                run.append(rec)
                if rec.parent_id is None:
                    del open_runs[rec.run_id]
                    runs_ended.append(summarize(run, run_id=rec.run_id))
                elif len(run) == 1:
                    runs_started.append((rec.run_id, rec.start_ns))
        try:
            with con:
                con.executemany("INSERT OR REPLACE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", spans)
                con.executemany("INSERT OR IGNORE INTO runs (run_id, started_ns, status) VALUES (?,?,'running')",
                                runs_started)
                con.executemany(f"INSERT OR REPLACE INTO runs ({','.join(_RUN_COLS)}) VALUES "
                                f"({','.join('?' * len(_RUN_COLS))})",
                                [self._run_row(s) for s in runs_ended])
        except sqlite3.Error:
            logger.exception("trace writer: cannot write %d spans to %s", len(spans), self.path)
            self.dropped += len(spans)
        for e in events:
            e.set()
        return stop

    @staticmethod
    def _run_row(s: RunSummary) -> tuple[Any, ...]:
        return (s.run_id, s.name, s.started_ns, s.ended_ns, s.status, s.input_tokens, s.output_tokens,
                s.cached_tokens, s.reasoning_tokens, s.cost_usd, s.unpriced_calls, s.energy_j, s.energy_method,
                s.llm_calls, s.tool_calls, s.span_count, json.dumps(s.critical_path), s.critical_path_s,
                s.parallel_efficiency, s.question)

    def write_records(self, records: Sequence[SpanRecord]) -> None:
        """Write already-finished span records synchronously (imports, tests, benchmarks)."""
        with closing(self._connect()) as con:
            self._write(con, [_Rec(r) for r in sorted(records, key=lambda r: r.parent_id is None)], {})

    # -- reading ---------------------------------------------------------------------------------
    def _read(self) -> closing[sqlite3.Connection]:
        return closing(self._connect())

    def runs(self, *, limit: int | None = 50, since_ns: int | None = None) -> list[RunSummary]:
        """Runs, newest first (``limit`` None: all), optionally only those started since ``since_ns``."""
        sql = f"SELECT {','.join(_RUN_COLS)} FROM runs"
        args: list[Any] = []
        if since_ns is not None:
            sql += " WHERE started_ns >= ?"
            args.append(since_ns)
        sql += " ORDER BY started_ns DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._read() as con:
            return [_summary(r) for r in con.execute(sql, args)]

    def count_runs(self) -> int:
        with self._read() as con:
            return con.execute("SELECT count(*) FROM runs").fetchone()[0]

    def run(self, ref: str) -> RunSummary:
        """One run by id, unique id prefix, or ``last``.

        Raises:
            KeyError: no run matches, or a prefix matches several (the message says which).
        """
        run_id = self.resolve(ref)
        with self._read() as con:
            row = con.execute(f"SELECT {','.join(_RUN_COLS)} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {ref!r} in {self.path}")
        s = _summary(row)
        if s.ended_ns is None:  # still running: totals so far from its spans
            spans = self.spans(run_id)
            if spans:
                live = summarize(spans, run_id=run_id)
                live.ended_ns, live.status, live.started_ns = None, "running", s.started_ns
                return live
        return s

    def resolve(self, ref: str) -> str:
        """A full run id from an id, a unique prefix or ``last`` (see `run`)."""
        with self._read() as con:
            if ref == "last":
                row = con.execute("SELECT run_id FROM runs ORDER BY started_ns DESC LIMIT 1").fetchone()
                if row is None:
                    raise KeyError(f"no runs recorded yet in {self.path}")
                return row[0]
            rows = con.execute("SELECT run_id FROM runs WHERE run_id >= ? AND run_id < ? LIMIT 3",
                               (ref.lower(), ref.lower() + "g")).fetchall()
        if not rows:
            raise KeyError(f"no run matches {ref!r} in {self.path}")
        if len(rows) > 1:
            raise KeyError(f"run prefix {ref!r} is ambiguous: {', '.join(r[0][:12] for r in rows)}...")
        return rows[0][0]

    def spans(self, run_ref: str) -> list[SpanRecord]:
        """Every written span of a run (id, prefix or ``last``), by start time."""
        run_id = self.resolve(run_ref) if len(run_ref) != 32 else run_ref
        with self._read() as con:
            rows = con.execute("SELECT run_id, span_id, parent_id, name, operation, start_ns, end_ns, status, "
                               "attributes, links FROM spans WHERE run_id = ? ORDER BY start_ns", (run_id,)).fetchall()
        return [_record(r) for r in rows]

    def spans_since(self, since_ns: int) -> Iterator[SpanRecord]:
        """Spans that *started* at or after ``since_ns``, oldest first (for ``trace tail``)."""
        with self._read() as con:
            rows = con.execute("SELECT run_id, span_id, parent_id, name, operation, start_ns, end_ns, status, "
                               "attributes, links FROM spans WHERE start_ns >= ? ORDER BY start_ns",
                               (since_ns,)).fetchall()
        return iter([_record(r) for r in rows])

    def cost_by(self, by: str = "model", *, since_ns: int | None = None) -> list[dict[str, Any]]:
        """Aggregate spans since ``since_ns`` by ``model`` (inference spans) or ``tool`` (tool calls).

        Returns:
            rows ``{key, calls, input_tokens, output_tokens, cost_usd, energy_j, seconds}`` by
            descending cost (then seconds). ``cost_usd`` sums priced spans only.
        """
        if by not in ("model", "tool"):
            raise ValueError(f"by must be 'model' or 'tool', not {by!r}")
        where = "model IS NOT NULL AND input_tokens IS NOT NULL" if by == "model" else "tool IS NOT NULL"
        args: list[Any] = []
        if since_ns is not None:
            where += " AND start_ns >= ?"
            args.append(since_ns)
        sql = (f"SELECT {by}, count(*), sum(input_tokens), sum(output_tokens), sum(cost_usd), sum(energy_j), "
               f"sum(end_ns - start_ns) / 1e9 FROM spans WHERE {where} GROUP BY {by} "
               "ORDER BY coalesce(sum(cost_usd), 0) DESC, 7 DESC")
        with self._read() as con:
            rows = con.execute(sql, args).fetchall()
        keys = ("key", "calls", "input_tokens", "output_tokens", "cost_usd", "energy_j", "seconds")
        return [dict(zip(keys, r, strict=True)) for r in rows]


class _Rec:
    """Adapter so `write_records` can reuse the writer's path for `SpanRecord`s."""

    __slots__ = ("_r",)

    def __init__(self, r: SpanRecord) -> None:
        self._r = r

    def to_record(self) -> SpanRecord:
        return SpanRecord(self._r.run_id, self._r.span_id, self._r.parent_id, self._r.name, self._r.operation,
                          self._r.start_ns, self._r.end_ns, self._r.status, dict(self._r.attributes),
                          list(self._r.links))

