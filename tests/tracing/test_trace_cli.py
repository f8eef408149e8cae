"""`agentrt trace ...` on a store filled through the public tracing API."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import anyio
import pytest
from _trace_runs import DAG, make_run
from typer.testing import CliRunner

from agentrt.cli import app
from agentrt.tracing import TraceStore


def _run(store: TraceStore, *args: str) -> str:
    r = CliRunner().invoke(app, ["trace", *args, "--store", str(store.path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    return r.output


def test_ls_lists_runs_with_totals(filled_store) -> None:
    store, ids = filled_store
    out = _run(store, "ls")
    assert ids[0][:12] in out and ids[1][:12] in out
    assert "2100/300/190" in out  # tokens in/cached/out summed over the two LLM calls
    rows = json.loads(_run(store, "ls", "--json"))
    assert [r["run_id"] for r in rows] == [ids[1], ids[0]]  # newest first
    assert rows[0]["tool_calls"] == len(DAG) and rows[0]["cost_usd"] > 0 and rows[0]["parallel_efficiency"] > 1


def test_show_prints_the_tree_and_waterfall_with_the_critical_path(filled_store) -> None:
    store, ids = filled_store
    out = _run(store, "show", ids[0][:8])
    assert f"run {ids[0]}" in out
    for tid in DAG:
        assert f"execute_tool tool{tid}" in out
    assert "waterfall" in out and "█" in out
    starred = " ".join(line for line in out.splitlines() if "★ " in line)
    assert "tool2" in starred and "tool3" in starred and "tool1" not in starred and "tool4" not in starred
    assert ids[1] in _run(store, "show", "last")


def test_show_rejects_an_unknown_run(filled_store) -> None:
    store, _ = filled_store
    r = CliRunner().invoke(app, ["trace", "show", "zzzz", "--store", str(store.path)])
    assert r.exit_code == 1 and "no run matches" in r.output


def test_diff_shows_the_slower_tools(filled_store) -> None:
    store, ids = filled_store
    out = _run(store, "diff", ids[0], ids[1])
    line = next(x for x in out.splitlines() if "execute_tool tool2" in x)
    delta = float(line.split("│")[6])  # Δ s of tool2: 0.2 s x 1.5 - 0.2 s
    assert delta == pytest.approx(0.1, abs=0.05)


def test_export_chrome_and_jsonl_to_files(filled_store, tmp_path: Path) -> None:
    store, ids = filled_store
    _run(store, "export", "last", "--format", "chrome", "-o", str(tmp_path / "t.json"))
    doc = json.loads((tmp_path / "t.json").read_text())
    assert sum(e["ph"] == "X" for e in doc["traceEvents"]) == len(store.spans(ids[1]))
    _run(store, "export", ids[0], "--format", "jsonl", "-o", str(tmp_path / "t.jsonl"))
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["run"]["run_id"] == ids[0] and len(lines) == 1 + len(store.spans(ids[0]))
    _run(store, "export", ids[0], "--format", "otlp", "-o", str(tmp_path / "otlp.json"))
    otlp = json.loads((tmp_path / "otlp.json").read_text())
    assert len(otlp["resourceSpans"][0]["scopeSpans"][0]["spans"]) == len(store.spans(ids[0]))


def test_plot_writes_a_png(filled_store, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is in the [trace] extra")
    store, _ = filled_store
    _run(store, "plot", "last", "-o", str(tmp_path / "timeline.png"))
    assert (tmp_path / "timeline.png").read_bytes()[:4] == b"\x89PNG"


def test_cost_by_model_and_by_tool(filled_store) -> None:
    store, _ = filled_store
    rows = json.loads(_run(store, "cost", "--since", "1h", "--by", "model", "--json"))
    assert [r["key"] for r in rows] == ["gpt-4o"] and rows[0]["calls"] == 4
    tools = json.loads(_run(store, "cost", "--since", "7d", "--by", "tool", "--json"))
    assert {r["key"] for r in tools} == {f"tool{t}" for t in DAG} and all(r["calls"] == 2 for r in tools)
    assert json.loads(_run(store, "cost", "--since", "2099-01-01", "--json")) == []
    assert "total $" in _run(store, "cost")


def test_tail_follows_a_run_while_it_happens(store: TraceStore) -> None:
    tracer = store.tracer()
    anyio.run(make_run, tracer)  # an older run tail must not print
    assert store.flush()

    def later() -> None:
        time.sleep(0.8)
        anyio.run(make_run, tracer, "live")
        store.flush()

    t = threading.Thread(target=later)
    t.start()
    out = _run(store, "tail", "--interval", "0.2", "--duration", "3")
    t.join()
    assert out.count("execute_tool tool") == len(DAG)
    assert "ended" in out and out.count("run ") == 1


def test_a_question_with_brackets_is_printed_as_text_not_markup(store: TraceStore) -> None:
    """A run is named by its question; `[/etc]` or `[red]` in it must print literally (rich would
    read them as markup: a closing tag raised MarkupError, an opening one restyled the line)."""
    question = "What is in [/etc] and [red]?"
    run_id = anyio.run(make_run, store.tracer(), question)
    assert store.flush()
    for cmd in (["show", run_id[:12]], ["ls"]):
        r = CliRunner().invoke(app, ["trace", *cmd, "--store", str(store.path)], env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.output
        assert "[/etc]" in r.output and "[red]" in r.output, r.output


@pytest.mark.parametrize("columns", [80, 120, 150])
def test_ls_keeps_ids_questions_and_tokens_readable_at_any_width(store: TraceStore, columns: int) -> None:
    run_id = anyio.run(make_run, store.tracer(), "Danube length?")
    assert store.flush()
    r = CliRunner().invoke(app, ["trace", "ls", "--store", str(store.path)], env={"COLUMNS": str(columns)})
    assert r.exit_code == 0, r.output
    assert max(len(line) for line in r.output.splitlines()) <= columns
    assert run_id[:8] in r.output and "Danube length?" in r.output and "2100/300/190" in r.output


def test_a_store_written_before_runs_kept_their_question_opens_and_fills_it(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as con:  # the runs table as it was, without the question column
        con.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, name TEXT, started_ns INTEGER NOT NULL, "
                    "ended_ns INTEGER, status TEXT NOT NULL DEFAULT 'running', input_tokens INTEGER DEFAULT 0, "
                    "output_tokens INTEGER DEFAULT 0, cached_tokens INTEGER DEFAULT 0, reasoning_tokens INTEGER "
                    "DEFAULT 0, cost_usd REAL, unpriced_calls INTEGER DEFAULT 0, energy_j REAL, energy_method TEXT, "
                    "llm_calls INTEGER DEFAULT 0, tool_calls INTEGER DEFAULT 0, span_count INTEGER DEFAULT 0, "
                    "critical_path TEXT, critical_path_s REAL, parallel_efficiency REAL)")
        con.execute("INSERT INTO runs (run_id, name, started_ns, ended_ns, status) VALUES ('zz-old', 'old', 1, 2, 'ok')")
    store = TraceStore(path)
    run_id = anyio.run(make_run, store.tracer(), "new question")
    assert store.flush()
    assert store.run(run_id).question == "new question"
    assert store.run("zz-old").question is None and store.run("zz-old").name == "old"
