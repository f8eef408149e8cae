"""Test-time use: learned context for the planner, precomputed answers only above the threshold."""

from __future__ import annotations

import math

import anyio
import pytest
from _sleeptime_fake import FakeModel

from agentrt.memory_store import HashingEmbedder, MemoryStore
from agentrt.sleeptime import (
    ContextStats,
    LearnedMemory,
    SleepTimeScheduler,
    add_note,
    allocate_tokens,
    calibrate_threshold,
    predictability,
)
from agentrt.tracing import Tracer

CONTEXT = "Janet has 3 apple trees. Each tree gives 4 apples a day."
QA = [("How many apples do the trees give in total each day?", "12"), ("How many trees does Janet have?", "3")]


@pytest.fixture
async def learned_store(tmp_path):
    store = MemoryStore(tmp_path / "m.db", embedder=HashingEmbedder())
    model = FakeModel(qa=QA)
    async with SleepTimeScheduler(store, model, min_idle_s=0, every_n_runs=0, consolidate_on_idle=False,
                                  tracer=Tracer(None)) as sleep:
        sleep.attach("farm", CONTEXT)
        with anyio.fail_after(5):
            await sleep.wait_idle()
        model.qa, model.notes = [("How many lions are in the zoo?", "2")], "The zoo has 2 lions."
        sleep.attach("zoo", "The zoo has 2 lions and 5 zebras.", questions=1)
        with anyio.fail_after(5):
            await sleep.wait_idle()
    yield store
    store.close()


@pytest.mark.anyio
async def test_precomputed_answer_is_served_only_above_the_threshold(learned_store):
    mem = LearnedMemory(learned_store, threshold=0.9)
    hit = mem.match("How many apples do the trees give in total each day?", context_id="farm")
    assert hit is not None and hit.answer == "12" and hit.similarity > 0.99
    # a related but different question: the best candidate is below the threshold -> compute instead
    best = mem.best("How many apples does Janet sell at the market?", context_id="farm")
    assert best is not None and best.similarity < 0.9
    assert mem.match("How many apples does Janet sell at the market?", context_id="farm") is None
    # the same question, served or not depending only on the threshold
    assert mem.match(QA[1][0], context_id="farm", threshold=1.01) is None
    assert mem.match(QA[1][0], context_id="farm", threshold=0.5).answer == "3"


@pytest.mark.anyio
async def test_match_stays_within_the_named_context(learned_store):
    mem = LearnedMemory(learned_store, threshold=0.9)
    assert mem.match(QA[0][0], context_id="zoo") is None
    assert mem.match(QA[0][0]).context_id == "farm"               # no context named: search all


@pytest.mark.anyio
async def test_learned_context_holds_notes_predictions_and_run_notes(learned_store):
    add_note(learned_store, "farm", "Janet planted a fourth tree today.")
    mem = LearnedMemory(learned_store)
    text = mem.learned_context("How many apples?", context_id="farm")
    assert "Total apples: 12." in text and "Q: How many trees does Janet have?" in text
    assert "Janet planted a fourth tree today." in text
    assert "lions" not in text
    assert mem.learned_context("How many lions live in the zoo?") != text   # picks the closest context
    assert len(LearnedMemory(learned_store, max_chars=40).learned_context(None, context_id="farm")) == 40


def test_calibration_picks_the_lowest_threshold_meeting_the_precision():
    scores = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6]
    correct = [True, True, True, False, True, False]
    cal = calibrate_threshold(scores, correct, target_precision=0.75)
    assert cal.threshold == 0.7 and cal.precision == 0.8 and math.isclose(cal.coverage, 5 / 6)
    strict = calibrate_threshold(scores, correct, target_precision=1.0)
    assert strict.threshold == 0.85 and strict.precision == 1.0


def test_calibration_never_serves_when_no_threshold_is_precise_enough():
    cal = calibrate_threshold([0.9, 0.8], [False, True], target_precision=0.9)
    assert math.isinf(cal.threshold) and cal.as_dict()["threshold"] is None
    assert math.isinf(calibrate_threshold([0.99], [True], min_served=2).threshold)   # one query proves nothing


def test_ties_are_served_together():
    cal = calibrate_threshold([0.9, 0.9, 0.9], [True, True, False], target_precision=0.9)
    assert math.isinf(cal.threshold)           # cannot serve two of three tied scores


def test_allocation_follows_expected_queries_and_predictability():
    shares = allocate_tokens(1000, {"a": ContextStats(expected_queries=9, predictability=0.5),
                                    "b": ContextStats(expected_queries=1, predictability=0.5),
                                    "c": ContextStats(expected_queries=9, predictability=0.0)}, floor=10)
    assert shares["a"] > 8 * shares["b"] and shares["c"] == 10
    assert predictability(ContextStats()) == 0.5
    assert predictability(ContextStats(queries=8, hits=8)) == 0.9


@pytest.mark.anyio
async def test_long_learned_context_keeps_the_lines_closest_to_the_question(learned_store):
    add_note(learned_store, "farm", "\n".join(f"Unrelated remark number {i} about the weather." for i in range(40)))
    mem = LearnedMemory(learned_store, max_chars=200)
    text = mem.learned_context("How many trees does Janet have?", context_id="farm")
    assert len(text) <= 200
    assert "Q: How many trees does Janet have?\nWork: from the text: 3\nA: 3" in text   # the item, kept whole
    assert text.count("Unrelated remark") < 3


def test_predictions_cut_by_max_tokens_keep_their_complete_items():
    from agentrt.sleeptime._jobs import _parse_qa

    cut = ('{"items": [{"question": "How many \\"big\\" apples?", "work": "3 x 4 = 12", "answer": "12"}, '
           '{"question": "Left?", "answer": "2"}, {"question": "How many tr')
    assert _parse_qa(cut) == [('How many "big" apples?', "3 x 4 = 12", "12"), ("Left?", "", "2")]
    assert _parse_qa('{"items": [{"question": "Q?", "work": "w", "answer": "A"}]}') == [("Q?", "w", "A")]
    assert _parse_qa('{"items": [{"question": "Q?", "answer": "A"}]}') == [("Q?", "", "A")]
    assert _parse_qa("no json at all") == []


def test_looping_notes_keep_each_line_once():
    from agentrt.sleeptime._jobs import _dedupe_lines

    looped = "KEY FACTS:\n- Kyle is one.\n" + "- They have a pic of Kyle.\n" * 30 + "-  they have a pic of kyle.\n\n- Done."
    assert _dedupe_lines(looped) == "KEY FACTS:\n- Kyle is one.\n- They have a pic of Kyle.\n\n- Done."


@pytest.mark.anyio
async def test_a_query_gets_the_passages_of_the_context_closest_to_it(tmp_path):
    from agentrt.sleeptime._jobs import split_passages

    lines = [f"Day {i}: Maria walked the dog and read a book about gardens." for i in range(30)]
    lines[17] = "Day 17: Maria adopted a grey parrot named Pixel from the shelter."
    talk = "\n".join(lines)
    assert split_passages("one line only", 100) == []
    parts = split_passages(talk, 200)
    assert len(parts) > 5 and all(len(p) <= 200 for p in parts) and "\n".join(parts) == talk
    store = MemoryStore(tmp_path / "m.db", embedder=HashingEmbedder())
    try:
        model = FakeModel(notes="Maria likes walks.", qa=[("What does Maria read about?", "gardens")])
        async with SleepTimeScheduler(store, model, min_idle_s=0, every_n_runs=0, consolidate_on_idle=False,
                                      tracer=Tracer(None)) as sleep:
            sleep.attach("talk", talk, questions=1, passage_chars=200)
            with anyio.fail_after(5):
                await sleep.wait_idle()
        mem = LearnedMemory(store, passage_chars=250)
        text = mem.learned_context("What is the name of the parrot Maria adopted?", context_id="talk")
        assert text.startswith("Maria likes walks.")                     # the notes first
        tail = text.split("Passages of the context closest to the question:\n", 1)[1]
        assert "parrot named Pixel" in tail and len(tail) <= 250         # the detail no note kept
        assert LearnedMemory(store, passage_chars=0).learned_context(
            "What is the name of the parrot Maria adopted?", context_id="talk").count("Pixel") == 0
    finally:
        store.close()
