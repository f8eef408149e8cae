"""OpenAIChatModel against a real, deliberately misbehaving HTTP server on 127.0.0.1.

The server runs in threads (stdlib ``http.server``), independent of the client's event loop, and
plays a script: one action per request, in order (the last action repeats). Every request's
headers and JSON body are recorded, so tests can assert what was sent and how often.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import anyio.to_thread
import pytest

from agentrt.config import Settings
from agentrt.errors import (
    ConfigError,
    ModelError,
    ModelHTTPError,
    ModelNotFound,
    ModelResponseError,
    ModelTimeout,
)
from agentrt.llm import ChatModel, Completion, Delta, Message, OpenAIChatModel

pytestmark = pytest.mark.timeout(15)

MESSAGES = [Message(role="user", content="hi")]

Action = Callable[["_Handler"], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        self.server.record(self.path, dict(self.headers), json.loads(raw) if raw else None)
        self.server.next_action()(self)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    # -- building blocks of actions --

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def start_sse(self, chunked: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:  # body ends when the connection closes
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def write_chunk(self, data: bytes, chunked: bool = True) -> None:
        if chunked:
            data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
        self.wfile.write(data)
        self.wfile.flush()

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.script: list[Action] = []
        self.release = threading.Event()  # ends every hanging action at teardown
        self.disconnected = threading.Event()  # set when a streaming action sees the client leave
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def record(self, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.requests.append({"path": path, "headers": headers, "body": body})

    def next_action(self) -> Action:
        with self._lock:
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def play(self, *actions: Action) -> None:
        self.script = list(actions)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gives up mid-response (the point of several tests) is not a server bug.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def make_model(server: _Server, **kw: Any) -> OpenAIChatModel:
    kw.setdefault("timeout", 2.0)
    kw.setdefault("max_retries", 3)
    kw.setdefault("backoff_base", 0.01)
    return OpenAIChatModel(server.url, "test-model", **kw)


# -- actions ---------------------------------------------------------------------------------

def completion_body(content: str = "hello", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
    body.update(extra)
    return body


def ok(payload: Any = None) -> Action:
    return lambda h: h.send_json(200, completion_body() if payload is None else payload)


def status(code: int, payload: Any = None, headers: dict[str, str] | None = None) -> Action:
    return lambda h: h.send_json(code, payload or {"error": {"message": f"status {code}"}}, headers)


def hang(h: _Handler) -> None:
    h.server.release.wait(10)


def sse(events: list[Any], *, done: bool = True, chunked: bool = True, cut: bool = False,
        raw_split: int | None = None) -> Action:
    """Stream ``events`` (dicts become ``data: {json}``); ``cut`` drops the connection mid-chunk."""

    def action(h: _Handler) -> None:
        h.start_sse(chunked)
        payload = b"".join(f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n".encode()
                           for e in events)
        if done:
            payload += b"data: [DONE]\n\n"
        if raw_split:  # split the byte stream at arbitrary points, across event boundaries
            pieces = [payload[i:i + raw_split] for i in range(0, len(payload), raw_split)]
        else:
            pieces = [p + b"\n\n" for p in payload.split(b"\n\n") if p]
        for piece in pieces:
            h.write_chunk(piece, chunked)
        if cut:
            h.wfile.write(b"ff\r\npartial")  # announces 255 bytes, sends 7, then closes
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if chunked:
            h.end_chunks()

    return action


def chunk(content: str | None = None, finish: str | None = None, tool_calls: Any = None,
          usage: Any = None, choices: bool = True) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    out: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "model": "test-model",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
                           if choices else []}
    if usage is not None:
        out["usage"] = usage
    return out


def endless_stream(h: _Handler) -> None:
    """A token every 20 ms for up to 10 s; notes when the client goes away."""
    h.start_sse()
    try:
        for i in range(500):
            h.write_chunk(f"data: {json.dumps(chunk(f't{i} '))}\n\n".encode())
            if h.server.release.wait(0.02):
                return
    except (BrokenPipeError, ConnectionResetError):
        h.server.disconnected.set()
        h.close_connection = True


async def collect(stream: Any) -> tuple[list[str], Completion]:
    texts: list[str] = []
    final: Completion | None = None
    async for delta in stream:
        assert isinstance(delta, Delta)
        if delta.done:
            final = delta.completion
        else:
            texts.append(delta.content)
    assert final is not None, "the stream ended without a done delta"
    return texts, final


# -- non-streamed ----------------------------------------------------------------------------

def test_model_satisfies_the_chat_model_protocol() -> None:
    assert isinstance(OpenAIChatModel("http://127.0.0.1:1/v1", "m"), ChatModel)


@pytest.mark.anyio
async def test_request_carries_every_option_and_the_api_key(server: _Server) -> None:
    server.play(ok())
    schema = {"type": "json_schema",
              "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True}}
    tool = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}
    async with make_model(server, api_key="sk-test") as model:
        result = await model.complete(
            [Message(role="system", content="be brief"), {"role": "user", "content": "hi"}],
            tools=[tool, {"name": "bare", "parameters": {"type": "object"}}],
            response_format=schema, stop=["\n\n"], max_tokens=7, temperature=0.3,
            extra_body={"seed": 1},
        )
    assert isinstance(result, Completion)
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "test-model"
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert body["tools"][0] == tool
    assert body["tools"][1] == {"type": "function", "function": {"name": "bare", "parameters": {"type": "object"}}}
    assert body["response_format"] == schema
    assert (body["stop"], body["max_tokens"], body["temperature"], body["seed"]) == (["\n\n"], 7, 0.3, 1)
    assert "stream" not in body


@pytest.mark.anyio
async def test_completion_has_content_tool_calls_usage_and_cached_tokens(server: _Server) -> None:
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}},
        {"id": "call_b", "type": "function", "function": {"name": "calc", "arguments": {"e": "1+1"}}},
    ]}
    server.play(ok(completion_body(
        choices=[{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        usage={"prompt_tokens": 100, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 64}},
    )))
    async with make_model(server) as model:
        c = await model.complete(MESSAGES)
    assert isinstance(c, Completion)
    assert c.content == ""
    assert [(t.id, t.name, json.loads(t.arguments)) for t in c.tool_calls] == [
        ("call_a", "search", {"q": "x"}), ("call_b", "calc", {"e": "1+1"})]
    assert c.finish_reason == "tool_calls"
    assert (c.usage.input_tokens, c.usage.output_tokens, c.usage.cached_tokens, c.usage.requests) == (100, 9, 64, 1)
    assert c.model == "test-model"
    assert c.wall_seconds > 0


@pytest.mark.anyio
async def test_cached_tokens_come_from_llama_cpp_timings(server: _Server) -> None:
    timings = {"cache_n": 40, "prompt_n": 10, "predicted_n": 3}  # as llama.cpp's server reports them
    server.play(ok(completion_body(usage={"prompt_tokens": 50, "completion_tokens": 3}, timings=timings)),
                ok(completion_body(usage=None, timings=timings)))
    async with make_model(server) as model:
        with_usage = await model.complete(MESSAGES)
        timings_only = await model.complete(MESSAGES)
    assert isinstance(with_usage, Completion) and isinstance(timings_only, Completion)
    assert (with_usage.usage.input_tokens, with_usage.usage.cached_tokens) == (50, 40)
    assert (timings_only.usage.input_tokens, timings_only.usage.output_tokens,
            timings_only.usage.cached_tokens) == (50, 3, 40)


@pytest.mark.anyio
async def test_500_is_retried_then_succeeds(server: _Server) -> None:
    server.play(status(500), status(503), ok())
    async with make_model(server) as model:
        c = await model.complete(MESSAGES)
    assert isinstance(c, Completion) and c.content == "hello"
    assert len(server.requests) == 3


@pytest.mark.anyio
async def test_5xx_beyond_max_retries_raises_http_error(server: _Server) -> None:
    server.play(status(502, {"error": "bad gateway"}))
    async with make_model(server, max_retries=2) as model:
        with pytest.raises(ModelHTTPError) as info:
            await model.complete(MESSAGES)
    assert info.value.status_code == 502 and "bad gateway" in info.value.body
    assert len(server.requests) == 3


@pytest.mark.anyio
async def test_429_honours_retry_after_seconds(server: _Server) -> None:
    server.play(status(429, headers={"Retry-After": "1"}), ok())
    async with make_model(server) as model:
        t0 = time.perf_counter()
        c = await model.complete(MESSAGES)
        waited = time.perf_counter() - t0
    assert isinstance(c, Completion) and c.content == "hello"
    assert len(server.requests) == 2
    assert 0.95 <= waited < 3.0
    assert c.wall_seconds >= 0.95  # wall time counts the wait


@pytest.mark.anyio
async def test_retry_after_is_capped_by_backoff_max(server: _Server) -> None:
    server.play(status(429, headers={"Retry-After": "3600"}), ok())
    async with make_model(server, backoff_max=0.2) as model:
        t0 = time.perf_counter()
        await model.complete(MESSAGES)
    assert time.perf_counter() - t0 < 1.5
    assert len(server.requests) == 2


@pytest.mark.anyio
async def test_400_raises_at_once_without_retry(server: _Server) -> None:
    server.play(status(400, {"error": {"message": "max_tokens is too large"}}))
    async with make_model(server) as model:
        with pytest.raises(ModelHTTPError) as info:
            await model.complete(MESSAGES)
    assert info.value.status_code == 400
    assert "max_tokens is too large" in str(info.value) and "max_tokens is too large" in info.value.body
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_404_model_not_found_names_the_model(server: _Server) -> None:
    server.play(status(404, {"object": "error", "message": "The model `test-model` does not exist.",
                             "type": "NotFoundError", "code": 404}))
    async with make_model(server) as model:
        with pytest.raises(ModelNotFound) as info:
            await model.complete(MESSAGES)
    assert isinstance(info.value, ModelError)
    assert "'test-model' is unknown to the endpoint" in str(info.value)
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_404_without_model_in_body_hints_at_base_url(server: _Server) -> None:
    server.play(status(404, {"detail": "Not Found"}))
    async with make_model(server) as model:
        with pytest.raises(ModelHTTPError) as info:
            await model.complete(MESSAGES)
    assert not isinstance(info.value, ModelNotFound)
    assert "base_url" in str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize("payload, words", [
    (b"<html>oops</html>", "invalid JSON"),
    ({"id": "x", "object": "chat.completion"}, "without 'choices'"),
    ({"choices": []}, "without 'choices'"),
])
async def test_malformed_body_raises_response_error_with_excerpt(
        server: _Server, payload: Any, words: str) -> None:
    server.play(ok(payload))
    async with make_model(server) as model:
        with pytest.raises(ModelResponseError) as info:
            await model.complete(MESSAGES)
    assert words in str(info.value)
    excerpt = payload.decode() if isinstance(payload, bytes) else json.dumps(payload)
    assert excerpt[:12] in str(info.value)
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_hanging_server_raises_model_timeout_quickly(server: _Server) -> None:
    server.play(hang)
    async with make_model(server, timeout=0.5) as model:
        t0 = time.perf_counter()
        with pytest.raises(ModelTimeout):
            await model.complete(MESSAGES)
    assert time.perf_counter() - t0 < 2.0
    assert len(server.requests) == 1  # a read timeout is not retried


@pytest.mark.anyio
async def test_connection_refused_is_retried_then_raises(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = OpenAIChatModel(f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff_base=0.01)
    with caplog.at_level(logging.WARNING, logger="agentrt.llm._client"):
        with pytest.raises(ModelError) as info:
            await model.complete(MESSAGES)
    await model.aclose()
    assert "ConnectError" in str(info.value)
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2


# -- streamed --------------------------------------------------------------------------------

def tool_call_stream() -> list[Any]:
    """Two tool calls whose names, ids and arguments arrive split over several chunks."""
    return [
        chunk(content=""),
        chunk(content="Let me look."),
        chunk(tool_calls=[{"index": 0, "id": "call_0", "type": "function",
                           "function": {"name": "search", "arguments": ""}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"query": '}}]),
        chunk(tool_calls=[{"index": 1, "id": "call_1", "type": "function",
                           "function": {"name": "calc", "arguments": '{"e'}}]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '"weather"}'}},
                          {"index": 1, "function": {"arguments": '": "2*3"}'}}]),
        chunk(finish="tool_calls"),
        chunk(choices=False, usage={"prompt_tokens": 30, "completion_tokens": 20,
                                    "prompt_tokens_details": {"cached_tokens": 16}}),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("raw_split", [None, 7])
async def test_stream_assembles_split_tool_calls_and_final_usage(server: _Server, raw_split: int | None) -> None:
    server.play(sse(tool_call_stream(), raw_split=raw_split))
    async with make_model(server) as model:
        texts, c = await collect(await model.complete(MESSAGES, stream=True))
    body = server.requests[0]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert texts == ["Let me look."]
    assert c.content == "Let me look."
    assert [(t.id, t.name, json.loads(t.arguments)) for t in c.tool_calls] == [
        ("call_0", "search", {"query": "weather"}), ("call_1", "calc", {"e": "2*3"})]
    assert c.finish_reason == "tool_calls"
    assert (c.usage.input_tokens, c.usage.output_tokens, c.usage.cached_tokens) == (30, 20, 16)
    assert c.time_to_first_token is not None and 0 < c.time_to_first_token <= c.wall_seconds


@pytest.mark.anyio
async def test_stream_without_usage_reports_zero_tokens(server: _Server) -> None:
    server.play(sse([chunk("a"), chunk("b", finish="stop")]))
    async with make_model(server) as model:
        texts, c = await collect(await model.complete(MESSAGES, stream=True))
    assert texts == ["a", "b"] and c.content == "ab" and c.finish_reason == "stop"
    assert (c.usage.input_tokens, c.usage.output_tokens, c.usage.cached_tokens) == (0, 0, 0)


@pytest.mark.anyio
@pytest.mark.parametrize("events, done, cut, words", [
    ([chunk("Hel"), chunk("lo")], False, False, "without [DONE]"),  # clean EOF, no [DONE]
    ([chunk("Hel"), chunk("lo")], True, False, "without a finish_reason"),
    ([chunk("Hel"), chunk("lo")], False, True, "broke after 2 chunks"),  # connection cut mid-chunk
])
async def test_truncated_stream_raises_response_error(
        server: _Server, events: list[Any], done: bool, cut: bool, words: str) -> None:
    server.play(sse(events, done=done, chunked=cut or done, cut=cut))
    texts: list[str] = []
    async with make_model(server) as model:
        with pytest.raises(ModelResponseError) as info:
            async for delta in await model.complete(MESSAGES, stream=True):
                texts.append(delta.content)
    assert words in str(info.value)
    assert texts == ["Hel", "lo"]
    assert len(server.requests) == 1  # text was already yielded: no retry


@pytest.mark.anyio
async def test_stream_is_retried_when_it_breaks_before_any_text(server: _Server) -> None:
    server.play(sse([chunk(content="")], done=False, cut=True), status(503),
                sse([chunk("ok", finish="stop")]))
    async with make_model(server) as model:
        texts, c = await collect(await model.complete(MESSAGES, stream=True))
    assert texts == ["ok"] and c.content == "ok"
    assert len(server.requests) == 3


@pytest.mark.anyio
async def test_invalid_json_in_stream_raises_response_error(server: _Server) -> None:
    server.play(sse([chunk("a"), "{not json"]))
    async with make_model(server) as model:
        with pytest.raises(ModelResponseError, match="invalid JSON"):
            await collect(await model.complete(MESSAGES, stream=True))


@pytest.mark.anyio
async def test_error_status_on_a_stream_request_is_raised_before_any_delta(server: _Server) -> None:
    server.play(status(400, {"error": {"message": "bad schema"}}))
    async with make_model(server) as model:
        stream = await model.complete(MESSAGES, stream=True)
        with pytest.raises(ModelHTTPError, match="bad schema"):
            await stream.__anext__()  # type: ignore[union-attr]
    assert len(server.requests) == 1


@pytest.mark.anyio
async def test_stream_that_stalls_raises_model_timeout(server: _Server) -> None:
    def stall(h: _Handler) -> None:
        h.start_sse()
        h.write_chunk(f"data: {json.dumps(chunk('first'))}\n\n".encode())
        h.server.release.wait(10)

    server.play(stall)
    texts: list[str] = []
    async with make_model(server, timeout=0.5) as model:
        t0 = time.perf_counter()
        with pytest.raises(ModelTimeout, match="no progress"):
            async for delta in await model.complete(MESSAGES, stream=True):
                texts.append(delta.content)
    assert texts == ["first"]
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.anyio
async def test_cancelling_mid_stream_closes_the_connection(server: _Server) -> None:
    server.play(endless_stream)
    async with make_model(server) as model:
        received = 0
        with anyio.CancelScope() as scope:
            async for delta in await model.complete(MESSAGES, stream=True):
                received += 1
                if received == 3:
                    scope.cancel()
        assert scope.cancelled_caught
        t0 = time.perf_counter()
        seen = await anyio.to_thread.run_sync(server.disconnected.wait, 5.0)
    assert seen, "the server never saw the client disconnect"
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.anyio
async def test_breaking_out_of_an_aclosing_stream_closes_the_connection(server: _Server) -> None:
    server.play(endless_stream)
    async with make_model(server) as model:
        async with contextlib.aclosing(await model.complete(MESSAGES, stream=True)) as stream:  # type: ignore[type-var]
            async for _delta in stream:
                break
        assert await anyio.to_thread.run_sync(server.disconnected.wait, 2.0)


@pytest.mark.anyio
async def test_abandoned_stream_closes_the_connection_when_collected(server: _Server) -> None:
    server.play(endless_stream)
    async with make_model(server) as model:
        stream = await model.complete(MESSAGES, stream=True)
        async for _delta in stream:  # type: ignore[union-attr]
            break
        del stream, _delta
        gc.collect()
        for _ in range(20):  # asyncio finalises the generator in a task of its own
            await anyio.sleep(0.01)
        assert await anyio.to_thread.run_sync(server.disconnected.wait, 2.0)


# -- sync wrapper, settings, configuration ---------------------------------------------------

def test_complete_sync_from_plain_code(server: _Server) -> None:
    server.play(ok())
    model = make_model(server)
    first, second = model.complete_sync(MESSAGES), model.complete_sync(MESSAGES)
    assert first.content == second.content == "hello"
    assert len(server.requests) == 2


@pytest.mark.anyio
async def test_complete_sync_from_a_worker_thread_and_not_on_the_loop(server: _Server) -> None:
    server.play(ok())
    async with make_model(server) as model:
        c = await anyio.to_thread.run_sync(lambda: model.complete_sync(MESSAGES))
        assert c.content == "hello"
        with pytest.raises(RuntimeError, match="running event loop"):
            model.complete_sync(MESSAGES)


def test_one_model_serves_successive_event_loops(server: _Server) -> None:
    server.play(ok())  # keep-alive: the first loop leaves a pooled connection behind
    model = make_model(server)
    for _ in range(2):
        c = anyio.run(lambda: model.complete(MESSAGES))
        assert isinstance(c, Completion) and c.content == "hello"
    assert len(server.requests) == 2


def test_from_settings_uses_url_key_model_timeout_and_retries() -> None:
    settings = Settings(base_url="http://127.0.0.1:9/v1/", api_key="k", model="qwen",
                        request_timeout=7.5, max_retries=5)
    m = OpenAIChatModel.from_settings(settings)
    assert (m.base_url, m.model_name, m.timeout, m.max_retries) == ("http://127.0.0.1:9/v1", "qwen", 7.5, 5)
    assert OpenAIChatModel.from_settings(settings, base_url="http://127.0.0.1:8/v1").base_url.endswith(":8/v1")
    with pytest.raises(ConfigError, match="base_url"):
        OpenAIChatModel.from_settings(Settings(base_url=None))


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://host/v1", "not a url"])
def test_bad_base_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        OpenAIChatModel(url, "m")


@pytest.mark.anyio
async def test_closed_model_refuses_calls() -> None:
    model = OpenAIChatModel("http://127.0.0.1:9/v1", "m")
    await model.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await model.complete(MESSAGES)
