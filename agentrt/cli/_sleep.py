"""`agentrt sleep run|daemon|status|budget`: sleep-time compute from the command line (issue 9)."""

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
DAEMON_BLOCK = "sleeptime/daemon"
FileArg = typer.Argument(..., exists=True, dir_okay=False, help="The context to attach (a text file).")
WatchOpt = typer.Option(..., "--watch", exists=True, file_okay=False,
                        help="Directory of context files (each file a context; its id is the stem).")
SuffixOpt = typer.Option([".txt", ".md"], "--suffix", help="File suffixes to watch (repeatable).")
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


async def _endpoint() -> str:
    from agentrt.config import get_settings
    from agentrt.llm import running_engine

    settings = get_settings()
    if settings.base_url:
        return settings.base_url
    state = await running_engine(settings)
    if state is None:
        raise typer.BadParameter("no model endpoint: start the engine (`agentrt engine start`) "
                                 "or set AGENTRT_BASE_URL")
    return state.base_url


def _progress(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}", highlight=False)


def _record_runs(store, entry: dict) -> None:
    """Append one entry (what a `run` or a daemon session did) to the budget block (CAS)."""
    from agentrt.sleeptime import cas_update

    def record(block):
        data = json.loads(block.value) if block.value else {}
        data.setdefault("limit_tokens", None)
        data["runs"] = (data.get("runs") or [])[-49:] + [entry]
        return json.dumps(data)
    cas_update(store, BUDGET_BLOCK, record, updated_by="cli")


def _jobs(history: list[dict]) -> list[dict]:
    return [{k: h[k] for k in ("key", "status", "tokens", "seconds")} for h in history]


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

    from agentrt.sleeptime import JobBudget, SleepTimeScheduler

    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {file} as text: {exc}", param_hint="FILE") from None
    if not text.strip():  # nothing to learn from: spend no tokens on it
        raise typer.BadParameter(f"{file} is empty: a context needs some text", param_hint="FILE")
    cid = context_id or file.stem

    async def main() -> list[dict]:
        from agentrt.config import get_settings
        from agentrt.llm import OpenAIChatModel

        settings = get_settings()
        base_url = await _endpoint()
        store = _open(path, must_exist=False)
        try:
            limit = _limit(store)
            total = None
            if limit is not None:
                total = max(limit - sum(_spent_by_session(store).values()), 0)
            model = OpenAIChatModel(base_url, settings.model, settings.api_key, timeout=600)
            async with model, SleepTimeScheduler(store, model, min_idle_s=0, every_n_runs=0,
                                                 consolidate_on_idle=False, total_tokens=total,
                                                 job_budget=JobBudget(tokens=tokens, seconds=seconds),
                                                 on_progress=_progress) as sleep:
                sleep.attach(cid, text, expected_queries=expected_queries, questions=questions)
                if consolidate:
                    sleep.consolidate_now()
                if maintain:
                    sleep.request_maintenance(force=True)
                await sleep.wait_idle()

            _record_runs(store, {"at": time.time(), "context_id": cid, "jobs": _jobs(sleep.history)})
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


class _Watcher:
    """Finds new and changed context files in a directory: each ``*<suffix>`` file is a context
    whose id is its stem. A file is attached once its size and mtime were the same on two
    scans in a row (so a file still being written is not read half-way), and again whenever its
    content changes."""

    def __init__(self, directory: Path, suffixes: tuple[str, ...]) -> None:
        self.directory, self.suffixes = directory, suffixes
        self._seen: dict[Path, tuple[int, int]] = {}
        self.attached: dict[str, str] = {}  # context id -> sha256 of the attached text

    def scan(self) -> list[tuple[str, str]]:
        """``[(context id, text)]`` to attach now."""
        import hashlib

        out = []
        for f in sorted(self.directory.iterdir()):
            if not f.is_file() or f.suffix not in self.suffixes or f.name.startswith("."):
                continue
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            sig = (st.st_size, st.st_mtime_ns)
            stable = self._seen.get(f) == sig
            self._seen[f] = sig
            if not stable:
                continue
            try:
                text = f.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                _progress(f"[yellow]skipping {f.name}: {exc}[/]")
                continue
            digest = hashlib.sha256(text.encode()).hexdigest()
            if text.strip() and self.attached.get(f.stem) != digest:
                self.attached[f.stem] = digest
                out.append((f.stem, text))
        return out


@sleep_app.command()
def daemon(watch: Path = WatchOpt, suffix: list[str] = SuffixOpt,
           interval: float = typer.Option(1.0, help="Seconds between directory scans."),
           expected_queries: float = typer.Option(1.0, help="Queries expected per context (shares the budget)."),
           questions: int = typer.Option(None, help="Questions to predict per context (default from expected queries)."),
           tokens: int = typer.Option(4000, help="Token budget of each job (input + output)."),
           seconds: float = typer.Option(300.0, help="Time budget of each job, seconds."),
           path: Path = PathOpt) -> None:
    """Run sleep-time compute in the foreground: watch a directory of context files, learn from
    new and changed ones whenever idle, within the budget (`agentrt sleep budget`), until
    SIGTERM or SIGINT (Ctrl-C). A job cut short keeps every step it finished (stored step by
    step) and resumes from there when the daemon runs again; `agentrt sleep status` shows what
    was learned and the daemon's state."""
    import os
    import signal

    import anyio

    from agentrt.sleeptime import JobBudget, SleepTimeScheduler, cas_update

    suffixes = tuple(x if x.startswith(".") else f".{x}" for x in suffix)

    async def main() -> int:
        from agentrt.config import get_settings
        from agentrt.llm import OpenAIChatModel

        settings = get_settings()
        base_url = await _endpoint()
        store = _open(path, must_exist=False)
        watcher = _Watcher(watch, suffixes)
        started = time.time()
        stopped_by: list[str] = []

        def state(**kw) -> None:
            def make(block):
                data = json.loads(block.value) if block.value else {}
                data.update(pid=os.getpid(), watch=str(watch.resolve()), started_at=started, **kw)
                return json.dumps(data)
            cas_update(store, DAEMON_BLOCK, make, updated_by="daemon")

        limit = _limit(store)
        total = None if limit is None else max(limit - sum(_spent_by_session(store).values()), 0)
        model = OpenAIChatModel(base_url, settings.model, settings.api_key, timeout=600)
        sleep = SleepTimeScheduler(store, model, min_idle_s=0, every_n_runs=0, consolidate_on_idle=False,
                                   total_tokens=total, job_budget=JobBudget(tokens=tokens, seconds=seconds),
                                   on_progress=_progress)
        try:
            async with model, sleep, anyio.create_task_group() as tg:
                async def on_signal() -> None:
                    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for signum in signals:
                            stopped_by.append(signal.Signals(signum).name)
                            _progress(f"{stopped_by[-1]}: stopping (finished job steps are kept)")
                            tg.cancel_scope.cancel()
                            return
                tg.start_soon(on_signal)
                state(status="running", stopped_at=None, contexts=[])
                _progress(f"watching {watch} ({', '.join(suffixes)}); budget "
                          f"{'unlimited' if total is None else f'{total} tokens'}; pid {os.getpid()}")
                while True:
                    new = await anyio.to_thread.run_sync(watcher.scan)
                    for cid, text in new:
                        key = sleep.attach(cid, text, expected_queries=expected_queries, questions=questions)
                        _progress(f"attached {cid} ({len(text)} chars): {key}")
                    if new:
                        state(status="running", contexts=sorted(watcher.attached),
                              spent_tokens=sleep.spent_tokens)
                    await anyio.sleep(interval)
        finally:
            hist = sleep.history
            pending = [p["key"] for p in sleep.status()["pending"]]
            _record_runs(store, {"at": time.time(), "daemon": True, "contexts": sorted(watcher.attached),
                                 "jobs": _jobs(hist), "unfinished": pending})
            state(status="stopped", stopped_at=time.time(), stopped_by=stopped_by[0] if stopped_by else None,
                  contexts=sorted(watcher.attached), spent_tokens=sleep.spent_tokens,
                  jobs_done=sum(h["status"] == "done" for h in hist), unfinished=pending)
            store.close()
            _progress(f"stopped: {sum(h['status'] == 'done' for h in hist)} jobs done, "
                      f"{len(pending)} unfinished (they resume on the next start)")
        return 0

    raise typer.Exit(anyio.run(main))


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
        d = store.blocks.get(DAEMON_BLOCK).value
        if d:
            d = json.loads(d)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.get("stopped_at") or d["started_at"]))
            line = (f"daemon: {d.get('status')} (pid {d.get('pid')}, watching {d.get('watch')}, "
                    f"{'stopped' if d.get('stopped_at') else 'started'} {when} UTC")
            if d.get("stopped_by"):
                line += f" by {d['stopped_by']}"
            line += f"; contexts: {', '.join(d.get('contexts') or []) or 'none'}"
            if d.get("unfinished"):
                line += f"; unfinished jobs: {len(d['unfinished'])}"
            console.print(line + ")", highlight=False, markup=False)


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
