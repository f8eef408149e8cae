"""`agentrt bench NAME`: run ``benchmarks/NAME.py`` and write ``results/NAME.json``."""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from agentrt.cli._app import app

console = Console()
ROOT = Path(__file__).resolve().parents[2]


def _machine() -> dict[str, Any]:
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "memory_gib": mem}


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


@app.command()
def bench(
    name: str = typer.Argument(..., help="Benchmark: a module in benchmarks/ (llm, parallelqa, scheduler, ...)."),
    limit: int | None = typer.Option(None, help="Only the first N items (quick runs)."),
    data: Path = typer.Option(ROOT.parent / "shared" / "data", help="Directory holding the data sets."),
    option: list[str] = typer.Option([], "--set", help="Extra KEY=VALUE passed to the benchmark (repeatable)."),
    out: Path = typer.Option(ROOT / "results", help="Where NAME.json is written."),
    suffix: str = typer.Option("", help="Written as NAME<suffix>.json (e.g. _ray)."),
) -> None:
    """Run a benchmark and write results/NAME.json (format: DESIGN.md, 'Benchmark results')."""
    sys.path.insert(0, str(ROOT))
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        available = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
        raise typer.BadParameter(f"no benchmark {name!r} ({exc}); available: {', '.join(available)}") from None
    config: dict[str, Any] = {"data": str(data), "limit": limit,
                              "progress": lambda msg: console.print(msg, highlight=False)}
    for kv in option:
        key, _, value = kv.partition("=")
        config[key] = value
    commit, when = _commit(), _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    result = module.run(config)
    # other work on a shared 2-core machine skews absolute numbers; record how busy it was
    load = {"loadavg_1_5_15_before": [round(x, 2) for x in load_before],
            "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]}
    result = {"bench": result.get("bench", name), "commit": commit, "when": when,
              "machine": {**_machine(), **load, **result.pop("machine", {})}, **result}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}{suffix}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for t in result.get("targets", []):
        mark = "[green]met[/]" if t.get("met") else "[red]not met[/]"
        console.print(f"{t['name']}: {t['value']} (goal {t['goal']}) {mark}")
    console.print(f"wrote {path}")
