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
    "yet. Read the text and work out, step by step, every quantity, inference and calculation a "
    "question could ask for, especially totals and final results. Be exact with numbers. End with "
    "a line 'KEY FACTS:' followed by short lines, one fact or computed value each.")

PREDICT_SYSTEM = (
    "You predict the questions a user is most likely to ask about a text, and answer each one "
    "from the text and the notes. Answers are short: a number, a name, a date or a few words.")

CONSOLIDATE_SYSTEM = (
    "You turn conversation records into durable facts worth remembering: one short, "
    "self-contained sentence per line, with names and absolute dates, no pronouns. Skip small "
    "talk. Write at most {n} lines and nothing else.")

QA_SCHEMA = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                "required": ["question", "answer"],
            },
        },
    },
    "required": ["items"],
}


def anticipate_messages(text: str) -> list[dict]:
    return [{"role": "system", "content": ANTICIPATE_SYSTEM},
            {"role": "user", "content": f"Text:\n{text}"}]


def predict_messages(text: str, notes: str, n: int) -> list[dict]:
    return [{"role": "system", "content": PREDICT_SYSTEM},
            {"role": "user", "content": f"Text:\n{text}\n\nNotes:\n{notes}\n\n"
                                        f"Give the {n} most likely questions with their answers as JSON."}]


def consolidate_messages(records: str, known: str, n: int) -> list[dict]:
    user = f"Records:\n{records}"
    if known:
        user = f"Facts already known (repeat none of them unless they changed):\n{known}\n\n{user}"
    return [{"role": "system", "content": CONSOLIDATE_SYSTEM.format(n=n)}, {"role": "user", "content": user}]
