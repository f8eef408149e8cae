"""`agentrt sleep run|status|budget`: sleep-time compute from the command line (issue 9)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from agentrt.cli._app import app

sleep_app = typer.Typer(help="Sleep-time compute: learn from a context before questions come.", no_args_is_help=True)
app.add_typer(sleep_app, name="sleep")
console = Console()

BUDGET_BLOCK = "sleeptime/budget"
FileArg = typer.Argument(..., exists=True, dir_okay=False, help="The context to attach (a text file).")
PathOpt = typer.Option(None, "--path", help="Memory store file (default: the configured <data dir>/memory/memory.db).")


def _open(path: Path | None, *, must_exist: bool = True):
    from agentrt.config import get_settings
    from agentrt.memory_store import MemoryStore, default_store_path, make_embedder

    settings = get_settings()
    path = path or default_store_path(settings)
    if must_exist and not Path(path).exists():
        raise typer.BadParameter(f"no memory store at {path}")
    return MemoryStore(path, embedder=make_embedder(settings), durability=settings.memory.durability,
                       auto_compact=False)


def _limit(store) -> int | None:
    value = store.blocks.get(BUDGET_BLOCK).value
    return json.loads(value).get("limit_tokens") if value else None


def _spent_by_session(store) -> dict[str, int]:
    """Tokens recorded on every stored job step, per sleep-time session (durable across runs)."""
    out: dict[str, int] = {}
    after = 0
    while True:
        evs = store.events(kind="sleeptime_step", after_id=after, limit=1000)
        if not evs:
            return out
        for ev in evs:
            out[ev.session] = out.get(ev.session, 0) + int((ev.meta or {}).get("tokens", 0))
        after = evs[-1].id


@sleep_app.command("run")
def run(file: Path = FileArg,
        context_id: str = typer.Option(None, "--context-id", help="Names the context (default: the file's stem)."),
        expected_queries: float = typer.Option(1.0, help="Queries expected about it (shares the budget)."),
        questions: int = typer.Option(None, help="Questions to predict (default from expected queries)."),
        tokens: int = typer.Option(4000, help="Token budget of the job (input + output)."),
        seconds: float = typer.Option(300.0, help="Time budget of the job, seconds."),
        consolidate: bool = typer.Option(False, help="Also consolidate recent episodes into facts."),
        maintain: bool = typer.Option(False, help="Also snapshot the index and collect garbage."),
        path: Path = PathOpt) -> None:
    """Attach a context file and run the sleep-time jobs now, showing progress."""
    import anyio

    from agentrt.sleeptime import JobBudget, SleepTimeScheduler, cas_update

    text = file.read_text()
    cid = context_id or file.stem

    async def main() -> list[dict]:
        from agentrt.config import get_settings
        from agentrt.llm import OpenAIChatModel, running_engine

        settings = get_settings()
        base_url = settings.base_url
        if not base_url:
            state = await running_engine(settings)
            if state is None:
                raise typer.BadParameter("no model endpoint: start the engine (`agentrt engine start`) "
                                         "or set AGENTRT_BASE_URL")
            base_url = state.base_url
        store = _open(path, must_exist=False)
        try:
            limit = _limit(store)
            total = None
            if limit is not None:
                total = max(limit - sum(_spent_by_session(store).values()), 0)
            def progress(msg: str) -> None:
                console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}", highlight=False)
            model = OpenAIChatModel(base_url, settings.model, settings.api_key, timeout=600)
            async with model, SleepTimeScheduler(store, model, min_idle_s=0, every_n_runs=0,
                                                 consolidate_on_idle=False, total_tokens=total,
                                                 job_budget=JobBudget(tokens=tokens, seconds=seconds),
                                                 on_progress=progress) as sleep:
                sleep.attach(cid, text, expected_queries=expected_queries, questions=questions)
                if consolidate:
                    sleep.consolidate_now()
                if maintain:
                    sleep.request_maintenance(force=True)
                await sleep.wait_idle()

            def record(block):
                data = json.loads(block.value) if block.value else {}
                data.setdefault("limit_tokens", None)
                data["runs"] = (data.get("runs") or [])[-49:] + [
                    {"at": time.time(), "context_id": cid, "jobs": [
                        {k: h[k] for k in ("key", "status", "tokens", "seconds")} for h in sleep.history]}]
                return json.dumps(data)
            cas_update(store, BUDGET_BLOCK, record, updated_by="cli")
            return sleep.history
        finally:
            store.close()

    history = anyio.run(main)
    table = Table("job", "status", "tokens in", "tokens out", "seconds", "attempts", "result")
    for h in history:
        table.add_row(h["key"], h["status"] + (f" ({h['error']})" if h["error"] else ""), str(h["input_tokens"]),
                      str(h["output_tokens"]), f"{h['seconds']:.1f}", str(h["attempts"]),
                      json.dumps(h["result"], default=str)[:80] if h["result"] else "")
    console.print(table)
    if any(h["status"] == "error" for h in history):
        raise typer.Exit(1)


@sleep_app.command()
def status(path: Path = PathOpt, show: str = typer.Option(None, help="Print this context's learned block.")) -> None:
    """What sleep time has learned: contexts, predicted questions, consolidated facts."""
    from agentrt.sleeptime import (
        FACTS_BLOCK,
        LearnedMemory,
        context_session,
        learned_label,
    )

    with _open(path) as store:
        if show:
            console.print(store.blocks.get(learned_label(show)).value or f"(nothing learned for {show!r})",
                          highlight=False, markup=False)
            return
        spent = _spent_by_session(store)
        table = Table("context", "block version", "chars", "predicted questions", "tokens spent", "updated (UTC)")
        for cid in LearnedMemory(store).contexts():
            block = store.blocks.get(learned_label(cid))
            n_q = sum(1 for e in store.events(session=context_session(cid), kind="anticipation", limit=100_000)
                      if e.expired_at is None)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(block.updated_at)) if block.updated_at else ""
            table.add_row(cid, str(block.version), str(len(block.value)), str(n_q),
                          str(spent.get(context_session(cid), 0)), when)
        console.print(table)
        facts = store.blocks.get(FACTS_BLOCK)
        n_facts = len([ln for ln in facts.value.splitlines() if ln.strip()])
        console.print(f"consolidated facts: {n_facts} (block version {facts.version})")


@sleep_app.command()
def budget(path: Path = PathOpt,
           set_limit: int = typer.Option(None, "--set-limit", help="Set the total sleep-time token budget (0: none).")
           ) -> None:
    """Sleep-time tokens spent (from the stored job steps) and what is left of the budget."""
    from agentrt.sleeptime import cas_update

    with _open(path, must_exist=set_limit is None) as store:
        if set_limit is not None:
            def make(block):
                data = json.loads(block.value) if block.value else {}
                data["limit_tokens"] = set_limit or None
                return json.dumps(data)
            cas_update(store, BUDGET_BLOCK, make, updated_by="cli")
        spent = _spent_by_session(store)
        limit = _limit(store)
        table = Table("session", "tokens spent")
        for s, t in sorted(spent.items()):
            table.add_row(s, str(t))
        console.print(table)
        total = sum(spent.values())
        left = "unlimited" if limit is None else str(limit - total)
        console.print(f"spent {total} tokens; limit {limit if limit is not None else 'none'}; remaining {left}")
