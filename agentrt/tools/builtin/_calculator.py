"""`calculator`: safe arithmetic over a parsed expression tree, forgiving of how small LLMs write it.

The expression is never handed to ``eval``: it is parsed with :func:`ast.parse` and walked; only
numbers, the arithmetic operators, a fixed set of math functions and the constants ``pi``, ``e``
and ``tau`` are accepted. Integer results are bounded in size (:data:`MAX_INT_BITS`) so that an
expression like ``10**10**10`` is refused before it is computed instead of exhausting memory.

Before parsing, :func:`normalize_expression` rewrites what a 1.5B-parameter planner tends to
produce into Python arithmetic: code fences, a trailing ``=``, thousands separators (``1,234``),
unit suffixes (``12 km``), percentages (``15%``), ``x``/``×`` for multiplication and ``^`` for power.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from typing import Any

from agentrt.tools import Limits, tool

__all__ = ["MAX_INT_BITS", "calculator", "evaluate", "normalize_expression"]

#: Largest integer (in bits) any step may produce: about 1,200 decimal digits. Python's
#: big integers would otherwise let ``9**9**9`` run for minutes and take gigabytes.
MAX_INT_BITS = 4096
#: Longest expression accepted, in characters; deeper or longer input is not arithmetic a
#: planner needs, and bounds the parser's recursion.
MAX_LENGTH = 2000

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}

# Functions that take several arguments: inside their parentheses a comma separates arguments,
# so "max(1,234)" is max(1, 234), not max(1234).
_MULTI_ARG = {"min", "max", "round", "log", "pow", "sum", "hypot"}


def _round(x: float, ndigits: int | None = None) -> float | int:
    if ndigits is not None and (not isinstance(ndigits, int) or abs(ndigits) > 100):
        raise ValueError("round() takes an integer number of digits between -100 and 100")
    return round(x, ndigits) if ndigits is not None else round(x)


def _sum(*args: Any) -> float | int:
    return sum(args[0]) if len(args) == 1 and isinstance(args[0], list) else sum(args)


def _minmax(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], list):
            args = tuple(args[0])
        if not args:
            raise ValueError(f"{fn.__name__}() needs at least one number")
        return fn(*args)

    return call


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": _round,
    "min": _minmax(min),
    "max": _minmax(max),
    "sum": _sum,
    "sqrt": math.sqrt,
    "log": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "exp": math.exp,
    "floor": math.floor,
    "ceil": math.ceil,
    "hypot": math.hypot,
}
_KNOWN_NAMES = set(_FUNCTIONS) | set(_CONSTANTS) | {"pow"}

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}

_NODE_NAMES = {
    ast.Attribute: "attribute access", ast.Lambda: "lambda", ast.Subscript: "indexing",
    ast.Compare: "comparisons", ast.BoolOp: "and/or", ast.IfExp: "if/else",
    ast.ListComp: "comprehensions", ast.GeneratorExp: "comprehensions", ast.Dict: "dicts",
    ast.Set: "sets", ast.JoinedStr: "f-strings", ast.Starred: "*unpacking",
    ast.NamedExpr: "assignment", ast.Await: "await",
}

# --- normalisation ---------------------------------------------------------------------------

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*")
# a number not glued to a name before it ("log10(" holds no number 10)
_NUMBER = r"(?<![\w.])(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_UNIT = r"[A-Za-zµ°\u00b2\u00b3]+(?:/[A-Za-z]+)?"
_LEADING_WORDS = re.compile(
    r"^(?:calculate|compute|evaluate|what\s+is|what's|solve)\s*:?\s*", re.IGNORECASE
)


def normalize_expression(text: str) -> str:
    """Rewrite a loosely written arithmetic expression into Python arithmetic syntax.

    Handles code fences and backticks, a leading "calculate"/"what is", a trailing ``=`` or
    ``= ?``, ``result = ...`` assignments, thousands separators (``1,234``), currency signs,
    unit suffixes after a number (``12 km``, ``3.5MB``), ``%`` after a number meaning /100
    (``15%``; ``a % b`` with operands on both sides stays modulo), ``x``/``×``/``·`` for
    multiplication, ``÷`` for division, ``^`` for power, ``math.`` prefixes and implicit
    multiplication (``2(3+4)``, ``2pi``).
    """
    s = _FENCE.sub(" ", text).replace("`", " ").strip()
    for old, new in (("×", "*"), ("·", "*"), ("⋅", "*"), ("∗", "*"), ("÷", "/"), ("−", "-"),
                     ("–", "-"), ("^", "**"), ("\u00a0", " "), ("\u202f", " ")):
        s = s.replace(old, new)
    s = _LEADING_WORDS.sub("", s)
    s = re.sub(r"(?:=\s*\??\s*)+$", "", s).strip()
    s = re.sub(r"\?\s*$", "", s).strip()
    eq = _top_level_equals(s)
    if eq >= 0:  # "x = 3 + 4" -> "3 + 4"; "3 + 4 = 7" -> "3 + 4"; "round(x, ndigits=1)" stays
        left, right = s[:eq], s[eq + 1:]
        s = right if re.fullmatch(r"\s*[A-Za-z_][A-Za-z0-9_ ]*\s*", left) else left
    s = re.sub(r"\bmath\.", "", s)
    if re.search(r"\$\{?\d+\}?(?![.,]\d)", s):
        raise ValueError(f"{_show(text)} holds an unresolved task reference like $1; "
                         "pass numbers, not references")
    s = re.sub(r"[$€£¥]", "", s)
    s = re.sub(r"(\d)\s*(?:percent|per\s+cent|pct)\b", r"\1%", s, flags=re.IGNORECASE)
    s = _drop_groups(s)
    # percent: "15%" -> "(15/100)" unless it is a modulo between two operands ("10 % 3")
    s = re.sub(rf"({_NUMBER})\s*%\s*of\b", r"\1% *", s)
    s = re.sub(
        rf"({_NUMBER})(\s*)%(?=(\s*)(?P<next>$|[)\],=]|[-+*/%]))",
        lambda m: f"({m.group(1)}/100)" if (not m.group(2) or m.group("next") in ("", ")", "]", ",", "="))
        else m.group(0),
        s,
    )
    # "x"/"X" as multiplication between operands
    s = re.sub(r"(?<=[\d)\s])\s*[xX]\s*(?=[\d(.]|\s+[-+\d(.])", " * ", s)
    # units after a number: "12 km" -> "12"; a known function or constant name stays
    s = re.sub(
        rf"({_NUMBER})\s*({_UNIT})(?!\s*\()",
        lambda m: m.group(0) if m.group(2) in _KNOWN_NAMES else m.group(1),
        s,
    )
    # implicit multiplication: "2(3+4)", "(1+2)(3+4)", "2pi", "(3)4"
    s = re.sub(rf"({_NUMBER}|\))\s*(?=\()", r"\1*", s)
    s = re.sub(rf"({_NUMBER})\s*(?=(?:pi|tau|sqrt|abs|log|exp)\b)", r"\1*", s)
    s = re.sub(rf"\)\s*(?={_NUMBER})", ")*", s)
    return s.strip()


def _top_level_equals(s: str) -> int:
    """Index of the first lone ``=`` outside parentheses (not ``==``, ``<=``, ...), or -1."""
    depth = 0
    for i, ch in enumerate(s):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif (ch == "=" and depth == 0 and (i == 0 or s[i - 1] not in "=<>!")
              and (i + 1 == len(s) or s[i + 1] != "=")):
            return i
    return -1


_GROUPED = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?![\d,]|\.\d*,)")


def _drop_groups(s: str) -> str:
    """Remove thousands separators from numbers like ``1,234,567.5``, except between the
    arguments of a function that takes several (``max(1,234)`` stays two arguments)."""
    out: list[str] = []
    pos = 0
    for m in _GROUPED.finditer(s):
        if _inside_multi_arg_call(s, m.start()):
            continue
        out.append(s[pos:m.start()])
        out.append(m.group(0).replace(",", ""))
        pos = m.end()
    out.append(s[pos:])
    return "".join(out)


def _inside_multi_arg_call(s: str, index: int) -> bool:
    depth = 0
    for i in range(index - 1, -1, -1):
        ch = s[i]
        if ch == ")":
            depth += 1
        elif ch == "(":
            if depth == 0:
                m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", s[:i])
                return bool(m) and m.group(1) in _MULTI_ARG
            depth -= 1
    return False


# --- evaluation ------------------------------------------------------------------------------


def _check_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ValueError(f"result too large (more than {MAX_INT_BITS} bits)")
    return value


def _power(base: Any, exp: Any) -> Any:
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        # bits of base**exp ~= exp * log2|base|: refuse before computing
        if exp * math.log2(abs(base)) > MAX_INT_BITS:
            raise ValueError(f"result too large: {base}**{exp} has more than {MAX_INT_BITS} bits")
    try:
        result = base**exp
    except OverflowError:
        raise ValueError(f"result too large: {base}**{exp}") from None
    if isinstance(result, complex):
        raise ValueError(f"({base})**({exp}) is not a real number")
    return _check_int(result)


def _number(value: Any) -> Any:
    if isinstance(value, list):
        raise ValueError("operators apply to numbers, not lists; use min, max or sum on a list")
    return value


class _Evaluator:
    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return self.visit(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise ValueError(f"only numbers are allowed, not {node.value!r}")
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = _number(self.visit(node.operand))
            return -value if isinstance(node.op, ast.USub) else +value
        if isinstance(node, ast.BinOp):
            # numbers only: [1] * 10**9 would build a list of a billion items
            left, right = _number(self.visit(node.left)), _number(self.visit(node.right))
            if isinstance(node.op, ast.Pow):
                return _power(left, right)
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise ValueError(f"operator {type(node.op).__name__} is not allowed")
            if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
                    raise ValueError(f"result too large (more than {MAX_INT_BITS} bits)")
            return _check_int(op(left, right))
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            if node.id in _FUNCTIONS:
                raise ValueError(f"{node.id} is a function: call it like {node.id}(...)")
            raise ValueError(f"unknown name {node.id!r}; known constants: pi, e, tau")
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.visit(elt) for elt in node.elts]
        if isinstance(node, ast.Call):
            return self._call(node)
        what = _NODE_NAMES.get(type(node), type(node).__name__)
        raise ValueError(f"{what}: not allowed in arithmetic")

    def _call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name):
            raise ValueError("only calls of the math functions by name are allowed")
        name = node.func.id
        if node.keywords:
            raise ValueError(f"{name}() takes positional arguments only")
        fn = _FUNCTIONS.get(name)
        if fn is None and name != "pow":
            known = ", ".join(sorted(_FUNCTIONS) + ["pow"])
            raise ValueError(f"unknown function {name!r}; known functions: {known}")
        args = [self.visit(a) for a in node.args]
        if fn is None:
            if len(args) != 2:
                raise ValueError("pow() takes exactly 2 arguments")
            return _power(*args)
        if any(isinstance(a, list) for a in args) and name not in ("min", "max", "sum"):
            raise ValueError(f"{name}() takes numbers, not a list")
        try:
            return _check_int(fn(*args))
        except TypeError as exc:
            raise ValueError(f"{name}(): {exc}") from None


def _show(expression: str) -> str:
    text = " ".join(expression.split())
    return repr(text if len(text) <= 80 else text[:77] + "...")


def evaluate(expression: str) -> float | int:
    """Evaluate an arithmetic expression safely (see the module docstring for what is accepted).

    Returns:
        an ``int`` when every step is integral, else a ``float``.

    Raises:
        ValueError: the expression is empty, too long, not arithmetic, uses something not
            allowed (names, attributes, lambdas, ...), divides by zero, is outside a function's
            domain, or its result is too large or not a finite real number.
    """
    if not isinstance(expression, str):
        raise ValueError("the expression must be a string")
    if len(expression) > MAX_LENGTH:
        raise ValueError(f"expression too long ({len(expression)} > {MAX_LENGTH} characters)")
    text = normalize_expression(expression)
    if not text:
        raise ValueError("empty expression: give arithmetic like '(3 + 4) * 2'")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"cannot parse {_show(expression)} as arithmetic ({exc.msg})") from None
    except (RecursionError, MemoryError):
        raise ValueError("expression is nested too deeply") from None
    try:
        result = _Evaluator().visit(tree)
    except ZeroDivisionError:
        raise ValueError(f"division by zero in {_show(expression)}") from None
    except OverflowError:
        raise ValueError(f"result too large in {_show(expression)}") from None
    except RecursionError:
        raise ValueError("expression is nested too deeply") from None
    except ValueError as exc:
        if str(exc) == "math domain error":
            raise ValueError(f"math domain error in {_show(expression)} "
                             "(e.g. sqrt or log of a negative number)") from None
        raise
    if isinstance(result, list):
        raise ValueError("the expression gives several numbers; combine them into one")
    if isinstance(result, float):
        if not math.isfinite(result):
            raise ValueError(f"result is not a finite number: {result}")
        # 15 significant digits: 0.1 + 0.2 answers 0.3, not 0.30000000000000004
        result = float(f"{result:.15g}")
    return result


@tool(read_only=True, idempotent=True, limits=Limits(memory="64M", cpu=1, timeout=5))
def calculator(expression: str) -> float | int:
    """Evaluate an arithmetic expression and return the number, e.g. "(12.5 + 3) * 2" or "sqrt(16) / 4".

    Accepts + - * / // % ** (or ^), parentheses, abs, round, min, max, sum, sqrt, log, log10, exp,
    floor, ceil and the constants pi and e; thousands separators, units and "15%" are tolerated.

    Args:
        expression: the arithmetic to evaluate, numbers and operators only, e.g. "1,234 * 3".
    """
    return evaluate(expression)
