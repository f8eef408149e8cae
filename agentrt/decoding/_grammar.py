"""Grammars for each decoding step, in llguidance's Lark dialect (``%json {schema}`` embeds a JSON
Schema-constrained value; source: llguidance ``docs/syntax.md``).

Every grammar lets the constrained text run one delimiter past its end (the ``,`` or ``}`` that
follows a value, the ``"`` after a name): models tokenize ``",`` or ``}}`` as one token, and a
grammar that ends exactly at the value would forbid the model's own next token and push it to
continue the value instead ("Paris, France, France...", seen on Qwen2.5 here).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["VALUE_ENDS", "lark_string", "name_grammar", "optional_tail_grammar", "value_grammar"]

_HEADER = "%llguidance {}\n"
#: What may follow an argument value in a JSON object written by a chat template.
VALUE_ENDS = (",", "}", "}}")


def lark_string(text: str) -> str:
    """``text`` as a Lark string literal (JSON escaping is a subset Lark reads)."""
    return json.dumps(text, ensure_ascii=False)


def _ends(ends: Sequence[str]) -> str:
    return "(" + " | ".join(lark_string(e) for e in ends) + ")"


def name_grammar(names: Sequence[str], after: str) -> str:
    """One of ``names`` (exact strings, dots allowed) followed by the first 1-2 chars of ``after``."""
    if not names:
        raise ValueError("name_grammar needs at least one tool name")
    ends = sorted({after[:1], after[:2]} - {""}) or [""]
    alts = " | ".join(lark_string(n) for n in names)
    return f"{_HEADER}start: ({alts}) {_ends(ends) if ends != [''] else ''}\n"


def value_grammar(schema: dict[str, Any], lead: str = " ") -> str:
    """``lead`` + a JSON value valid against ``schema`` + one of `VALUE_ENDS`."""
    return f"{_HEADER}start: {lark_string(lead)} %json {json.dumps(schema)} {_ends(VALUE_ENDS)}\n"


def optional_tail_grammar(optional: Sequence[tuple[str, dict[str, Any]]], *, after_required: bool,
                          key_sep: str = ": ", item_sep: str = ", ") -> str:
    """The rest of an arguments object: close it, or any ordered non-empty subset of ``optional``.

    Its first token decides presence: ``}`` (none of the optional arguments) or ``,``/``"`` (some).
    ``optional`` is ``[(name, schema)]`` in schema order; ``after_required`` says whether a pair
    precedes (so the tail starts with ``item_sep``).
    """
    close = '("}" | "}}")'
    lines = [f"start: {close}" + "".join(
        f" | {lark_string(item_sep) + ' ' if after_required else ''}t{i}" for i in range(len(optional)))]
    for i, (name, schema) in enumerate(optional):
        nexts = " | ".join([close] + [f"{lark_string(item_sep)} t{j}" for j in range(i + 1, len(optional))])
        lines.append(f"t{i}: {lark_string(json.dumps(name, ensure_ascii=False) + key_sep)} v{i} ({nexts})")
        lines.append(f"v{i}: %json {json.dumps(schema)}")
    return _HEADER + "\n".join(lines) + "\n"
