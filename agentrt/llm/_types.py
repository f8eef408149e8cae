"""Types of the chat-model layer: messages, completions, stream deltas, usage, the `ChatModel` protocol.

The wire format is the OpenAI chat completions API; these models mirror its fields so that any
OpenAI-compatible server (the local engine, vLLM, llama.cpp's server, Ollama, OpenAI) fits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

__all__ = ["ChatModel", "Completion", "Delta", "Message", "ToolCall", "Usage"]


class ToolCall(BaseModel):
    """One function call the model asked for. ``arguments`` is the raw JSON text it produced."""

    id: str
    name: str
    arguments: str


class Message(BaseModel):
    """One chat message (OpenAI format)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


class Usage(BaseModel):
    """Token usage of one or more completions (exact counts as the server reports them).

    Attributes:
        input_tokens: prompt tokens, cached ones included.
        output_tokens: generated tokens.
        cached_tokens: prompt tokens served from the server's prompt cache (part of input_tokens).
        requests: number of completions counted.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            requests=self.requests + other.requests,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Completion(BaseModel):
    """A finished (non-streamed, or fully collected) completion.

    Attributes:
        content: the text; ``""`` when the model only called tools.
        tool_calls: function calls requested, in order.
        finish_reason: ``stop``, ``length``, ``tool_calls`` ... as the server said.
        usage: token usage of this completion.
        model: model name the server reported.
        time_to_first_token: seconds from request to first content (streamed), else None.
        wall_seconds: seconds from request to the end of the response.
    """

    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    model: str | None = None
    time_to_first_token: float | None = None
    wall_seconds: float = 0.0


class Delta(BaseModel):
    """One piece of a streamed completion.

    ``content`` is new text (possibly empty). The last delta of a stream has ``done=True`` and
    carries ``completion``: the whole collected result, with exact usage.
    """

    content: str = ""
    done: bool = False
    completion: Completion | None = None


@runtime_checkable
class ChatModel(Protocol):
    """Anything that completes chat messages (the OpenAI chat completions contract).

    ``complete(..., stream=False)`` returns a `Completion`; with ``stream=True`` it returns an
    async iterator of `Delta` whose last item has ``done=True``. ``response_format`` is the
    OpenAI field (e.g. ``{"type": "json_schema", "json_schema": {"name": ..., "schema": ...}}``).
    Implementations raise `agentrt.errors.ModelError` (or a subclass) on any failure.
    """

    model_name: str

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
    ) -> Completion | AsyncIterator[Delta]: ...
