"""`agentrt sandbox run` end to end, as an operator runs it (a real process, real sandbox)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

AGENTRT = str(Path(sys.executable).with_name("agentrt"))


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENTRT, "sandbox", "run", *args], check=False, capture_output=True, text=True,
                          input=stdin, timeout=120)


@pytest.fixture(autouse=True)
def _needs_sandbox(ns_backend):
    return ns_backend


def test_exit_status_and_output_pass_through():
    r = run("--", "/bin/sh", "-c", "echo out; echo err >&2; exit 7")
    assert r.returncode == 7
    assert r.stdout == "out\n"
    assert "err" in r.stderr and "sandbox: exit 7" in r.stderr and "peak" in r.stderr


def test_json_reports_usage_and_oom_exit_code():
    r = run("--memory", "32M", "--json", "--", sys.executable, "-c", "b = bytearray(128 * 2**20)")
    assert r.returncode == 137
    out = json.loads(r.stdout)
    assert out["error_kind"] == "oom" and out["usage"]["oom_killed"]
    assert out["usage"]["memory_peak_bytes"] <= 33 * 2**20


def test_timeout_exit_code_and_stdin():
    r = run("--timeout", "0.5", "--", "sleep", "30")
    assert r.returncode == 124 and "timeout" in r.stderr
    r = run("-i", "--", "cat", stdin="piped")
    assert r.returncode == 0 and r.stdout == "piped"
    r = run("--", "cat", stdin="not passed without -i")
    assert r.returncode == 0 and r.stdout == ""


def test_cpu_throttling_is_printed():
    r = run("--cpus", "0.2", "--json", "--", "timeout", "1", "/bin/sh", "-c", "while :; do :; done")
    out = json.loads(r.stdout)
    assert out["exit_code"] == 124  # coreutils timeout's own status, passed through
    assert out["usage"]["throttled_periods"] > 0


def test_rw_path_and_network_allow_list(tmp_path):
    r = run("--rw", str(tmp_path), "--", "/bin/sh", "-c", f"echo kept > {tmp_path}/f")
    assert r.returncode == 0 and (tmp_path / "f").read_text() == "kept\n"
    r = run("--network", "127.0.0.1:8080", "--", "true")
    if r.returncode == 125:  # no eBPF connect hooks on this host: refused, never widened
        assert "allow-list" in r.stderr
    else:  # enforced in the kernel (tests/cgroups/test_ebpf_net.py)
        assert r.returncode == 0, r.stderr


def test_docker_backend_is_reported_clearly():
    r = run("--backend", "docker", "--", "true")
    assert r.returncode in (0, 125), r.stderr  # ran, or refused with the reason
    if r.returncode == 125:  # no engine answers: the error names what is missing and how to start it
        assert "docker engine api" in r.stderr.lower() and "podman-service" in r.stderr


def test_missing_or_non_executable_command_exits_like_a_shell(tmp_path):
    r = run("--", "/nonexistent/cmd")
    assert r.returncode == 127 and "no such file: /nonexistent/cmd" in r.stderr
    r = run("--", "no-such-command-anywhere")
    assert r.returncode == 127 and "command not found" in r.stderr
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")  # not chmod +x
    r = run("--", str(script))
    assert r.returncode == 126 and "not an executable file" in r.stderr
    r = run("--", "true")  # found on the sandbox's PATH: runs
    assert r.returncode == 0
