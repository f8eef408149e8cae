"""Ordinary (whole-call) tool-call decoding: the baselines and the fallback of parallel decoding.

* `decode_standard`: the model writes the whole call itself through the OpenAI ``tools`` field; the
  calls come back as ``tool_calls`` or, from servers that do not parse them, as text, which
  `parse_calls_text` reads (``<tool_call>{...}</tool_call>`` blocks as Qwen2.5/Hermes templates
  write, or bare JSON objects / arrays of ``{"name", "arguments"}``).
* `decode_constrained`: the same, but the whole answer is constrained by a JSON Schema
  (``response_format`` ``json_schema``): ``{"calls": [{"name": <enum>, "arguments": <that tool's
  parameters>}, ...]}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrt.llm import ChatModel, Completion, ToolCall, Usage

__all__ = ["StandardResult", "decode_constrained", "decode_standard", "parse_calls_text", "wire_tools"]

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass
class StandardResult:
    """Calls decoded in one completion, with its usage (tokens) and wall time (seconds)."""

    calls: list[ToolCall]
    usage: Usage
    wall_seconds: float
    text: str = ""
    errors: list[str] = field(default_factory=list)


def wire_tools(specs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI ``tools`` entries (``{"type": "function", "function": {...}}``) from function specs."""
    return [{"type": "function", "function": {"name": s["name"], "description": s.get("description", ""),
                                              "parameters": s["parameters"]}} for s in specs]


def _call_objects(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict) and isinstance(value.get("calls"), list):
        value = value["calls"]
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, dict) and isinstance(v.get("name"), str)]


def parse_calls_text(text: str) -> tuple[list[ToolCall], list[str]]:
    """Tool calls written as text; returns ``(calls, errors)`` (one error per unreadable block)."""
    blocks = _TOOL_CALL_BLOCK.findall(text) if "<tool_call>" in text else [text]
    calls: list[ToolCall] = []
    errors: list[str] = []
    decoder = json.JSONDecoder()
    for block in blocks:
        block = block.strip().removeprefix("```json").removeprefix("```").strip()
        pos = 0
        found = False
        while pos < len(block):
            start = min((i for i in (block.find("{", pos), block.find("[", pos)) if i >= 0), default=-1)
            if start < 0:
                break
            try:
                value, end = decoder.raw_decode(block, start)
            except ValueError:
                pos = start + 1
                continue
            for obj in _call_objects(value):
                args = obj.get("arguments", obj.get("parameters", {}))
                calls.append(ToolCall(id=f"call_{len(calls)}", name=obj["name"],
                                      arguments=args if isinstance(args, str) else json.dumps(args)))
                found = True
            pos = end
        if not found:
            errors.append(f"no call in {block[:120]!r}")
    return calls, errors


def _result(done: Completion) -> StandardResult:
    calls = list(done.tool_calls)
    errors: list[str] = []
    if not calls and done.content:
        calls, errors = parse_calls_text(done.content)
    return StandardResult(calls=calls, usage=done.usage, wall_seconds=done.wall_seconds,
                          text=done.content, errors=errors)


async def decode_standard(model: ChatModel, messages: Sequence[dict[str, Any]],
                          specs: Sequence[dict[str, Any]], *, max_tokens: int = 512) -> StandardResult:
    """Let the model write the whole call(s) (OpenAI ``tools``); greedy.

    Raises:
        ModelError: as ``model.complete``.
    """
    done = await model.complete(list(messages), tools=wire_tools(specs), max_tokens=max_tokens,
                                temperature=0.0)
    assert isinstance(done, Completion)
    return _result(done)


def calls_schema(specs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """JSON Schema of ``{"calls": [...]}`` where each call is one of ``specs`` with its parameters."""
    one = [{"type": "object", "properties": {"name": {"const": s["name"]}, "arguments": s["parameters"]},
            "required": ["name", "arguments"], "additionalProperties": False} for s in specs]
    return {"type": "object", "properties": {"calls": {"type": "array", "minItems": 1,
                                                       "items": one[0] if len(one) == 1 else {"anyOf": one}}},
            "required": ["calls"], "additionalProperties": False}


async def decode_constrained(model: ChatModel, messages: Sequence[dict[str, Any]],
                             specs: Sequence[dict[str, Any]], *, max_tokens: int = 512) -> StandardResult:
    """The whole answer constrained by `calls_schema` (``response_format`` json_schema); greedy.

    Raises:
        ModelError: as ``model.complete``.
    """
    done = await model.complete(
        list(messages), tools=wire_tools(specs), max_tokens=max_tokens, temperature=0.0,
        response_format={"type": "json_schema", "json_schema": {"name": "calls", "schema": calls_schema(specs)}})
    assert isinstance(done, Completion)
    return _result(done)
