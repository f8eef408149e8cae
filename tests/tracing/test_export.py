"""Exporters: Chrome trace JSON with non-overlapping lanes, JSONL, the Gantt PNG, and OTLP/HTTP
received by a real receiver (Arize Phoenix, started here on loopback)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from agentrt.tracing import (
    SpanRecord,
    assign_lanes,
    critical_path,
    export_otlp,
    plot_timeline,
    to_chrome,
    to_jsonl,
    to_otlp_json,
    to_otlp_protobuf,
)
from agentrt.tracing import (
    semconv as sc,
)

ROOT = Path(__file__).resolve().parents[2]


def _check_lanes(events: list[dict]) -> None:
    """On each tid, complete events are disjoint or perfectly nested (what Perfetto needs)."""
    by_tid: dict[int, list[tuple[float, float]]] = {}
    for e in events:
        if e["ph"] == "X":
            by_tid.setdefault(e["tid"], []).append((e["ts"], e["ts"] + e["dur"]))
    for tid, iv in by_tid.items():
        iv.sort(key=lambda x: (x[0], -x[1]))
        stack: list[tuple[float, float]] = []
        for a, b in iv:
            while stack and stack[-1][1] <= a:
                stack.pop()
            assert not stack or b <= stack[-1][1], f"lane {tid}: {a}-{b} partly overlaps {stack[-1]}"
            stack.append((a, b))


def test_chrome_export_is_valid_json_with_one_lane_per_concurrent_task(filled_store) -> None:
    store, ids = filled_store
    spans = store.spans(ids[0])
    doc = json.loads(json.dumps(to_chrome(spans)))  # round-trips as plain JSON
    events = doc["traceEvents"]
    xs = [e for e in events if e["ph"] == "X"]
    assert len(xs) == len(spans)
    for e in xs:
        assert {"name", "cat", "ts", "dur", "pid", "tid", "args"} <= set(e) and e["dur"] >= 0
    _check_lanes(events)
    tools = {e["args"][sc.TASK_ID]: e for e in xs if e["cat"] == sc.EXECUTE_TOOL}
    # tasks 1, 2 and 4 start together: each on its own lane (one of them may nest in the run's lane)
    assert len({tools[1]["tid"], tools[2]["tid"], tools[4]["tid"]}) == 3
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert len(names) == len({e["tid"] for e in xs})
    flows = [e for e in events if e["ph"] in ("s", "f")]
    assert len(flows) == 2 * 2  # task 3 depends on tasks 1 and 2
    crit = [e["name"] for e in xs if e["args"].get(sc.CRITICAL_PATH)]
    assert crit == ["chat gpt-4o", "execute_tool tool2", "execute_tool tool3", "chat gpt-4o"]


def test_lanes_never_overlap_on_a_random_dense_schedule() -> None:
    import random

    rng = random.Random(7)
    spans = [SpanRecord("r", "root", None, "root", sc.INVOKE_AGENT, 0, 10_000)]
    for i in range(300):
        a = rng.randrange(0, 9_000)
        p = SpanRecord("r", f"t{i}", "root", f"t{i}", sc.EXECUTE_TOOL, a, a + rng.randrange(1, 1_000))
        spans.append(p)
        if i % 3 == 0:  # a nested sandbox exec inside some tool calls
            spans.append(SpanRecord("r", f"c{i}", f"t{i}", "exec", sc.SANDBOX_EXEC, p.start_ns, (p.start_ns + p.end_ns) // 2))
    lanes = assign_lanes(spans)
    assert lanes["root"] == 0
    doc = to_chrome(spans)
    _check_lanes(doc["traceEvents"])
    nested = [s for s in spans if s.operation == sc.SANDBOX_EXEC]
    assert all(lanes[s.span_id] == lanes[s.parent_id] for s in nested)  # children stay with their parent


def test_critical_path_follows_the_slowest_dependency(filled_store) -> None:
    store, ids = filled_store
    path = [s.name for s in critical_path(store.spans(ids[0]))]
    # plan -> tool2 (0.2 s, slower than tool1) -> tool3 (needs 1 and 2) -> join
    assert path == ["chat gpt-4o", "execute_tool tool2", "execute_tool tool3", "chat gpt-4o"]
    s = store.run(ids[0])
    assert s.critical_path_s == pytest.approx(0.03 + 0.2 + 0.1 + 0.02, abs=0.06)
    assert s.parallel_efficiency == pytest.approx((0.1 + 0.2 + 0.1 + 0.05) / s.wall_s, rel=0.2)


def test_jsonl_export_has_every_span(filled_store) -> None:
    store, ids = filled_store
    lines = to_jsonl(store.spans(ids[0]), {"run_id": ids[0]}).splitlines()
    assert json.loads(lines[0]) == {"run": {"run_id": ids[0]}}
    rows = [json.loads(x) for x in lines[1:]]
    assert len(rows) == len(store.spans(ids[0])) and {r["run_id"] for r in rows} == {ids[0]}


def test_plot_writes_a_png(filled_store, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is in the [trace] extra")
    store, ids = filled_store
    out = plot_timeline(store.spans(ids[0]), tmp_path / "timeline.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_otlp_json_and_protobuf_encode_the_same_spans(filled_store) -> None:
    pytest.importorskip("opentelemetry.proto", reason="opentelemetry-proto is in the [trace] extra")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    store, ids = filled_store
    spans = store.spans(ids[0])
    doc = to_otlp_json(spans)
    req = ExportTraceServiceRequest.FromString(to_otlp_protobuf(spans))
    got = req.resource_spans[0].scope_spans[0].spans
    assert len(got) == len(doc["resourceSpans"][0]["scopeSpans"][0]["spans"]) == len(spans)
    by_id = {s.span_id: s for s in spans}
    for p in got:
        s = by_id[p.span_id.hex()]
        assert p.trace_id.hex() == ids[0] and p.name == s.name
        assert p.start_time_unix_nano == s.start_ns and p.end_time_unix_nano == s.end_ns
        assert (p.parent_span_id.hex() or None) == s.parent_id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Arize Phoenix server on loopback (its OTLP/HTTP receiver at /v1/traces)."""
    exe = Path(os.environ.get("AGENTRT_PHOENIX", ROOT / ".venv" / "phoenix" / "bin" / "phoenix"))
    if not exe.is_file():
        pytest.skip(f"Arize Phoenix (the OTLP receiver for this test) is not installed at {exe}: "
                    "run scripts/setup without AGENTRT_SKIP_PHOENIX, or set AGENTRT_PHOENIX")
    port = _free_port()
    env = {**os.environ, "PHOENIX_WORKING_DIR": str(tmp_path_factory.mktemp("phoenix")), "PHOENIX_HOST": "127.0.0.1",
           "PHOENIX_PORT": str(port), "PHOENIX_GRPC_PORT": str(_free_port()), "PHOENIX_TELEMETRY_ENABLED": "false"}
    log = tmp_path_factory.mktemp("phoenix-log") / "phoenix.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(exe), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx2.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Phoenix did not start (exit {proc.poll()}); log:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _received(base: str, run_id: str, n: int) -> list[dict]:
    deadline = time.monotonic() + 20
    while True:
        r = httpx2.get(base + "/v1/projects/default/spans", params={"limit": 1000}, timeout=10)
        r.raise_for_status()
        got = [s for s in r.json()["data"] if s["context"]["trace_id"] == run_id]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def test_otlp_export_is_received_by_a_real_receiver(filled_store, phoenix: str) -> None:
    store, ids = filled_store
    spans = store.spans(ids[0])
    assert export_otlp(spans, phoenix + "/v1/traces") == len(spans)
    got = _received(phoenix, ids[0], len(spans))
    assert sorted(s["name"] for s in got) == sorted(s.name for s in spans)
    mine = {s.span_id: s for s in spans}
    for s in got:
        ours = mine[s["context"]["span_id"]]
        assert s["parent_id"] == ours.parent_id
        for key in (sc.OPERATION_NAME, sc.USAGE_INPUT_TOKENS, sc.TOOL_NAME, sc.TASK_ID):
            if key in ours.attributes:
                assert s["attributes"][key] == ours.attributes[key]
    chats = [s for s in got if s["attributes"].get(sc.OPERATION_NAME) == sc.CHAT]
    assert len(chats) == 2 and all(s["attributes"][sc.USAGE_COST_CURRENCY] == "USD" for s in chats)


def test_cli_exports_otlp_to_the_receiver(filled_store, phoenix: str) -> None:
    from typer.testing import CliRunner

    from agentrt.cli import app

    store, ids = filled_store
    r = CliRunner().invoke(app, ["trace", "export", ids[1][:10], "--format", "otlp", "--endpoint",
                                 phoenix + "/v1/traces", "--store", str(store.path)])
    assert r.exit_code == 0, r.output
    assert len(_received(phoenix, ids[1], len(store.spans(ids[1])))) == len(store.spans(ids[1]))
    bad = CliRunner().invoke(app, ["trace", "export", ids[1], "--format", "otlp", "--endpoint",
                                   f"http://127.0.0.1:{_free_port()}/v1/traces", "--store", str(store.path)])
    assert bad.exit_code == 1 and "cannot reach" in bad.output
