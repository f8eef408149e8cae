"""Parallel function-call decoding (SimpleTool style) at the serving layer.

``ParallelCallDecoder(model, tools).decode(messages) -> list[ToolCall]``: only what the model must
choose is decoded - per call, whether it exists (one token, after the first), the function name
(its first tokens, constrained to the tool names; nothing with one tool) and each argument value
(constrained by its JSON Schema, its value's tokens and one delimiter); the JSON skeleton (keys,
delimiters, indentation) is written, never decoded. Argument values decode in parallel branches
where the server runs them at once (several slots), one after another on a single slot (the local
engine), each branch sharing the prefix already in the slot's cache. Optional arguments cost one
token when absent (none after a value whose delimiter already closed the object). Works against
llama.cpp's server (the local engine); elsewhere it falls back to ordinary tool-call decoding,
logs a warning and flags the result (``DecodeResult.mode``). ``decode_calls(model, messages,
tools)`` is the one-call entry point (validated calls, or a clear error).

Use from the planner (LLMCompiler): once a plan task's tool name is known (the streamed plan has
written ``"tool": "search"`` or ``search(``), its arguments can be decoded by
``await decoder.decode_arguments(tool, prefix_messages, partial)`` instead of letting the planner
write them: ``prefix_messages`` are the planner's messages plus the plan so far as assistant text
(or a user message naming the task), ``partial`` the arguments already fixed (e.g. ``$1``
references the planner wrote). Tasks' argument decodes are independent requests, so
``anyio`` task groups run several tasks' decodes at once; each returns validated arguments.

Baselines (also the fallback): `decode_standard` (the model writes the whole call through the
OpenAI ``tools`` field) and `decode_constrained` (the whole answer constrained by a JSON Schema).
"""

from agentrt.decoding._decoder import (
    BranchRecord,
    DecodeResult,
    DecodeStats,
    ParallelCallDecoder,
    branch_schema,
    decode_calls,
)
from agentrt.decoding._llamacpp import LlamaCppEndpoint, RawCompletion, native_root
from agentrt.decoding._standard import (
    StandardResult,
    calls_schema,
    decode_constrained,
    decode_standard,
    parse_calls_text,
    wire_tools,
)
from agentrt.decoding._template import CallSyntax, derive_call_syntax

__all__ = [
    "BranchRecord", "CallSyntax", "DecodeResult", "DecodeStats", "LlamaCppEndpoint", "ParallelCallDecoder",
    "RawCompletion", "StandardResult", "branch_schema", "calls_schema", "decode_calls", "decode_constrained", "decode_standard",
    "derive_call_syntax", "native_root", "parse_calls_text", "wire_tools",
]
