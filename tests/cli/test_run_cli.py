"""`agentrt run` against an endpoint that is down: one clear error line, exit 1, no empty plan table."""

from __future__ import annotations

import socket

from typer.testing import CliRunner

from agentrt.cli import app


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_against_a_dead_endpoint_prints_the_error_without_an_empty_plan(tmp_path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    env = {"COLUMNS": "200", "AGENTRT_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["run", "--base-url", url, "--model", "none", "How many files are in /etc?"],
                                env=env)
    assert result.exit_code == 1, result.output
    out = result.output
    assert "error: ModelError" in out and url in out
    assert "┏" not in out and "plan" not in out.splitlines()[-2:]  # no empty table drawn before it
    assert out.count("error:") == 1


def test_an_answer_with_brackets_prints_literally(tmp_path) -> None:
    """The answer is model text: `[/usr/bin]` once raised rich's MarkupError after the whole run."""
    import json

    from _fake_openai import fake_openai, schema_name

    plan = '1. calculator(expression="2 + 2")\n2. join()'
    join = {"thought": "1 holds it", "action": "answer", "answer": "4 files in [/usr/bin] and [red]"}
    with fake_openai(lambda body: json.dumps(join) if schema_name(body) == "join" else plan) as (url, bodies):
        result = CliRunner().invoke(app, ["run", "--base-url", url, "--model", "scripted", "--tools", "calculator",
                                          "How much is 2 + 2?"],
                                    env={"COLUMNS": "200", "AGENTRT_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "answer: 4 files in [/usr/bin] and [red]" in result.output
    assert len(bodies) == 2  # planner, joiner
