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
