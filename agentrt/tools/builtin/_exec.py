"""Built-in ``python`` and ``shell`` tools: run code or a command, return stdout, stderr, exit code.

Both declare ``runs_in="sandbox"``: they run only through a sandbox backend (bubblewrap
namespaces and a per-call cgroup), never in the runtime's own process; the local executor backend
refuses them. Their bodies live in `agentrt.tools.builtin._exec_run` (standard library only, so a
sandboxed call does not pay agentrt's import time).
"""

from __future__ import annotations

from agentrt.tools import Limits, tool
from agentrt.tools.builtin._exec_run import run_python, run_shell

__all__ = ["PYTHON_LIMITS", "SHELL_LIMITS", "python", "shell"]

#: Default intent of a ``python`` call: 256 MiB (hard limit 512 MiB), one core, 64 processes, 30 s.
PYTHON_LIMITS = Limits(memory="256M", memory_burst=2.0, cpu=1.0, pids=64, timeout=30.0, network="none")
#: Default intent of a ``shell`` call: 256 MiB (hard limit 512 MiB), one core, 128 processes, 30 s.
SHELL_LIMITS = Limits(memory="256M", memory_burst=2.0, cpu=1.0, pids=128, timeout=30.0, network="none")

python = tool(name="python", runs_in="sandbox", limits=PYTHON_LIMITS, destructive=True,
              open_world=False)(run_python)
shell = tool(name="shell", runs_in="sandbox", limits=SHELL_LIMITS, destructive=True,
             open_world=False)(run_shell)
