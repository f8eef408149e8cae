"""A scripted chat model for sleep-time tests: answers each job step with fixed text, can block
or be slow on a chosen step, reports usage (input = prompt chars / 4, output = words), and
records every call, every cancellation and the ``max_tokens`` it was given."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio

from agentrt.llm import Completion, Usage
from agentrt.sleeptime import _prompts


def step_of(messages) -> str:
    system = messages[0]["content"]
    if system == _prompts.ANTICIPATE_SYSTEM:
        return "predict" if len(messages) > 2 else "notes"
    if system.startswith(_prompts.CONSOLIDATE_SYSTEM.split("{")[0]):
        return "consolidate"
    if system == _prompts.VERIFY_SYSTEM:
        return "verify"
    return "other"


class FakeModel:
    model_name = "fake-model"

    def __init__(self, *, notes: str = "Total apples: 12.\nKEY FACTS:\n- apples per day: 3",
                 qa: list[tuple[str, str]] | None = None, facts: list[str] | None = None,
                 delay: dict[str, float] | None = None, hooks: dict[str, Callable[[], None]] | None = None,
                 output_tokens: int | None = None, verdicts: list[str] | None = None) -> None:
        self.notes = notes
        self.qa = qa if qa is not None else [("How many apples are there in total?", "12")]
        self.facts = list(facts or [])
        self.delay = dict(delay or {})
        self.hooks = dict(hooks or {})
        self.output_tokens = output_tokens
        self.verdicts = list(verdicts or [])  # replies to verification calls, in order ("yes"/"no")
        self.calls: list[dict] = []
        self.cancelled: list[str] = []
        self.started = {k: anyio.Event() for k in ("notes", "predict", "consolidate")}

    async def complete(self, messages, *, max_tokens=None, response_format=None, temperature=None, **kw):
        step = step_of(messages)
        self.calls.append({"step": step, "max_tokens": max_tokens, "messages": messages})
        if step in self.started:
            self.started[step].set()
        if step in self.hooks:
            self.hooks.pop(step)()
        try:
            if self.delay.get(step):
                await anyio.sleep(self.delay[step])
        except anyio.get_cancelled_exc_class():
            self.cancelled.append(step)
            raise
        if step == "notes":
            text = self.notes
        elif step == "predict":
            text = json.dumps({"items": [{"question": q, "work": f"from the text: {a}", "answer": a}
                                        for q, a in self.qa]})
        elif step == "verify":
            text = json.dumps(self.verdicts.pop(0))
        elif step == "consolidate":
            text = "\n".join(f"- {f}" for f in self.facts)
        else:
            text = "ok"
        chars = sum(len(m["content"] or "") for m in messages)
        out = self.output_tokens if self.output_tokens is not None else len(text.split())
        if max_tokens is not None:
            out = min(out, max_tokens)
        return Completion(content=text, usage=Usage(input_tokens=chars // 4, output_tokens=out, requests=1),
                          model=self.model_name)

    def steps(self) -> list[str]:
        return [c["step"] for c in self.calls]


class Routed:
    """Sleep-time and verification calls go to a `FakeModel`, planner/joiner calls to a `ScriptedModel`."""

    model_name = "scripted"

    def __init__(self, sleep: FakeModel, run: Any) -> None:  # run: a `ScriptedModel`
        self.sleep, self.run = sleep, run

    async def complete(self, messages, **kw):
        first = messages[0]
        if isinstance(first, dict) and first["content"] in (_prompts.ANTICIPATE_SYSTEM, _prompts.VERIFY_SYSTEM):
            return await self.sleep.complete(messages, **{k: v for k, v in kw.items() if k != "stream"})
        return await self.run.complete(messages, **kw)
