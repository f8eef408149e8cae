"""The bodies of the ``python`` and ``shell`` tools: run a child process, return its outputs.

Standard library only (``__agentrt_standalone__``): the sandbox worker loads this file by path
without importing agentrt, so a sandboxed call starts in a Python start-up (~20 ms) instead of
agentrt's import time (~0.4 s). These functions are *not* safe to call unconfined: they run
arbitrary code. The tools in `agentrt.tools.builtin._exec` declare ``runs_in="sandbox"``, so only
a sandbox backend runs them (the local backend refuses).
"""

from __future__ import annotations

import subprocess
import sys

__agentrt_standalone__ = True

#: Characters of stdout and of stderr returned (the rest is cut, and the cut is said).
MAX_OUTPUT_CHARS = 100_000


def _cut(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    return text[:MAX_OUTPUT_CHARS] + f"\n[... {len(text) - MAX_OUTPUT_CHARS} more characters cut]"


def _run(argv: list[str], stdin: str) -> dict[str, object]:
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, text=True, errors="replace", check=False)
    except OSError as exc:
        return {"exit_code": 127, "stdout": "", "stderr": f"cannot run {argv[0]}: {exc}"}
    return {"exit_code": p.returncode, "stdout": _cut(p.stdout), "stderr": _cut(p.stderr)}


def run_python(code: str, stdin: str = "") -> dict[str, object]:
    """Run a Python program and return its standard output, standard error and exit code.

    Args:
        code: the Python source to run (print what you want to see).
        stdin: text given to the program on its standard input.
    """
    return _run([sys.executable, "-I", "-c", code], stdin)


def run_shell(command: str | list[str], stdin: str = "") -> dict[str, object]:
    """Run a shell command and return its standard output, standard error and exit code.

    Args:
        command: a command line for /bin/sh (pipes and redirections work), or an argv list.
        stdin: text given to the command on its standard input.
    """
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else [str(a) for a in command]
    if not argv:
        return {"exit_code": 127, "stdout": "", "stderr": "empty command"}
    return _run(argv, stdin)
