"""Tracing benchmark: per-span recording overhead, trace store write rate, `trace ls` at 100,000 runs.

Measured, each against a baseline in the same run (pairs alternate which goes first):

- per-span overhead, µs: enter + exit of one span with 3 attributes, nested under a run span,
  through agentrt's `Tracer` writing to a real SQLite store (its background writer runs and
  competes for the GIL during the measurement) vs the OpenTelemetry SDK's own span
  (`TracerProvider` + `BatchSpanProcessor` + in-memory exporter, the SDK's cheapest real set-up);
- trace store write rate, spans/s: N finished spans submitted at once until `flush` returns
  (batched transactions in the writer thread) vs the same work (pricing each LLM span with
  genai-prices, run totals at each run's end) with one transaction per span on the caller's
  thread (what a naive synchronous recorder does). Pricing is most of the writer's time: 2 of the
  7 spans of each run are LLM calls, ~50-90 µs each in genai-prices here;
- `agentrt trace ls` at 100,000 runs: the store filled through the writer with 100,000 runs of
  7 spans each (an LLMCompiler-shaped run: plan, 4 tool calls, join), then the CLI command as a
  user runs it (a fresh process, wall time) and the query alone (in process), vs the same at
  1,000 runs. The CLI's wall time is mostly interpreter start-up and ``import agentrt`` (the SDK
  facade pulls in the planner, networkx and pydantic-settings): compare it with the 1,000-run
  figure, which pays the same start-up.

Run ``agentrt bench tracing`` (writes results/tracing.json).
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agentrt.tracing import SpanRecord, TraceStore
from agentrt.tracing import semconv as sc

DEFAULTS: dict[str, Any] = {
    "span_rounds": 7,  # pairs (agentrt, otel) for the per-span overhead
    "spans_per_round": 20_000,
    "write_spans": 50_000,
    "write_rounds": 3,
    "sync_write_spans": 5_000,  # the per-span-transaction baseline is slow: fewer spans
    "ls_runs": 100_000,
    "ls_small_runs": 1_000,
    "ls_repeats": 5,
}


def _config(config: dict[str, Any]) -> dict[str, Any]:
    out = dict(DEFAULTS)
    for k, v in config.items():
        if k in DEFAULTS and v is not None:
            out[k] = type(DEFAULTS[k])(v)
    return out


def _agentrt_spans(store: TraceStore, n: int) -> float:
    tracer = store.tracer()
    with tracer.run(agent="bench"):
        gc.disable()
        t0 = time.perf_counter()
        for i in range(n):
            with tracer.span("execute_tool noop", sc.EXECUTE_TOOL) as s:
                s.set(sc.TOOL_NAME, "noop")
                s.set(sc.TASK_ID, i)
                s.set(sc.TOOL_CALL_ID, "c")
        dt = time.perf_counter() - t0
        gc.enable()
    store.flush(120)
    return dt / n * 1e6


def _otel_setup() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


def _otel_spans(provider: Any, exporter: Any, n: int) -> float:
    tracer = provider.get_tracer("bench")
    with tracer.start_as_current_span("invoke_agent bench"):
        gc.disable()
        t0 = time.perf_counter()
        for i in range(n):
            with tracer.start_as_current_span("execute_tool noop") as s:
                s.set_attribute(sc.TOOL_NAME, "noop")
                s.set_attribute(sc.TASK_ID, i)
                s.set_attribute(sc.TOOL_CALL_ID, "c")
        dt = time.perf_counter() - t0
        gc.enable()
    provider.force_flush(120_000)
    exporter.clear()
    return dt / n * 1e6


def _records(n_runs: int, t0: int, rng: random.Random) -> list[SpanRecord]:
    out: list[SpanRecord] = []
    for r in range(n_runs):
        run_id = f"{rng.getrandbits(128):032x}"
        start = t0 + r * 10_000_000
        root = f"{rng.getrandbits(64):016x}"
        out.append(SpanRecord(run_id, f"{rng.getrandbits(64):016x}", root, "chat gpt-4o", sc.CHAT, start + 1000,
                              start + 2_000_000, attributes={sc.REQUEST_MODEL: "gpt-4o", sc.PROVIDER_NAME: "openai",
                                                             sc.USAGE_INPUT_TOKENS: 1200, sc.USAGE_OUTPUT_TOKENS: 150}))
        for t in range(1, 5):
            out.append(SpanRecord(run_id, f"{rng.getrandbits(64):016x}", root, f"execute_tool t{t}", sc.EXECUTE_TOOL,
                                  start + 2_000_000, start + 2_000_000 + t * 1_000_000,
                                  attributes={sc.TOOL_NAME: f"t{t}", sc.TASK_ID: t, sc.TASK_DEPS: [] if t < 4 else [1, 2],
                                              sc.CPU_SECONDS: 0.001}))
        out.append(SpanRecord(run_id, f"{rng.getrandbits(64):016x}", root, "chat gpt-4o", sc.CHAT, start + 7_000_000,
                              start + 8_000_000, attributes={sc.REQUEST_MODEL: "gpt-4o", sc.PROVIDER_NAME: "openai",
                                                             sc.USAGE_INPUT_TOKENS: 900, sc.USAGE_OUTPUT_TOKENS: 40}))
        out.append(SpanRecord(run_id, root, None, "invoke_agent bench", sc.INVOKE_AGENT, start, start + 8_500_000))
    return out


class _Finished:
    """A finished span as the tracer hands it to the store (`to_record` is what the writer calls)."""

    __slots__ = ("_r",)

    def __init__(self, r: SpanRecord) -> None:
        self._r = r

    def to_record(self) -> SpanRecord:
        r = self._r
        return SpanRecord(r.run_id, r.span_id, r.parent_id, r.name, r.operation, r.start_ns, r.end_ns, r.status,
                          dict(r.attributes), list(r.links))


def _writer_rate(path: Path, records: list[SpanRecord]) -> float:
    store = TraceStore(path)
    items = [_Finished(r) for r in records]
    t0 = time.perf_counter()
    for it in items:
        store.submit(it)  # type: ignore[arg-type]
    assert store.flush(600)
    dt = time.perf_counter() - t0
    store.close()
    return len(records) / dt


def _sync_rate(path: Path, records: list[SpanRecord]) -> float:
    """The same work as the writer (pricing, run totals, rows), one transaction per span, inline."""
    store = TraceStore(path)
    con = store._connect()
    open_runs: dict[str, list[SpanRecord]] = {}
    t0 = time.perf_counter()
    for r in records:
        store._write(con, [_Finished(r)], open_runs)
    dt = time.perf_counter() - t0
    con.close()
    return len(records) / dt


def _fill(path: Path, n_runs: int, progress: Any) -> float:
    store = TraceStore(path)
    rng = random.Random(1)
    t_start = time.time_ns() - n_runs * 10_000_000
    t0 = time.perf_counter()
    batch = 2_000
    for b in range(0, n_runs, batch):
        for r in _records(min(batch, n_runs - b), t_start + b * 10_000_000, rng):
            store.submit(_Finished(r))  # type: ignore[arg-type]
        store.flush(600)
        if b and b % 20_000 == 0:
            progress(f"  filled {b} runs")
    dt = time.perf_counter() - t0
    store.close()
    assert store.count_runs() == n_runs, store.count_runs()
    return n_runs * 7 / dt


def _ls_cli(path: Path, repeats: int) -> float:
    exe = Path(sys.executable).with_name("agentrt")
    cmd = [str(exe), "trace", "ls", "--store", str(path)] if exe.exists() else \
        [sys.executable, "-m", "agentrt.cli", "trace", "ls", "--store", str(path)]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "COLUMNS": "200"})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _ls_query(path: Path, repeats: int) -> float:
    store = TraceStore(path)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        store.runs(limit=20)
        store.count_runs()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark; ``config`` overrides `DEFAULTS`. Returns DESIGN.md's result dict."""
    progress = config.get("progress") or (lambda msg: None)
    cfg = _config(config)
    tmp = Path(tempfile.mkdtemp(prefix="agentrt-bench-tracing-"))
    # -- per-span overhead, alternating -------------------------------------------------------------
    progress("per-span overhead: agentrt vs OpenTelemetry SDK (alternating)")
    store = TraceStore(tmp / "spans.sqlite")
    provider, exporter = _otel_setup()
    _agentrt_spans(store, 2_000)
    _otel_spans(provider, exporter, 2_000)  # warm-up
    ours, otel = [], []
    for i in range(cfg["span_rounds"]):
        order = [("a", _agentrt_spans), ("o", _otel_spans)] if i % 2 == 0 else [("o", _otel_spans), ("a", _agentrt_spans)]
        for name, _fn in order:
            if name == "a":
                ours.append(_agentrt_spans(store, cfg["spans_per_round"]))
            else:
                otel.append(_otel_spans(provider, exporter, cfg["spans_per_round"]))
    store.close()
    provider.shutdown()
    us_ours, us_otel = statistics.median(ours), statistics.median(otel)
    progress(f"  agentrt {us_ours:.2f} µs/span, OpenTelemetry SDK {us_otel:.2f} µs/span")
    # -- write rate, alternating ----------------------------------------------------------------------
    progress("trace store write rate: background writer vs the same work with one transaction per span")
    rng = random.Random(2)
    w_ours, w_sync = [], []
    for i in range(cfg["write_rounds"]):
        recs = _records(cfg["write_spans"] // 7, time.time_ns(), rng)
        sync_recs = recs[: cfg["sync_write_spans"]]
        pair = [("a", recs), ("s", sync_recs)] if i % 2 == 0 else [("s", sync_recs), ("a", recs)]
        for name, rs in pair:
            if name == "a":
                w_ours.append(_writer_rate(tmp / f"w{i}.sqlite", rs))
            else:
                w_sync.append(_sync_rate(tmp / f"s{i}.sqlite", rs))
    rate_ours, rate_sync = statistics.median(w_ours), statistics.median(w_sync)
    progress(f"  writer {rate_ours:,.0f} spans/s, per-span transactions {rate_sync:,.0f} spans/s")
    # -- trace ls at 100,000 runs ---------------------------------------------------------------------
    progress(f"filling a store with {cfg['ls_runs']:,} runs ({cfg['ls_runs'] * 7:,} spans) through the writer")
    big, small = tmp / "big.sqlite", tmp / "small.sqlite"
    fill_rate = _fill(big, cfg["ls_runs"], progress)
    _fill(small, cfg["ls_small_runs"], progress)
    ls_big, ls_small = [], []
    for i in range(cfg["ls_repeats"]):
        for which in (("b", "s") if i % 2 == 0 else ("s", "b")):
            (ls_big if which == "b" else ls_small).append(_ls_cli(big if which == "b" else small, 1))
    q_big, q_small = _ls_query(big, cfg["ls_repeats"]), _ls_query(small, cfg["ls_repeats"])
    cli_big, cli_small = statistics.median(ls_big), statistics.median(ls_small)
    progress(f"  trace ls: {cli_big:.3f} s at {cfg['ls_runs']:,} runs, {cli_small:.3f} s at {cfg['ls_small_runs']:,}; "
             f"query {q_big:.2f} ms vs {q_small:.2f} ms")
    size_mb = big.stat().st_size / 1e6
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "bench": "tracing",
        "config": cfg,
        "systems": {
            "agentrt": {"us_per_span_median": round(us_ours, 3), "us_per_span_rounds": [round(x, 3) for x in ours],
                        "store_write_spans_per_s": round(rate_ours), "write_rounds": [round(x) for x in w_ours],
                        "fill_spans_per_s_100k_runs": round(fill_rate),
                        "trace_ls_cli_s": {"100k_runs": round(cli_big, 3), "1k_runs": round(cli_small, 3)},
                        "trace_ls_query_ms": {"100k_runs": round(q_big, 3), "1k_runs": round(q_small, 3)},
                        "store_size_mb_100k_runs": round(size_mb, 1)},
            "opentelemetry_sdk": {"us_per_span_median": round(us_otel, 3),
                                  "us_per_span_rounds": [round(x, 3) for x in otel],
                                  "setup": "TracerProvider + BatchSpanProcessor + InMemorySpanExporter"},
            "sync_per_span_transaction": {"store_write_spans_per_s": round(rate_sync),
                                          "write_rounds": [round(x) for x in w_sync]},
        },
        "ratios": {"otel_over_agentrt_per_span": round(us_otel / us_ours, 2),
                   "writer_over_sync_write_rate": round(rate_ours / rate_sync, 1),
                   "ls_cli_100k_over_1k": round(cli_big / cli_small, 2)},
        "targets": [
            {"name": "us_per_span", "value": round(us_ours, 2), "goal": "<= 10", "met": us_ours <= 10},
            {"name": "us_per_span_vs_otel_sdk", "value": round(us_ours / us_otel, 3), "goal": "< 1 (cheaper than the OTel SDK span)",
             "met": us_ours < us_otel},
            {"name": "trace_ls_s_at_100k_runs", "value": round(cli_big, 3), "goal": "<= 1.0 (whole CLI command)",
             "met": cli_big <= 1.0},
            {"name": "trace_ls_query_ms_at_100k_runs", "value": round(q_big, 2), "goal": "<= 50 (store query alone)",
             "met": q_big <= 50},
            {"name": "trace_ls_cli_100k_over_1k_runs", "value": round(cli_big / cli_small, 2),
             "goal": "<= 1.2 (the store's size barely shows)", "met": cli_big / cli_small <= 1.2},
        ],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run({"progress": print}), indent=2))
