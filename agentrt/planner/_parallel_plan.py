"""Parallel plan decoding: the plan's outline first, then every task's arguments at once.

Two stages instead of one streamed plan (``plan_format="parallel"`` of `LLMCompiler`):

1. Outline: one request, constrained by a grammar, writes the plan's calls as numbered lines of
   tool names with the ``$K`` of the earlier calls each one uses, ending with ``join()``::

       1. search()
       2. search()
       3. math($1, $2)
       4. join()

   The grammar admits only registered tool names and references to earlier calls (or to tasks
   of earlier rounds), so the outline cannot name an unknown tool or a forward reference.
2. Arguments: every task's arguments are decoded at once with
   `agentrt.decoding.ParallelCallDecoder.decode_arguments` (SimpleTool-style: the call's
   skeleton written, each argument value decoded in its own schema-constrained branch). Each
   task's prompt is the question, the outline and "call i"; the worked examples show an outline
   and its calls written out. Calls of the same tool are decoded in id order, each prompt showing
   the earlier ones' arguments (``siblings="see_earlier"``): decoded all at once, two ``search``
   calls of one outline were both written for the first entity of the question. Calls of
   different tools still decode at once.
   Wherever the tool's schema takes a value, the grammar also admits a reference ``"$N"``.

Each task is validated (`PlanValidator`) and handed to the scheduler the moment its arguments
are decoded and every earlier task it refers to has been settled; a task whose arguments cannot
be decoded becomes a `PlanIssue` (the joiner sees it, its dependents are rejected), never an
exception. The joiner is unchanged.

Needs llama.cpp's native ``/apply-template`` and ``/completion`` (the local engine);
`ParallelPlanner.unsupported` says why not elsewhere, and the compiler then uses the text plan.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from agentrt.decoding import (
    DecodeStats,
    LlamaCppEndpoint,
    ParallelCallDecoder,
    RawCompletion,
)
from agentrt.errors import DecodingError, ModelError
from agentrt.executor import Task
from agentrt.llm import Message, OpenAIChatModel, Usage
from agentrt.planner._parser import PlanEnd, PlanIssue, TaskParsed, parse_plan
from agentrt.planner._prompts import PlanExample, render_tool
from agentrt.planner._schema import tool_args_schema
from agentrt.planner._validate import PlanValidator
from agentrt.tools import Tool, ToolRegistry

if TYPE_CHECKING:
    from agentrt.planner._compiler import CompilerResult, LLMCompiler

__all__ = ["OutlineTask", "ParallelPlanner", "outline_grammar", "parse_outline"]

log = logging.getLogger(__name__)

_REF_STRING = {"type": "string", "pattern": "^\\$[0-9]+$"}
_LINE = re.compile(r"\s*(\d+)\.\s*([A-Za-z_][\w.]*)\((.*?)\)\s*$")


@dataclass(frozen=True)
class OutlineTask:
    """One line of an outline: task ``id`` calls ``tool`` and uses the results of ``deps``."""

    id: int
    tool: str
    deps: tuple[int, ...] = ()

    def line(self) -> str:
        return f"{self.id}. {self.tool}({', '.join(f'${d}' for d in self.deps)})"


def _lit(text: str) -> str:
    """``text`` as a Lark string literal (JSON escaping is a subset Lark reads)."""
    return json.dumps(text, ensure_ascii=False)


def outline_grammar(tools: Sequence[str], *, first_id: int = 1, max_tasks: int = 8,
                    known_ids: Sequence[int] = (), min_tasks: int = 1) -> str:
    """The llguidance (Lark) grammar of an outline of ``min_tasks``..``max_tasks`` calls.

    Line ``k`` is ``"k. " TOOL "(" refs ")"`` where refs name calls ``first_id..k-1`` or
    ``known_ids`` (``$N``, comma-separated, possibly none); the outline ends with
    ``"n. join()"``. Numbers are literals, so the ids count up from ``first_id``.

    Raises:
        ValueError: no tools, or ``max_tasks < min_tasks``.
    """
    if not tools:
        raise ValueError("an outline needs at least one tool")
    if max_tasks < max(min_tasks, 0):
        raise ValueError("max_tasks must be at least min_tasks")
    names = " | ".join(_lit(t) for t in sorted(tools, key=len, reverse=True))
    lines = ["%llguidance {}", "start: l0", f"tool: {names}"]
    for k in range(max_tasks + 1):
        tid = first_id + k
        refs = sorted({*known_ids, *range(first_id, tid)})
        alts = []
        if k < max_tasks:
            if refs:
                ref = " | ".join(_lit(f"${r}") for r in refs)
                lines.append(f"r{k}: {ref}")
                call = f'tool "(" (r{k} (", " r{k})*)? ")"'
            else:
                call = 'tool "()"'
            alts.append(f'{call} "\\n" l{k + 1}')
        if k >= min_tasks:
            alts.append('"join()"')
        lines.append(f"l{k}: {_lit(f'{tid}. ')} ({' | '.join(alts)})")
    return "\n".join(lines) + "\n"


def parse_outline(text: str, registry: ToolRegistry, *, first_id: int = 1,
                  known_ids: Sequence[int] = ()) -> tuple[list[OutlineTask], list[PlanIssue]]:
    """The calls of an outline's text, and an issue for each line that is not a valid call.

    A line stops being read at ``join()``; ids must count up from ``first_id``; references must
    name earlier calls or ``known_ids``.
    """
    tasks: list[OutlineTask] = []
    issues: list[PlanIssue] = []
    expect = first_id
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if re.fullmatch(r"(\d+\.\s*)?join\(\)", line):
            break
        m = _LINE.match(line)
        if m is None or int(m.group(1)) != expect or m.group(2) not in registry:
            issues.append(PlanIssue(None, line, f"outline line {line!r} is not 'N. tool($K, ...)' "
                                    f"with N = {expect} and a known tool"))
            break
        deps = tuple(sorted({int(d) for d in re.findall(r"\$(\d+)", m.group(3))}))
        bad = [d for d in deps if not (d in known_ids or first_id <= d < expect)]
        if bad:
            issues.append(PlanIssue(expect, line, f"outline line {line!r} uses ${bad[0]}, which is "
                                    "not an earlier call"))
            deps = tuple(d for d in deps if d not in bad)
        tasks.append(OutlineTask(expect, m.group(2), deps))
        expect += 1
    return tasks, issues


_RULES = """\
You answer questions with tool calls, in two steps.
Step 1, the outline: one numbered line per call, the tool's name with, in parentheses, $K for \
each earlier call K whose result it needs; after the last call a numbered join() line. Calls \
that do not need each other's results are separate calls: they run in parallel.
Step 2, when asked for call N, write that call with its arguments. Each call gets its own \
arguments, even when several calls use the same tool. Write "$K" as an argument value (or inside \
a text) to use the result of call K.
Tools:
{tools}"""


def _example_text(example: PlanExample, registry: ToolRegistry) -> str | None:
    tasks = [ev.task for ev in parse_plan(example.plan, registry, format="text") if isinstance(ev, TaskParsed)]
    if not tasks:
        return None
    outline = [OutlineTask(t.id, t.tool, tuple(sorted(t.deps))).line() for t in tasks]
    outline.append(f"{tasks[-1].id + 1}. join()")
    return (f"Example question: {example.question}\nOutline:\n" + "\n".join(outline)
            + "\nCalls:\n" + "\n".join(t.render() for t in tasks))


def planner_parallel_prompt(registry: ToolRegistry, examples: Sequence[PlanExample]) -> str:
    """The system prompt shared by the outline request and every task's argument decode (so a
    slot's prompt cache serves them all); examples are written in the text plan format."""
    parts = [_RULES.format(tools="\n".join(render_tool(t) for t in registry))]
    parts += [text for ex in examples if (text := _example_text(ex, registry))]
    return "\n\n".join(parts)


_NO_REF = {"$comment": "no reference allowed here"}


def _ref_spec(tool: Tool, *, nullable_optional: bool, refs: Sequence[int] | None = None) -> dict[str, Any]:
    """``tool`` as an OpenAI function spec whose every value position also takes ``"$N"``.

    ``refs``: the task ids a reference may name (``None``: any); with none allowed, values are
    only the tool's own (a string parameter still admits any text). With ``nullable_optional``,
    every optional argument is made required but nullable, so it is decoded in its own branch at
    once with the others (``null``: absent) instead of in a second, sequential request after them."""
    ref: dict[str, Any] = dict(_REF_STRING)
    if refs is not None:
        ref = {"enum": [f"${r}" for r in sorted(set(refs))]} if refs else _NO_REF
    defs: dict[str, Any] = {"ref": ref}
    params = copy.deepcopy(tool_args_schema(tool, defs, refs="string"))
    if nullable_optional:
        props = params.get("properties") or {}
        required = set(params.get("required") or [])
        for key, sub in props.items():
            if key not in required:
                props[key] = {"anyOf": [sub, {"type": "null"}]}
        params["required"] = list(props)
    return {"name": tool.name, "description": tool.description, "parameters": _inline(params, defs)}


def _inline(schema: Any, defs: dict[str, Any], depth: int = 0) -> Any:
    """``schema`` with local ``$ref``s replaced by their definitions (the decoder builds each
    argument's grammar from that argument's schema alone, where ``$defs`` do not travel);
    definitions nested deeper than 8 (recursive ones) become ``{}``: any value, checked later
    by the validator against the tool's own schema."""
    if isinstance(schema, list):
        return [_inline(s, defs, depth) for s in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref[len("#/$defs/"):].replace("~1", "/").replace("~0", "~")
        if depth >= 8 or name not in defs:
            return {}
        return _inline(defs[name], defs, depth + 1)
    out = {k: _inline(v, defs, depth) for k, v in schema.items() if k != "$defs"}
    if isinstance(out.get("anyOf"), list) and _NO_REF in out["anyOf"]:
        rest = [s for s in out["anyOf"] if s != _NO_REF]
        del out["anyOf"]
        if len(rest) == 1 and not (set(out) & set(rest[0])):
            out.update(rest[0])
        elif rest:
            out["anyOf"] = rest
    return out


def _usage(requests: int, evaluated: int, cached: int, decoded: int) -> Usage:
    return Usage(input_tokens=evaluated + cached, output_tokens=decoded, cached_tokens=cached,
                 requests=requests)


@dataclass
class _Round:
    """What one round's settling needs: the outline, the first id, tasks waiting for earlier ones."""

    first_id: int
    outline: list[OutlineTask]
    settled: set[int] = field(default_factory=set)
    waiting: dict[int, Task] = field(default_factory=dict)
    #: per task id: set once its arguments are decoded (or failed); `written` holds the call
    written: dict[int, str] = field(default_factory=dict)
    decoded: dict[int, anyio.Event] = field(default_factory=dict)


class ParallelPlanner:
    """Outline, then arguments in parallel, for one `LLMCompiler` (see the module docstring).

    Args:
        registry: the tools a plan may call.
        examples: worked examples, in the text plan format.
        base_url: the OpenAI base URL of a llama.cpp server (``http://host:port/v1``).
        max_tasks: most calls in one outline.
        outline_max_tokens: token cap of the outline request.
        max_value_tokens: token cap of one argument value.
        slots: the decoder's slot policy (``"auto"``: a shared server's busy slot is not waited for).
        optional_args: ``"nullable"`` (each optional argument decoded at once with the required
            ones, ``null`` meaning absent) or ``"decide"`` (the decoder's own way: after the required
            ones, one request whose first token says whether any optional argument follows).
        siblings: ``"see_earlier"`` (calls of the same tool in one outline are decoded in id order,
            each prompt showing the earlier ones' arguments; calls of different tools still run at
            once) or ``"parallel"`` (every call at once; siblings may repeat each other's arguments).
    """

    def __init__(self, registry: ToolRegistry, examples: Sequence[PlanExample], base_url: str, *,
                 max_tasks: int = 8, outline_max_tokens: int = 96, max_value_tokens: int = 160,
                 slots: str = "auto", optional_args: str = "nullable", siblings: str = "see_earlier") -> None:
        if optional_args not in ("nullable", "decide"):
            raise ValueError(f"optional_args must be 'nullable' or 'decide', not {optional_args!r}")
        if siblings not in ("see_earlier", "parallel"):
            raise ValueError(f"siblings must be 'see_earlier' or 'parallel', not {siblings!r}")
        self.siblings = siblings
        self.registry = registry
        self.max_tasks = max_tasks
        self.outline_max_tokens = outline_max_tokens
        self.system = planner_parallel_prompt(registry, examples)
        self.decoder = ParallelCallDecoder(OpenAIChatModel(base_url, "default"), list(registry),
                                           slots=slots,  # type: ignore[arg-type]
                                           max_value_tokens=max_value_tokens)
        self.endpoint: LlamaCppEndpoint = self.decoder.endpoint
        self._nullable = optional_args == "nullable"
        self._optional = {t.name: set(t.parameters.get("properties") or {}) - set(t.parameters.get("required") or [])
                          for t in registry}

    async def aclose(self) -> None:
        await self.decoder.aclose()

    async def unsupported(self) -> str | None:
        """None when the endpoint can decode plans in parallel, else why not (a sentence)."""
        return await self.decoder.supports_parallel()

    # -- prompts --------------------------------------------------------------------------

    def outline_messages(self, question: str, context: str | None, replan_note: str | None) -> list[dict[str, Any]]:
        user = f"Question: {question}"
        if context:
            user = f"Known context:\n{context}\n\n{user}"
        msgs = [{"role": "system", "content": self.system}, {"role": "user", "content": user}]
        if replan_note:
            msgs.append({"role": "user", "content": replan_note})
        return msgs

    @staticmethod
    def task_messages(outline_msgs: list[dict[str, Any]], outline: list[OutlineTask],
                      task: OutlineTask, written: dict[int, str] | None = None) -> list[dict[str, Any]]:
        """The outline conversation + "call i": the prompt of task ``task``'s argument decode.

        ``written``: calls of the same tool already decoded in this outline (id -> ``tool(args)``),
        shown so that this call takes different arguments (without them, two ``search`` calls of
        one outline were both decoded with the first entity's name)."""
        text = "\n".join([*(t.line() for t in outline), f"{outline[-1].id + 1}. join()"])
        same = [t.id for t in outline if t.tool == task.tool]
        ask = f"Write call {task.id}: {task.line().split('. ', 1)[1]}"
        if len(same) > 1:
            ask += (f". Calls {', '.join(map(str, same))} all use {task.tool}; this is call {task.id}, "
                    "with its own arguments")
            done = [f"{tid}. {written[tid]}" for tid in same if written and tid in written]
            if done:
                ask += ("; already written, for other items of the question:\n" + "\n".join(done)
                        + f"\nCall {task.id} is for the next item, not one of those")
        return [*outline_msgs, {"role": "assistant", "content": "Outline:\n" + text},
                {"role": "user", "content": ask + "."}]

    # -- one round ------------------------------------------------------------------------

    async def outline(self, compiler: LLMCompiler, res: CompilerResult, msgs: list[dict[str, Any]],
                      first_id: int) -> tuple[list[OutlineTask], list[PlanIssue], str]:
        """Decode the outline (one constrained request, accounted to ``res``)."""
        known = sorted(res.tasks)
        grammar = outline_grammar(self.registry.names, first_id=first_id, max_tasks=self.max_tasks,
                                  known_ids=known, min_tasks=0 if res.tasks else 1)
        call = compiler._before_llm_call(res, "planner", [Message(**m) for m in msgs], self.outline_max_tokens)
        try:
            prompt = await self.endpoint.apply_template(msgs, None)
            r: RawCompletion = await self.endpoint.complete(prompt + "Outline:\n",
                                                            n_predict=self.outline_max_tokens, grammar=grammar)
            call.span.set("agentrt.plan.format", "parallel")
            compiler._account(res, _usage(1, r.prompt_n, r.cache_n, r.tokens_predicted), call)
        except BaseException as exc:
            call.end(exc)
            raise
        call.end()
        log.debug("outline in %.2f s (%d prompt tokens evaluated, %d cached, %d decoded): %r", r.ended - r.started,
                  r.prompt_n, r.cache_n, r.tokens_predicted, r.content)
        tasks, issues = parse_outline(r.content, self.registry, first_id=first_id, known_ids=known)
        if r.stop_type == "limit":
            issues.append(PlanIssue(None, r.content[-200:], f"the outline was cut at {self.outline_max_tokens} "
                                    f"tokens after {len(tasks)} calls"))
        return tasks, issues, r.content

    async def plan_and_execute(self, compiler: LLMCompiler, question: str, context: str | None,
                               feedback: str | None, res: CompilerResult) -> None:
        """One planning round: outline, then decode each task's arguments and dispatch it as soon
        as it is valid; returns when every task of the round has a result (kept in ``res``).

        Raises:
            ModelError: the outline request failed (a failed argument decode is a plan issue).
        """
        first_id = max(res.tasks, default=0) + 1
        note = None
        if res.tasks:
            from agentrt.planner._compiler import _describe_results

            issues = "\n".join(f"- {i.message}" for i in res.issues[-5:])
            note = (f"These calls were already made; do not repeat them, use $K to refer to their results:\n"
                    f"{_describe_results(res.tasks, res.results)}\n"
                    + (f"Problems found in the plan:\n{issues}\n" if issues else "")
                    + f"What is missing: {feedback}\n"
                    + f"Write the outline of only the new calls, numbered from {first_id}, then "
                      f"{first_id}. join() if no call is needed.")
        msgs = self.outline_messages(question, context, note)
        validator = PlanValidator(self.registry, known_ids=set(res.tasks))
        async with compiler.scheduler.session(results=dict(res.results)) as session:
            handle = compiler._event_handler(res, validator, session.add)
            outline, issues, _ = await self.outline(compiler, res, msgs, first_id)
            handle(list(issues))
            rnd = _Round(first_id, outline, decoded={t.id: anyio.Event() for t in outline})
            async with anyio.create_task_group() as tg:
                for task in outline:
                    tg.start_soon(self._decode_task, compiler, res, msgs, rnd, task, handle)
            # an outline whose lines stopped early leaves later ids unsettled: nothing waits on them
            for tid in sorted(rnd.waiting):
                handle([TaskParsed(rnd.waiting.pop(tid))])
            handle([PlanEnd(joined=True)])
            session.close()
            results = await session.wait()
        res.results.update(results)

    async def _decode_task(self, compiler: LLMCompiler, res: CompilerResult, msgs: list[dict[str, Any]],
                           rnd: _Round, task: OutlineTask, handle: Any) -> None:
        try:
            await self._decode_task_arguments(compiler, res, msgs, rnd, task, handle)
        finally:
            rnd.decoded[task.id].set()

    async def _decode_task_arguments(self, compiler: LLMCompiler, res: CompilerResult,
                                     msgs: list[dict[str, Any]], rnd: _Round, task: OutlineTask,
                                     handle: Any) -> None:
        if self.siblings == "see_earlier":  # same-tool calls written in id order, each sees the earlier
            for other in rnd.outline:
                if other.id < task.id and other.tool == task.tool:
                    await rnd.decoded[other.id].wait()
        tmsgs = self.task_messages(msgs, rnd.outline, task, rnd.written)
        call = compiler._before_llm_call(res, "planner.arguments", [Message(**m) for m in tmsgs],
                                         self.decoder.max_value_tokens)
        call.span.set("agentrt.plan.task_id", task.id)
        stats: DecodeStats | None = None
        error: BaseException | None = None
        try:
            # references only to earlier tasks: the grammar cannot write one to this task or a later one
            refs = [*sorted(res.tasks), *range(rnd.first_id, task.id)]
            spec = _ref_spec(self.registry.get(task.tool), nullable_optional=self._nullable, refs=refs)
            args, stats = await self.decoder.decode_arguments(spec, tmsgs)
        except (DecodingError, ModelError) as exc:
            error = exc
        except BaseException as exc:
            call.end(exc)
            raise
        if stats is not None:
            log.debug("task %d (%s): arguments decoded in %.2f s, %d requests, %d prompt tokens evaluated, "
                      "%d cached, %d decoded", task.id, task.tool, stats.wall_seconds, stats.requests,
                      stats.prompt_tokens_evaluated, stats.prompt_tokens_cached, stats.tokens_decoded)
        try:
            if stats is not None:
                res.llm_calls += max(0, stats.requests - 1)
                compiler._account(res, _usage(stats.requests, stats.prompt_tokens_evaluated,
                                              stats.prompt_tokens_cached, stats.tokens_decoded), call)
        finally:
            call.end(error)
        if error is not None:
            log.info("task %d (%s): arguments not decoded: %s", task.id, task.tool, error)
            self._settle(rnd, task.id, PlanIssue(task.id, task.line(), (
                f"task {task.id} ({task.tool}) rejected: its arguments could not be decoded: {error}")), handle)
            return
        args = {k: v for k, v in args.items() if not (v is None and k in self._optional[task.tool])}
        planned = Task(id=task.id, tool=task.tool, args=args, deps=frozenset(task.deps))
        rnd.written[task.id] = planned.render().split(". ", 1)[-1]
        forward = sorted(d for d in planned.deps if d >= task.id)
        if forward:
            self._settle(rnd, task.id, PlanIssue(task.id, planned.render(), (
                f"task {task.id} ({task.tool}) rejected: it references task {forward[0]}, which comes "
                "later: a task may only use results of tasks written before it")), handle)
            return
        rnd.waiting[task.id] = planned
        self._flush(rnd, handle)

    def _settle(self, rnd: _Round, tid: int, event: Any, handle: Any) -> None:
        handle([event])
        rnd.settled.add(tid)
        self._flush(rnd, handle)

    @staticmethod
    def _flush(rnd: _Round, handle: Any) -> None:
        """Hand over every waiting task whose earlier tasks of this round are all settled (in id
        order, so the validator sees a task's dependencies, accepted or rejected, before it)."""
        progress = True
        while progress:
            progress = False
            for tid in sorted(rnd.waiting):
                task = rnd.waiting[tid]
                if all(d in rnd.settled for d in task.deps if rnd.first_id <= d < tid):
                    del rnd.waiting[tid]
                    handle([TaskParsed(task)])
                    rnd.settled.add(tid)
                    progress = True
