"""The text a chat template writes around a tool call, learned by rendering a probe conversation.

Instead of hard-coding one model family's call syntax, the server's own template renders an
assistant turn with two marker calls (``NAME_X`` with ``{"KEY_X": "VAL_X", "KEY_Y": 7}``, then
``NAME_Z``); the pieces around the markers are the syntax. For Qwen2.5's ChatML template this gives
``before_name='<tool_call>\\n{"name": "'``, ``after_name='", "arguments": '``,
``call_close='}\\n</tool_call>'``, ``call_sep='\\n'``. Templates whose arguments are not a JSON
object written after the name (or that do not render tool calls at all) yield `None`: the decoder
then falls back to ordinary tool-call decoding.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["JSON_CALLS", "JSON_CALL_LINES", "CallSyntax", "derive_call_syntax", "probe_messages"]


@dataclass(frozen=True)
class CallSyntax:
    """How the template writes calls in an assistant turn.

    A turn is ``before_name NAME after_name ARGS call_close (call_sep before_name ... call_close)*``
    where ARGS is a JSON object with ``key_sep`` between key and value, ``item_sep`` between pairs.
    """

    before_name: str
    after_name: str
    call_close: str
    call_sep: str
    key_sep: str = ": "
    item_sep: str = ", "
    #: text before the first call (after the generation prompt) and after the last one; ``closing``
    #: None: the turn just ends (an optional trailing ``call_sep`` allowed)
    opening: str = ""
    closing: str | None = None
    #: how an arguments object opens and closes around its pairs (pretty-printed JSON indents)
    args_open: str = "{"
    args_close: str = "}"

    def pairs_text(self, args: dict[str, Any], texts: dict[str, str] | None = None) -> str:
        """The pairs of ``args`` without the braces: ``item_sep`` between pairs, ``key_sep`` after
        each key; a value is written as ``texts[key]`` (the text the model wrote for it) when given,
        else as compact one-line JSON (``[3, 4]``): the separators of the arguments object are not
        those of the values inside it (the model writes ``"pointA": [3, 4]`` in pretty-printed calls)."""
        texts = texts or {}
        return self.item_sep.join(json.dumps(k, ensure_ascii=False) + self.key_sep
                                  + (texts[k] if k in texts else json.dumps(v, ensure_ascii=False))
                                  for k, v in args.items())

    def args_text(self, args: dict[str, Any], texts: dict[str, str] | None = None) -> str:
        """``args`` as the template writes them (its separators; see `pairs_text`)."""
        if not args:
            return "{}"
        return self.args_open + self.pairs_text(args, texts) + self.args_close

    def call_text(self, name: str, args: dict[str, Any], texts: dict[str, str] | None = None) -> str:
        """One whole call, ``before_name`` to ``call_close``."""
        return f"{self.before_name}{name}{self.after_name}{self.args_text(args, texts)}{self.call_close}"


def probe_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` + an assistant turn with the two marker calls + a user turn (so it is rendered)."""
    calls = [
        {"id": "c0", "type": "function",
         "function": {"name": "NAME_X", "arguments": json.dumps({"KEY_X": "VAL_X", "KEY_Y": 7})}},
        {"id": "c1", "type": "function",
         "function": {"name": "NAME_Z", "arguments": json.dumps({"KEY_X": "VAL_Z"})}},
    ]
    return [*messages, {"role": "assistant", "content": "", "tool_calls": calls},
            {"role": "user", "content": "END_X"}]


def derive_call_syntax(prompt: str, rendered: str) -> CallSyntax | None:
    """The call syntax from ``prompt`` (messages + generation prompt) and ``rendered``
    (`probe_messages` rendered); None when the rendering does not have the expected shape."""
    if not rendered.startswith(prompt):
        return None
    turn = rendered[len(prompt):]
    try:
        i_x, i_z = turn.index("NAME_X"), turn.index("NAME_Z")
        k_x = turn.index('"KEY_X"', i_x)
        v_y = turn.index("7", turn.index('"KEY_Y"', k_x)) + 1
        k_x2 = turn.index('"KEY_X"', i_z)
        v_z = turn.index('"VAL_Z"', k_x2) + len('"VAL_Z"')
        end_x = turn.index("END_X")
    except ValueError:
        return None
    before_name = turn[:i_x]
    # the arguments object opens at the last "{" before its first key
    open_x = turn.rfind("{", i_x, k_x)
    if open_x < 0 or turn[open_x + 1:k_x].strip():
        return None
    after_name = turn[i_x + len("NAME_X"):open_x]
    pair_x = turn[k_x:turn.index('"KEY_Y"', k_x)]  # '"KEY_X": "VAL_X", '
    key_sep = pair_x[len('"KEY_X"'):pair_x.index('"VAL_X"')]
    item_sep = pair_x[pair_x.index('"VAL_X"') + len('"VAL_X"'):]
    if not turn.startswith("}", v_y) or not turn.startswith("}", v_z):
        return None
    between = turn[v_y + 1:i_z]  # call_close + call_sep + before_name
    tail = turn[v_z + 1:end_x]  # call_close + end of turn ...
    if not between.endswith(before_name):
        return None
    between = between[: len(between) - len(before_name)]
    close = os.path.commonprefix([between, tail])
    if not close or not before_name or not after_name:
        return None
    return CallSyntax(before_name=before_name, after_name=after_name, call_close=close,
                      call_sep=between[len(close):], key_sep=key_sep, item_sep=item_sep)


#: Calls written as the JSON object the constrained baseline asks for (`calls_schema`), indented as
#: Qwen2.5-Coder-1.5B writes it under a JSON-schema constraint:
#: ``{\n  "calls": [\n    {\n      "name": ...,\n      "arguments": {\n        ...\n      }\n    },\n ...``.
#: In this framing the model splits a request into several calls where, in its chat template's
#: own tool-call syntax, it merges them (BFCL parallel_0: one call with "Taylor Swift, Maroon 5"
#: in the template syntax, two calls here) and where, in the same JSON written on one line, it
#: ends the turn after the first call (seen here).
JSON_CALLS = CallSyntax(before_name='{\n      "name": "', after_name='",\n      "arguments": ',
                        call_close="\n    }", call_sep=",\n    ", key_sep=": ", item_sep=",\n        ",
                        opening='{\n  "calls": [\n    ', closing="\n  ]\n}",
                        args_open="{\n        ", args_close="\n      }")

#: The same object with each call on one line (compact arguments), the array indented.
JSON_CALL_LINES = CallSyntax(before_name='{"name": "', after_name='", "arguments": ', call_close="}",
                             call_sep=",\n    ", opening='{\n  "calls": [\n    ', closing="\n  ]\n}")
