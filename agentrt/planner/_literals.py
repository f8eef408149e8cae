"""Argument values in plans: Python/JSON literals and ``$N`` references, parsed, never evaluated.

Values are strings (``'...'`` or ``"..."``, with escapes), numbers, ``True/False/None``,
``true/false/null``, lists and dicts; a bare ``$N`` or ``${N}`` (outside a string) is
``Ref(task=N)``; ``$N`` inside a string stays text. Parsing goes through Python's ``ast``
(no ``eval``): anything but a literal, such as ``1 + 2`` or a bare name, is an error.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from typing import Any

from agentrt.executor import Ref

__all__ = ["parse_call_args", "parse_value", "refs_to_objects"]

_REF_NAME = "__agentrt_ref_{}__"
_REF_NAME_RE = re.compile(r"__agentrt_ref_(\d+)__")
# a string literal (kept), or a bare reference outside strings (replaced by a marker name)
_LEX = re.compile(r"""("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')|\$\{(\d+)\}|\$(\d+)""")
_NAMES = {"true": True, "false": False, "null": None, "none": None, "True": True, "False": False,
          "None": None}


def parse_call_args(text: str) -> tuple[list[Any], dict[str, Any]]:
    """Parse the text between a call's parentheses into (positional, keyword) arguments.

    Values are literals or references (see the module docstring).

    Raises:
        ValueError: the text is not a list of literal arguments; the message says why.
    """
    call = _parse_expr(f"_({_mark_refs(text)}\n)")
    if not isinstance(call, ast.Call):  # pragma: no cover - the template always makes a call
        raise ValueError("not a call")
    positional = []
    for a in call.args:
        if isinstance(a, ast.Starred):
            raise ValueError("*arguments are not allowed")
        positional.append(_literal(a))
    kwargs: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ValueError("**arguments are not allowed")
        kwargs[kw.arg] = _literal(kw.value)
    return positional, kwargs


def parse_value(text: str) -> Any:
    """Parse one literal value (Python or JSON spelling, bare ``$N`` references allowed).

    Raises:
        ValueError: the text is not a literal.
    """
    return _literal(_parse_expr(_mark_refs(text.strip())))


def _mark_refs(text: str) -> str:
    return _LEX.sub(lambda m: m.group(1) or _REF_NAME.format(m.group(2) or m.group(3)), text)


def _parse_expr(source: str) -> ast.expr:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes such as "\d" in a model's string
            return ast.parse(source, mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"invalid syntax ({exc.msg})") from None
    except (RecursionError, MemoryError):
        raise ValueError("nested too deeply") from None


def _literal(node: ast.expr) -> Any:
    try:
        return _literal_rec(node)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _literal_rec(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        v = node.value
        if v is None or isinstance(v, (str, bool, int, float)):
            return v
        raise ValueError(f"unsupported literal {ast.unparse(node)}")
    if isinstance(node, ast.Name):
        if node.id in _NAMES:
            return _NAMES[node.id]
        m = _REF_NAME_RE.fullmatch(node.id)
        if m:
            return Ref(task=int(m.group(1)))
        raise ValueError(f"bare name {node.id!r} is not a value: quote strings, write $N for results")
    if isinstance(node, (ast.List, ast.Tuple)):
        if any(isinstance(e, ast.Starred) for e in node.elts):
            raise ValueError("* inside a list is not allowed")
        return [_literal_rec(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            if k is None:
                raise ValueError("** inside a dict is not allowed")
            key = _literal_rec(k)
            if isinstance(key, Ref) or isinstance(key, (list, dict)):
                raise ValueError("dict keys must be strings")
            out[key if isinstance(key, str) else json.dumps(key)] = _literal_rec(v)
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) and isinstance(
            node.operand, ast.Constant) and type(node.operand.value) in (int, float):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    src = ast.unparse(node)
    src = _REF_NAME_RE.sub(lambda m: "$" + m.group(1), src)
    raise ValueError(f"{_clip(src)!r} is not a literal value (expressions are not evaluated; "
                     "put them in a string for a tool, or use a tool to compute them)")


def refs_to_objects(value: Any) -> Any:
    """``{"$ref": N}`` anywhere in JSON arguments becomes ``Ref(task=N)``.

    Raises:
        ValueError: a ``{"$ref": ...}`` whose value is not a positive task id.
    """
    if isinstance(value, dict):
        if "$ref" in value and len(value) == 1:
            n = value["$ref"]
            if isinstance(n, str) and n.strip().lstrip("$").isdigit():
                n = int(n.strip().lstrip("$"))
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f'a reference must be {{"$ref": <task id>}}, got {{"$ref": {n!r}}}')
            return Ref(task=n)
        return {k: refs_to_objects(v) for k, v in value.items()}
    if isinstance(value, list):
        return [refs_to_objects(v) for v in value]
    return value



def _clip(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
