"""Grammars for each decoding step, in llguidance's Lark dialect (``%json {schema}`` embeds a JSON
Schema-constrained value; source: llguidance ``docs/syntax.md``).

Every grammar lets the constrained text run one delimiter past its end (the ``,`` or ``}`` that
follows a value, the ``"`` after a name): models tokenize ``",`` or ``}}`` as one token, and a
grammar that ends exactly at the value would forbid the model's own next token and push it to
continue the value instead ("Paris, France, France...", seen on Qwen2.5 here). The same holds for
a choice between texts: each alternative must be the whole text the model would write (e.g. the
end of a calls object ``\n  ]\n}``), not its first character - with only ``"\n"`` admitted for the
end, the model's own token ``"\n "`` was forbidden and it chose ``,`` (another call) instead:
3 of 7 one-call BFCL "multiple" turns went on calling (seen here, Qwen2.5-Coder-1.5B).

What the grammar admits past the value is not decoded, though: a branch stops at the first
delimiter with a stop string (``stop=["\n"]`` in pretty-printed JSON, where every pair ends with a
newline), and a choice (another call? an optional argument?) is one token, ``n_predict=1`` - the
grammar only makes sure that token is one the model would write there. Decoding the delimiter
and its indentation up to the grammar's end, then the end-of-generation token, cost 2-3 tokens
per value (an argument ``5`` decoded 13 tokens with its optional tail, seen here).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = ["OBJECT_CLOSE", "VALUE_END", "VALUE_ENDS", "choice_grammar", "distinct_prefix", "lark_string", "name_grammar",
           "optional_tail_grammar", "outline_grammar", "quoted_choice_grammar", "unique_prefixes", "value_grammar",
           "value_tail_grammar"]

_HEADER = "%llguidance {}\n"
#: What may follow an argument value in a JSON object written by a chat template.
#: ``\n``: in pretty-printed JSON the last pair's value is followed by a newline.
VALUE_ENDS = (",", "}", "}}", "\n")
#: Grammar of what ends a value branch: one of `VALUE_ENDS`, a newline and up to 8 spaces after it
#: (bounded: unbounded, the model wrote spaces until its token limit), so that a token such as ``",\n`` or ``}\n`` (pretty-printed JSON) is not forbidden, which
#: would push the model to continue the value instead (seen: a string argument that went on with
#: the rest of the request).
VALUE_END = r"/(,\n?|\}\}?\n?|\n)[ ]{0,8}/"
#: What closes an arguments object after its last value: a brace, or a newline and indentation.
OBJECT_CLOSE = r'("}" | "}}" | /\n[ ]{0,8}\}?/)'



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
    """``lead`` + a JSON value valid against ``schema`` + `VALUE_END`."""
    return f"{_HEADER}start: {lark_string(lead)} %json {json.dumps(schema)} {VALUE_END}\n"


def _tail_rules(optional: Sequence[tuple[str, dict[str, Any]]], *, after_pair: bool, key_sep: str,
                item_sep: str, prefix: str = "") -> tuple[str, list[str]]:
    """(expression, rules) of the rest of an arguments object: close it, or an ordered non-empty
    subset of ``optional`` then close; ``after_pair``: a pair precedes (the tail opens with ``item_sep``);
    ``prefix`` keeps the rule names of several tails in one grammar apart."""
    close = OBJECT_CLOSE
    t, v = f"{prefix}t", f"{prefix}v"
    expr = " | ".join([close] + [f"{lark_string(item_sep) + ' ' if after_pair else ''}{t}{i}"
                                 for i in range(len(optional))])
    lines = []
    for i, (name, schema) in enumerate(optional):
        nexts = " | ".join([close] + [f"{lark_string(item_sep)} {t}{j}" for j in range(i + 1, len(optional))])
        lines.append(f"{t}{i}: {lark_string(json.dumps(name, ensure_ascii=False) + key_sep)} {v}{i} ({nexts})")
        lines.append(f"{v}{i}: %json {json.dumps(schema)}")
    return expr, lines


def optional_tail_grammar(optional: Sequence[tuple[str, dict[str, Any]]], *, after_required: bool,
                          key_sep: str = ": ", item_sep: str = ", ") -> str:
    """The rest of an arguments object: close it, or any ordered non-empty subset of ``optional``.

    Its first token decides presence: ``}`` (none of the optional arguments) or ``,``/``"`` (some).
    ``optional`` is ``[(name, schema)]`` in schema order; ``after_required`` says whether a pair
    precedes (so the tail starts with ``item_sep``).
    """
    expr, lines = _tail_rules(optional, after_pair=after_required, key_sep=key_sep, item_sep=item_sep)
    return _HEADER + "\n".join([f"start: {expr}", *lines]) + "\n"


def value_tail_grammar(schema: dict[str, Any], optional: Sequence[tuple[str, dict[str, Any]]], *,
                       lead: str = " ", key_sep: str = ": ", item_sep: str = ", ") -> str:
    """``lead`` + a JSON value valid against ``schema``, then the rest of the object as
    `optional_tail_grammar` (the last required argument's branch also decides the optional ones,
    saving a request: its first token after the value is ``}`` when none is present)."""
    expr, lines = _tail_rules(optional, after_pair=True, key_sep=key_sep, item_sep=item_sep)
    return _HEADER + "\n".join([f"start: {lark_string(lead)} %json {json.dumps(schema)} ({expr})", *lines]) + "\n"


def outline_grammar(calls: Sequence[tuple[str, str]], *, call_sep: str, before_name: str, max_calls: int,
                    closing: str | None = None) -> str:
    """One to ``max_calls`` calls as the chat template writes several calls, each reduced to an
    outline: ``calls`` is ``[(name, rest)]``, ``rest`` a grammar expression for what follows the
    name up to the end of the call (e.g. the first argument's value and an elided remainder). The
    model decides the number of calls after each one: ``call_sep`` + ``before_name`` (another call)
    or the end of its turn (the grammar then admits only end-of-generation). A trailing
    ``call_sep`` may end the turn too: templates often write it before the end-of-turn token;
    with ``closing`` the calls end with that text instead (e.g. ``]}`` of a JSON array of calls).
    """
    if not calls:
        raise ValueError("outline_grammar needs at least one tool")
    if max_calls < 1:
        raise ValueError("max_calls must be >= 1")
    sep, before = lark_string(call_sep), lark_string(before_name)
    more = ""
    for _ in range(max_calls - 1):
        more = f"({sep} {before} c {more})?"
    if closing is not None:
        trailing = f" {lark_string(closing)}"
    else:
        trailing = f" {sep}?" if call_sep else ""
    alts = " | ".join(f"c{i}" for i in range(len(calls)))
    rules = [f"c{i}: {lark_string(name)} {rest}" for i, (name, rest) in enumerate(calls)]
    return f"{_HEADER}start: c {more}{trailing}\nc: {alts}\n" + "\n".join(rules) + "\n"


def distinct_prefix(text: str, other: str) -> str:
    """The shortest prefix of ``text`` that is not a prefix of ``other`` (``text`` itself when it is one)."""
    for i in range(1, len(text) + 1):
        if not other.startswith(text[:i]):
            return text[:i]
    return text


def unique_prefixes(words: Sequence[str]) -> dict[str, str]:
    """Per word, its shortest prefix that no other word starts with (the whole word when it is a
    prefix of another). ``unique_prefixes(["ab", "ac", "b"]) == {"ab": "ab", "ac": "ac", "b": "b"}``."""
    out: dict[str, str] = {}
    for word in words:
        out[word] = next((word[:i] for i in range(1, len(word) + 1)
                          if not any(o != word and o.startswith(word[:i]) for o in words)), word)
    return out


def choice_grammar(options: Sequence[str]) -> str:
    """One of the texts ``options`` (``""``: the end of generation). Used with ``n_predict=1``: the
    model's first token picks the option; each alternative is the whole text so that the model's
    own first token is admitted (see the module doc)."""
    if not options:
        raise ValueError("choice_grammar needs at least one option")
    alts = " | ".join(lark_string(o) for o in options if o)
    if "" in options:
        return f"{_HEADER}start: ({alts})?\n" if alts else f'{_HEADER}start: ""\n'
    return f"{_HEADER}start: {alts}\n"


def quoted_choice_grammar(lead: str, words: Sequence[str], after: str = '"') -> str:
    """``lead`` + one of ``words`` + ``after``: a tool name or a key after its opening quote
    (``lead`` ends with it). With stop strings ``lead + unique_prefixes(word + after)`` the
    request ends as soon as the choice is made, the rest of the word unwritten."""
    if not words:
        raise ValueError("quoted_choice_grammar needs at least one word")
    alts = " | ".join(lark_string(w) for w in words)
    return f"{_HEADER}start: {lark_string(lead)} ({alts}) {lark_string(after)}\n"
