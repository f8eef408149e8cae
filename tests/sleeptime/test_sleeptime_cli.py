"""`agentrt sleep run|status|budget` against a scripted OpenAI-compatible endpoint (no engine started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from _sleeptime_fake import step_of


@pytest.fixture
def endpoint():
    calls: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            step = step_of(body["messages"])
            calls.append(step)
            content = ("Each tree gives 4 apples, 3 trees: 12 apples a day.\nKEY FACTS:\n- 12 apples a day"
                       if step == "notes" else json.dumps({"items": [{"question": "How many apples a day?",
                                                                      "answer": "12"}]}))
            out = json.dumps({"object": "chat.completion", "model": body.get("model"),
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": content}}],
                              "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", calls
    server.shutdown()
    server.server_close()


def agentrt(args: list[str], env: dict) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("agentrt")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from agentrt.cli import main; main()"]
    return subprocess.run([*cmd, *args], check=False, capture_output=True, text=True, timeout=120, env=env)


def test_sleep_run_status_and_budget(tmp_path, endpoint):
    url, calls = endpoint
    env = {**os.environ, "AGENTRT_HOME": str(tmp_path / "home"), "AGENTRT_BASE_URL": url,
           "AGENTRT_MEMORY__EMBEDDER": "hashing", "COLUMNS": "200"}
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
