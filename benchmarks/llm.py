"""The local engine: time to first token, decode and prompt speed, and the gain of parallel slots.

One engine with 4 slots serves every measurement. Prompts start with a fresh nonce so the prompt
cache cannot serve them. Parallel throughput for N = 1, 2, 4 is compared with the same N
requests sent one after another, alternating the two orders, in the same run.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import anyio

from agentrt.llm import Message

_TEXT = (
    "Explain in plain words how a cgroup limits the memory of a process, what memory.high and "
    "memory.max mean, and what happens when a process exceeds each limit. "
)


def _prompt(words: int = 1) -> list[Message]:
    return [Message(role="user", content=f"[{uuid.uuid4().hex}] " + _TEXT * words)]


async def _one(model: Any, max_tokens: int, words: int = 1) -> dict[str, float]:
    t0 = time.perf_counter()
    stream = await model.complete(_prompt(words), stream=True, max_tokens=max_tokens)
    ttft = None
    comp = None
    async for d in stream:
        if d.content and ttft is None:
            ttft = time.perf_counter() - t0
        if d.done:
            comp = d.completion
    wall = time.perf_counter() - t0
    out = comp.usage.output_tokens
    return {"ttft_s": ttft or wall, "wall_s": wall, "input_tokens": comp.usage.input_tokens,
            "output_tokens": out,
            "decode_tps": (out - 1) / (wall - (ttft or 0)) if out > 1 and wall > (ttft or 0) else 0.0}


async def _run_async(config: dict[str, Any]) -> dict[str, Any]:
    from agentrt.config import get_settings
    from agentrt.llm import LocalEngine, OpenAIChatModel

    reps = int(config.get("reps", 3))
    max_tokens = int(config.get("max_tokens", 64))
    progress = config.get("progress") or (lambda m: None)
    settings = get_settings(engine={"port": 0, "parallel": 4, "context": 8192})
    async with LocalEngine(settings) as engine:
        model = OpenAIChatModel(base_url=engine.base_url, model=engine.model_name, timeout=300)
        singles = []
        for i in range(reps):
            singles.append(await _one(model, max_tokens, words=4))
            progress(f"single {i + 1}/{reps}: ttft {singles[-1]['ttft_s']:.2f}s "
                     f"decode {singles[-1]['decode_tps']:.1f} tok/s")
        prompt_tps = [s["input_tokens"] / s["ttft_s"] for s in singles]
        parallel: dict[str, Any] = {}
        for n in (1, 2, 4):
            par_tps, seq_tps = [], []
            for rep in range(reps):
                for mode in (("par", "seq") if rep % 2 == 0 else ("seq", "par")):
                    t0 = time.perf_counter()
                    outs: list[dict[str, float]] = []
                    if mode == "par":
                        async with anyio.create_task_group() as tg:
                            for _ in range(n):
                                async def go() -> None:
                                    outs.append(await _one(model, max_tokens))
                                tg.start_soon(go)
                    else:
                        for _ in range(n):
                            outs.append(await _one(model, max_tokens))
                    tps = sum(o["output_tokens"] for o in outs) / (time.perf_counter() - t0)
                    (par_tps if mode == "par" else seq_tps).append(tps)
            parallel[str(n)] = {"parallel_tokens_per_s": round(statistics.median(par_tps), 2),
                                "sequential_tokens_per_s": round(statistics.median(seq_tps), 2),
                                "gain": round(statistics.median(par_tps) / statistics.median(seq_tps), 3)}
            progress(f"N={n}: {parallel[str(n)]}")
        await model.aclose()
        startup = engine.startup_seconds
    return {
        "bench": "llm",
        "config": {"reps": reps, "max_tokens": max_tokens, "slots": 4, "threads": settings.engine.threads,
                   "model": settings.model, "prompt_tokens": singles[0]["input_tokens"]},
        "systems": {
            "local_engine": {
                "startup_s": round(startup, 2),
                "ttft_s_median": round(statistics.median(s["ttft_s"] for s in singles), 3),
                "decode_tokens_per_s_median": round(statistics.median(s["decode_tps"] for s in singles), 2),
                "prompt_tokens_per_s_median": round(statistics.median(prompt_tps), 2),
                "parallel_slots": parallel,
            },
            "sequential_requests": {n: v["sequential_tokens_per_s"] for n, v in parallel.items()},
        },
        "targets": [],
    }


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Run the benchmark; ``config`` keys: reps (3), max_tokens (64), progress (callable)."""
    return anyio.run(_run_async, config)
