"""The shim that makes a process join its call's cgroups *before* it execs the real command.

Joining after the spawn would be wrong: on cgroup v1, memory charged before a task moves stays
with its old group, and whatever the command forks before the move escapes the limits.
`subprocess`'s ``preexec_fn`` joins at the right moment but is unsafe in a process with threads
(Python's docs: it may deadlock in the child), and anyio's process API has no such hook.

So the child is started as ``/bin/sh -c SCRIPT agentrt-shim N FILE... ARGV...``: the shell writes
its own pid (``$$``, which stays the pid after ``exec``) into each of the ``N`` ``cgroup.procs``
files, then ``exec``\\ s ``ARGV``. A shell is used rather than ``python -m agentrt.cgroups._shim``
because it starts in about 1 ms where Python needs 15-20 ms (``benchmarks/sandbox.py`` measures
both). If a write fails, the shim exits with `SHIM_JOIN_FAILED` before running anything.

``python .../agentrt/cgroups/_shim.py N FILE... ARGV...`` (`python_shim_argv`) is the same in
Python, kept for hosts without a POSIX shell and as the benchmark's point of comparison.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["SHIM_JOIN_FAILED", "python_shim_argv", "shim_argv"]

#: Exit status of the shim when it could not join a cgroup (the command did not run).
SHIM_JOIN_FAILED = 125

_SCRIPT = (f'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit {SHIM_JOIN_FAILED}; shift; '
           'n=$((n-1)); done; exec "$@"')


def shim_argv(procs_files: Sequence[str | os.PathLike[str]], argv: Sequence[str],
              shell: str = "/bin/sh") -> list[str]:
    """The argv that joins ``procs_files`` (``cgroup.procs`` paths) and then execs ``argv``.

    Raises:
        ValueError: ``argv`` is empty.
    """
    if not argv:
        raise ValueError("shim_argv: empty command")
    return [shell, "-c", _SCRIPT, "agentrt-shim", str(len(procs_files)),
            *(os.fspath(p) for p in procs_files), *argv]


def python_shim_argv(procs_files: Sequence[str | os.PathLike[str]], argv: Sequence[str]) -> list[str]:
    """Like `shim_argv`, with this Python as the shim (slower start; see the module docstring)."""
    if not argv:
        raise ValueError("python_shim_argv: empty command")
    # by file, not ``-m``: ``-m`` would import the agentrt package first (~0.4 s)
    return [sys.executable, "-s", os.path.abspath(__file__), str(len(procs_files)),
            *(os.fspath(p) for p in procs_files), *argv]


def _main(args: list[str]) -> None:
    n = int(args[0])
    files, argv = args[1:1 + n], args[1 + n:]
    pid = str(os.getpid())
    for f in files:
        try:
            Path(f).write_text(pid)
        except OSError as exc:
            sys.stderr.write(f"agentrt-shim: cannot join {f}: {exc}\n")
            raise SystemExit(SHIM_JOIN_FAILED) from None
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    _main(sys.argv[1:])
