"""`ParallelCallDecoder`: function name constrained, skeleton written, argument values in parallel.

Method (SimpleTool, 2026: a call's delimiters and parameter names are predictable and its
arguments weakly dependent, so only the name and the values need decoding, the values at once):

1. The server's chat template renders the messages and tools (``/apply-template``); the text it
   writes around a call is learned from a probe rendering (`derive_call_syntax`).
2. Calls (default ``context="incremental"``): one after another, each after the earlier calls
   written in full, in the pretty-printed JSON object ``{"calls": [...]}`` (`JSON_CALLS`, the
   framing the model splits several requested calls in; see ``framing``). After a call, ONE
   token decides whether another follows (`_choose`, ``n_predict=1``): the prompt stops before
   the call's last word (`` }``) and the grammar admits the two whole texts the model writes
   there (`` }\n  ]\n}``, end of the calls, or `` },\n    {...``). Where the prompt ended in
   `` }`` and only ``"\n"`` was admitted for the end, the model's own tokens (`` }\n``) were
   impossible and it chose ``,``: 3 of 7 one-call BFCL "multiple" turns went on calling (seen
   here); at the last word it stops where the constrained baseline stops. A call identical to
   an earlier one ends the turn (``dedupe``).
3. The name: written when there is one tool; else decoded under an enum of the names after
   their opening quote and stopped (stop strings) as soon as its first tokens tell the tools
   apart (`unique_prefixes`), the rest of it written. Skeleton - keys, braces, indentation, the
   text between the name and the arguments - is written by us, never decoded.
4. Required arguments: one branch per argument, each continuing ``prompt + earlier calls + this
   call so far + '"key":'`` under that argument's JSON Schema (``%json``), stopped at the newline
   that ends its pair (a value and one delimiter token decoded). On a server slot that runs one
   request at a time (``slots="pinned"``, the local engine) the branches would only queue there,
   so each is issued after the one before and sees the pairs decoded so far (same cost; alone, a
   ``side2`` branch took ``side1``'s value, BFCL multiple_1); with ``slots="spread"``/``"auto"``
   (several slots, or a GPU server batching them) they all go at once (``arguments``). With
   ``context="skeleton"`` one outline request decides every call's name and first argument
   (`outline_grammar`, the rest elided) and the branches of all calls run at once.
5. Optional arguments: after the required ones, one token decides between closing the object
   and another pair; for a pair, its key (first tokens, when several remain), then its value.
   Absent ones cost one request of one token.
6. The object is assembled and validated (`Tool.validate_args`, or the JSON Schema); a failed
   branch raises `DecodingError` naming the argument - never a malformed call. Earlier calls
   are written into later prompts with their values as the model wrote them (``[3, 4]``).

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
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import anyio

from agentrt.decoding._grammar import (
    choice_grammar,
    lark_string,
    outline_grammar,
    quoted_choice_grammar,
    unique_prefixes,
    value_grammar,
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
Arguments = Literal["auto", "parallel", "sequential"]
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
        text: what it decoded (its content and the stop string that ended it, if any).
    """

    label: str
    started: float
    ended: float
    prompt_n: int
    cache_n: int
    tokens: int
    slot: int
    text: str = ""


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
                                          r.tokens_predicted, r.id_slot, r.content + r.stopping_word))


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


def _last_word(text: str) -> str:
    """The last run of non-space characters of ``text`` with the one space before it, if any
    (``" }"`` of ``"\n    }"``, ``"</tool_call>"`` of ``"}\n</tool_call>"``)."""
    m = re.search(r" ?\S+$", text)
    return m.group(0) if m else ""


def _parse_value_text(content: str, label: str) -> tuple[Any, str]:
    """(the JSON value ``content`` starts with, its text); what follows may only be delimiters."""
    text = content.lstrip()
    try:
        value, end = json.JSONDecoder().raw_decode(text)
    except ValueError as exc:
        raise DecodingError(f"branch {label} produced no JSON value: {content[:200]!r}") from exc
    if text[end:].strip(" \t\n,}"):
        raise DecodingError(f"branch {label} wrote past its value: {content[:200]!r}")
    return value, text[:end]


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
            before it. ``"incremental"`` (default): after the earlier calls written in full, one
            token decides whether another call follows, then its name, then its arguments
            (see the module doc). ``"skeleton"``: one outline request
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
        arguments: ``"parallel"``: a call's required arguments are decoded all at once, each
            branch after the call's opening only; ``"sequential"``: one after another, each after
            the pairs decoded so far; ``"auto"`` (default): sequential with ``slots="pinned"``
            (one slot runs one request at a time, so branches issued at once only queue there,
            and a branch that sees the pairs before it knows which argument it is), else parallel.
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
                 dedupe: bool = True, framing: Framing = "json", arguments: Arguments = "auto") -> None:
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
        if arguments not in ("auto", "parallel", "sequential"):
            raise ValueError(f"arguments must be 'auto', 'parallel' or 'sequential', not {arguments!r}")
        self.arguments = arguments
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
        ``/apply-template`` request (plus two once per decoder, probing the template); per call:
        one request for its name (none with one tool; the name's first tokens, ~1-5), one per
        required argument (its value's tokens + 1), for a tool with optional arguments one
        1-token request deciding each further pair (+ per present pair: its key's first tokens
        when several remain, then its value); after each call one 1-token request deciding
        whether another follows (none once ``max_calls`` calls were made). Only the first request
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
        """Calls one after another, each after the earlier calls in full (as the model wrote them).

        Per call: (after the first) one token decides whether another call follows, the choice
        written the way the framing writes it (``,`` opening another call or the end of the calls
        object, each admitted as the whole text the model writes); then the tool name (no request
        with one tool; else the name's first tokens, the request stopped as soon as they tell the
        tools apart); then every required argument at once (`_decode_args`), then the optional
        ones. The skeleton (keys, braces, indentation) is written, never decoded. A call identical
        to an earlier one ends the turn (greedy decoding looping on the last call, not a new one).
        """
        calls: list[ToolCall] = []
        head = prompt
        slot: int | None = None
        sep = syntax.call_sep + syntax.before_name
        end = syntax.closing if syntax.closing is not None else ""
        for index in range(self.max_calls):
            if index > 0:
                # the choice starts at the call's last word (" }" of "\n    }"): the model writes it
                # merged with what follows (" }\n" or " },\n"), and a prompt ending in " }" would
                # leave it only tokens it never writes there (seen: then it chose another call)
                tail = _last_word(syntax.call_close)
                more, r = await self._choose(f"more#{index}", stats, head[:len(head) - len(tail)],
                                             [tail + end, tail + sep], slot)
                if slot is None and self.slots != "auto":
                    slot = r.id_slot
                if more == 0:
                    break
            opened = head + (syntax.before_name if index == 0 else sep)
            name, r = await self._choose_name(f"name#{index}", stats, opened, slot)
            if r is not None and slot is None and self.slots != "auto":
                slot = r.id_slot
            opened += name + syntax.after_name
            args, texts, slot = await self._decode_args_texts(self.specs[name], opened, {}, slot, stats,
                                                              f"#{index}", syntax)
            arguments = json.dumps(args, ensure_ascii=False)
            if self.dedupe and any(c.name == name and c.arguments == arguments for c in calls):
                log.debug("call %d repeats an earlier call (%s); the turn ends here", index, name)
                break
            calls.append(ToolCall(id=f"call_{index}", name=name, arguments=arguments))
            head = opened + syntax.args_text(args, texts) + syntax.call_close
        return calls

    async def _choose(self, label: str, stats: DecodeStats, prompt: str, options: list[str],
                      slot: int | None) -> tuple[int, RawCompletion]:
        """Which of the texts ``options`` the model writes after ``prompt`` (``""``: it ends its
        generation there): one request decoding one token (`choice_grammar`); when that token is a
        prefix of several options, one more token, and so on. Returns (index, last request)."""
        text = ""
        while True:
            live = [i for i, o in enumerate(options) if o.startswith(text)]
            grammar = choice_grammar([options[i][len(text):] for i in live])
            r = await self._request(label, stats, prompt + text, n_predict=1, grammar=grammar,
                                    id_slot=slot if self.slots == "pinned" else None)
            if r.content == "":
                if "" in (options[i][len(text):] for i in live):
                    return next(i for i in live if options[i] == text), r
                raise DecodingError(f"step {label} wrote nothing (stop {r.stop_type}) where one of "
                                    f"{[options[i][len(text):] for i in live]!r} must follow")
            text += r.content
            live = [i for i in live if options[i].startswith(text) or text.startswith(options[i]) and options[i]]
            if len(live) == 1:
                return live[0], r
            if not live:
                raise DecodingError(f"step {label} wrote {text!r}, none of {options!r}")
            if len(text) > max(map(len, options)):
                raise DecodingError(f"step {label} cannot tell {options!r} apart from {text!r}")

    async def _choose_name(self, label: str, stats: DecodeStats, opened: str, slot: int | None
                           ) -> tuple[str, RawCompletion | None]:
        """The tool name after ``opened`` (which ends where the name starts): written when there is
        one tool, else decoded under `quoted_choice_grammar` and stopped as soon as its first
        tokens tell the tools apart (names are quoted: the stop strings start at the quote, so
        they cannot match inside another name)."""
        names = sorted(self.specs, key=len, reverse=True)
        if len(names) == 1:
            return names[0], None
        prompt, lead = opened, ""
        if opened.endswith('"'):
            cut = len(opened[:-1].rstrip(" "))
            prompt, lead = opened[:cut], opened[cut:]
        words = [n + '"' for n in names]
        stops = [lead + p for p in unique_prefixes(words).values()] if lead else None
        grammar = quoted_choice_grammar(lead, names, '"')
        r = await self._request(label, stats, prompt, n_predict=max(map(len, words)) + len(lead) + 2,
                                grammar=grammar, id_slot=slot if self.slots == "pinned" else None, stop=stops)
        text = (r.content + r.stopping_word)[len(lead):]
        found = [n for n in names if (n + '"').startswith(text) or text.startswith(n + '"')]
        if len(found) != 1:
            raise DecodingError(f"step {label} produced no known tool name: {r.content[:200]!r}")
        return found[0], r

    async def _decode_args(self, spec: _Spec, call_prefix: str, partial: dict[str, Any], slot: int | None,
                           stats: DecodeStats, tag: str, syntax: CallSyntax | None = None,
                           optional_done: bool = False) -> dict[str, Any]:
        return (await self._decode_args_texts(spec, call_prefix, partial, slot, stats, tag, syntax,
                                              optional_done))[0]

    async def _decode_args_texts(self, spec: _Spec, call_prefix: str, partial: dict[str, Any], slot: int | None,
                                 stats: DecodeStats, tag: str, syntax: CallSyntax | None = None,
                                 optional_done: bool = False
                                 ) -> tuple[dict[str, Any], dict[str, str], int | None]:
        """Arguments of one call after ``call_prefix`` (which ends with ``after_name``): every
        required argument not in ``partial`` in its own branch, all at once, each continuing
        ``call_prefix + args_open + partial pairs + '"key":'``; then the optional ones
        (`_decode_optional`). Returns (validated arguments, the text of each decoded value as
        the model wrote it, the slot the requests used)."""
        syntax = syntax or self._syntax
        assert syntax is not None
        required, optional = spec.split()
        unknown = set(partial) - set(required) - set(optional)
        if unknown:
            raise DecodingError(f"partial arguments {sorted(unknown)} are not parameters of {spec.name}")
        open_ = call_prefix + syntax.args_open + (syntax.pairs_text(partial) + syntax.item_sep if partial else "")
        key_sep = syntax.key_sep.rstrip()
        lead = syntax.key_sep[len(key_sep):]
        todo = [k for k in required if k not in partial]
        rest = [] if optional_done else [k for k in optional if k not in partial]
        values: dict[str, Any] = {}
        texts: dict[str, str] = {}
        errors: dict[str, BaseException] = {}
        slots: list[int] = []
        ends: dict[str, str] = {}  # what each branch wrote after its value (its delimiter)
        branch_slot = slot if self.slots == "pinned" else None

        async def branch(key: str) -> None:
            try:
                values[key], texts[key], r = await self._value(
                    f"arg:{key}{tag}", stats, open_ + json.dumps(key, ensure_ascii=False) + key_sep,
                    spec.value_schema(key), lead, branch_slot)
                slots.append(r.id_slot)
                ends[key] = r.content.lstrip()[len(texts[key]):].strip()
            except Exception as exc:  # noqa: BLE001 - collected: every failing branch is named in one error
                errors[key] = exc

        if self._sequential_arguments():
            # one slot runs one request at a time: branches issued at once would only queue there,
            # so each is issued after the one before and continues it, the pairs decoded so far
            # written (it knows which argument it is: alone, a "side2" branch of a triangle took
            # side1's value, BFCL multiple_1, seen here); the cost is the same
            for key in todo:
                await branch(key)
                if errors:
                    break
                open_ += syntax.pairs_text({key: values[key]}, texts) + syntax.item_sep
                if branch_slot is None and self.slots == "pinned" and slots:
                    slot = branch_slot = slots[0]
        else:
            async with anyio.create_task_group() as tg:
                for key in todo:
                    tg.start_soon(branch, key)
        if errors:
            detail = "; ".join(f"{k}: {e}" for k, e in errors.items())
            raise DecodingError(f"{spec.name}: {len(errors)} of {len(todo)} argument branches failed: "
                                f"{detail}") from next(iter(errors.values()))
        if slot is None and slots and self.slots != "auto":
            slot = slots[0]
        args = {**partial, **{k: values[k] for k in required if k in values}}
        if rest:
            # sequential branches: the last one saw every pair before it, so the delimiter it wrote
            # is the model's choice between another pair ("," - an optional one) and the close
            first = None
            if self._sequential_arguments() and todo:
                first = 1 if ends.get(todo[-1], "").startswith(",") else 0
            args, more_texts = await self._decode_optional(spec, call_prefix, args, texts, rest, slot, stats,
                                                           tag, syntax, first)
            texts.update(more_texts)
        spec.validate(args)
        return args, texts, slot

    def _sequential_arguments(self) -> bool:
        return self.arguments == "sequential" or (self.arguments == "auto" and self.slots == "pinned")

    async def _value(self, label: str, stats: DecodeStats, prompt: str, schema: dict[str, Any], lead: str,
                     slot: int | None) -> tuple[Any, str, RawCompletion]:
        """One argument value after ``prompt`` (which ends with the key and its separator, e.g.
        ``"key":``), constrained by ``schema``; the request stops at the first newline after it
        (``stop=["\\n"]``: in pretty-printed JSON a pair ends there, and a JSON string or scalar
        never holds a raw newline), so it decodes the value and one delimiter token. A value
        written over several lines (a pretty-printed object) is cut there: that branch is decoded
        again without the stop. The space after ``:`` stays in the grammar, not the prompt: the
        tokenizer merges it with what follows (`` "``, `` [``, `` -``), and a prompt ending in a
        space left Qwen2.5 only a bare ``-`` token, which it did not write (``-11`` became ``11``,
        BFCL simple_python_5, seen here). Returns (value, its text, request)."""
        grammar = value_grammar(schema, lead)
        for stop in (["\n"], None):
            r = await self._request(label, stats, prompt, n_predict=self.max_value_tokens, grammar=grammar,
                                    id_slot=slot, stop=stop)
            if r.stop_type == "limit":
                raise DecodingError(f"branch {label} was cut at {self.max_value_tokens} tokens "
                                    f"before its value ended: {r.content[:120]!r}")
            try:
                value, text = _parse_value_text(r.content, label)
            except DecodingError:
                if stop and r.stop_type == "word":
                    log.debug("branch %s wrote its value over several lines (%r); decoding it again whole",
                              label, r.content[:80])
                    continue
                raise
            return value, text, r
        raise AssertionError("unreachable")

    async def _decode_optional(self, spec: _Spec, call_prefix: str, args: dict[str, Any], texts: dict[str, str],
                               rest: list[str], slot: int | None, stats: DecodeStats, tag: str, syntax: CallSyntax,
                               first: int | None = None) -> tuple[dict[str, Any], dict[str, str]]:
        """The optional arguments after the required ones, written as the model writes them: one
        token decides whether the object closes or another pair follows (`_choose`); then, with
        more than one candidate, the key (its first tokens, `_choose_key`), then its value
        (`_value`); again until the object closes or no optional argument is left. Absent ones
        cost one request of one token; none when ``first`` gives the first choice (0: close, 1: a
        pair), as the delimiter after the last required value does (sequential branches), and
        none after an optional value: its delimiter (``,`` or a newline) is the next choice.
        Returns (arguments, texts of the decoded values)."""
        args = dict(args)
        new_texts: dict[str, str] = {}
        key_sep = syntax.key_sep.rstrip()
        lead = syntax.key_sep[len(key_sep):]
        rest = list(rest)
        n = 0
        while rest:
            all_texts = {**texts, **new_texts}
            if args:  # after the last value: the object closes, or a separator and a key follow
                prompt = call_prefix + syntax.args_open + syntax.pairs_text(args, all_texts)
                options = [syntax.args_close, syntax.item_sep + '"']
            else:  # no pair yet: "{}" or an object with a pair (the space before it is the model's)
                prompt = call_prefix.rstrip(" ")
                ws = call_prefix[len(prompt):]
                options = [ws + "{}", ws + syntax.args_open + '"']
            if first is not None:
                choice = first  # decided by the delimiter written after the last value
            else:
                choice, _ = await self._choose(f"optional{tag}" + (f".{n}" if n else ""), stats, prompt, options,
                                               slot if self.slots == "pinned" else None)
            if choice == 0:
                break
            opened = prompt + options[1][:-1]  # the separator written, up to the key's opening quote
            key = rest[0] if len(rest) == 1 else await self._choose_key(f"key{tag}.{n}", stats, prompt,
                                                                        options[1], rest, slot)
            value, text, r = await self._value(f"arg:{key}{tag}", stats,
                                               opened + json.dumps(key, ensure_ascii=False) + key_sep,
                                               spec.value_schema(key), lead,
                                               slot if self.slots == "pinned" else None)
            args[key], new_texts[key] = value, text
            # this value's branch saw every pair before it: its delimiter is the next choice
            first = 1 if r.content.lstrip()[len(text):].strip().startswith(",") else 0
            rest.remove(key)
            n += 1
        return args, new_texts

    async def _choose_key(self, label: str, stats: DecodeStats, prompt: str, lead: str, keys: list[str],
                          slot: int | None) -> str:
        """Which of ``keys`` the model writes after ``prompt + lead`` (``lead``: the separator and
        the key's opening quote): its first tokens, stopped as soon as they tell the keys apart.
        The separator up to its last word is written into the prompt (``,\n       `` of
        ``,\n        "``: the tokens the model writes there are ``,\n``, 7 spaces, `` "``), so only
        `` "`` and the key's first tokens are decoded."""
        words = [json.dumps(k, ensure_ascii=False)[1:] for k in keys]  # key text after its opening quote
        tail = _last_word(lead)
        prompt, lead = prompt + lead[:len(lead) - len(tail)], tail
        stops = [lead + p for p in unique_prefixes(words).values()]
        grammar = quoted_choice_grammar(lead, [w[:-1] for w in words], '"')
        r = await self._request(label, stats, prompt, n_predict=max(map(len, words)) + len(lead) + 2,
                                grammar=grammar, id_slot=slot if self.slots == "pinned" else None, stop=stops)
        text = (r.content + r.stopping_word)[len(lead):]
        found = [k for k, w in zip(keys, words, strict=True) if w.startswith(text) or text.startswith(w)]
        if len(found) != 1:
            raise DecodingError(f"step {label} produced no known optional argument: {r.content[:200]!r}")
        return found[0]

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
    per call: 1 for the name (0 with one tool) + 1 per required argument + 1 deciding the
    optional arguments (tools that have some) + 2-3 per optional argument present + 1 deciding
    whether another call follows. Prompt tokens evaluated: the templated prompt once (the first
    request; fewer when the slot already holds a prefix of it), then per request only the text
    after where it departs from its slot's cache (~2-30 tokens). Tokens decoded: per call the
    name's first tokens (0-5), each value with one delimiter (value tokens + 1), 1 per choice.
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
