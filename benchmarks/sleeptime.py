"""`agentrt bench sleeptime`: sleep-time compute against answering from scratch (issue 9).

Two settings on the shared local model (Qwen2.5-Coder-1.5B Q4_K_M on llama.cpp, the registered
engine; this bench never starts one), each system measured in the same run, alternating query
by query (A then B, then B then A):

1. **Stateful GSM8K** (../shared/data/gsm8k, first ``limit`` problems, default 12): context = the
   problem without its last sentence, query = that sentence (Lin et al. 2025 built Stateful
   GSM-Symbolic the same way). *Without sleep-time*: the model sees context + query and reasons
   step by step (max 512 tokens). *With sleep-time*: while idle, the ``anticipate`` job works the
   context out (notes, max ``gsm_notes_tokens`` = 384) and predicts 3 questions, each with its
   worked calculation and answer (max ``gsm_predict_tokens`` = 320); at test time a query whose
   best predicted question passes the calibrated threshold is answered from it (no LLM call),
   otherwise the model sees context + learned context + query and keeps a SHORT reasoning budget
   (at most three short lines, max ``gsm_test_tokens`` = 80): test-time compute reduced, not
   removed, as in the paper. One query per context, so amortised costs at N > 1 assume further
   queries cost what the measured one did.
2. **LoCoMo multi-query** (../shared/data/locomo, ``convs`` conversations, default 2, x
   ``questions`` questions, default 10): context = the session of the conversation holding the
   evidence of the most questions (categories 1-4, cut to ``context_chars``, default 4,500,
   because the engine gives each of its 4 slots 2,048 tokens), queries = those questions.
   *Without*: conversation + question -> short answer (max 32 tokens). *With*: ``anticipate``
   (notes with absolute dates, max ``locomo_notes_tokens`` = 400, + 5 predicted questions with
   evidence and answers, max ``locomo_predict_tokens`` = 320) once per conversation; at test
   time a served match, or only the learned-context lines closest to the question (at most
   ``locomo_learned_chars`` = 700 characters, predicted items kept whole) + the conversation's own
   passages closest to it (stored and embedded in sleep time, ~300-character passages, at most
   ``locomo_passage_chars`` = 800 characters: the details no note kept) + the conversation's
   date (metadata; the raw text starts with it) + question, never the raw conversation -> short
   answer. Scored by LoCoMo's token F1 (SQuAD normalisation);
   "correct" = F1 >= 0.5.

Test time here is one direct LLM answer (no tools, no planner), as the issue allows. Measured per
query: input and output tokens (as the server reports them; cached prompt tokens counted in
input and listed separately), wall seconds. Sleep time: every token of the jobs.

**Cost**: USD at gpt-4o-mini list prices (genai-prices; cached input at its cached price), the
same weight for sleep-time and test-time tokens (no premium for test-time latency, the most
conservative choice). Amortised cost per query at N queries per context = sleep cost / N + mean
test-time cost per query; without sleep-time it is the mean test-time cost. Also reported, for
information only: the same with test-time tokens weighted 10x (``cost_reduction_test_time_x10``),
the weighting the notes recall from the paper without having verified it.

**Serving precomputed answers**: 2-fold cross-calibration: queries are split in two halves; each
half is served without any LLM call when its best predicted question's cosine similarity reaches
the threshold :func:`calibrate_threshold` chose on the other half's (similarity, whether its
precomputed answer was correct) pairs at target precision 0.9; a threshold is never chosen from
the queries it serves. Below that threshold, from ``verify_floor`` (default
``DEFAULT_VERIFY_FLOOR``; ``--set verify_floor=none``: off), one short verification call
(``verify_match``: do the two questions ask the same thing? a constrained yes/no) decides; its
tokens and seconds count as the query's test time whether it accepts or not. Each query's record
holds its best predicted question, its similarity and whether its answer was correct.

Options (``--set KEY=VALUE``): convs, questions, context_chars, concurrency (default 2),
gsm_notes_tokens, gsm_predict_tokens, gsm_test_tokens, locomo_notes_tokens, locomo_predict_tokens,
locomo_learned_chars, locomo_passage_chars, verify_floor.
"""

from __future__ import annotations

import json
import re
import statistics
import string
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

N_QUERIES = (1, 2, 5, 10)
PRICE_MODEL = "gpt-4o-mini"

GSM_BASE_SYSTEM = ("Solve the math problem. Think step by step, then end with a line "
                   "'The answer is N' where N is a number.")
GSM_SLEEP_SYSTEM = ("Notes with worked calculations about the problem are given; they may not answer the "
                    "question exactly. Reason briefly, in at most three short lines, using the problem and "
                    "the notes, then end with a line 'The answer is N' where N is a number.")
QA_BASE_SYSTEM = "Answer the question about the conversation in a few words. Give only the answer."
QA_SLEEP_SYSTEM = ("Answer the question about a conversation from the notes taken about it (facts, likely "
                   "questions with their answers) and the passages of it given, in a few words. Give only "
                   "the answer.")


# ---- data -------------------------------------------------------------------------------------------

def _served(answer: str) -> dict[str, Any]:
    """The record of a query answered from a precomputed answer: no LLM call, no tokens."""
    t0 = time.perf_counter()
    r = {"text": answer, "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "usd": 0.0, "served": True}
    r["seconds"] = round(time.perf_counter() - t0, 4)
    return r

def _record_match(q: dict, m) -> None:
    """Put the best predicted question for query ``q`` (a ``Match`` or None) on its record."""
    q["sim"] = m.similarity if m else 0.0
    q["match_question"] = m.question if m else ""
    q["match_answer"] = m.answer if m else ""
    q["match_work"] = m.work if m else ""
    q["match_event_id"] = m.event_id if m else None


async def serve_or_ask(model, q: dict, ask_fn, verify_floor: float | None) -> dict:
    """The with-sleep-time answer of query ``q``: its precomputed answer when its best predicted
    question's similarity reaches the (cross-calibrated) threshold (no LLM call), or reaches
    ``verify_floor`` and one short verification call confirms it (``verify_match``: its tokens
    and seconds count as test time); otherwise ``await ask_fn()`` (plus the rejected
    verification's tokens and seconds, if one was made)."""
    from agentrt.sleeptime import Match, verify_match

    if q["match_answer"] and q["sim"] >= q["threshold"]:
        r = _served(q["match_answer"])
        r["verified"] = False
        return r
    v = None
    if q["match_answer"] and verify_floor is not None and q["sim"] >= verify_floor:
        t0 = time.perf_counter()
        m = Match(q["match_question"], q["match_answer"], q["sim"], q["threshold"], "", q["match_event_id"] or 0,
                  work=q["match_work"])
        ok, u = await verify_match(model, q["query"], m)
        v = {"accepted": ok, "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
             "cached_tokens": u.cached_tokens, "seconds": round(time.perf_counter() - t0, 3)}
        if ok:
            return {"text": q["match_answer"], "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
                    "cached_tokens": u.cached_tokens, "usd": usd(u.input_tokens, u.output_tokens, u.cached_tokens),
                    "seconds": v["seconds"], "served": True, "verified": True, "verify": v}
    r = await ask_fn()
    if v is not None:  # the rejected check was spent on this query too
        for k in ("input_tokens", "output_tokens", "cached_tokens", "seconds"):
            r[k] = round(r[k] + v[k], 3) if k == "seconds" else r[k] + v[k]
        r["usd"] = usd(r["input_tokens"], r["output_tokens"], r["cached_tokens"])
        r["verify"] = v
    return r


def load_gsm(data_dir: Path, n: int) -> list[dict]:
    out = []
    with open(Path(data_dir) / "gsm8k" / "test.jsonl") as f:
        for line in f:
            row = json.loads(line)
            sents = re.split(r"(?<=[.?!])\s+", row["question"].strip())
            if len(sents) < 2:
                continue
            gold = row["answer"].split("####")[-1].strip().replace(",", "")
            out.append({"id": f"gsm{len(out)}", "context": " ".join(sents[:-1]), "query": sents[-1],
                        "gold": gold})
            if len(out) >= n:
                break
    return out


def load_locomo(data_dir: Path, n_convs: int, n_questions: int, max_chars: int) -> list[dict]:
    out = []
    with zipfile.ZipFile(Path(data_dir) / "locomo" / "locomo10.zip") as z:
        for name in sorted(x for x in z.namelist() if x.endswith(".json")):
            c = json.loads(z.read(name))
            sessions = {k: c[k] for k in c if re.fullmatch(r"session_\d+", k)}
            qa = [q for q in c["qa"] if int(q.get("category", 5)) in (1, 2, 3, 4) and "answer" in q]
            best = None
            for key, turns in sessions.items():
                head = f"Conversation on {c.get(key + '_date_time', '')}:\n"
                lines, kept = [], set()
                size = len(head)
                for t in turns:
                    line = f"{t['speaker']}: {t['text']}"
                    if size + len(line) + 1 > max_chars:
                        break
                    lines.append(line)
                    kept.add(t["dia_id"])
                    size += len(line) + 1
                qs = [q for q in qa if q.get("evidence") and set(q["evidence"]) <= kept]
                if best is None or len(qs) > len(best[2]):
                    best = (key, head + "\n".join(lines), qs)
            key, text, qs = best
            out.append({"id": f"locomo{Path(name).stem}", "session": key, "context": text,
                        "date": c.get(key + "_date_time", ""),
                        "queries": [{"query": q["question"], "gold": str(q["answer"])} for q in qs[:n_questions]]})
            if len(out) >= n_convs:
                break
    return out


# ---- scoring ----------------------------------------------------------------------------------------
def gsm_number(text: str) -> str | None:
    m = re.findall(r"answer is[^0-9\-]*(-?[\d,]*\.?\d+)", text, re.IGNORECASE)
    nums = m or re.findall(r"-?[\d,]*\.?\d+", text)
    if not nums:
        return None
    v = nums[-1].replace(",", "").rstrip(".")
    try:
        f = float(v)
    except ValueError:
        return None
    return str(int(f)) if f == int(f) else str(f)


def gsm_correct(pred: str, gold: str) -> bool:
    p = gsm_number(pred)
    try:
        return p is not None and abs(float(p) - float(gold)) < 1e-6
    except ValueError:
        return False


def _norm_tokens(s: str) -> list[str]:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the|and)\b", " ", s)
    return s.split()


def f1(pred: str, gold: str) -> float:
    """Token F1 with SQuAD normalisation (LoCoMo's QA metric, without its stemmer)."""
    p, g = _norm_tokens(pred), _norm_tokens(gold)
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if not p or not g or same == 0:
        return 0.0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


# ---- cost -------------------------------------------------------------------------------------------
def usd(input_tokens: int, output_tokens: int, cached: int = 0) -> float:
    from agentrt.tracing import price

    c = price(PRICE_MODEL, input_tokens=input_tokens, output_tokens=output_tokens, cached_input_tokens=cached)
    return float(c.usd or 0)


def _mean(xs) -> float:
    xs = list(xs)
    return float(statistics.fmean(xs)) if xs else 0.0


def amortised(contexts: list[dict]) -> dict[str, Any]:
    """Per N: mean over contexts of (sleep cost / N + mean test cost) vs mean test cost without."""
    out: dict[str, Any] = {}
    for n in N_QUERIES:
        with_s = _mean(c["sleep_usd"] / n + _mean(q["with"]["usd"] for q in c["queries"]) for c in contexts)
        without = _mean(_mean(q["without"]["usd"] for q in c["queries"]) for c in contexts)
        tok_with = _mean(c["sleep_tokens"] / n + _mean(q["with"]["input_tokens"] + q["with"]["output_tokens"]
                                                        for q in c["queries"]) for c in contexts)
        tok_without = _mean(_mean(q["without"]["input_tokens"] + q["without"]["output_tokens"]
                                  for q in c["queries"]) for c in contexts)
        # informational: test-time tokens weighted 10x (the sleep-time paper's latency weighting as
        # recalled in ../shared/notes/memory_sleeptime.md 2.5, not verified there)
        w_with = _mean(c["sleep_usd"] / n + 10 * _mean(q["with"]["usd"] for q in c["queries"]) for c in contexts)
        w_without = 10 * without
        out[str(n)] = {"usd_per_query_with": with_s, "usd_per_query_without": without,
                       "cost_reduction_test_time_x10": round(w_without / w_with, 3) if w_with else None,
                       "cost_reduction": round(without / with_s, 3) if with_s else None,
                       "tokens_per_query_with": round(tok_with, 1), "tokens_per_query_without": round(tok_without, 1),
                       "token_reduction": round(tok_without / tok_with, 3) if tok_with else None}
    return out


# ---- systems ----------------------------------------------------------------------------------------
async def ask(model, system: str, user: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    c = await model.complete([{"role": "system", "content": system}, {"role": "user", "content": user}],
                             max_tokens=max_tokens, temperature=0.0)
    u = c.usage
    return {"text": c.content.strip(), "input_tokens": u.input_tokens, "output_tokens": u.output_tokens,
            "cached_tokens": u.cached_tokens, "seconds": round(time.perf_counter() - t0, 3),
            "usd": usd(u.input_tokens, u.output_tokens, u.cached_tokens), "served": False}


async def prepare(store, model, ctx_id: str, text: str, *, questions: int, notes_tokens: int,
                  predict_tokens: int, expected_queries: float, passage_chars: int = 0) -> dict:
    """Run the anticipate job for one context in its own scheduler; returns its accounting."""
    from agentrt.sleeptime import JobBudget, SleepTimeScheduler
    from agentrt.tracing import Tracer

    t0 = time.perf_counter()
    async with SleepTimeScheduler(store, model, min_idle_s=0, every_n_runs=0, consolidate_on_idle=False,
                                  job_budget=JobBudget(tokens=6000, seconds=600), tracer=Tracer(None)) as sleep:
        sleep.attach(ctx_id, text, expected_queries=expected_queries, questions=questions,
                     notes_tokens=notes_tokens, predict_tokens=predict_tokens, passage_chars=passage_chars)
        await sleep.wait_idle()
    h = sleep.history[0]
    return {"status": h["status"], "input_tokens": h["input_tokens"], "output_tokens": h["output_tokens"],
            "cached_input_tokens": h["cached_input_tokens"], "tokens": h["tokens"],
            "seconds": round(time.perf_counter() - t0, 2),
            "usd": usd(h["input_tokens"], h["output_tokens"], h["cached_input_tokens"])}


def cross_calibrate(items: list[dict]) -> list[dict]:
    """Threshold per item from the other half (items carry ``sim`` and ``match_correct``)."""
    from agentrt.sleeptime import calibrate_threshold

    halves = [items[0::2], items[1::2]]
    cals = []
    for i, half in enumerate(halves):
        other = halves[1 - i]
        cal = calibrate_threshold([x["sim"] for x in other], [x["match_correct"] for x in other],
                                  target_precision=0.9)
        for x in half:
            x["threshold"] = cal.threshold
        cals.append(cal.as_dict())
    return cals


async def _gsm(model, store, problems: list[dict], cfg: dict, progress) -> dict:
    from agentrt.sleeptime import LearnedMemory

    lim = anyio.CapacityLimiter(cfg["concurrency"])
    learned = LearnedMemory(store, threshold=2.0, passage_chars=0)  # the context is in the prompt anyway
    sleep_acc: dict[str, dict] = {}

    async def sleep_one(p):
        async with lim:
            sleep_acc[p["id"]] = await prepare(store, model, p["id"], p["context"], questions=3,
                                               notes_tokens=cfg["gsm_notes_tokens"], predict_tokens=cfg["gsm_predict_tokens"],
                                               expected_queries=1)
            progress(f"gsm {p['id']}: sleep-time {sleep_acc[p['id']]['tokens']} tokens")
    async with anyio.create_task_group() as tg:
        for p in problems:
            tg.start_soon(sleep_one, p)

    qs = []
    for p in problems:  # match candidates and their correctness (no LLM), on the query's own record
        q = {"query": p["query"], "gold": p["gold"]}
        m = learned.best(p["query"], context_id=p["id"])
        _record_match(q, m)
        q["match_correct"] = bool(m) and gsm_correct(m.answer, p["gold"])
        p["queries"] = [q]
        qs.append(q)
    cals = cross_calibrate(qs)

    async def test_one(i, p):
        q = p["queries"][0]
        async with lim:
            async def without():
                r = await ask(model, GSM_BASE_SYSTEM, f"{p['context']} {p['query']}", 512)
                r["correct"] = gsm_correct(r["text"], p["gold"])
                return r

            async def compute():
                notes = learned.learned_context(p["query"], context_id=p["id"])
                return await ask(model, GSM_SLEEP_SYSTEM,
                                 f"{p['context']}\n\nNotes:\n{notes}\n\nQuestion: {p['query']}",
                                 cfg["gsm_test_tokens"])

            async def with_():
                r = await serve_or_ask(model, q, compute, cfg["verify_floor"])
                r["correct"] = gsm_correct(r["text"], p["gold"])
                return r
            if i % 2 == 0:
                a = await without()
                b = await with_()
            else:
                b = await with_()
                a = await without()
            q["without"], q["with"] = a, b
            progress(f"gsm {p['id']}: without {a['output_tokens']} out tok ok={a['correct']}, "
                     f"with {b['output_tokens']} out tok ok={b['correct']} served={b['served']} "
                     f"(sim {q['sim']:.2f})")
    async with anyio.create_task_group() as tg:
        for i, p in enumerate(problems):
            tg.start_soon(test_one, i, p)

    for p in problems:
        p["sleep_usd"] = sleep_acc[p["id"]]["usd"]
        p["sleep_tokens"] = sleep_acc[p["id"]]["tokens"]
    return _summary(problems, sleep_acc, cals, "correct")


async def _locomo(model, store, convs: list[dict], cfg: dict, progress) -> dict:
    from agentrt.sleeptime import LearnedMemory

    learned = LearnedMemory(store, threshold=2.0, max_chars=cfg["locomo_learned_chars"],
                            passage_chars=cfg["locomo_passage_chars"])
    lim = anyio.CapacityLimiter(cfg["concurrency"])
    sleep_acc: dict[str, dict] = {}

    async def sleep_one(c):
        async with lim:
            sleep_acc[c["id"]] = await prepare(store, model, c["id"], c["context"], questions=5,
                                               notes_tokens=cfg["locomo_notes_tokens"],
                                               predict_tokens=cfg["locomo_predict_tokens"], passage_chars=300,
                                               expected_queries=len(c["queries"]))
            progress(f"locomo {c['id']}: sleep-time {sleep_acc[c['id']]['tokens']} tokens")
    async with anyio.create_task_group() as tg:
        for c in convs:
            tg.start_soon(sleep_one, c)

    items = []
    for c in convs:
        for q in c["queries"]:
            m = learned.best(q["query"], context_id=c["id"])
            _record_match(q, m)
            q["match_correct"] = bool(m) and f1(m.answer, q["gold"]) >= 0.5
            q["ctx"] = c
            items.append(q)
    cals = cross_calibrate(items)

    async def test_one(i, q):
        c = q["ctx"]
        async with lim:
            async def without():
                r = await ask(model, QA_BASE_SYSTEM, f"{c['context']}\n\nQuestion: {q['query']}", 32)
                r["f1"] = round(f1(r["text"], q["gold"]), 3)
                return r

            async def compute():
                notes = learned.learned_context(q["query"], context_id=c["id"])
                # the conversation's date is metadata of the context (the raw text starts with it too)
                return await ask(model, QA_SLEEP_SYSTEM, f"Conversation on {c['date']}. Notes:\n{notes}\n\n"
                                                         f"Question: {q['query']}", 32)

            async def with_():
                r = await serve_or_ask(model, q, compute, cfg["verify_floor"])
                r["f1"] = round(f1(r["text"], q["gold"]), 3)
                return r
            if i % 2 == 0:
                a = await without()
                b = await with_()
            else:
                b = await with_()
                a = await without()
            a["correct"], b["correct"] = a["f1"] >= 0.5, b["f1"] >= 0.5
            q["without"], q["with"] = a, b
            progress(f"locomo {c['id']}: F1 without {a['f1']} ({a['input_tokens']} in), "
                     f"with {b['f1']} ({b['input_tokens']} in, served={b['served']})")
    async with anyio.create_task_group() as tg:
        for i, q in enumerate(items):
            tg.start_soon(test_one, i, q)

    contexts = []
    for c in convs:
        contexts.append({"id": c["id"], "sleep_usd": sleep_acc[c["id"]]["usd"],
                         "sleep_tokens": sleep_acc[c["id"]]["tokens"],
                         "queries": [{k: v for k, v in q.items() if k != "ctx"} for q in c["queries"]]})
    out = _summary(contexts, sleep_acc, cals, "correct")
    for side in ("without", "with"):
        out[side]["mean_f1"] = round(_mean(q[side]["f1"] for c in contexts for q in c["queries"]), 4)
    return out


def _summary(contexts: list[dict], sleep_acc: dict, cals: list[dict], key: str) -> dict:
    qs = [q for c in contexts for q in c["queries"]]
    out: dict[str, Any] = {}
    for side in ("without", "with"):
        rs = [q[side] for q in qs]
        secs = sorted(r["seconds"] for r in rs)
        out[side] = {"queries": len(rs), "accuracy": round(_mean(r[key] for r in rs), 4),
                     "mean_output_tokens": round(_mean(r["output_tokens"] for r in rs), 2),
                     "mean_input_tokens": round(_mean(r["input_tokens"] for r in rs), 2),
                     "mean_cached_input_tokens": round(_mean(r["cached_tokens"] for r in rs), 2),
                     "mean_latency_s": round(_mean(secs), 3), "p50_latency_s": secs[len(secs) // 2],
                     "served_from_precomputed": sum(bool(r.get("served")) for r in rs),
                     "served_without_llm_call": sum(bool(r.get("served")) and not r.get("verified") for r in rs),
                     "served_after_verification": sum(bool(r.get("verified")) for r in rs),
                     "served_correct": sum(bool(r.get("served")) and bool(r[key]) for r in rs),
                     "verification_calls": sum("verify" in r for r in rs),
                     "verification_rejected": sum("verify" in r and not r["verify"]["accepted"] for r in rs),
                     "mean_usd_per_query": _mean(r["usd"] for r in rs)}
    out["with"]["sleep_time"] = {
        "contexts": len(sleep_acc),
        "mean_tokens_per_context": round(_mean(s["tokens"] for s in sleep_acc.values()), 1),
        "mean_input_tokens_per_context": round(_mean(s["input_tokens"] for s in sleep_acc.values()), 1),
        "mean_output_tokens_per_context": round(_mean(s["output_tokens"] for s in sleep_acc.values()), 1),
        "mean_seconds_per_context": round(_mean(s["seconds"] for s in sleep_acc.values()), 2),
        "statuses": dict(Counter(s["status"] for s in sleep_acc.values()))}
    out["calibration"] = {"folds": cals, "similarities": [round(q.get("sim", 0.0), 4) for q in qs],
                          "match_correct": [q.get("match_correct", False) for q in qs]}
    out["amortised_cost_per_query"] = amortised(contexts)
    out["items"] = [{k: v for k, v in q.items() if k not in ("ctx",)} for q in qs]
    return out


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("inf")


async def _main(config: dict) -> dict:
    from agentrt.config import get_settings
    from agentrt.errors import ConfigError
    from agentrt.llm import OpenAIChatModel, running_engine
    from agentrt.memory_store import MemoryStore, make_embedder
    from agentrt.sleeptime import DEFAULT_VERIFY_FLOOR

    progress = config.get("progress") or (lambda _m: None)
    settings = get_settings()
    base_url = settings.base_url
    if not base_url:
        state = await running_engine(settings)
        if state is None:
            raise ConfigError("no model endpoint: start the shared engine (`agentrt engine start`) or set "
                              "AGENTRT_BASE_URL; this bench never starts an engine of its own")
        base_url = state.base_url
    data = Path(config["data"])
    limit = int(config.get("limit") or 12)
    cfg = {"concurrency": int(config.get("concurrency", 2)),
           "gsm_notes_tokens": int(config.get("gsm_notes_tokens", 384)),
           "gsm_predict_tokens": int(config.get("gsm_predict_tokens", 320)),
           "gsm_test_tokens": int(config.get("gsm_test_tokens", 80)),
           "locomo_notes_tokens": int(config.get("locomo_notes_tokens", 400)),
           "locomo_predict_tokens": int(config.get("locomo_predict_tokens", 320)),
           "locomo_learned_chars": int(config.get("locomo_learned_chars", 700)),
           "locomo_passage_chars": int(config.get("locomo_passage_chars", 800)),
           "verify_floor": (None if str(config.get("verify_floor", "")).lower() in ("none", "off")
                            else float(config.get("verify_floor") or DEFAULT_VERIFY_FLOOR))}
    convs = int(config.get("convs", 2))
    n_q = int(config.get("questions", 10))
    ctx_chars = int(config.get("context_chars", 4500))
    problems = load_gsm(data, limit)
    conversations = load_locomo(data, convs, n_q, ctx_chars)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = MemoryStore(Path(tmp) / "sleeptime.db", embedder=make_embedder(settings), auto_compact=False)
        try:
            async with OpenAIChatModel(base_url, settings.model, settings.api_key, timeout=600) as model:
                gsm = await _gsm(model, store, problems, cfg, progress)
                locomo = await _locomo(model, store, conversations, cfg, progress)
        finally:
            store.close()
    wall = round(time.perf_counter() - t0, 1)

    g_w, g_s = gsm["without"], gsm["with"]
    out_ratio = g_w["mean_output_tokens"] / max(g_s["mean_output_tokens"], 1e-9)
    tot_ratio = (g_w["mean_output_tokens"] + g_w["mean_input_tokens"]) / max(
        g_s["mean_output_tokens"] + g_s["mean_input_tokens"], 1e-9)
    acc_drop = g_w["accuracy"] - g_s["accuracy"]
    one = 1 / max(len(problems), 1)
    lo5 = locomo["amortised_cost_per_query"]["5"]["cost_reduction"]
    lo10 = locomo["amortised_cost_per_query"]["10"]["cost_reduction"]
    served = sum(x["with"]["served_from_precomputed"] for x in (gsm, locomo))
    served_ok = sum(x["with"]["served_correct"] for x in (gsm, locomo))
    served_free = sum(x["with"]["served_without_llm_call"] for x in (gsm, locomo))
    targets = [
        {"name": "gsm_test_time_output_tokens_reduction_at_equal_accuracy", "value": round(out_ratio, 2),
         "goal": f">= 5 with accuracy no lower than without sleep-time by more than one problem ({one:.3f})",
         "met": out_ratio >= 5 and acc_drop <= one + 1e-9,
         "accuracy_without": g_w["accuracy"], "accuracy_with": g_s["accuracy"]},
        {"name": "gsm_test_time_total_tokens_reduction (input + output)", "value": round(tot_ratio, 2),
         "goal": ">= 5 (stricter reading: input tokens too)", "met": tot_ratio >= 5},
        {"name": "locomo_amortised_cost_reduction_at_5_queries", "value": lo5, "goal": ">= 2.5",
         "met": bool(lo5 and lo5 >= 2.5)},
        {"name": "locomo_amortised_cost_reduction_at_10_queries", "value": lo10, "goal": ">= 2.5",
         "met": bool(lo10 and lo10 >= 2.5)},
        {"name": "locomo_amortised_cost_reduction_at_5_queries_test_time_x10 (informational)",
         "value": locomo["amortised_cost_per_query"]["5"]["cost_reduction_test_time_x10"],
         "goal": ">= 2.5 with test-time tokens weighted 10x (the paper's weighting as recalled in the notes, "
                 "not verified; the target above weights them equally)",
         "met": bool((locomo["amortised_cost_per_query"]["5"]["cost_reduction_test_time_x10"] or 0) >= 2.5)},
        {"name": "gsm_test_time_p50_latency_reduction", "value": _ratio(g_w["p50_latency_s"], g_s["p50_latency_s"]),
         "goal": "> 1 (faster answers; shared engine, noisy)", "met": _ratio(g_w["p50_latency_s"], g_s["p50_latency_s"]) > 1},
        {"name": "locomo_test_time_p50_latency_reduction",
         "value": _ratio(locomo["without"]["p50_latency_s"], locomo["with"]["p50_latency_s"]),
         "goal": "> 1 (faster answers; shared engine, noisy)",
         "met": _ratio(locomo["without"]["p50_latency_s"], locomo["with"]["p50_latency_s"]) > 1},
        {"name": "queries_served_from_precomputed_answers (gsm + locomo)", "value": served,
         "goal": "> 0, with served answers correct at >= 0.9 (the calibration's target precision)",
         "met": served > 0 and served_ok >= 0.9 * served,
         "served_correct": served_ok, "served_without_llm_call": served_free,
         "verification_calls": sum(x["with"]["verification_calls"] for x in (gsm, locomo)),
         "verification_rejected": sum(x["with"]["verification_rejected"] for x in (gsm, locomo))},
        {"name": "locomo_mean_f1_with_vs_without", "value": f"{locomo['with']['mean_f1']} vs {locomo['without']['mean_f1']}",
         "goal": "report (no drop wanted)", "met": locomo["with"]["mean_f1"] >= locomo["without"]["mean_f1"] - 0.05},
    ]
    return {"bench": "sleeptime",
            "machine": {"model": settings.model, "endpoint": "registered shared engine (4 slots, 8192 ctx)"},
            "config": {"gsm_problems": len(problems), "locomo_conversations": len(conversations),
                       "locomo_questions_per_conversation": n_q, "locomo_context_chars": ctx_chars,
                       **cfg,
                       "price_model": PRICE_MODEL, "n_queries": list(N_QUERIES),
                       "default_limit_note": "small on purpose (about 15 min on 2 cores): defaults --limit 12 "
                                             "GSM8K problems, 2 LoCoMo conversations x 10 questions; a run "
                                             "may set fewer to fit its slot (the counts above are this run's)",
                       "test_time": "one direct LLM answer (no tools, no planner)",
                       "wall_seconds": wall},
            "systems": {"stateful_gsm8k": gsm, "locomo_multi_query": locomo},
            "targets": targets}


def run(config: dict) -> dict:
    return anyio.run(_main, config)
