"""The OpenAI-compatible chat completions client (httpx2): retries, timeouts and SSE streaming.

One class, :class:`OpenAIChatModel`, speaks ``POST {base_url}/chat/completions`` as served by
vLLM, llama.cpp's server (and the embedded local engine), Ollama and OpenAI. It implements the
:class:`~agentrt.llm.ChatModel` protocol.

Failure policy (why each choice):

* 429, 5xx and connection errors are retried with exponential backoff and jitter ("equal
  jitter", AWS Architecture Blog, *Exponential Backoff And Jitter*, 2015); a ``Retry-After``
  header (seconds or HTTP date) is honoured, capped at ``backoff_max``. They are transient by
  nature and nothing has reached the caller yet.
* A streamed request is retried only while no `Delta` has been yielded to the caller: after
  that a retry would repeat text the caller already consumed.
* A read that makes no progress for ``timeout`` seconds raises `ModelTimeout` and is not
  retried: a hung server usually hangs again, and ``timeout`` is the caller's budget.
* Closing or cancelling a stream closes the HTTP response (shielded from the cancellation),
  so the server sees the disconnect and frees its slot.
"""

from __future__ import annotations

import codecs
import contextlib
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import httpx2

from agentrt.config import Settings
from agentrt.errors import (
    ConfigError,
    ModelError,
    ModelHTTPError,
    ModelNotFound,
    ModelResponseError,
    ModelTimeout,
)
from agentrt.llm._types import Completion, Delta, Message, ToolCall, Usage

__all__ = ["OpenAIChatModel"]

log = logging.getLogger(__name__)

#: Characters of a response body kept in errors (``ModelHTTPError.body``).
_BODY_LIMIT = 2000
#: Characters of a body quoted in an error message.
_EXCERPT = 300
#: Bytes read from an error response at most (a misbehaving server may stream forever).
_ERROR_READ_LIMIT = 64 * 1024
#: Seconds a shielded close may take before it is abandoned.
_CLOSE_TIMEOUT = 5.0
#: Phrases by which vLLM, OpenAI, Ollama and LiteLLM say "no such model" in a 404 body.
_MODEL_NOT_FOUND = ("model_not_found", "does not exist", "not found", "no such model", "unknown model")


def _excerpt(text: str, limit: int = _EXCERPT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "..."


class _Retry(Exception):
    """An attempt failed in a retryable way; ``error`` is raised when no retry is left."""

    def __init__(self, error: ModelError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def _retry_after_seconds(value: str | None) -> float | None:
    """Parse ``Retry-After`` (RFC 9110 §10.2.3: delay seconds or an HTTP date) into seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _parse_usage(usage: Any, timings: Any) -> Usage:
    """Token usage from the OpenAI ``usage`` object, completed by llama.cpp's ``timings``.

    ``usage.prompt_tokens`` counts the whole prompt (cached tokens included); the cached part is
    ``usage.prompt_tokens_details.cached_tokens`` (OpenAI, vLLM, recent llama.cpp) or, failing
    that, llama.cpp's ``timings.cache_n``. Without ``usage``, llama.cpp's ``timings`` alone give
    input = ``prompt_n + cache_n`` and output = ``predicted_n``. Missing counts stay 0.
    """
    u = usage if isinstance(usage, dict) else {}
    t = timings if isinstance(timings, dict) else {}
    details = u.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    if not cached:
        cached = _int(t.get("cache_n"))
    if u:
        input_tokens = _int(u.get("prompt_tokens"))
        output_tokens = _int(u.get("completion_tokens"))
    else:
        input_tokens = _int(t.get("prompt_n")) + _int(t.get("cache_n"))
        output_tokens = _int(t.get("predicted_n"))
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                 cached_tokens=min(cached, input_tokens) if input_tokens else cached, requests=1)


def _arguments_text(arguments: Any) -> str:
    # Some servers (older Ollama) send arguments as an object instead of JSON text.
    if arguments is None:
        return ""
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def _tool_to_wire(tool: Mapping[str, Any]) -> dict[str, Any]:
    # Accept a bare function spec ({"name", "parameters", ...}) as well as the OpenAI wrapper.
    if "type" not in tool and "name" in tool:
        return {"type": "function", "function": dict(tool)}
    return dict(tool)


class _SSEDecoder:
    """Incremental server-sent-events parser (WHATWG HTML §9.2.6), yielding ``data`` payloads.

    Lines end with CRLF, LF or CR; an event ends at a blank line; ``:`` lines are comments;
    only the ``data`` field matters for chat completions.
    """

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []

    def feed(self, raw: bytes) -> list[str]:
        self._buffer += self._text.decode(raw)
        events: list[str] = []
        while True:
            cut = min((i for i in (self._buffer.find("\n"), self._buffer.find("\r")) if i >= 0),
                      default=-1)
            # A trailing CR may be the first half of a CRLF split across reads: wait for more.
            if cut < 0 or (cut == len(self._buffer) - 1 and self._buffer[cut] == "\r"):
                return events
            line = self._buffer[:cut]
            skip = 2 if self._buffer.startswith("\r\n", cut) else 1
            self._buffer = self._buffer[cut + skip:]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def flush(self) -> list[str]:
        """The events left when the body ends (a last event without its blank line)."""
        rest = self._buffer + self._text.decode(b"", final=True)
        self._buffer = ""
        events = [e for line in rest.replace("\r\n", "\n").replace("\r", "\n").split("\n")
                  if (e := self._line(line)) is not None]
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events

    def _line(self, line: str) -> str | None:
        if not line:
            if not self._data:
                return None
            event, self._data = "\n".join(self._data), []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


class _Collector:
    """Assembles the chunks of one streamed completion (text, index-keyed tool calls, usage)."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, str]] = {}
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.usage: Any = None
        self.timings: Any = None
        self.time_to_first_token: float | None = None
        self.chunks = 0

    def add(self, chunk: Any) -> str:
        """Take one parsed chunk; return its new text ("" if none).

        Raises:
            ModelResponseError: the chunk is not an object, carries an error, or is malformed.
        """
        if not isinstance(chunk, dict):
            raise ModelResponseError(f"stream chunk is not a JSON object: {_excerpt(repr(chunk))}")
        if "error" in chunk:
            raise ModelResponseError(f"the endpoint reported an error mid-stream: "
                                     f"{_excerpt(json.dumps(chunk['error']))}")
        self.chunks += 1
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if chunk.get("timings"):
            self.timings = chunk["timings"]
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise ModelResponseError(f"stream chunk has a malformed 'choices': {_excerpt(json.dumps(chunk))}")
        text = ""
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                raise ModelResponseError(f"stream chunk has a malformed 'delta': {_excerpt(json.dumps(chunk))}")
            content = delta.get("content")
            if isinstance(content, str) and content:
                text += content
            for position, call in enumerate(delta.get("tool_calls") or []):
                self._add_call(position, call)
        if text:
            self.parts.append(text)
            self._first_token()
        return text

    def _add_call(self, position: int, call: Any) -> None:
        if not isinstance(call, dict):
            raise ModelResponseError(f"malformed tool-call delta: {_excerpt(repr(call))}")
        index = call.get("index", position)
        slot = self.calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
        if call.get("id"):
            slot["id"] = call["id"]
        function = call.get("function") or {}
        name = function.get("name")
        # OpenAI sends the name once; some servers repeat it in every delta, a few split it.
        if name and name != slot["name"]:
            slot["name"] += name
        slot["arguments"] += _arguments_text(function.get("arguments"))
        self._first_token()

    def _first_token(self) -> None:
        if self.time_to_first_token is None:
            self.time_to_first_token = time.perf_counter() - self.started

    def completion(self) -> Completion:
        calls = [ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=c["arguments"])
                 for i, c in sorted(self.calls.items())]
        return Completion(
            content="".join(self.parts),
            tool_calls=calls,
            finish_reason=self.finish_reason,
            usage=_parse_usage(self.usage, self.timings),
            model=self.model,
            time_to_first_token=self.time_to_first_token,
            wall_seconds=time.perf_counter() - self.started,
        )


async def _aclose_shielded(*closables: Any) -> None:
    """Close streams even inside a cancelled scope, so the connection is really released."""
    with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
        for closable in closables:
            await closable.aclose()


class OpenAIChatModel:
    """A chat model behind an OpenAI-compatible HTTP endpoint.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``; requests go to
            ``{base_url}/chat/completions``.
        model: model name sent in every request (the OpenAI ``model`` field).
        api_key: sent as ``Authorization: Bearer <api_key>`` when given.
        timeout: seconds a read (or write, or wait for a pooled connection) may make no
            progress before `ModelTimeout`; applies between chunks of a stream too.
        connect_timeout: seconds to establish a connection; default ``min(timeout, 10)``.
        max_retries: retries after the first attempt on 429, 5xx and connection errors.
        backoff_base: seconds of the first backoff; attempt ``n`` waits
            ``min(backoff_max, backoff_base * 2**n)`` times a random factor in [0.5, 1].
        backoff_max: cap on one wait, seconds, ``Retry-After`` included.
        headers: extra HTTP headers sent with every request.
        transport: an httpx2 transport to use instead of the network (tests, ASGI apps).

    Raises:
        ConfigError: ``base_url`` is not an http(s) URL, or a number is out of range.

    Use ``async with OpenAIChatModel(...) as model`` (or call `aclose`) to release connections.
    One instance serves many concurrent calls on one event loop (used from another loop, it
    opens a new connection pool there); `complete_sync` works from any thread without a
    running loop.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        connect_timeout: float | None = None,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        try:
            url = httpx2.URL(base_url)
        except httpx2.InvalidURL as exc:
            raise ConfigError(f"invalid model base_url {base_url!r}: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"model base_url must be an http(s) URL like http://127.0.0.1:8000/v1, "
                              f"got {base_url!r}")
        if timeout <= 0 or (connect_timeout is not None and connect_timeout <= 0):
            raise ConfigError(f"model timeouts must be > 0 s, got timeout={timeout}, "
                              f"connect_timeout={connect_timeout}")
        if max_retries < 0 or backoff_base < 0 or backoff_max < 0:
            raise ConfigError("max_retries, backoff_base and backoff_max must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.model_name = model
        self.timeout = timeout
        self.connect_timeout = min(timeout, 10.0) if connect_timeout is None else connect_timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._url = f"{self.base_url}/chat/completions"
        self._headers = {"Accept": "application/json, text/event-stream", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._transport = transport
        self._client: httpx2.AsyncClient | None = None
        self._client_loop: object = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, *, base_url: str | None = None) -> OpenAIChatModel:
        """Build from `agentrt.config.Settings` (base_url, api_key, model, request_timeout, max_retries).

        Args:
            settings: the configuration.
            base_url: overrides ``settings.base_url`` (e.g. the URL the local engine listens on).

        Raises:
            ConfigError: neither ``base_url`` nor ``settings.base_url`` is set (the embedded local
                engine must be started first and its URL passed here), or the URL is invalid.
        """
        url = base_url or settings.base_url
        if not url:
            raise ConfigError("no model endpoint: settings.base_url is unset (AGENTRT_BASE_URL); "
                              "start the local engine and pass its URL as base_url=")
        return cls(url, settings.model, settings.api_key, timeout=settings.request_timeout,
                   max_retries=settings.max_retries)

    def __repr__(self) -> str:
        return f"OpenAIChatModel(base_url={self.base_url!r}, model={self.model_name!r})"

    # -- lifecycle -------------------------------------------------------------------------

    def _new_client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            timeout=httpx2.Timeout(self.timeout, connect=self.connect_timeout),
            headers=self._headers,
            transport=self._transport,
        )

    def _shared_client(self) -> httpx2.AsyncClient:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed; create a new one")
        loop = anyio.lowlevel.current_token().native_token
        if self._client is not None and self._client_loop is not loop:
            # Pooled connections belong to the event loop that opened them (e.g. an earlier
            # anyio.run); that loop is gone or elsewhere, so they cannot be reused or closed here.
            log.debug("%r used from a new event loop: opening a new connection pool", self)
            self._client = None
        if self._client is None:
            self._client = self._new_client()
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close pooled connections. Later calls raise RuntimeError. Idempotent."""
        self._closed = True
        if self._client is not None:
            client, self._client = self._client, None
            if self._client_loop is anyio.lowlevel.current_token().native_token:
                await _aclose_shielded(client)

    async def __aenter__(self) -> OpenAIChatModel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- public calls ----------------------------------------------------------------------

    async def complete(
        self,
        messages: Sequence[Message | dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
        stream: bool = False,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = 0.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Completion | AsyncIterator[Delta]:
        """Complete ``messages``.

        Args:
            messages: the chat so far, as `Message` or OpenAI message dicts.
            tools: OpenAI tool specs (``{"type": "function", "function": {...}}``; a bare
                function spec ``{"name", "description", "parameters"}`` is wrapped).
            response_format: passed through, e.g. ``{"type": "json_schema", "json_schema":
                {"name": ..., "schema": {...}, "strict": true}}``.
            stream: return an async iterator of `Delta` instead of a `Completion`.
            max_tokens: cap on generated tokens.
            stop: stop sequences.
            temperature: sampling temperature; ``None`` leaves the server's default.
            extra_body: further request fields merged into the body last (``seed``,
                ``tool_choice``, llama.cpp's ``cache_prompt`` ...).

        Returns:
            With ``stream=False`` a `Completion` (``wall_seconds`` counts retries and backoff).
            With ``stream=True`` an async generator of `Delta`: one per chunk that carries text,
            then a last one with ``done=True`` and ``completion`` (all text, tool calls assembled
            from their index-keyed deltas, finish reason, usage, ``time_to_first_token`` =
            seconds to the first text or tool-call fragment). The request is sent when iteration
            starts. ``stream_options.include_usage`` is requested; a server that still sends no
            usage yields usage counts of 0. Leave the loop early with ``break`` only inside
            ``contextlib.aclosing(...)`` (or call its ``aclose()``) to close the connection at
            once; otherwise it is closed when the generator is garbage-collected.

        Raises:
            ModelTimeout: no connection within ``connect_timeout`` after the retries, or no
                read progress for ``timeout`` seconds (also between stream chunks).
            ModelNotFound: 404 whose body says the model is unknown to this endpoint.
            ModelHTTPError: another error status (4xx at once; 429/5xx once retries are spent).
            ModelResponseError: a 2xx body that is not JSON, lacks ``choices``, or a stream that
                is malformed or truncated (no ``[DONE]``, no finish reason, connection lost
                after text was yielded).
            ModelError: connection failures that outlasted the retries.
            RuntimeError: the model was closed.
        """
        body = self._body(messages, tools=tools, response_format=response_format, stream=stream,
                          max_tokens=max_tokens, stop=stop, temperature=temperature,
                          extra_body=extra_body)
        client = self._shared_client()
        if stream:
            return self._stream(client, body)
        return await self._complete(client, body)

    def complete_sync(
        self,
        messages: Sequence[Message | dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        response_format: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        temperature: float | None = 0.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> Completion:
        """Blocking `complete` (not streamed), for code without an event loop.

        From an anyio worker thread (``anyio.to_thread.run_sync``) it runs on that thread's
        event loop with the shared connection pool; from any other thread it runs its own
        event loop (``anyio.run``) with a connection opened for this call only.

        Raises:
            The errors of `complete`; RuntimeError when called on a thread that is running an
            event loop (that would block the loop: ``await complete(...)`` there instead).
        """
        try:
            anyio.lowlevel.current_token()
        except anyio.NoEventLoopError:
            pass
        else:
            raise RuntimeError("complete_sync() called from a running event loop; "
                               "use `await model.complete(...)` there")
        body = self._body(messages, tools=tools, response_format=response_format, stream=False,
                          max_tokens=max_tokens, stop=stop, temperature=temperature,
                          extra_body=extra_body)

        async def in_worker_loop() -> Completion:
            return await self._complete(self._shared_client(), body)

        async def in_own_loop() -> Completion:
            # A client's pooled connections belong to one event loop; this loop is new.
            async with self._new_client() as client:
                return await self._complete(client, body)

        try:
            return anyio.from_thread.run(in_worker_loop)
        except anyio.NoEventLoopError:
            # Raised before anything ran: this thread is not an anyio worker thread.
            return anyio.run(in_own_loop)

    # -- request building ------------------------------------------------------------------

    def _body(
        self,
        messages: Sequence[Message | dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None,
        response_format: dict[str, Any] | None,
        stream: bool,
        max_tokens: int | None,
        stop: Sequence[str] | None,
        temperature: float | None,
        extra_body: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        if not messages:
            raise ValueError("complete() needs at least one message")
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": [m.to_wire() if isinstance(m, Message) else dict(m) for m in messages],
        }
        if tools:
            body["tools"] = [_tool_to_wire(t) for t in tools]
        if response_format is not None:
            body["response_format"] = response_format
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if stop:
            body["stop"] = list(stop)
        if temperature is not None:
            body["temperature"] = temperature
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if extra_body:
            body.update(extra_body)
        return body

    # -- one attempt, retries --------------------------------------------------------------

    async def _open(self, client: httpx2.AsyncClient, body: dict[str, Any]) -> httpx2.Response:
        """Send one request; return the 2xx response with its body unread (caller closes it).

        Raises:
            _Retry: 429, 5xx or a connection error.
            ModelTimeout, ModelHTTPError, ModelNotFound, ModelError: not worth retrying.
        """
        request = client.build_request("POST", self._url, json=body)
        try:
            response = await client.send(request, stream=True)
        except httpx2.ConnectTimeout as exc:
            raise _Retry(ModelTimeout(f"could not connect to {self._url} within "
                                      f"{self.connect_timeout:g} s")) from exc
        except httpx2.TimeoutException as exc:
            raise ModelTimeout(f"{self._url} sent no response within {self.timeout:g} s "
                               f"({type(exc).__name__}); a busy or slow server may need a longer "
                               "timeout: AGENTRT_REQUEST_TIMEOUT=SECONDS") from exc
        except httpx2.UnsupportedProtocol as exc:
            raise ModelError(f"cannot reach {self._url}: {exc}") from exc
        except httpx2.TransportError as exc:
            raise _Retry(ModelError(f"connection to {self._url} failed: "
                                    f"{type(exc).__name__}: {exc}")) from exc
        if response.is_success:
            return response
        try:
            text = await self._read_error_body(response)
        finally:
            await _aclose_shielded(response)
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retry(
                ModelHTTPError(f"HTTP {status} from {self._url}: {_excerpt(text)}",
                               status_code=status, body=text),
                retry_after=_retry_after_seconds(response.headers.get("retry-after")),
            )
        raise self._status_error(status, text)

    async def _read_error_body(self, response: httpx2.Response) -> str:
        raw = b""
        parts = response.aiter_bytes()
        try:
            async for part in parts:
                raw += part
                if len(raw) >= _ERROR_READ_LIMIT:
                    break
        except httpx2.HTTPError as exc:
            log.debug("could not read the error body from %s: %r", self._url, exc)
        finally:
            await _aclose_shielded(parts)
        return raw.decode("utf-8", errors="replace")[:_BODY_LIMIT]

    def _status_error(self, status: int, text: str) -> ModelError:
        low = text.lower()
        if status == 404 and "model" in low and any(p in low for p in _MODEL_NOT_FOUND):
            return ModelNotFound(
                f"model {self.model_name!r} is unknown to the endpoint {self.base_url} "
                f"(HTTP 404: {_excerpt(text)}); check the model name it serves (GET {self.base_url}/models)",
                status_code=status, body=text)
        hint = ""
        if status == 404:
            hint = " (is base_url the API root, e.g. http://host:8000/v1?)"
        elif status in (401, 403):
            hint = " (check api_key / AGENTRT_API_KEY)"
        return ModelHTTPError(f"HTTP {status} from {self._url}{hint}: {_excerpt(text)}",
                              status_code=status, body=text)

    async def _backoff(self, retry: _Retry, attempt: int) -> int:
        """Sleep before retry ``attempt + 1``, or raise ``retry.error`` when none is left."""
        if attempt >= self.max_retries:
            raise retry.error from retry.__cause__
        if retry.retry_after is not None:
            delay = min(retry.retry_after, self.backoff_max)
        else:
            delay = min(self.backoff_max, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)
        log.warning("%s; retry %d/%d in %.2f s", retry.error, attempt + 1, self.max_retries, delay)
        await anyio.sleep(delay)
        return attempt + 1

    # -- non-streamed ----------------------------------------------------------------------

    async def _complete(self, client: httpx2.AsyncClient, body: dict[str, Any]) -> Completion:
        started = time.perf_counter()
        attempt = 0
        log.debug("POST %s model=%s", self._url, self.model_name)
        while True:
            try:
                response = await self._open(client, body)
                try:
                    raw = await response.aread()
                except httpx2.TimeoutException as exc:
                    raise ModelTimeout(f"{self._url} stopped sending its response for "
                                       f"{self.timeout:g} s") from exc
                except httpx2.TransportError as exc:
                    raise _Retry(ModelError(f"connection to {self._url} lost while reading the "
                                            f"response: {type(exc).__name__}: {exc}")) from exc
                finally:
                    await _aclose_shielded(response)
            except _Retry as retry:
                attempt = await self._backoff(retry, attempt)
                continue
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                # A server that streams although asked not to: collect the stream.
                return self._collect_sse_body(raw, started)
            completion = self._parse_completion(raw, started)
            log.debug("completion: %d in / %d out / %d cached tokens, %.3f s",
                      completion.usage.input_tokens, completion.usage.output_tokens,
                      completion.usage.cached_tokens, completion.wall_seconds)
            return completion

    def _parse_completion(self, raw: bytes, started: float) -> Completion:
        """Parse a non-streamed chat completion body.

        Raises:
            ModelResponseError: not JSON, an ``error`` object, or no usable ``choices[0].message``.
        """
        text = raw.decode("utf-8", errors="replace")
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelResponseError(f"{self._url} answered with invalid JSON: {_excerpt(text)!r}") from exc
        if not isinstance(data, dict):
            raise ModelResponseError(f"{self._url} answered with a non-object: {_excerpt(text)!r}")
        if "error" in data and not data.get("choices"):
            raise ModelResponseError(f"{self._url} answered 2xx with an error: {_excerpt(text)!r}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ModelResponseError(f"{self._url} answered without 'choices': {_excerpt(text)!r}")
        message = choices[0].get("message")
        if not isinstance(message, dict):
            raise ModelResponseError(f"{self._url} answered without 'choices[0].message': "
                                     f"{_excerpt(text)!r}")
        calls: list[ToolCall] = []
        for i, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not function.get("name"):
                raise ModelResponseError(f"malformed tool call in the response: {_excerpt(text)!r}")
            calls.append(ToolCall(id=call.get("id") or f"call_{i}", name=function["name"],
                                  arguments=_arguments_text(function.get("arguments"))))
        content = message.get("content")
        return Completion(
            content=content if isinstance(content, str) else "",
            tool_calls=calls,
            finish_reason=choices[0].get("finish_reason"),
            usage=_parse_usage(data.get("usage"), data.get("timings")),
            model=data.get("model"),
            wall_seconds=time.perf_counter() - started,
        )

    def _collect_sse_body(self, raw: bytes, started: float) -> Completion:
        decoder = _SSEDecoder()
        collector = _Collector(started)
        done = False
        for data in decoder.feed(raw) + decoder.flush():
            if data.strip() == "[DONE]":
                done = True
                break
            collector.add(self._chunk(data))
        self._check_stream_end(done, collector)
        return collector.completion()

    # -- streamed --------------------------------------------------------------------------

    def _chunk(self, data: str) -> Any:
        try:
            return json.loads(data)
        except ValueError as exc:
            raise ModelResponseError(f"invalid JSON in a stream chunk from {self._url}: "
                                     f"{_excerpt(data)!r}") from exc

    def _check_stream_end(self, done: bool, collector: _Collector) -> None:
        if not done:
            raise ModelResponseError(f"stream from {self._url} ended without [DONE] after "
                                     f"{collector.chunks} chunks (truncated)")
        if collector.finish_reason is None:
            raise ModelResponseError(f"stream from {self._url} ended without a finish_reason "
                                     f"after {collector.chunks} chunks (truncated)")

    async def _stream(self, client: httpx2.AsyncClient, body: dict[str, Any]) -> AsyncIterator[Delta]:
        started = time.perf_counter()
        attempt = 0
        yielded = False
        log.debug("POST %s model=%s (stream)", self._url, self.model_name)
        while True:
            try:
                response = await self._open(client, body)
            except _Retry as retry:
                attempt = await self._backoff(retry, attempt)
                continue
            collector = _Collector(started)
            retry_after_close: _Retry | None = None
            done = False
            chunks = response.aiter_bytes()
            try:
                if response.headers.get("content-type", "").startswith("application/json"):
                    # A server that ignored "stream": one JSON completion.
                    completion = self._parse_completion(await response.aread(), started)
                    if completion.content:
                        yield Delta(content=completion.content)
                    yield Delta(done=True, completion=completion)
                    return
                async with contextlib.aclosing(_sse_data(chunks)) as events:
                    async for data in events:
                        if data.strip() == "[DONE]":
                            done = True
                            break
                        text = collector.add(self._chunk(data))
                        if text:
                            yielded = True
                            yield Delta(content=text)
            except httpx2.TimeoutException as exc:
                raise ModelTimeout(f"stream from {self._url} made no progress for {self.timeout:g} s "
                                   f"after {collector.chunks} chunks") from exc
            except httpx2.TransportError as exc:
                error = ModelResponseError(f"stream from {self._url} broke after {collector.chunks} "
                                           f"chunks (truncated): {type(exc).__name__}: {exc}")
                if yielded:
                    raise error from exc
                retry_after_close = _Retry(error)
                retry_after_close.__cause__ = exc
            finally:
                await _aclose_shielded(chunks, response)
            if retry_after_close is not None:
                attempt = await self._backoff(retry_after_close, attempt)
                continue
            self._check_stream_end(done, collector)
            completion = collector.completion()
            log.debug("stream: %d in / %d out / %d cached tokens, ttft %s s, %.3f s",
                      completion.usage.input_tokens, completion.usage.output_tokens,
                      completion.usage.cached_tokens, completion.time_to_first_token,
                      completion.wall_seconds)
            yield Delta(done=True, completion=completion)
            return


async def _sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event in a byte stream, the last one flushed at its end."""
    decoder = _SSEDecoder()
    async for raw in chunks:
        for data in decoder.feed(raw):
            yield data
    for data in decoder.flush():
        yield data
