"""Exporters: Chrome trace-event JSON (Perfetto), JSONL, and OTLP/HTTP to any collector.

- Chrome trace events (``{"traceEvents": [...]}``; phases ``X`` complete, ``M`` metadata,
  ``s``/``f`` flow arrows for task dependencies; ``ts``/``dur`` in µs). Perfetto's JSON importer
  does not support partly overlapping slices on one track (perfetto.dev/docs/faq), so each span
  gets a lane (``tid``) from `assign_lanes`: concurrent tool calls get a lane each.
- JSONL: one span per line (the `SpanRecord` fields), the run's summary first.
- OTLP/HTTP: ``ExportTraceServiceRequest`` POSTed to ``<endpoint>`` (default
  ``http://127.0.0.1:4318/v1/traces``), as protobuf (``application/x-protobuf``, needs the
  ``opentelemetry-proto`` package, extra ``[trace]``) or JSON (``application/json``, no extra
  dependency; the OTLP spec allows both; some receivers, e.g. Phoenix, accept only protobuf).
  DAG dependencies become span links; the run's critical path is marked ``agentrt.critical_path``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from agentrt.tracing import _semconv as sc
from agentrt.tracing._analysis import assign_lanes, critical_path
from agentrt.tracing._span import SpanRecord

__all__ = ["DEFAULT_OTLP_ENDPOINT", "export_otlp", "to_chrome", "to_jsonl", "to_otlp_json", "to_otlp_protobuf"]

DEFAULT_OTLP_ENDPOINT = "http://127.0.0.1:4318/v1/traces"
_SERVICE = "agentrt"


def to_chrome(spans: Sequence[SpanRecord]) -> dict[str, Any]:
    """Chrome trace-event JSON of one run (open in ui.perfetto.dev or chrome://tracing).

    Returns:
        ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}``; timestamps are
        µs from the run's first span.
    """
    if not spans:
        return {"traceEvents": [], "displayTimeUnit": "ms"}
    t0 = min(s.start_ns for s in spans)
    lanes = assign_lanes(spans)
    crit = {s.span_id for s in critical_path(spans)}
    events: list[dict[str, Any]] = [{"name": "process_name", "ph": "M", "pid": 1, "tid": 0,
                                     "args": {"name": f"agentrt run {spans[0].run_id[:12]}"}}]
    for lane in sorted(set(lanes.values())):
        events.append({"name": "thread_name", "ph": "M", "pid": 1, "tid": lane + 1, "args": {"name": f"lane {lane}"}})
        events.append({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": lane + 1, "args": {"sort_index": lane}})
    by_task: dict[int, SpanRecord] = {}
    for s in sorted(spans, key=lambda s: (s.start_ns, -s.end_ns)):
        args = dict(s.attributes)
        args["span_id"] = s.span_id
        if s.span_id in crit:
            args[sc.CRITICAL_PATH] = True
        events.append({"name": s.name, "cat": s.operation or "span", "ph": "X", "pid": 1, "tid": lanes[s.span_id] + 1,
                       "ts": (s.start_ns - t0) / 1e3, "dur": max(0, s.end_ns - s.start_ns) / 1e3, "args": args})
        tid = s.attributes.get(sc.TASK_ID)
        if isinstance(tid, int):
            by_task[tid] = s
    flow = 0
    for s in by_task.values():
        for d in s.attributes.get(sc.TASK_DEPS) or ():
            src = by_task.get(d)
            if src is None:
                continue
            flow += 1
            events.append({"name": "dependency", "cat": "dag", "ph": "s", "id": flow, "pid": 1,
                           "tid": lanes[src.span_id] + 1, "ts": (src.end_ns - t0) / 1e3 - 0.001})
            events.append({"name": "dependency", "cat": "dag", "ph": "f", "bp": "e", "id": flow, "pid": 1,
                           "tid": lanes[s.span_id] + 1, "ts": (s.start_ns - t0) / 1e3})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"run_id": spans[0].run_id, "exporter": "agentrt"}}


def to_jsonl(spans: Sequence[SpanRecord], summary: dict[str, Any] | None = None) -> str:
    """One JSON object per line: ``{"run": summary}`` first (if given), then one per span."""
    lines = [json.dumps({"run": summary}, default=str)] if summary is not None else []
    for s in spans:
        lines.append(json.dumps({"run_id": s.run_id, "span_id": s.span_id, "parent_id": s.parent_id, "name": s.name,
                                 "operation": s.operation, "start_ns": s.start_ns, "end_ns": s.end_ns,
                                 "status": s.status, "attributes": s.attributes, "links": s.links}, default=str))
    return "\n".join(lines) + "\n"


def _any_value_json(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [_any_value_json(x) for x in v]}}
    return {"stringValue": str(v)}


def _kind(s: SpanRecord) -> int:
    # OTLP SpanKind: 1 INTERNAL, 3 CLIENT. Inference calls to a remote model are CLIENT.
    if s.operation in sc.INFERENCE_OPERATIONS and not s.attributes.get(sc.MODEL_LOCAL):
        return 3
    return 1


def to_otlp_json(spans: Sequence[SpanRecord]) -> dict[str, Any]:
    """An OTLP ``ExportTraceServiceRequest`` in the OTLP/JSON encoding (ids as hex strings)."""
    crit = {s.span_id for s in critical_path(spans)}
    out = []
    for s in spans:
        attrs = dict(s.attributes)
        if s.span_id in crit:
            attrs[sc.CRITICAL_PATH] = True
        span: dict[str, Any] = {
            "traceId": s.run_id, "spanId": s.span_id, "name": s.name, "kind": _kind(s),
            "startTimeUnixNano": str(s.start_ns), "endTimeUnixNano": str(s.end_ns),
            "attributes": [{"key": k, "value": _any_value_json(v)} for k, v in attrs.items()],
            "status": {"code": 2 if s.status == "error" else 1},
        }
        if s.parent_id:
            span["parentSpanId"] = s.parent_id
        if s.links:
            span["links"] = [{"traceId": s.run_id, "spanId": x} for x in s.links]
        out.append(span)
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": _SERVICE}}]},
        "scopeSpans": [{"scope": {"name": "agentrt.tracing"}, "spans": out}],
    }]}


def to_otlp_protobuf(spans: Sequence[SpanRecord]) -> bytes:
    """The same request, protobuf-encoded (needs ``opentelemetry-proto``: ``pip install 'agentrt[trace]'``).

    Raises:
        ModuleNotFoundError: opentelemetry-proto is not installed (the message names the extra).
    """
    try:
        from google.protobuf.json_format import ParseDict
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"OTLP protobuf export needs opentelemetry-proto ({exc}); "
                                  "install it with: pip install 'agentrt[trace]', or use protocol='http/json'") from None
    # OTLP/JSON writes ids as hex, protobuf's JSON mapping wants base64 bytes: convert first
    import base64

    doc = to_otlp_json(spans)
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for sp in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in sp:
                        sp[key] = base64.b64encode(bytes.fromhex(sp[key])).decode()
                for link in sp.get("links", ()):
                    link["traceId"] = base64.b64encode(bytes.fromhex(link["traceId"])).decode()
                    link["spanId"] = base64.b64encode(bytes.fromhex(link["spanId"])).decode()
    return ParseDict(doc, ExportTraceServiceRequest()).SerializeToString()


def export_otlp(spans: Sequence[SpanRecord], endpoint: str = DEFAULT_OTLP_ENDPOINT, *,
                protocol: Literal["http/protobuf", "http/json"] | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0) -> int:
    """POST one run's spans to an OTLP/HTTP traces endpoint; returns the number of spans sent.

    Args:
        endpoint: full URL of the traces endpoint (``.../v1/traces``).
        protocol: ``http/protobuf`` (default when opentelemetry-proto is installed) or ``http/json``.
        headers: extra HTTP headers (e.g. an API key).

    Raises:
        ConnectionError: the endpoint could not be reached or answered with an error status
            (the message has the status and the start of the body).
    """
    import httpx2

    if protocol is None:
        try:
            import opentelemetry.proto  # noqa: F401

            protocol = "http/protobuf"
        except ModuleNotFoundError:
            protocol = "http/json"
    if protocol == "http/protobuf":
        body, ctype = to_otlp_protobuf(spans), "application/x-protobuf"
    elif protocol == "http/json":
        body, ctype = json.dumps(to_otlp_json(spans)).encode(), "application/json"
    else:
        raise ValueError(f"protocol must be 'http/protobuf' or 'http/json', not {protocol!r}")
    try:
        resp = httpx2.post(endpoint, content=body, headers={"Content-Type": ctype, **(headers or {})}, timeout=timeout)
    except httpx2.HTTPError as exc:
        raise ConnectionError(f"cannot reach the OTLP endpoint {endpoint}: {exc}") from exc
    if resp.status_code >= 300:
        raise ConnectionError(f"OTLP endpoint {endpoint} answered {resp.status_code}: {resp.text[:300]}")
    return len(spans)
