"""Prompts of the sleep-time jobs.

The anticipate prompt follows the sleep-time paper's sleep-time agent (letta-ai/sleep-time-compute,
``prompts/system/sleep_time_base.txt``: work out useful quantities, inferences and calculations
for questions that will come later), written here in our own words, with the role framing in the
system message rather than in any history (Letta #3104: a sleep-time trigger must never be
mistaken for a user turn).
"""

from __future__ import annotations

ANTICIPATE_SYSTEM = (
    "You prepare for questions that will be asked later about a text. The questions are not known "
    "yet. Read the text and work out, step by step and exactly, the quantities, inferences and "
    "calculations a question is most likely to ask for, above all the final result the text is "
    "leading up to. Use only what the text says. When the text is a conversation, write what "
    "each person said, did or plans as facts with absolute dates (turn 'yesterday' or 'last week' "
    "into dates from the conversation's date). End with a line 'KEY FACTS:' followed by short lines, "
    "one fact or computed value each.")

#: The predict step continues the notes conversation (same system prompt and text first), so an
#: engine with a prefix cache does not process the text twice.
PREDICT_INSTRUCTION = (
    "Now predict the {n} questions a user is most likely to ask about the text, and answer each one "
    "from the text and your notes. For each question give 'work': the short calculation or the "
    "evidence behind the answer, and 'answer': only a number, a name, a date or a few words. "
    "Reply with JSON.")

CONSOLIDATE_SYSTEM = (
    "You turn conversation records into durable facts worth remembering: one short, "
    "self-contained sentence per line, with names and absolute dates, no pronouns. Skip small "
    "talk. Write at most {n} lines and nothing else.")

#: Test time: is a precomputed answer to a predicted question an answer to the question asked?
#: Cosine similarity alone cannot say (all-MiniLM-L6-v2, measured here: a paraphrase of the same
#: question scores 0.64-0.72, "How many eggs does she sell?" vs "... eat?" 0.86), so a candidate
#: below the serving threshold is checked by one short call (a one-word answer). Chosen on 8
#: Stateful GSM8K pairs (4 same, 4 different) on Qwen2.5-Coder-1.5B: this wording 8/8, a stricter
#: "exactly the same person, quantity and time" wording 7/8; constrained to a JSON "yes"/"no"
#: string by a grammar, every wording answered "no" to all 8, so the reply is left free.
VERIFY_SYSTEM = (
    "Both questions are about the same text; pronouns (he, she, it) refer to the people and things in "
    "it. Does the new question ask for the same value as the prepared question? Answer yes or no.")

QA_SCHEMA = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"question": {"type": "string"}, "work": {"type": "string"},
                               "answer": {"type": "string"}},
                "required": ["question", "work", "answer"],
            },
        },
    },
    "required": ["items"],
}


TOOLS_SYSTEM = (
    "You prepare for questions that will be asked later about a text. Some read-only tools can be "
    "called now, while nobody waits, so their results are ready when the questions come. From the "
    "text and the likely questions, list the tool calls whose results those questions will need "
    "(at most {n}; none if no tool helps). Reply with JSON.")


def tools_messages(text: str, questions: list[str], tools: list[dict], n: int) -> list[dict]:
    listing = "\n".join(f"- {t['name']}: {t['description']} Arguments (JSON Schema): "
                        f"{t['parameters']}" for t in tools)
    qs = "\n".join(f"- {q}" for q in questions) or "(none predicted)"
    return [{"role": "system", "content": TOOLS_SYSTEM.format(n=n)},
            {"role": "user", "content": f"Text:\n{text}\n\nLikely questions:\n{qs}\n\nTools:\n{listing}"}]


def tools_schema(names: list[str], n: int) -> dict:
    return {"type": "object", "properties": {"calls": {"type": "array", "maxItems": n, "items": {
        "type": "object", "properties": {"tool": {"type": "string", "enum": names}, "args": {"type": "object"}},
        "required": ["tool", "args"]}}}, "required": ["calls"]}


def anticipate_messages(text: str) -> list[dict]:
    return [{"role": "system", "content": ANTICIPATE_SYSTEM},
            {"role": "user", "content": f"Text:\n{text}"}]


def predict_messages(text: str, notes: str, n: int) -> list[dict]:
    return [*anticipate_messages(text), {"role": "assistant", "content": notes},
            {"role": "user", "content": PREDICT_INSTRUCTION.format(n=n)}]


def verify_messages(question: str, predicted: str, work: str, answer: str) -> list[dict]:
    prepared = f"Prepared question: {predicted}\n" + (f"How it was worked out: {work}\n" if work else "") + \
        f"Prepared answer: {answer}"
    return [{"role": "system", "content": VERIFY_SYSTEM},
            {"role": "user", "content": f"{prepared}\n\nNew question: {question}\n\nSame question? yes or no."}]


def consolidate_messages(records: str, known: str, n: int) -> list[dict]:
    user = f"Records:\n{records}"
    if known:
        user = f"Facts already known (repeat none of them unless they changed):\n{known}\n\n{user}"
    return [{"role": "system", "content": CONSOLIDATE_SYSTEM.format(n=n)}, {"role": "user", "content": user}]
