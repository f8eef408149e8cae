"""Long-lived commands in the namespace sandbox: a server (e.g. an MCP server over stdio) launched
under one cgroup and one bubblewrap for its whole life, talking through its own stdin/stdout.

`Sandbox.exec` runs a call to completion and returns its output; a server instead needs its
standard streams live. `sandboxed_command` gives the argv that starts the command inside the
sandbox (joining its cgroup before exec, as every call does), and removes the cgroup — killing
whatever still runs in it — when the block ends. ``Limits.timeout`` does not apply: the
server lives as long as the block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from agentrt.cgroups import shim_argv
from agentrt.sandbox._namespace import NamespaceBackend, bwrap_argv, call_limits
from agentrt.tools import Limits

__all__ = ["sandboxed_command"]


def sandboxed_command(limits: Limits, *, backend: NamespaceBackend | None = None
                      ) -> Callable[[Sequence[str]], AbstractContextManager[list[str]]]:
    """A launcher: ``with launcher(argv) as wrapped: spawn(wrapped)``.

    Args:
        limits: memory, CPU, pids, network, read-only and writable paths of the server's sandbox.
        backend: the namespace backend (its cgroup driver and Python paths); default a new one.

    Raises:
        SandboxUnavailable: (here) bubblewrap or cgroups cannot run on this host.
        DeniedLimits: (on launch) a path does not exist, or a network allow-list without eBPF.
    """
    be = backend or NamespaceBackend(prewarm=0)

    @contextmanager
    def launch(argv: Sequence[str]) -> Iterator[list[str]]:
        inner = bwrap_argv(limits, list(argv), extra_ro=be.python_ro, bwrap=be.bwrap)
        session = be.driver.session()
        try:
            call = session.call(call_limits(limits))
            yield shim_argv(call.procs_files, inner)
        finally:
            session.close()  # kills what still runs in the server's group, removes it

    return launch
