"""The anticipate job on the real local model, under a token budget (uses the registered engine;
never starts one: the shared engine of this machine must not get a second one beside it)."""

from __future__ import annotations

import anyio
import pytest

from agentrt.memory_store import HashingEmbedder, MemoryStore
from agentrt.sleeptime import JobBudget, SleepTimeScheduler, learned_label
from agentrt.tracing import Tracer

pytestmark = [pytest.mark.model, pytest.mark.anyio]


@pytest.fixture
async def endpoint(require_local_model):
    from agentrt.config import get_settings
    from agentrt.llm import running_engine

    settings = get_settings()
    if settings.base_url:
        return settings.base_url, settings.model
    state = await running_engine(settings)
    if state is None:
        pytest.skip("no registered engine is running (`agentrt engine start`); this test does not start one")
    return state.base_url, settings.model


async def test_anticipate_on_the_local_model_learns_within_its_budget(tmp_path, endpoint):
    from agentrt.llm import OpenAIChatModel

    base_url, name = endpoint
    store = MemoryStore(tmp_path / "m.db", embedder=HashingEmbedder())
    context = "A baker makes 24 muffins a day. He sells each muffin for $3 and gives 4 muffins a day to friends."
    try:
        model = OpenAIChatModel(base_url, name, timeout=300)
        async with model, SleepTimeScheduler(store, model, min_idle_s=0, every_n_runs=0, consolidate_on_idle=False,
                                             job_budget=JobBudget(tokens=1200, seconds=240),
                                             tracer=Tracer(None)) as sleep:
            sleep.attach("bakery", context, questions=2, notes_tokens=256)
            with anyio.fail_after(280):
                await sleep.wait_idle()
        h = sleep.history[0]
        assert h["status"] in ("done", "budget"), h
        assert 0 < h["tokens"] <= 1200
        assert h["input_tokens"] + h["output_tokens"] == h["tokens"]
        learned = store.blocks.get(learned_label("bakery")).value if h["status"] == "done" else ""
        if h["status"] == "done":
            assert learned.strip()
            assert sleep.learned_context("How much money does he make a day?", context_id="bakery") == learned
    finally:
        store.close()
