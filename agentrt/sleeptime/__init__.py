"""Sleep-time compute (issue 9): think between queries, under budgets, pre-empted by queries.

Lin et al., "Sleep-time Compute: Beyond Inference Scaling at Test-time" (arXiv 2504.13171, 2025):
process a context before the questions come, so a query needs less test-time compute. Here:

* :class:`SleepTimeScheduler` (``async with``): runs jobs when the session is idle (a context
  attached, N runs completed, idle after a run, maintenance due); ``async with
  scheduler.query():`` around each run pre-empts sleep-time work at once (the job resumes later
  from its last stored step).
* Jobs: :class:`Anticipate` (notes and predicted questions with precomputed answers, into the
  block ``sleeptime/learned/<context>`` and the store), :class:`Consolidate` (recent episodes ->
  durable facts, superseding outdated ones), :class:`Maintain` (index snapshot, GC). Each has a
  token and time budget (:class:`JobBudget`), writes blocks by compare-and-swap, and records its
  spans and cost through ``agentrt.tracing``. ``anticipate`` may also call read-only,
  idempotent tools while idle; a run making the same call reuses the stored result while it is
  valid (TTL and context version: :class:`ToolResultStore`, :class:`ReusingBackend`).
* Test time: :meth:`SleepTimeScheduler.learned_context` (text for the planner) and
  :meth:`SleepTimeScheduler.amatch` (a precomputed answer above a calibrated threshold:
  :func:`calibrate_threshold`, or, from ``verify_floor`` up, when one short model call confirms
  the predicted question asks the same thing: :func:`verify_match`); :class:`LearnedMemory`
  offers them without a scheduler.

How an Agent uses it (one run)::

    async with scheduler.query(context_id):
        hit = await scheduler.amatch(question, context_id=context_id)
        if hit is not None:
            answer = hit.answer                                # no LLM call
        else:
            res = await compiler.run(question, context=scheduler.learned_context(question))
    store.append_episode(...)                                  # consolidate picks it up later
"""

from agentrt.sleeptime._budget import (
    ContextStats,
    JobBudget,
    allocate_tokens,
    predictability,
)
from agentrt.sleeptime._jobs import (
    RUNS_SECTION,
    Anticipate,
    BudgetExhausted,
    Consolidate,
    Job,
    JobContext,
    JobState,
    Maintain,
    add_note,
    cas_update,
)
from agentrt.sleeptime._learned import (
    DEFAULT_MATCH_THRESHOLD,
    DEFAULT_VERIFY_FLOOR,
    FACTS_BLOCK,
    Calibration,
    LearnedMemory,
    Match,
    calibrate_threshold,
    context_session,
    learned_label,
    verify_match,
)
from agentrt.sleeptime._reuse import (
    DEFAULT_TOOL_TTL_S,
    ReusingBackend,
    ToolResultStore,
    reusable,
)
from agentrt.sleeptime._scheduler import SleepTimeScheduler

__all__ = [
    "DEFAULT_MATCH_THRESHOLD",
    "DEFAULT_TOOL_TTL_S",
    "DEFAULT_VERIFY_FLOOR",
    "FACTS_BLOCK",
    "RUNS_SECTION",
    "Anticipate",
    "BudgetExhausted",
    "Calibration",
    "Consolidate",
    "ContextStats",
    "Job",
    "JobBudget",
    "JobContext",
    "JobState",
    "LearnedMemory",
    "Maintain",
    "Match",
    "ReusingBackend",
    "SleepTimeScheduler",
    "ToolResultStore",
    "add_note",
    "allocate_tokens",
    "calibrate_threshold",
    "cas_update",
    "context_session",
    "learned_label",
    "predictability",
    "reusable",
    "verify_match",
]
