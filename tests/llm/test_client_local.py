"""The OpenAI-compatible client against the real local engine (Qwen2.5-Coder-1.5B, 2 slots).

All tests share the session's one engine (``local_engine`` in tests/conftest.py); outputs are
kept to <= 32 tokens because the machine decodes about 10-30 tokens/s.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator

import anyio
import pytest

from agentrt.config import LOCAL_MODEL_NAME
from agentrt.llm import Completion, Delta, LocalEngine, OpenAIChatModel

pytestmark = [pytest.mark.anyio, pytest.mark.model, pytest.mark.timeout(300)]

CALL_TIMEOUT = 120  # seconds; generous for a busy 2-core machine


def _model(engine: LocalEngine) -> OpenAIChatModel:
    return OpenAIChatModel(engine.base_url, LOCAL_MODEL_NAME, timeout=CALL_TIMEOUT, max_retries=0)


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def _collect(stream: AsyncIterator[Delta]) -> tuple[list[Delta], Completion]:
    deltas = [d async for d in stream]
    last = deltas[-1]
    assert last.done and last.completion is not None
    assert all(not d.done for d in deltas[:-1])
    return deltas, last.completion


async def test_streamed_completion_arrives_in_pieces_with_usage(local_engine: LocalEngine) -> None:
    async with _model(local_engine) as llm:
        with anyio.fail_after(CALL_TIMEOUT):
            stream = await llm.complete(_user("List five fruits, comma separated."),
                                        stream=True, max_tokens=16)
            deltas, completion = await _collect(stream)  # type: ignore[arg-type]
    pieces = [d.content for d in deltas[:-1] if d.content]
    assert len(pieces) >= 2, "expected the text in several streamed pieces"
    assert "".join(pieces) == completion.content
    assert completion.usage.input_tokens > 0 and completion.usage.output_tokens > 0
    assert completion.usage.output_tokens <= 16
    assert completion.time_to_first_token is not None
    assert 0 < completion.time_to_first_token <= completion.wall_seconds
    assert completion.model == LOCAL_MODEL_NAME


async def test_json_schema_constrained_completion_parses(local_engine: LocalEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    async with _model(local_engine) as llm:
        with anyio.fail_after(CALL_TIMEOUT):
            completion = await llm.complete(
                _user("What is the capital of France? Answer as JSON."),
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "capital", "schema": schema}},
                max_tokens=32,
            )
    assert isinstance(completion, Completion)
    value = json.loads(completion.content)
    assert set(value) == {"city", "country"}
    assert all(isinstance(v, str) and v for v in value.values())


async def test_usage_is_the_same_streamed_and_not_streamed(local_engine: LocalEngine) -> None:
    messages = _user("Name three primary colors.")
    async with _model(local_engine) as llm:
        with anyio.fail_after(3 * CALL_TIMEOUT):
            # Warm the prompt cache first: a prompt evaluated whole and one served from the cache
            # take different numeric paths, and a near-tie first token can then differ (seen:
            # "The primary colors are..." vs "Red, blue..."); compared calls both hit the cache.
            await llm.complete(messages, max_tokens=1)
            plain = await llm.complete(messages, max_tokens=12)
            stream = await llm.complete(messages, stream=True, max_tokens=12)
            _, streamed = await _collect(stream)  # type: ignore[arg-type]
    assert isinstance(plain, Completion)
    assert plain.content == streamed.content  # greedy decoding: same text
    assert plain.usage.input_tokens == streamed.usage.input_tokens > 0
    assert plain.usage.output_tokens == streamed.usage.output_tokens > 0
    # The same prompt again: llama.cpp's prompt cache serves (almost) all of it.
    assert streamed.usage.cached_tokens > 0
    assert streamed.usage.cached_tokens <= streamed.usage.input_tokens


async def test_stop_sequence_ends_the_completion_before_it(local_engine: LocalEngine) -> None:
    async with _model(local_engine) as llm:
        with anyio.fail_after(CALL_TIMEOUT):
            completion = await llm.complete(
                _user("Count from 1 to 10, separated by commas and spaces. Only the numbers."),
                stop=["5"], max_tokens=32,
            )
    assert isinstance(completion, Completion)
    assert "4" in completion.content, completion.content
    assert "5" not in completion.content and "6" not in completion.content
    assert completion.finish_reason == "stop"


async def test_two_concurrent_requests_both_complete(local_engine: LocalEngine) -> None:
    results: dict[str, Completion] = {}

    async def ask(llm: OpenAIChatModel, key: str, text: str) -> None:
        c = await llm.complete(_user(text), max_tokens=12)
        assert isinstance(c, Completion)
        results[key] = c

    async with _model(local_engine) as llm:
        with anyio.fail_after(2 * CALL_TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(ask, llm, "a", "Say the word apple.")
                tg.start_soon(ask, llm, "b", "Say the word banana.")
    assert set(results) == {"a", "b"}
    assert all(c.content and c.usage.output_tokens > 0 for c in results.values())


async def test_cancelled_stream_frees_its_slot(local_engine: LocalEngine) -> None:
    """Both slots busy; one stream is abandoned; a third request completes while the other runs.

    If the abandoned slot kept generating, the third request would have to wait for one of the
    two 32-token generations to end, i.e. until after the long one finished.
    """
    finished: dict[str, float] = {}
    long_prompt = _user("Count from 1 to 200, separated by commas.")

    async with _model(local_engine) as llm:

        async def long_running() -> None:
            stream = await llm.complete(long_prompt, stream=True, max_tokens=32)
            await _collect(stream)  # type: ignore[arg-type]
            finished["long"] = time.perf_counter()

        with anyio.fail_after(3 * CALL_TIMEOUT):
            async with anyio.create_task_group() as tg:
                tg.start_soon(long_running)
                abandoned = await llm.complete(long_prompt, stream=True, max_tokens=32)
                async with contextlib.aclosing(abandoned):  # type: ignore[type-var]
                    async for delta in abandoned:  # type: ignore[union-attr]
                        if delta.content:
                            break  # leave mid-stream: aclosing closes the connection
                assert "long" not in finished, "machine too fast for this test's premise"
                third = await llm.complete(_user("Say yes."), max_tokens=2)
                finished["third"] = time.perf_counter()
    assert isinstance(third, Completion) and third.usage.output_tokens > 0
    assert finished["third"] < finished["long"], (
        "the third request waited for a running generation: the cancelled stream kept its slot")
