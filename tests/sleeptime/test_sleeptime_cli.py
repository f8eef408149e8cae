"""`agentrt sleep run|daemon|status|budget` against a scripted OpenAI-compatible endpoint (no engine started)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _fake_openai import fake_openai
from _sleeptime_fake import step_of


@pytest.fixture
def endpoint():
    class Calls(list):  # the steps called, in order; ``hold``: see below
        hold: threading.Event

    calls = Calls()
    calls.hold = threading.Event()  # set: a notes call about a text containing "SLOW" waits for `release`
    hold, release = calls.hold, threading.Event()

    def reply(body: dict) -> str:
        step = step_of(body["messages"])
        calls.append(step)
        if step == "notes" and hold.is_set() and "SLOW" in body["messages"][1]["content"]:
            release.wait(60)
        if step == "notes":
            return "Each tree gives 4 apples, 3 trees: 12 apples a day.\nKEY FACTS:\n- 12 apples a day"
        return json.dumps({"items": [{"question": "How many apples a day?", "answer": "12"}]})

    with fake_openai(reply, prompt_tokens=100, completion_tokens=20) as (url, _):
        try:
            yield url, calls
        finally:
            release.set()  # before the server's shutdown waits for a held request


def _env(tmp_path: Path, url: str) -> dict:
    """A private home, the fake endpoint, the hashing embedder (no model files) and a wide terminal."""
    return {**os.environ, "AGENTRT_HOME": str(tmp_path / "home"), "AGENTRT_BASE_URL": url,
            "AGENTRT_MEMORY__EMBEDDER": "hashing", "COLUMNS": "200"}


def agentrt(args: list[str], env: dict) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("agentrt")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from agentrt.cli import main; main()"]
    return subprocess.run([*cmd, *args], check=False, capture_output=True, text=True, timeout=120, env=env)


def test_sleep_run_status_and_budget(tmp_path, endpoint):
    url, calls = endpoint
    env = _env(tmp_path, url)
    ctx = tmp_path / "farm.txt"
    ctx.write_text("Janet has 3 apple trees. Each tree gives 4 apples a day.")

    proc = agentrt(["sleep", "budget", "--set-limit", "1000"], env)
    assert proc.returncode == 0, proc.stderr
    proc = agentrt(["sleep", "run", str(ctx), "--expected-queries", "2"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step notes stored" in proc.stdout and "done" in proc.stdout
    assert calls == ["notes", "predict"]

    proc = agentrt(["sleep", "status"], env)
    assert proc.returncode == 0, proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if "farm" in ln)
    assert "240" in row                                         # tokens spent: two calls of 120
    proc = agentrt(["sleep", "status", "--show", "farm"], env)
    assert "12 apples a day" in proc.stdout and "Q: How many apples a day?" in proc.stdout

    proc = agentrt(["sleep", "budget"], env)
    assert proc.returncode == 0, proc.stderr
    assert "spent 240 tokens; limit 1000; remaining 760" in proc.stdout


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _steps(db: Path, context_id: str) -> list[str]:
    from agentrt.memory_store import HashingEmbedder, MemoryStore
    from agentrt.sleeptime import context_session

    with MemoryStore(db, embedder=HashingEmbedder()) as store:
        return [e.meta["step"] for e in store.events(session=context_session(context_id), kind="sleeptime_step",
                                                     limit=100) if e.expired_at is None]


def test_sleep_daemon_learns_dropped_files_and_stops_cleanly_on_sigterm(tmp_path, endpoint):
    url, calls = endpoint
    env = _env(tmp_path, url)
    watch, db = tmp_path / "contexts", tmp_path / "m.db"
    watch.mkdir()
    script = Path(sys.executable).with_name("agentrt")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from agentrt.cli import main; main()"]
    args = [*cmd, "sleep", "daemon", "--watch", str(watch), "--interval", "0.2", "--path", str(db)]

    def start(log):
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, text=True)

    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        proc = start(log)
        try:
            _wait(lambda: "watching" in log_path.read_text(), 60, "the daemon to start")
            (watch / "farm.txt").write_text("Janet has 3 apple trees. Each tree gives 4 apples a day.")
            _wait(lambda: "predict" in _steps(db, "farm") if db.exists() else False, 30, "farm to be learned")
            # a job in flight when SIGTERM comes: its finished steps stay, the rest resumes later
            calls.hold.set()
            (watch / "slow.txt").write_text("SLOW: Tom has 2 boats. Each boat has 5 sails.")
            _wait(lambda: calls.count("notes") == 2, 30, "the slow job's notes call")
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    out = log_path.read_text()
    assert rc == 0, out
    assert "SIGTERM: stopping" in out and "attached farm" in out and "attached slow" in out
    assert "1 unfinished" in out
    assert _steps(db, "farm") == ["context", "notes", "predict"]
    assert _steps(db, "slow") == ["context"]                    # stored before the signal, not lost

    proc = agentrt(["sleep", "status", "--path", str(db)], env)
    assert proc.returncode == 0, proc.stderr
    row = next(ln for ln in proc.stdout.splitlines() if "farm" in ln and "240" in ln)   # 2 calls x 120 tokens
    assert row
    assert "daemon: stopped" in proc.stdout and "by SIGTERM" in proc.stdout and "unfinished jobs: 1" in proc.stdout
    proc = agentrt(["sleep", "status", "--path", str(db), "--show", "farm"], env)
    assert "Q: How many apples a day?" in proc.stdout

    # started again: the unfinished job resumes after its stored step (no second context step)
    calls.hold.clear()
    n = len(calls)
    with open(log_path, "w") as log:
        proc = start(log)
        try:
            _wait(lambda: "predict" in _steps(db, "slow"), 60, "the slow job to resume and finish")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    assert _steps(db, "slow") == ["context", "notes", "predict"]
    assert calls[n:] == ["notes", "predict"]                     # farm: all steps stored, no call


def test_sleep_run_refuses_an_empty_context_without_a_model_call(tmp_path, endpoint):
    url, calls = endpoint
    env = _env(tmp_path, url)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    proc = agentrt(["sleep", "run", str(empty)], env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "is empty" in proc.stdout + proc.stderr
    assert calls == []
