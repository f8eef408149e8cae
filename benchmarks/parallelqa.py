"""ParallelQA offline: agentrt against faithful LLMCompiler and ReAct on the same local model.

Data: ``<data>/parallelqa_offline/`` (113 questions and a fact snapshot; see its README). Tools:
``search(query)`` returns an entity's observation after an injected latency drawn per call from a
log-normal distribution (median 0.3 s, sigma 0.5), and ``math(problem, context)`` — as in the
original benchmark, an LLM writes one arithmetic expression from the problem and the context,
which agentrt's calculator evaluates (no arithmetic by the model itself).

Scoring (the benchmark's rule): numeric answers count when the first number in the answer is
within 10 % of gold; choice answers when the first option named in the answer is the gold one
(aliases included). Systems alternate question by question, in a rotating order, so ratios
compare runs made at the same time on the same machine.
"""

from __future__ import annotations

import difflib
import json
import logging
import math as _math
import random
import re
import statistics
import time
from pathlib import Path
from typing import Any

import anyio

from agentrt.llm import ChatModel, Message
from agentrt.planner import PlanExample
from agentrt.tools import ToolRegistry, tool

log = logging.getLogger(__name__)

EXAMPLE = PlanExample(
    question="If the Nile were 10% longer and the Danube 5% shorter, what would be their combined length in km?",
    plan=(
        '1. search(query="Nile")\n'
        '2. search(query="Danube")\n'
        '3. math(problem="Nile length * 1.1 + Danube length * 0.95", context=["$1", "$2"])\n'
        "4. join()"
    ),
)

#: a comparison ("which ... would be longer?"): each adjusted value is computed on its own, so the
#: joiner compares two numbers instead of reading the sign of a difference (with the first example
#: alone the 1.5B model planned one difference and misread it in most choice questions)
COMPARE_EXAMPLE = PlanExample(
    question="If the Danube were 40% shorter and the Rhine 50% longer, which river would be longer?",
    plan=(
        '1. search(query="Danube")\n'
        '2. search(query="Rhine")\n'
        '3. math(problem="Danube length * 0.6", context=["$1"])\n'
        '4. math(problem="Rhine length * 1.5", context=["$2"])\n'
        "5. join()"
    ),
)
EXAMPLES = [EXAMPLE, COMPARE_EXAMPLE]

REACT_EXAMPLE = """\
Question: If the Nile were 10% longer and the Danube 5% shorter, what would be their combined length in km?
{"thought": "I need the Nile's length.", "action": "search", "args": {"query": "Nile"}, "answer": ""}
Observation: The Nile ... runs about 6,650 km ...
{"thought": "I need the Danube's length.", "action": "search", "args": {"query": "Danube"}, "answer": ""}
Observation: The Danube ... is 2,850 km long ...
{"thought": "Now compute.", "action": "math", "args": {"problem": "6650 * 1.1 + 2850 * 0.95", "context": []}, "answer": ""}
Observation: 10022.5
{"thought": "Done.", "action": "finish", "args": {}, "answer": "10022.5 km"}

Question: If the Danube were 40% shorter and the Rhine 50% longer, which river would be longer?
{"thought": "I need the Danube's length.", "action": "search", "args": {"query": "Danube"}, "answer": ""}
Observation: The Danube ... is 2,850 km long ...
{"thought": "I need the Rhine's length.", "action": "search", "args": {"query": "Rhine"}, "answer": ""}
Observation: The Rhine ... about 1,230 km long ...
{"thought": "The Danube's adjusted length.", "action": "math", "args": {"problem": "2850 * 0.6", "context": []}, "answer": ""}
Observation: 1710
{"thought": "The Rhine's adjusted length.", "action": "math", "args": {"problem": "1230 * 1.5", "context": []}, "answer": ""}
Observation: 1845
{"thought": "1845 > 1710.", "action": "finish", "args": {}, "answer": "Rhine"}"""

_MATH_SYSTEM = (
    "Write one arithmetic expression that computes the problem, using the numbers stated in the context "
    "(copy them exactly, without units or thousands separators). Use + - * / ( ) and max, min, abs, round, "
    'sqrt. Reply with JSON only: {"expression": "..."}'
)
_MATH_SCHEMA = {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 300}},
                "required": ["expression"], "additionalProperties": False}


def _norm(text: str) -> str:
    text = text.lower().replace("\u2013", "-").replace("\u2014", "-")
    text = re.sub(r"[^\w\s-]", " ", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text[4:] if text.startswith("the ") else text


class FactIndex:
    """Entity lookup over facts.json: exact name/alias, then longest whole-word match, then fuzzy."""

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts
        self.names: dict[str, str] = {}
        for entity, rec in facts.items():
            for name in [entity, *rec.get("aliases", [])]:
                self.names.setdefault(_norm(name), entity)
        self._by_length = sorted(self.names, key=len, reverse=True)

    def lookup(self, query: str) -> str | None:
        q = _norm(query)
        if q in self.names:
            return self.names[q]
        for name in self._by_length:
            if re.search(rf"(^|\s){re.escape(name)}($|\s)", q):
                return self.names[name]
        close = difflib.get_close_matches(q, list(self.names), n=1, cutoff=0.6)
        return self.names[close[0]] if close else None


def make_tools(facts: dict[str, Any], model: ChatModel, rng: random.Random,
               median_latency: float = 0.3, sigma: float = 0.5) -> tuple[ToolRegistry, list[Any]]:
    """The search and math tools, and the list the math tool appends its own LLM usage to."""
    from agentrt.tools.builtin import calculator

    index = FactIndex(facts)
    math_usage: list[Any] = []

    @tool(read_only=True, idempotent=True, open_world=True, limits={"timeout": 30})
    async def search(query: str) -> str:
        """Search an encyclopedia for one entity; returns a short text about it.

        Args:
            query: the entity's name, e.g. "Mount Everest".
        """
        await anyio.sleep(rng.lognormvariate(_math.log(median_latency), sigma))
        entity = index.lookup(query)
        if entity is None:
            return f"No results for {query!r}."
        return facts[entity]["observation"]

    @tool(read_only=True, idempotent=True, limits={"timeout": 60})
    async def math(problem: str, context: list[str] | None = None) -> float:
        """Compute a numeric answer: the problem in words or symbols, with results to take numbers from.

        Args:
            problem: what to compute, e.g. "Everest height * 1.1 - K2 height".
            context: earlier results that hold the numbers, e.g. ["$1", "$2"].
        """
        ctx = "\n".join(str(c) for c in (context or []))
        comp: Any = await model.complete(
            [Message(role="system", content=_MATH_SYSTEM),
             Message(role="user", content=f"Context:\n{ctx}\n\nProblem: {problem}")],
            max_tokens=120,
            response_format={"type": "json_schema", "json_schema": {"name": "math", "schema": _MATH_SCHEMA}},
        )
        math_usage.append(comp.usage)
        expression = json.loads(comp.content)["expression"]
        result = await calculator.call({"expression": expression})
        if not result.ok:
            raise ValueError(f"cannot evaluate {expression!r}: {result.error}")
        return result.value

    return ToolRegistry([search, math]), math_usage


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def score(answer: str, gold: str, question: dict[str, Any], facts: dict[str, Any]) -> bool:
    """True if ``answer`` matches ``gold`` by the benchmark's rule (see module docstring)."""
    spec = question.get("spec", {})
    if spec.get("type") == "choice":
        text = " " + _norm(answer) + " "
        first: tuple[int, str] | None = None
        for option in spec.get("options", {}):
            names = [option, *facts.get(option, {}).get("aliases", [])]
            for name in names:
                m = re.search(rf"(^|\s){re.escape(_norm(name))}($|\s)", text)
                if m and (first is None or m.start() < first[0]):
                    first = (m.start(), option)
        return first is not None and _norm(first[1]) == _norm(gold)
    try:
        want = float(str(gold).replace(",", ""))
    except ValueError:
        return _norm(gold) in _norm(answer)
    m = _NUMBER.search(answer.replace("\u2212", "-"))
    if not m:
        return False
    got = float(m.group().replace(",", ""))
    return abs(got - want) <= 0.10 * abs(want) if want else abs(got) < 1e-9


class _Namespaced:
    """Prefixes the system message with the system's name, so each system under test keeps its
    own prompt-cache entries: a later system must not be served the cache of an identical prompt
    an earlier one just sent for the same question, while each still reuses its own static prefix
    across questions, as it would in production."""

    def __init__(self, model: ChatModel, name: str) -> None:
        self.model, self.model_name, self.tag = model, model.model_name, f"[{name}]\n"

    async def complete(self, messages: Any, **kw: Any) -> Any:
        msgs = [m if isinstance(m, Message) else Message(**m) for m in messages]
        if msgs and msgs[0].role == "system":
            msgs[0] = msgs[0].model_copy(update={"content": self.tag + (msgs[0].content or "")})
        else:
            msgs.insert(0, Message(role="system", content=self.tag))
        return await self.model.complete(msgs, **kw)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def _run_async(config: dict[str, Any]) -> dict[str, Any]:
    from agentrt.config import get_settings
    from agentrt.llm import OpenAIChatModel, resolve_endpoint
    from agentrt.planner import FaithfulLLMCompiler, LLMCompiler, ReAct

    data = Path(config.get("data", "../shared/data")) / "parallelqa_offline"
    if not (data / "questions.json").is_file():
        raise FileNotFoundError(f"ParallelQA offline data not found in {data}; pass --data DIR")
    questions = json.loads((data / "questions.json").read_text())
    facts = json.loads((data / "facts.json").read_text())
    limit = int(config.get("limit") or len(questions))
    questions = questions[:limit]
    systems = [s for s in str(config.get("systems", "agentrt,agentrt_json,llmcompiler_faithful,react")).split(",")
               if s]
    settings = get_settings()
    per: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    base_url, engine = await resolve_endpoint(settings)
    try:
        model = OpenAIChatModel(base_url=base_url, model=settings.model, api_key=settings.api_key,
                                timeout=settings.request_timeout)
        progress = config.get("progress")
        for qi, q in enumerate(questions):
            order = systems[qi % len(systems):] + systems[: qi % len(systems)]
            for name in order:
                rng = random.Random(f"{q['id']}")  # same latencies for every system
                ns_model = _Namespaced(model, name)
                registry, tool_usage = make_tools(facts, ns_model, rng)
                if name == "agentrt":
                    runner: Any = LLMCompiler(ns_model, registry, examples=EXAMPLES)
                elif name == "agentrt_json":
                    runner = LLMCompiler(ns_model, registry, examples=EXAMPLES, plan_format="json")
                elif name == "agentrt_parallel":  # outline, then every task's arguments at once
                    runner = LLMCompiler(ns_model, registry, examples=EXAMPLES, plan_format="parallel")
                elif name == "llmcompiler_faithful":
                    runner = FaithfulLLMCompiler(ns_model, registry, examples=EXAMPLES)
                elif name == "react":
                    runner = ReAct(ns_model, registry, example=REACT_EXAMPLE)
                else:
                    raise ValueError(f"unknown system {name!r}")
                t0 = time.perf_counter()
                try:
                    with anyio.fail_after(float(config.get("timeout", 300))):
                        res = await runner.run(q["question"])
                    answer, err = res.answer, None
                except TimeoutError:
                    res, answer, err = None, "", "timeout"
                except Exception as exc:  # noqa: BLE001 - a failed question is a data point
                    res, answer, err = None, "", f"{type(exc).__name__}: {exc}"
                wall = time.perf_counter() - t0
                rec = {
                    "id": q["id"], "correct": score(answer, q["answer"], q, facts), "answer": answer,
                    "gold": q["answer"], "wall_s": round(wall, 3), "error": err,
                    "llm_calls": (res.llm_calls if res else 0) + len(tool_usage),
                    "input_tokens": (res.usage.input_tokens if res else 0) + sum(u.input_tokens for u in tool_usage),
                    "output_tokens": (res.usage.output_tokens if res else 0) + sum(u.output_tokens for u in tool_usage),
                    "cached_input_tokens": (res.usage.cached_tokens if res else 0)
                    + sum(u.cached_tokens for u in tool_usage),
                    "tasks": len(res.tasks) if res else 0, "rounds": res.rounds if res else 0,
                    "first_dispatch_s": res.first_dispatch_seconds if res else None,
                }
                per[name].append(rec)
                if progress:
                    progress(f"[{qi + 1}/{len(questions)}] {name}: {'ok ' if rec['correct'] else 'bad'} "
                             f"{wall:6.1f}s  {answer[:60]!r} (gold {q['answer']})")
    finally:
        if engine is not None:
            await engine.stop()

    summary: dict[str, Any] = {}
    for name, recs in per.items():
        walls = [r["wall_s"] for r in recs]
        summary[name] = {
            "questions": len(recs),
            "accuracy": round(sum(r["correct"] for r in recs) / len(recs), 4) if recs else None,
            "latency_p50_s": _pct(walls, 0.5), "latency_p90_s": _pct(walls, 0.9),
            "latency_mean_s": round(statistics.fmean(walls), 3) if walls else None,
            "llm_calls_mean": round(statistics.fmean(r["llm_calls"] for r in recs), 2) if recs else None,
            "input_tokens_mean": round(statistics.fmean(r["input_tokens"] for r in recs), 1) if recs else None,
            "output_tokens_mean": round(statistics.fmean(r["output_tokens"] for r in recs), 1) if recs else None,
            "cached_input_tokens_mean": round(statistics.fmean(r["cached_input_tokens"] for r in recs), 1)
            if recs else None,
            "errors": sum(1 for r in recs if r["error"]),
            "per_question": recs,
        }
    targets = []
    a = summary.get("agentrt")
    for other, goal in (("react", 3.0), ("llmcompiler_faithful", 1.25)):
        b = summary.get(other)
        if a and b and a["latency_mean_s"] and b["latency_mean_s"]:
            # pair by pair: the ratio of summed latencies over the same questions
            ratio = sum(r["wall_s"] for r in b["per_question"]) / sum(r["wall_s"] for r in a["per_question"])
            acc_ok = a["accuracy"] >= b["accuracy"] if other == "react" else True
            targets.append({"name": f"latency_speedup_vs_{other}", "value": round(ratio, 3),
                            "goal": f">= {goal}" + (" at equal or better accuracy" if other == "react" else ""),
                            "met": bool(ratio >= goal and acc_ok)})
    return {
        "bench": "parallelqa",
        "config": {"questions": len(questions), "search_latency": "lognormal(median=0.3s, sigma=0.5)",
                   "model": settings.model, "systems": systems,
                   "scoring": "numbers: first number within 10 %; choices: first option named",
                   "engine": config.get("engine_note")},
        "systems": summary,
        "targets": targets,
    }


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark; ``config`` keys: data, limit, systems, timeout, progress (callable)."""
    return anyio.run(_run_async, config)
