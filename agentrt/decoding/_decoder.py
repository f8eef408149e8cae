"""`ParallelCallDecoder`: function name constrained, skeleton written, argument values in parallel.

Method (SimpleTool, 2026: a call's delimiters and parameter names are predictable and its
arguments weakly dependent, so only the name and the values need decoding, the values at once):

1. The server's chat template renders the messages and tools (``/apply-template``); the text it
   writes around a call is learned from a probe rendering (`derive_call_syntax`).
2. Calls (default ``context="incremental"``): per call, one request continues the turn after the
   earlier calls (written in full) under a grammar admitting the end of the turn or another call:
   a tool name (an enum of exact strings, dots allowed) and that tool's first required argument
   under its JSON Schema. The turn is written as the pretty-printed JSON object ``{"calls": [...]}``
   (`JSON_CALLS`) rather than in the template's own syntax: there, the 1.5B model merges "Taylor
   Swift and Maroon 5" into one call; here it makes two (seen on BFCL here; see ``framing``).
   ``context="skeleton"`` decides every call's name and first argument in ONE outline request
   (`outline_grammar`, the rest elided as ``...``), then decodes every other argument of every
   call at once. Deciding the count in one step did not work on Qwen2.5-Coder-1.5B: with the
   arguments elided it repeated the same call up to the cap (8 calls for a 2-call question) in the
   template syntax and stopped after one call in JSON (seen here, greedy).
3. Skeleton: ``after_name + "{" + first pair + '"key":'`` is written by us, never decoded.
4. Remaining required arguments of the call: one branch per argument, all issued at once, each
   continuing ``prompt + earlier calls + this call so far + '"key":'`` under that
   argument's JSON Schema (``%json``), each ending at its own value (the grammar stops it one
   delimiter after the value). With ``context="skeleton"`` the branches of all calls run at once,
   call i's after calls 0..i-1 as the outline wrote them, so each knows which call it is.
5. Optional arguments: the last required branch continues past its value; its first token after
   the value is ``}`` (none present) or the start of an optional pair, so absence costs one token
   and no request; present ones are decoded there, each under its schema. A call with optional
   arguments only has one request for them.
6. The object is assembled and validated (`Tool.validate_args`, or the JSON Schema); a failed
   branch raises `DecodingError` naming the argument - never a malformed call. A call identical to
   an earlier one of the turn is dropped (``dedupe``).

Prefix reuse (measured here on llama.cpp b-2026 via xllamacpp, 4 slots, ``cache_prompt``): a
slot reuses only its own KV cache, so a branch on another slot re-evaluates the whole prompt
(``timings.prompt_n`` = 242 of 244 tokens) while branches pinned to the slot that decoded the name
evaluate 2-3 tokens each. ``slots="pinned"`` (default) pins every request of a call to that slot:
the prompt is evaluated once, the branches queue on the slot. ``slots="spread"`` lets the server
place branches on any free slot: they decode concurrently (batched) but each new slot evaluates the
prompt again - worth it only where prompt evaluation is cheap against decoding (a GPU server).
``slots="auto"`` pins nothing: the server picks an idle slot for each request, preferring the one
whose cache shares the longest prefix (llama.cpp ``slot_prompt_similarity``). On a server shared
with other clients a pinned request waits for whatever another client runs in that slot (minutes
for a long generation at ~1 tok/s, seen in the BFCL bench here), while ``auto`` re-evaluates the
prompt on another slot instead.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import anyio

from agentrt.decoding._grammar import (
    VALUE_END,
    _tail_rules,
    lark_string,
    optional_tail_grammar,
    outline_grammar,
    value_grammar,
    value_tail_grammar,
)
from agentrt.decoding._llamacpp import LlamaCppEndpoint, RawCompletion
from agentrt.decoding._standard import decode_standard, wire_tools
from agentrt.decoding._template import (
    JSON_CALL_LINES,
    JSON_CALLS,
    CallSyntax,
    derive_call_syntax,
    probe_messages,
)
from agentrt.errors import DecodingError, InvalidArguments, ModelError
from agentrt.llm import OpenAIChatModel, ToolCall
from agentrt.tools import Tool, ToolRegistry

__all__ = ["BranchRecord", "DecodeResult", "DecodeStats", "ParallelCallDecoder", "branch_schema", "decode_calls"]

log = logging.getLogger(__name__)

Slots = Literal["pinned", "spread", "auto"]
Context = Literal["incremental", "skeleton", "decoded"]
Framing = Literal["json", "json_lines", "template"]
#: What stands for the arguments not yet decoded in the outline and in later calls' prefixes: the
#: model sees that the call has more arguments without their values.
ELIDED = "..."
#: JSON Schema keywords passed to the value grammar; annotations (description, title, default,
#: examples, BFCL's "optional") are dropped: they do not constrain and some grammars reject them.
_SCHEMA_KEYS = {"type", "properties", "required", "items", "prefixItems", "enum", "const", "anyOf", "oneOf",
                "allOf", "additionalProperties", "minItems", "maxItems", "minLength", "maxLength", "pattern",
                "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "$ref", "$defs", "format"}


def branch_schema(schema: Any) -> Any:
    """``schema`` with annotation keywords removed (recursively); see `_SCHEMA_KEYS`."""
    if isinstance(schema, list):
        return [branch_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in _SCHEMA_KEYS:
            continue
        if key in ("properties", "$defs") and isinstance(value, dict):
            out[key] = {k: branch_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems"):
            out[key] = branch_schema(value)
        else:
            out[key] = value
    return out


@dataclass
class BranchRecord:
    """One request of a decode: what it decoded and what it cost.

    Attributes:
        label: ``name``, ``arg:<key>``, ``optional``, ``more`` (with ``#<call index>``).
        started, ended: ``time.perf_counter()`` seconds.
        prompt_n: prompt tokens evaluated; cache_n: prompt tokens reused from the slot's cache.
        tokens: tokens decoded; slot: server slot.
    """

    label: str
    started: float
    ended: float
    prompt_n: int
    cache_n: int
    tokens: int
    slot: int


@dataclass
class DecodeStats:
    """Totals of one decode: requests, tokens decoded, prompt tokens evaluated/reused, wall seconds."""

    requests: int = 0
    tokens_decoded: int = 0
    prompt_tokens_evaluated: int = 0
    prompt_tokens_cached: int = 0
    wall_seconds: float = 0.0
    branches: list[BranchRecord] = field(default_factory=list)

    def add(self, label: str, r: RawCompletion) -> None:
        self.requests += 1
        self.tokens_decoded += r.tokens_predicted
        self.prompt_tokens_evaluated += r.prompt_n
        self.prompt_tokens_cached += r.cache_n
        self.branches.append(BranchRecord(label, r.started, r.ended, r.prompt_n, r.cache_n,
                                          r.tokens_predicted, r.id_slot))


@dataclass
class DecodeResult:
    """Calls of one assistant turn.

    Attributes:
        calls: in order; ``arguments`` is JSON text, validated against the tool's schema.
        mode: ``"parallel"``, or ``"fallback"`` (ordinary tool-call decoding; see ``fallback_reason``).
        stats: what the decode cost (for ``fallback``: tokens from the completion's usage).
    """

    calls: list[ToolCall]
    mode: Literal["parallel", "fallback"]
    fallback_reason: str | None
    stats: DecodeStats

    @property
    def fallback(self) -> bool:
        return self.mode == "fallback"


@dataclass
class _Spec:
    name: str
    description: str
    parameters: dict[str, Any]
    tool: Tool | None

    @property
    def wire(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def split(self) -> tuple[list[str], list[str]]:
        props = list((self.parameters.get("properties") or {}).keys())
        required = [k for k in props if k in set(self.parameters.get("required") or [])]
        return required, [k for k in props if k not in required]

    def value_schema(self, key: str) -> dict[str, Any]:
        schema = branch_schema((self.parameters.get("properties") or {}).get(key) or {})
        if "$defs" in self.parameters:  # a mapping of named schemas, not a schema: keep the names
            schema = {**schema, "$defs": {name: branch_schema(sub)
                                          for name, sub in self.parameters["$defs"].items()}}
        return schema

    def validate(self, args: dict[str, Any]) -> None:
        if self.tool is not None:
            try:
                self.tool.validate_args(args)
            except InvalidArguments as exc:
                raise DecodingError(f"decoded arguments of {self.name} do not validate: {exc}") from exc
            return
        try:
            import jsonschema
        except ImportError:  # the grammar already constrained each value; check what it cannot
            missing = [k for k in self.split()[0] if k not in args]
            if missing:
                raise DecodingError(f"decoded arguments of {self.name} lack required {missing}") from None
            return
        errors = sorted(jsonschema.Draft202012Validator(branch_schema(self.parameters)).iter_errors(args),
                        key=lambda e: list(e.path))
        if errors:
            raise DecodingError(f"decoded arguments of {self.name} do not validate: "
                                + "; ".join(f"{'/'.join(map(str, e.path)) or '(args)'}: {e.message}"
                                            for e in errors))


def _spec(tool: Tool | dict[str, Any]) -> _Spec:
    if isinstance(tool, Tool):
        return _Spec(tool.name, tool.description, tool.parameters, tool)
    fn = tool.get("function", tool) if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise TypeError(f"a tool must be a Tool or an OpenAI function spec, got {tool!r:.200}")
    return _Spec(fn["name"], fn.get("description", ""), fn.get("parameters") or {"type": "object"}, None)


_SCALARS = {"string", "number", "integer", "boolean", "null"}


def _is_scalar(schema: dict[str, Any]) -> bool:
    """Whether every value valid against ``schema`` is a JSON scalar (its text has no raw newline)."""
    if any(k in schema for k in ("properties", "items", "prefixItems", "anyOf", "oneOf", "allOf", "$ref")):
        return False
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return all(not isinstance(v, (dict, list)) for v in values)
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    return bool(kinds) and all(k in _SCALARS for k in kinds)


def _inner(syntax: CallSyntax, args: dict[str, Any]) -> str:
    """The pairs of ``args`` as ``syntax`` writes them, without the braces."""
    return json.dumps(args, ensure_ascii=False, separators=(syntax.item_sep, syntax.key_sep))[1:-1]


def _close_object(text: str) -> Any:
    """The JSON object ``text`` starts with; a pretty-printed one whose branch stopped at the
    newline after its last value is closed first. Raises ValueError when there is none."""
    text = text.rstrip()
    if not text.endswith("}"):
        text += "}"
    value, _ = json.JSONDecoder().raw_decode(text)
    return value


def _parse_value(content: str, label: str) -> Any:
    text = content.lstrip()
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except ValueError as exc:
        raise DecodingError(f"branch {label} produced no JSON value: {content[:200]!r}") from exc
    if text[end:].strip(" \t\n,}"):
        raise DecodingError(f"branch {label} wrote past its value: {content[:200]!r}")
    return value


class ParallelCallDecoder:
    """Decode tool calls with the name constrained and argument values decoded in parallel.

    Args:
        model: an `OpenAIChatModel` (its ``base_url``), or an OpenAI base URL (``http://h:p/v1``).
        tools: `Tool` objects or OpenAI function specs (``{"type": "function", "function": {...}}``
            or bare ``{"name", "description", "parameters"}``). Names may contain dots.
        slots: ``"pinned"``, ``"spread"`` or ``"auto"`` (see the module doc: prefix reuse vs
            concurrency vs waiting behind other users of a shared server).
        max_calls: most calls decoded in one turn (the names step's grammar admits no more).
        context: how the calls of a turn are decided and what call i's branches see of the calls
            before it. ``"incremental"`` (default): one request decides whether another call
            follows, its name and first argument, after the earlier calls written in full; then
            that call's other arguments decode at once. ``"skeleton"``: one outline request
            decides every call's name and first argument (the rest elided), then every other
            argument of every call decodes at once, each after the outline of the earlier calls.
            ``"decoded"``: the same outline, then calls one after another, each after the earlier
            calls in full. On Qwen2.5-Coder-1.5B the one-request outline gets the number of calls
            wrong (see the module doc), so ``"incremental"`` is the default; on a server whose
            branches queue on one slot (``slots="pinned"``) the three cost about the same time.
        dedupe: drop a call identical (name and arguments) to an earlier one of the same turn.
        framing: how a turn's calls are written for the model to continue, after the generation
            prompt: ``"json"`` (default; `JSON_CALLS`, ``{"calls": [{"name", "arguments"}, ...]}``
            pretty-printed as the model writes it under a JSON-schema constraint),
            ``"json_lines"`` (`JSON_CALL_LINES`: one call per line) or ``"template"`` (the chat
            template's own tool-call syntax, learned from a probe). Seen here on BFCL with
            Qwen2.5-Coder-1.5B, greedy: the template syntax merges two requested calls into one
            (parallel_0) or ends after the first (parallel_1, parallel_multiple_0/1); one-line
            JSON ends after the first; ``json_lines`` splits them but then goes on calling (7
            calls for the 1-call multiple_0); pretty-printed JSON made the right calls and ended.
        max_value_tokens: cap on tokens of one argument value (a value cut there is an error).
        model_name: the OpenAI ``model`` field when ``model`` is a URL (for the fallback path).
        timeout: seconds one request may take, queueing included: llama.cpp answers a
            ``/completion`` only when done, and on a server whose slots are all busy a request
            waits for a free one (over 300 s seen here behind other clients' long generations).

    Needs llama.cpp's native ``/apply-template`` and ``/completion`` (llama.cpp server, the local
    engine). Elsewhere (vLLM, OpenAI...) `decode` falls back to ordinary tool-call decoding through
    the OpenAI ``tools`` field, logs a warning once, and marks the result ``mode="fallback"``.
    """

    def __init__(self, model: OpenAIChatModel | str, tools: Sequence[Tool | dict[str, Any]], *,
                 slots: Slots = "pinned", max_calls: int = 8, max_value_tokens: int = 256,
                 model_name: str | None = None, timeout: float = 900.0, context: Context = "incremental",
                 dedupe: bool = True, framing: Framing = "json") -> None:
        if isinstance(model, str):
            self.model = OpenAIChatModel(model, model_name or "default")
        else:
            self.model = model
        self.specs = {s.name: s for s in map(_spec, tools)}
        if not self.specs:
            raise ValueError("ParallelCallDecoder needs at least one tool")
        if slots not in ("pinned", "spread", "auto"):
            raise ValueError(f"slots must be 'pinned', 'spread' or 'auto', not {slots!r}")
        self.slots = slots
        if context not in ("incremental", "skeleton", "decoded"):
            raise ValueError(f"context must be 'incremental', 'skeleton' or 'decoded', not {context!r}")
        if max_calls < 1:
            raise ValueError("max_calls must be >= 1")
        self.context = context
        if framing not in ("json", "json_lines", "template"):
            raise ValueError(f"framing must be 'json', 'json_lines' or 'template', not {framing!r}")
        self.framing = framing
        self.dedupe = dedupe
        self.max_calls = max_calls
        self.max_value_tokens = max_value_tokens
        self.endpoint = LlamaCppEndpoint(self.model.base_url, timeout=timeout)
        self._raw_unsupported: str | None | bool = False  # False: not probed yet
        self._syntax: CallSyntax | None = None
        self._warned = False

    async def aclose(self) -> None:
        await self.endpoint.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- capability ------------------------------------------------------------------------

    async def _why_not_parallel(self, messages: list[dict[str, Any]]) -> str | None:
        if self._raw_unsupported is False:
            self._raw_unsupported = await self.endpoint.supports_raw_prompts()
        if self._raw_unsupported:
            return str(self._raw_unsupported)
        if self._syntax is None:
            tools = wire_tools([s.wire for s in self.specs.values()])
            prompt = await self.endpoint.apply_template(messages, tools)
            rendered = await self.endpoint.apply_template(probe_messages(messages), tools)
            self._syntax = derive_call_syntax(prompt, rendered)
            if self._syntax is None:
                return "the chat template does not write tool calls as a name followed by a JSON arguments object"
        return None

    async def supports_parallel(self) -> str | None:
        """None when the endpoint can do parallel decoding, else why not (a sentence)."""
        return await self._why_not_parallel([{"role": "user", "content": "probe"}])

    # -- public ----------------------------------------------------------------------------

    async def decode(self, messages: Sequence[dict[str, Any]]) -> list[ToolCall]:
        """The tool calls of the next assistant turn (see `decode_turn`)."""
        return (await self.decode_turn(messages)).calls

    async def decode_turn(self, messages: Sequence[dict[str, Any]]) -> DecodeResult:
        """Decode the next assistant turn's tool calls (one or more) after ``messages``.

        The turn is decoded as a tool-calling turn (OpenAI ``tool_choice="required"``): at least one
        call is made; whether the turn should answer in text instead is the caller's decision.

        Cost (parallel mode, ``slots="pinned"``, default ``context="incremental"``): one
        ``/apply-template`` request (plus two once per decoder, probing the template); per call,
        one request for its name and first argument (which also decided that the call exists),
        then one per other required argument (the last of which also decides the optional ones;
        a call with optional arguments only: one request for them); and one last request (1-2
        tokens) that ends the turn, unless ``max_calls`` calls were made. Only the first request
        evaluates the whole prompt (unless its slot already holds a prefix of it); every later one
        evaluates only its text after the point where it departs from what the slot holds
        (typically 3-30 tokens; see ``stats.branches[].prompt_n``), as long as no other client
        takes the slot in between.

        Returns:
            `DecodeResult` with the calls (arguments validated), the mode and the cost.

        Raises:
            DecodingError: a branch failed, a value was truncated, or a call did not validate.
            ModelError: the endpoint failed.
        """
        msgs = [dict(m) for m in messages]
        why = await self._why_not_parallel(msgs)
        if why is not None:
            return await self._fallback(msgs, why)
        syntax = self._turn_syntax()
        stats = DecodeStats()
        started = time.perf_counter()
        prompt = await self.endpoint.apply_template(msgs, wire_tools([s.wire for s in self.specs.values()]))
        prompt += syntax.opening
        if self.context == "incremental":
            calls = await self._decode_incremental(prompt, syntax, stats)
            stats.wall_seconds = time.perf_counter() - started
            return DecodeResult(calls=calls, mode="parallel", fallback_reason=None, stats=stats)
        outline, slot = await self._decode_outline(prompt, syntax, stats)
        names = [name for name, _, _ in outline]
        if self.slots == "auto":
            slot = None
        decoded: list[dict[str, Any] | None] = [None] * len(names)
        if self.context == "skeleton":
            # every remaining argument of every call at once; call i's branches continue the prompt
            # with the outline of calls 0..i-1 as the model wrote it (names, first arguments, the
            # rest elided), so each branch knows which call it belongs to
            heads = []
            text = prompt
            for name, _, written in outline:
                heads.append(text + syntax.before_name + name + syntax.after_name)
                text += syntax.before_name + name + written + syntax.call_sep
            errors: list[BaseException] = []

            async def one(i: int) -> None:
                try:
                    decoded[i] = await self._decode_args(self.specs[names[i]], heads[i], outline[i][1], slot,
                                                         stats, f"#{i}", syntax)
                except Exception as exc:  # noqa: BLE001 - reported together below
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                for i in range(len(names)):
                    tg.start_soon(one, i)
            if errors:
                if len(errors) == 1:
                    raise errors[0]
                raise DecodingError(f"{len(errors)} of {len(names)} calls failed: "
                                    + "; ".join(str(e) for e in errors)) from errors[0]
        else:
            # calls in sequence, each call's arguments at once, after the earlier calls in full
            head = prompt
            for i, (name, first, _) in enumerate(outline):
                decoded[i] = await self._decode_args(self.specs[name], head + syntax.before_name + name
                                                     + syntax.after_name, first, slot, stats, f"#{i}", syntax)
                head += syntax.call_text(name, decoded[i]) + syntax.call_sep
        calls: list[ToolCall] = []
        for i, (name, args) in enumerate(zip(names, decoded, strict=True)):
            assert args is not None
            arguments = json.dumps(args, ensure_ascii=False)
            if self.dedupe and any(c.name == name and c.arguments == arguments for c in calls):
                # the model named more calls than it could tell apart: a repeated call is dropped
                log.debug("call %d repeats an earlier call (%s); dropped", i, name)
                continue
            calls.append(ToolCall(id=f"call_{len(calls)}", name=name, arguments=arguments))
        stats.wall_seconds = time.perf_counter() - started
        return DecodeResult(calls=calls, mode="parallel", fallback_reason=None, stats=stats)

    async def decode_arguments(self, tool: Tool | dict[str, Any] | str, prefix_messages: Sequence[dict[str, Any]],
                               partial: dict[str, Any] | None = None) -> tuple[dict[str, Any], DecodeStats]:
        """Arguments of a call whose tool is already known (a plan task's), values in parallel.

        Args:
            tool: the tool (or the name of one given to the decoder).
            prefix_messages: the conversation the call answers.
            partial: arguments already fixed (written into the prefix, not decoded).

        Returns:
            ``(arguments, stats)``; ``arguments`` validated, ``partial`` included.

        Raises:
            DecodingError: as `decode_turn`; also when the endpoint lacks raw prompts (no
                fallback here: the caller asked for these arguments only).
        """
        spec = self.specs[tool] if isinstance(tool, str) else _spec(tool)
        msgs = [dict(m) for m in prefix_messages]
        why = await self._why_not_parallel(msgs)
        if why is not None:
            raise DecodingError(f"cannot decode arguments in parallel here: {why}")
        assert self._syntax is not None
        stats = DecodeStats()
        started = time.perf_counter()
        prompt = await self.endpoint.apply_template(msgs, wire_tools([spec.wire]))
        args = await self._decode_args(spec, prompt + self._syntax.before_name + spec.name + self._syntax.after_name,
                                       dict(partial or {}), None, stats, "")
        stats.wall_seconds = time.perf_counter() - started
        return args, stats

    # -- steps -----------------------------------------------------------------------------

    async def _request(self, label: str, stats: DecodeStats, prompt: str, **kw: Any) -> RawCompletion:
        try:
            r = await self.endpoint.complete(prompt, **kw)
        except ModelError as exc:
            raise DecodingError(f"branch {label} failed: {type(exc).__name__}: {exc}") from exc
        stats.add(label, r)
        return r

    def _turn_syntax(self) -> CallSyntax:
        """How this decoder writes a turn's calls (``framing``)."""
        if self.framing == "json":
            return JSON_CALLS
        if self.framing == "json_lines":
            return JSON_CALL_LINES
        assert self._syntax is not None
        return self._syntax

    def _outline_parts(self, syntax: CallSyntax) -> dict[str, tuple[str | None, str, str]]:
        """Per tool: (the argument decoded in the outline or None, the grammar of the text after
        its name to the end of the call, the text the grammar forces after that argument's value
        (after the name when there is none) to the end of the call)."""
        key_sep = syntax.key_sep.rstrip()
        lead = syntax.key_sep[len(key_sep):]
        parts: dict[str, tuple[str | None, str, str]] = {}
        for name, spec in self.specs.items():
            required, optional = spec.split()
            if not required:
                tail = syntax.after_name + ("{" + ELIDED + "}" if optional else "{}") + syntax.call_close
                parts[name] = (None, lark_string(tail), tail)
                continue
            key = required[0]
            more = len(required) > 1 or bool(optional)
            tail = (syntax.item_sep + ELIDED + "}" if more else "}") + syntax.call_close
            opening = lark_string(syntax.after_name + syntax.args_open + json.dumps(key, ensure_ascii=False)
                                  + key_sep + lead)
            parts[name] = (key, f"{opening} %json {json.dumps(spec.value_schema(key))} {lark_string(tail)}", tail)
        return parts

    async def _decode_outline(self, prompt: str, syntax: CallSyntax, stats: DecodeStats
                              ) -> tuple[list[tuple[str, dict[str, Any], str]], int]:
        """The number of calls, their names and each call's first required argument, in one
        constrained request (`outline_grammar`), written as the template writes several calls with
        the other arguments elided: ``[(name, {first key: value}, text after the name)]``, slot."""
        parts = self._outline_parts(syntax)
        names = sorted(self.specs, key=len, reverse=True)
        grammar = outline_grammar([(n, parts[n][1]) for n in names], call_sep=syntax.call_sep,
                                  before_name=syntax.before_name, max_calls=self.max_calls, closing=syntax.closing)
        sep = syntax.call_sep + syntax.before_name
        budget = self.max_calls * (len(names[0]) + len(syntax.after_name) + len(syntax.call_close) + len(sep)
                                   + 16 + self.max_value_tokens // 4)
        r = await self._request("outline", stats, prompt + syntax.before_name, n_predict=budget, grammar=grammar,
                                id_slot=None)
        if r.stop_type == "limit":
            raise DecodingError(f"outline step was cut at {budget} tokens: {r.content[:200]!r}")
        found: list[tuple[str, dict[str, Any], str]] = []
        text = r.content
        decoder = json.JSONDecoder()
        while True:
            name = next((n for n in names if text.startswith(n + syntax.after_name)), None)
            if name is None:
                raise DecodingError(f"outline step produced no known tool name at {text[:120]!r} "
                                    f"(whole answer {r.content[:200]!r})")
            key, _, tail = parts[name]
            pos = len(name)
            first: dict[str, Any] = {}
            if key is not None:
                head = syntax.after_name + syntax.args_open + json.dumps(key, ensure_ascii=False) + syntax.key_sep.rstrip()
                if not text.startswith(head, pos):
                    raise DecodingError(f"outline step did not write {key!r} of {name}: {text[:160]!r}")
                start = pos + len(head)
                start += len(text[start:]) - len(text[start:].lstrip())
                try:
                    first[key], pos = decoder.raw_decode(text, start)
                except ValueError as exc:
                    raise DecodingError(f"outline step wrote no JSON value for {key!r} of {name}: "
                                        f"{text[start:start + 160]!r}") from exc
            if not text.startswith(tail, pos):
                raise DecodingError(f"outline step did not close the call to {name}: {text[:160]!r}")
            end = pos + len(tail)
            found.append((name, first, text[len(name):end]))
            text = text[end:]
            if not text.startswith(sep):
                break
            text = text[len(sep):]
        ends = ("", syntax.call_sep.strip()) if syntax.closing is None else (syntax.closing,)
        if text.strip() not in ends:
            raise DecodingError(f"outline step wrote past its calls: {r.content[:200]!r}")
        return found, r.id_slot

    async def _decode_incremental(self, prompt: str, syntax: CallSyntax, stats: DecodeStats) -> list[ToolCall]:
        """Calls one after another: per call one request decides whether it exists (after the
        first), its name and first required argument; then its other arguments decode at once."""
        parts = self._outline_parts(syntax)
        names = sorted(self.specs, key=len, reverse=True)
        key_sep = syntax.key_sep.rstrip()
        lead = syntax.key_sep[len(key_sep):]
        rules = []
        extra_rules: list[str] = []
        whole: set[str] = set()  # tools whose whole call this step decodes (at most one required)
        for t, name in enumerate(names):
            key = parts[name][0]
            required, optional = self.specs[name].split()
            tail_items = [(k, self.specs[name].value_schema(k)) for k in optional]
            if key is None:
                whole.add(name)
                if not optional:
                    rules.append((name, lark_string(syntax.after_name + "{}")))
                    continue
                expr, lines = _tail_rules(tail_items, after_pair=False, key_sep=syntax.key_sep,
                                          item_sep=syntax.item_sep, prefix=f"o{t}")
                rules.append((name, f"{lark_string(syntax.after_name + syntax.args_open)} ({expr})"))
                extra_rules += lines
                continue
            opening = lark_string(syntax.after_name + syntax.args_open + json.dumps(key, ensure_ascii=False)
                                  + key_sep + lead)
            schema = json.dumps(self.specs[name].value_schema(key))
            if len(required) == 1:
                whole.add(name)
                expr, lines = _tail_rules(tail_items, after_pair=True, key_sep=syntax.key_sep,
                                          item_sep=syntax.item_sep, prefix=f"o{t}")
                rules.append((name, f"{opening} %json {schema} ({expr})"))
                extra_rules += lines
            else:
                rules.append((name, f"{opening} %json {schema} {VALUE_END}"))
        sep = syntax.call_sep + syntax.before_name
        # the end of the turn needs only its first character to be decided (the rest is ours)
        end = lark_string(syntax.closing.lstrip(" ")[:1]) if syntax.closing else (
            f"{lark_string(syntax.call_sep)}?" if syntax.call_sep else '""')
        calls: list[ToolCall] = []
        head = prompt
        slot: int | None = None
        decoder = json.JSONDecoder()
        for index in range(self.max_calls):
            alts = " | ".join(f"c{i}" for i in range(len(rules)))
            body = "\n".join([f"c{i}: {lark_string(n)} {r}" for i, (n, r) in enumerate(rules)] + extra_rules)
            if index == 0:
                grammar = f"%llguidance {{}}\nstart: c\nc: {alts}\n{body}\n"
                request_prompt = head + syntax.before_name
            else:
                grammar = (f"%llguidance {{}}\nstart: {end} | {lark_string(sep)} c\nc: {alts}\n{body}\n")
                request_prompt = head
            r = await self._request(f"call#{index}", stats, request_prompt, n_predict=self.max_value_tokens + 48,
                                    grammar=grammar, id_slot=slot)
            if slot is None and self.slots != "auto":
                slot = r.id_slot
            text = r.content
            if index > 0:
                if not text.startswith(sep):
                    break  # the turn ends here
                text = text[len(sep):]
            if r.stop_type == "limit":
                raise DecodingError(f"call #{index} step was cut at {self.max_value_tokens + 48} tokens: "
                                    f"{r.content[:200]!r}")
            name = next((n for n in names if text.startswith(n + syntax.after_name)), None)
            if name is None:
                raise DecodingError(f"call #{index} step produced no known tool name: {r.content[:200]!r}")
            key = parts[name][0]
            first: dict[str, Any] = {}
            if name in whole:
                try:
                    first = _close_object(text[len(name) + len(syntax.after_name):])
                    if not isinstance(first, dict):
                        raise ValueError("not an object")  # noqa: TRY004 - caught below
                except ValueError as exc:
                    raise DecodingError(f"call #{index} step wrote no arguments object for {name}: "
                                        f"{r.content[:200]!r}") from exc
            elif key is not None:
                start = (len(name) + len(syntax.after_name) + len(syntax.args_open)
                         + len(json.dumps(key, ensure_ascii=False)) + len(key_sep))
                try:
                    first[key], _ = decoder.raw_decode(text, start + len(text[start:]) - len(text[start:].lstrip()))
                except ValueError as exc:
                    raise DecodingError(f"call #{index} step wrote no JSON value for {key!r} of {name}: "
                                        f"{r.content[:200]!r}") from exc
            required = self.specs[name].split()[0]
            if calls and name not in whole and set(required) <= set(first) and any(
                    c.name == name and all(json.loads(c.arguments).get(k) == v for k, v in first.items())
                    for c in calls):
                # every required argument repeats an earlier call's: greedy decoding looping on the
                # last call, not a new one (its optional arguments are not worth a request)
                log.debug("call %d repeats an earlier call's required arguments (%s); the turn ends here", index, name)
                break
            opened = head + (syntax.before_name if index == 0 else sep) + name + syntax.after_name
            args = await self._decode_args(self.specs[name], opened, first, slot, stats, f"#{index}", syntax,
                                           optional_done=name in whole)
            arguments = json.dumps(args, ensure_ascii=False)
            if any(c.name == name and c.arguments == arguments for c in calls):
                # greedy decoding that repeats a call it already made is looping, not asking twice
                log.debug("call %d repeats an earlier call (%s); the turn ends here", index, name)
                break
            calls.append(ToolCall(id=f"call_{index}", name=name, arguments=arguments))
            head = opened + syntax.args_text(args) + syntax.call_close
        return calls

    async def _decode_args(self, spec: _Spec, call_prefix: str, partial: dict[str, Any], slot: int | None,
                           stats: DecodeStats, tag: str, syntax: CallSyntax | None = None,
                           optional_done: bool = False) -> dict[str, Any]:
        syntax = syntax or self._syntax
        assert syntax is not None
        required, optional = spec.split()
        unknown = set(partial) - set(required) - set(optional)
        if unknown:
            raise DecodingError(f"partial arguments {sorted(unknown)} are not parameters of {spec.name}")
        open_ = call_prefix + syntax.args_open + (_inner(syntax, partial) + syntax.item_sep if partial else "")
        key_sep = syntax.key_sep.rstrip()
        lead = syntax.key_sep[len(key_sep):]
        todo = [k for k in required if k not in partial]
        rest = [] if optional_done else [k for k in optional if k not in partial]
        # the last required branch also decides the optional arguments (one request fewer)
        tail_key = todo[-1] if todo and rest else None
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        errors: dict[str, BaseException] = {}
        branch_slot = slot if self.slots == "pinned" else None

        async def branch(key: str) -> None:
            label = f"arg:{key}{tag}"
            key_text = json.dumps(key, ensure_ascii=False) + key_sep
            if key == tail_key:
                grammar = value_tail_grammar(spec.value_schema(key), [(k, spec.value_schema(k)) for k in rest],
                                             lead=lead, key_sep=syntax.key_sep, item_sep=syntax.item_sep)
            else:
                grammar = value_grammar(spec.value_schema(key), lead)
            # a scalar value's text has no raw newline: stop there instead of decoding the indentation
            stop = ["\n"] if key != tail_key and _is_scalar(spec.value_schema(key)) else None
            try:
                r = await self._request(label, stats, open_ + key_text, n_predict=self.max_value_tokens,
                                        grammar=grammar, id_slot=branch_slot, stop=stop)
                if r.stop_type == "limit":
                    raise DecodingError(f"branch {label} was cut at {self.max_value_tokens} tokens "
                                        f"before its value ended: {r.content[:120]!r}")
                if key != tail_key:
                    values[key] = _parse_value(r.content, label)
                    return
                try:
                    full = _close_object("{" + key_text + r.content)
                    if not isinstance(full, dict) or key not in full:
                        raise ValueError("no object")
                except ValueError as exc:
                    raise DecodingError(f"branch {label} did not close the arguments: {r.content[:200]!r}") from exc
                values[key] = full.pop(key)
                extra.update(full)
            except Exception as exc:  # noqa: BLE001 - collected: every failing branch is named in one error
                errors[key] = exc

        async with anyio.create_task_group() as tg:
            for key in todo:
                tg.start_soon(branch, key)
        if errors:
            detail = "; ".join(f"{k}: {e}" for k, e in errors.items())
            raise DecodingError(f"{spec.name}: {len(errors)} of {len(todo)} argument branches failed: "
                                f"{detail}") from next(iter(errors.values()))
        args = {**partial, **{k: values[k] for k in required if k in values}}
        if tail_key is not None:
            args.update({k: extra[k] for k in rest if k in extra})
        elif rest:
            args = await self._decode_optional(spec, call_prefix, args, rest, slot, stats, tag, syntax)
        spec.validate(args)
        return args

    async def _decode_optional(self, spec: _Spec, call_prefix: str, args: dict[str, Any], rest: list[str],
                               slot: int | None, stats: DecodeStats, tag: str, syntax: CallSyntax) -> dict[str, Any]:
        inner = _inner(syntax, args)
        grammar = optional_tail_grammar([(k, spec.value_schema(k)) for k in rest], after_required=bool(args),
                                        key_sep=syntax.key_sep, item_sep=syntax.item_sep)
        label = f"optional{tag}"
        r = await self._request(label, stats, call_prefix + syntax.args_open + inner,
                                n_predict=self.max_value_tokens, grammar=grammar, id_slot=slot)
        if r.stop_type == "limit":
            raise DecodingError(f"branch {label} was cut at {self.max_value_tokens} tokens: {r.content[:120]!r}")
        try:
            full = _close_object("{" + inner + r.content)
        except ValueError as exc:
            raise DecodingError(f"branch {label} did not close the arguments: {r.content[:200]!r}") from exc
        if not isinstance(full, dict):
            raise DecodingError(f"branch {label} did not produce an object: {r.content[:200]!r}")
        return full

    async def _fallback(self, messages: list[dict[str, Any]], why: str) -> DecodeResult:
        if not self._warned:
            log.warning("parallel function-call decoding unavailable at %s (%s); falling back to ordinary "
                        "tool-call decoding", self.endpoint.root, why)
            self._warned = True
        started = time.perf_counter()
        result = await decode_standard(self.model, messages, [s.wire for s in self.specs.values()])
        calls: list[ToolCall] = []
        for call in result.calls:
            spec = self.specs.get(call.name)
            if spec is None:
                raise DecodingError(f"the model called an unknown tool {call.name!r} (fallback decoding)")
            try:
                args = json.loads(call.arguments or "{}")
            except ValueError as exc:
                raise DecodingError(f"the model wrote invalid JSON arguments for {call.name}: "
                                    f"{call.arguments[:200]!r}") from exc
            if not isinstance(args, dict):
                raise DecodingError(f"arguments of {call.name} are not an object: {call.arguments[:200]!r}")
            spec.validate(args)
            calls.append(call)
        if not calls:
            raise DecodingError(f"the model made no tool call (fallback decoding): {result.text[:200]!r}")
        stats = DecodeStats(requests=result.usage.requests, tokens_decoded=result.usage.output_tokens,
                            prompt_tokens_evaluated=result.usage.input_tokens - result.usage.cached_tokens,
                            prompt_tokens_cached=result.usage.cached_tokens,
                            wall_seconds=time.perf_counter() - started)
        return DecodeResult(calls=calls, mode="fallback", fallback_reason=why, stats=stats)


async def decode_calls(model: OpenAIChatModel | str, messages: Sequence[dict[str, Any]],
                       tools: ToolRegistry | Sequence[Tool | dict[str, Any]], *, allow_fallback: bool = False,
                       **options: Any) -> list[ToolCall]:
    """The tool calls of the next assistant turn after ``messages``, decoded in parallel, validated.

    The entry point for the planner: one call, one decoder (closed on return).

    Args:
        model: an `OpenAIChatModel` or an OpenAI base URL of a llama.cpp server (the local engine).
        messages: the chat so far (e.g. the planner's prompt), OpenAI message dicts.
        tools: a `ToolRegistry`, or `Tool` objects / OpenAI function specs.
        allow_fallback: where the endpoint cannot decode in parallel (no ``/completion``, or a
            template that does not write calls as a name and a JSON object), decode the calls the
            ordinary way (OpenAI ``tools``) instead of raising.
        **options: `ParallelCallDecoder` options (``slots``, ``context``, ``max_calls``,
            ``max_value_tokens``, ``timeout``, ``dedupe``).

    Returns:
        ``[ToolCall]`` in order, at least one; ``arguments`` is JSON text valid against the tool's
        parameters (`Tool.validate_args`, or the JSON Schema of a spec).

    Cost (parallel mode, defaults; see `ParallelCallDecoder.decode_turn`): HTTP requests =
    1 ``/apply-template`` + 2 template probes (once per decoder, so once per `decode_calls`) +
    per call 1 (name and first argument) + 1 per other required argument + 1 to end the turn
    (none when ``max_calls`` calls were made); a call with optional arguments only: +1. Prompt
    tokens evaluated: the templated prompt once (the first request; fewer when the slot already
    holds a prefix of it), then per request only the text after where it departs from its slot's
    cache (~3-30 tokens). Tokens decoded: per call its name, first value and the JSON between
    them (~10-25), each other value with one delimiter (~2-8), the optional tail's ``}`` (1).
    Measured on BFCL here: see ``results/bfcl.json`` (``requests_per_example``,
    ``prompt_tokens_evaluated_per_argument_branch``).

    Raises:
        DecodingError: the endpoint cannot decode in parallel (and ``allow_fallback`` is False), a
            branch failed or was truncated, a name or arguments did not validate; it names the
            step or argument.
        ModelError: the endpoint failed (connection, HTTP error, timeout).
    """
    async with ParallelCallDecoder(model, list(tools), **options) as decoder:
        if not allow_fallback:
            why = await decoder._why_not_parallel([dict(m) for m in messages])
            if why is not None:
                raise DecodingError(f"cannot decode calls in parallel at {decoder.endpoint.root}: {why}")
        result = await decoder.decode_turn(messages)
    if not result.calls:
        raise DecodingError("the decode produced no call")
    return result.calls
