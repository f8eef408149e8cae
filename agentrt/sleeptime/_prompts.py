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


def anticipate_messages(text: str) -> list[dict]:
    return [{"role": "system", "content": ANTICIPATE_SYSTEM},
            {"role": "user", "content": f"Text:\n{text}"}]


def predict_messages(text: str, notes: str, n: int) -> list[dict]:
    return [*anticipate_messages(text), {"role": "assistant", "content": notes},
            {"role": "user", "content": PREDICT_INSTRUCTION.format(n=n)}]


def consolidate_messages(records: str, known: str, n: int) -> list[dict]:
    user = f"Records:\n{records}"
    if known:
        user = f"Facts already known (repeat none of them unless they changed):\n{known}\n\n{user}"
    return [{"role": "system", "content": CONSOLIDATE_SYSTEM.format(n=n)}, {"role": "user", "content": user}]
