"""llama.cpp server's native endpoints: raw-prompt ``/completion`` with a grammar, ``/apply-template``.

The OpenAI-compatible ``/v1/chat/completions`` cannot continue a half-written assistant message,
which is what parallel argument decoding needs (each branch continues the same prefix). llama.cpp's
server (and so the local engine, xllamacpp) also serves, at the root above ``/v1``:

* ``POST /apply-template`` ``{"messages", "tools"}`` -> ``{"prompt"}``: the model's own chat template
  (Jinja, read from the GGUF) applied with the generation prompt, tools rendered as the template does;
* ``POST /completion`` ``{"prompt", "n_predict", "grammar", "cache_prompt", "id_slot", "n_probs"}``
  -> ``{"content", "tokens_predicted", "id_slot", "stop_type", "timings": {"prompt_n", "cache_n"}}``;
  ``timings.prompt_n`` is the number of prompt tokens *evaluated* (not served from the slot's KV
  cache), ``timings.cache_n`` those reused. Source: llama.cpp ``tools/server/README.md``.

Grammars are sent in llguidance's Lark dialect (``%llguidance {}`` header, ``%json {schema}`` for a
JSON value constrained by a JSON Schema), which the server's llguidance sampler accepts in the
``grammar`` field (verified on xllamacpp 2026.10).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Self

import httpx2

from agentrt.errors import ModelError, ModelHTTPError, ModelResponseError, ModelTimeout

__all__ = ["LlamaCppEndpoint", "RawCompletion", "native_root"]


def native_root(base_url: str) -> str:
    """The server root for llama.cpp's native endpoints: ``base_url`` without a trailing ``/v1``."""
    url = base_url.rstrip("/")
    return url.removesuffix("/v1")


@dataclass
class RawCompletion:
    """One ``/completion`` answer.

    Attributes:
        content: the generated text.
        tokens_predicted: tokens decoded (a grammar's forced end-of-generation token included).
        prompt_n: prompt tokens evaluated by this request (not reused from the slot's cache).
        cache_n: prompt tokens reused from the slot's KV cache.
        id_slot: the server slot that ran it.
        stop_type: ``"eos"`` (the grammar or the model ended), ``"limit"`` (hit ``n_predict``),
            ``"word"`` (a stop string), or ``"none"``.
        started, ended: ``time.perf_counter()`` seconds at request and response.
        probs: llama.cpp's ``completion_probabilities`` when ``n_probs`` was asked, else ``[]``.
        stopping_word: the stop string that ended generation (``stop_type="word"``; it is not
            part of ``content``), else ``""``.
    """

    content: str
    tokens_predicted: int
    prompt_n: int
    cache_n: int
    id_slot: int
    stop_type: str
    started: float
    ended: float
    probs: list[dict[str, Any]]
    stopping_word: str = ""


class LlamaCppEndpoint:
    """Client of a llama.cpp server's native endpoints (one shared `httpx2.AsyncClient`).

    Args:
        base_url: the OpenAI base URL (``http://host:port/v1``) or the server root.
        timeout: seconds a request may take (decoding on a loaded 2-core machine is slow).
    """

    def __init__(self, base_url: str, *, timeout: float = 300.0) -> None:
        self.root = native_root(base_url)
        self.timeout = timeout
        self._client: httpx2.AsyncClient | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx2.AsyncClient:
        if self._client is None:
            # several branches at once: the pool must not serialise them
            self._client = httpx2.AsyncClient(timeout=httpx2.Timeout(self.timeout, connect=10.0),
                                              limits=httpx2.Limits(max_connections=32))
        return self._client

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._request("POST", path, body)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One JSON request; a reply that is not a JSON object is an error for POST, ``{}`` for GET."""
        url = self.root + path
        try:
            response = await (self._http().post(url, json=body) if method == "POST" else self._http().get(url))
        except httpx2.TimeoutException as exc:
            raise ModelTimeout(f"{method} {url} did not answer within {self.timeout:g} s") from exc
        except httpx2.HTTPError as exc:
            raise ModelError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise ModelHTTPError(f"HTTP {response.status_code} from {url}: {response.text[:300]}",
                                 status_code=response.status_code, body=response.text[:2000])
        try:
            data = response.json()
        except ValueError as exc:
            raise ModelResponseError(f"{url} answered with invalid JSON: {response.text[:300]!r}") from exc
        if not isinstance(data, dict):
            if method == "GET":
                return {}
            raise ModelResponseError(f"{url} answered with a non-object: {response.text[:300]!r}")
        return data

    async def supports_raw_prompts(self) -> str | None:
        """Probe ``/apply-template`` and ``GET /props``; None when both answer as llama.cpp's server
        does, else why not (a sentence). Neither request occupies a slot or evicts its cache."""
        try:
            templ = await self._post("/apply-template", {"messages": [{"role": "user", "content": "hi"}]})
            if not isinstance(templ.get("prompt"), str):
                return f"{self.root}/apply-template answered without a 'prompt'"
            props = await self._get("/props")
            if not isinstance(props.get("default_generation_settings"), dict):
                return f"{self.root}/props lacks 'default_generation_settings' (not llama.cpp's server)"
        except ModelError as exc:
            return f"{self.root} lacks llama.cpp's native endpoints ({exc})"
        return None

    async def _get(self, path: str) -> dict[str, Any]:
        return await self._request("GET", path)

    async def apply_template(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        """The chat template applied to ``messages`` (+ ``tools``), ending with the generation prompt.

        Raises:
            ModelError: as the request; ModelResponseError when no prompt comes back.
        """
        body: dict[str, Any] = {"messages": messages}
        if tools:
            body["tools"] = tools
        data = await self._post("/apply-template", body)
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise ModelResponseError(f"{self.root}/apply-template answered without 'prompt': {str(data)[:300]}")
        return prompt

    async def complete(self, prompt: str, *, n_predict: int, grammar: str | None = None,
                       id_slot: int | None = None, n_probs: int = 0, stop: list[str] | None = None) -> RawCompletion:
        """Continue ``prompt`` greedily (temperature 0), constrained by ``grammar`` when given;
        generation ends at the first of ``stop`` (not included in ``content``; ``stop_type="word"``).

        Raises:
            ModelError: the request failed; ModelResponseError: the answer lacks its fields.
        """
        body: dict[str, Any] = {"prompt": prompt, "n_predict": n_predict, "temperature": 0.0,
                                "cache_prompt": True}
        if grammar is not None:
            body["grammar"] = grammar
        if id_slot is not None:
            body["id_slot"] = id_slot
        if n_probs:
            body["n_probs"] = n_probs
        if stop:
            body["stop"] = stop
        started = time.perf_counter()
        data = await self._post("/completion", body)
        ended = time.perf_counter()
        timings = data.get("timings")
        if not isinstance(data.get("content"), str) or not isinstance(timings, dict):
            raise ModelResponseError(f"{self.root}/completion answered without content/timings: "
                                     f"{json.dumps(data)[:300]}")
        return RawCompletion(
            content=data["content"], tokens_predicted=int(data.get("tokens_predicted") or 0),
            prompt_n=int(timings.get("prompt_n") or 0), cache_n=int(timings.get("cache_n") or 0),
            id_slot=int(data.get("id_slot", -1)), stop_type=str(data.get("stop_type") or "none"),
            started=started, ended=ended, probs=list(data.get("completion_probabilities") or []),
            stopping_word=str(data.get("stopping_word") or ""))
