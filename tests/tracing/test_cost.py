"""Cost from genai-prices, and a budget that stops a parallel fan-out before it overshoots."""

from __future__ import annotations

import threading
from decimal import Decimal

import anyio
import pytest
from _trace_runs import LLM_CALLS
from genai_prices import Usage, calc_price

from agentrt.errors import ConfigError, UsageLimitExceeded
from agentrt.tracing import Budget, TraceStore, price, register_price
from agentrt.tracing import semconv as sc


def _genai(inp: int, cached: int, out: int) -> Decimal:
    kw = {"input_tokens": inp, "output_tokens": out}
    if cached:
        kw["cache_read_tokens"] = cached
    return calc_price(Usage(**kw), model_ref="gpt-4o", provider_id="openai").total_price


def test_price_counts_input_cached_and_output_separately() -> None:
    full = price("gpt-4o", input_tokens=1000, output_tokens=0)
    cached = price("gpt-4o", input_tokens=1000, output_tokens=0, cached_input_tokens=1000)
    out = price("gpt-4o", input_tokens=0, output_tokens=1000)
    assert full.status == "priced" and full.provider == "openai"
    assert cached.usd < full.usd  # cache reads are cheaper than fresh input
    assert out.usd > full.usd  # output is dearer than input for gpt-4o
    c = price("gpt-4o", input_tokens=1200, output_tokens=150, cached_input_tokens=300)
    assert c.usd == _genai(1200, 300, 150) and c.usd == c.input_usd + c.output_usd
    with pytest.raises(ValueError):
        price("gpt-4o", input_tokens=10, output_tokens=0, cached_input_tokens=11)


def test_reasoning_tokens_are_billed_as_output() -> None:
    plain = price("o3", input_tokens=100, output_tokens=1000)
    reasoning = price("o3", input_tokens=100, output_tokens=1000, reasoning_tokens=800)
    assert plain.usd is not None and reasoning.usd == plain.usd  # a part of output, not added to it


def test_local_model_is_free_and_unknown_model_is_unpriced_not_zero() -> None:
    local = price("qwen2.5-coder-1.5b-instruct-q4_k_m", input_tokens=5000, output_tokens=500, local=True)
    assert local.usd == 0 and local.status == "local"
    unknown = price("no-such-model-xyz", input_tokens=10, output_tokens=10)
    assert unknown.usd is None and unknown.status == "unpriced"
    register_price("my-finetune-1", input_per_mtok="1.5", output_per_mtok="6")
    mine = price("my-finetune-1", input_tokens=1_000_000, output_tokens=500_000)
    assert mine.usd == Decimal("4.5")


def test_run_cost_equals_sum_over_llm_calls_and_matches_genai_prices(filled_store: tuple[TraceStore, list[str]]) -> None:
    store, ids = filled_store
    expected = sum(_genai(*c) for c in LLM_CALLS)
    summary = store.run(ids[0])
    assert summary.cost_usd == pytest.approx(float(expected), rel=1e-9)
    chats = [s for s in store.spans(ids[0]) if s.operation == sc.CHAT]
    assert sorted(Decimal(s.attributes[sc.COST_USD]) for s in chats) == sorted(_genai(*c) for c in LLM_CALLS)
    assert all(s.attributes[sc.USAGE_COST_CURRENCY] == "USD" for s in chats)
    by_model = store.cost_by("model")
    assert by_model[0]["key"] == "gpt-4o" and by_model[0]["calls"] == 4
    assert by_model[0]["cost_usd"] == pytest.approx(2 * float(expected))


def test_local_model_span_costs_nothing_and_has_no_token_energy(store: TraceStore) -> None:
    tracer = store.tracer()
    with tracer.run(agent="local") as run:
        with tracer.chat("qwen2.5-coder-1.5b-instruct-q4_k_m") as c:
            c.record_usage(input_tokens=800, output_tokens=60)
    assert store.flush()
    s = store.run(run.run_id)
    assert s.cost_usd == 0 and s.llm_calls == 1
    assert s.energy_j is None  # local energy must be measured (EnergyMeter), never a token guess


async def _fan_out(budget: Budget, n: int, *, prompt: int, max_tokens: int, used_out: int) -> tuple[int, int]:
    """n simulated LLM calls started at once; each reserves, 'runs' 50 ms, settles known usage."""
    sent = refused = 0

    async def call() -> None:
        nonlocal sent, refused
        try:
            hold = budget.reserve("gpt-4o", prompt_tokens=prompt, max_tokens=max_tokens, provider="openai")
        except UsageLimitExceeded:
            refused += 1
            return
        sent += 1
        with hold:
            await anyio.sleep(0.05)  # all reservations are taken before any call settles
            hold.settle(input_tokens=prompt, output_tokens=used_out)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(call)
    return sent, refused


def test_budget_stops_a_parallel_fan_out_before_it_overshoots() -> None:
    worst = price("gpt-4o", input_tokens=2000, output_tokens=1000).usd  # $0.015 per call
    budget = Budget(usd=worst * 5 + worst / 2)  # room for 5 worst cases, not 6
    sent, refused = anyio.run(lambda: _fan_out(budget, 20, prompt=2000, max_tokens=1000, used_out=1000))
    assert (sent, refused) == (5, 15)
    assert budget.spent_usd <= budget.limit_usd and budget.held_usd == 0
    assert budget.spent_usd == worst * 5
    # a check of accumulated cost only (pydantic-ai's way) would have let all 20 through: 4x over
    assert worst * 20 > budget.limit_usd * 3


def test_settled_calls_free_their_unused_hold_for_later_calls() -> None:
    worst = price("gpt-4o", input_tokens=2000, output_tokens=1000).usd  # $0.015
    actual = price("gpt-4o", input_tokens=2000, output_tokens=100).usd  # $0.006 used of it
    budget = Budget(usd=worst * Decimal("1.5"))
    results = [anyio.run(lambda: _fan_out(budget, 1, prompt=2000, max_tokens=1000, used_out=100))
               for _ in range(3)]
    # the 2nd call fits only because the 1st was settled at its real cost; the 3rd would not fit
    assert results == [(1, 0), (1, 0), (0, 1)]
    assert budget.spent_usd == 2 * actual and budget.held_usd == 0


def test_token_budget_and_message() -> None:
    budget = Budget(tokens=10_000)
    sent, refused = anyio.run(lambda: _fan_out(budget, 8, prompt=1500, max_tokens=1000, used_out=1000))
    assert (sent, refused) == (4, 4) and budget.spent_tokens == 10_000
    with pytest.raises(UsageLimitExceeded, match=r"token budget: .* limit 10000"):
        budget.reserve("gpt-4o", prompt_tokens=1, max_tokens=1)


def test_budget_is_thread_safe() -> None:
    budget = Budget(tokens=100 * 30)
    ok = []

    def worker() -> None:
        for _ in range(50):
            try:
                budget.reserve("gpt-4o", prompt_tokens=50, max_tokens=50).settle(input_tokens=50, output_tokens=50)
                ok.append(1)
            except UsageLimitExceeded:
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ok) == 30 and budget.spent_tokens == 3000 and budget.held_tokens == 0


def test_usd_budget_on_an_unpriced_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="register_price"):
        Budget(usd=1).reserve("no-such-model-xyz", prompt_tokens=10, max_tokens=10)
    with pytest.raises(ConfigError):
        Budget()
