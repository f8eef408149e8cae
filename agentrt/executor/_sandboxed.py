"""`SandboxedBackend`: an executor backend that runs ``runs_in="sandbox"`` tools in a sandbox.

Tools declaring ``runs_in="sandbox"`` run through a `agentrt.sandbox.Sandbox` (one session per
backend, started on first use), each call under its own limits (the ``limits`` the scheduler
passes: the tool's by default). In-process tools run in this process through `LocalBackend`.

Admission control (`agentrt.executor.AdmissionController`, on by default with the process's
host-wide budget): each sandboxed call first reserves its memory intent; calls that do not fit
wait in the order they were submitted (the scheduler submits in readiness order), a call whose
intent exceeds the whole budget is ``denied``, and the decisions land in the result's usage.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

import anyio

from agentrt.errors import SandboxUnavailable
from agentrt.executor._admission import (
    AdmissionController,
    AdmissionDenied,
    observe_session,
)
from agentrt.executor._backend import ExecutorBackend, LocalBackend
from agentrt.executor._task import Task
from agentrt.sandbox import Sandbox, SandboxBackend, get_backend
from agentrt.tools import Limits, Tool, ToolResult

__all__ = ["SandboxedBackend", "default_backend"]

log = logging.getLogger(__name__)


class SandboxedBackend:
    """Runs sandbox tools in a sandbox session, in-process tools in-process.

    Args:
        sandbox: a `SandboxBackend`, or its name (``"namespace"``, ``"docker"``, ``"none"``).
        session: label of the sandbox session.
        local: backend for in-process tools (`LocalBackend` by default).
        sandbox_all: run in-process tools in the sandbox too (each call in a worker process).
        admission: the `AdmissionController` sandboxed calls reserve memory against; True (the
            default) for the process's host-wide one (`AdmissionController.default`), False for none.

    Use ``async with SandboxedBackend() as backend: Scheduler(registry, backend=backend)`` (the
    sandbox session then keeps calls prewarmed, see `agentrt.sandbox.NamespaceSandbox`), or call
    `close` when done; the sandbox session (its cgroups) is removed then.

    Raises:
        SandboxUnavailable: (on first sandboxed call, or here for a name) the backend cannot run
            on this host.
    """

    def __init__(self, sandbox: SandboxBackend | str = "namespace", *, session: str | None = None,
                 local: ExecutorBackend | None = None, sandbox_all: bool = False,
                 admission: AdmissionController | bool = True) -> None:
        self._backend = get_backend(sandbox) if isinstance(sandbox, str) else sandbox
        self._label = session
        self._local = local or LocalBackend()
        self._sandbox: Sandbox | None = None
        self._lock = anyio.Lock()
        self.sandbox_all = sandbox_all
        self._stack: AsyncExitStack | None = None
        self.admission: AdmissionController | None = (
            AdmissionController.default() if admission is True else admission or None)

    @property
    def backend(self) -> SandboxBackend:
        return self._backend

    async def _session(self) -> Sandbox:
        async with self._lock:
            if self._sandbox is None:
                self._sandbox = self._backend.start(self._label)
                observe_session(self._sandbox)
            return self._sandbox

    async def submit(self, task: Task, tool: Tool, args: dict[str, Any], limits: Limits) -> ToolResult:
        """Run ``tool`` with ``args`` under ``limits`` (see `ExecutorBackend.submit`)."""
        if tool.runs_in == "in_process" and not self.sandbox_all:
            return await self._local.submit(task, tool, args, limits)
        sandbox = await self._session()
        if self.admission is None:
            return await sandbox.exec(tool, limits, args=args)
        try:
            async with self.admission.reserve(limits, tool.name) as grant:
                result = await sandbox.exec(tool, grant.limits_for(limits), args=args)
                return self.admission.finish(grant, result, limits)
        except AdmissionDenied as exc:
            return ToolResult.failure("denied", str(exc))

    def close(self) -> None:
        """Close the sandbox session (kills and removes what it still holds). Idempotent."""
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    async def __aenter__(self) -> SandboxedBackend:
        # a sandbox entered as a context may keep calls prewarmed (the namespace backend does)
        self._stack = AsyncExitStack()
        await self._stack.__aenter__()
        sandbox = self._backend.start(self._label)
        observe_session(sandbox)  # before it prewarms: see agentrt.executor._admission
        if hasattr(sandbox, "__aenter__"):
            sandbox = await self._stack.enter_async_context(sandbox)  # type: ignore[arg-type]
        self._sandbox = sandbox
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self.close()


def default_backend(sandbox: str = "namespace") -> ExecutorBackend:
    """The backend a run should use by default: `SandboxedBackend` where ``sandbox`` can run.

    Where it cannot (no bubblewrap, no usable cgroups, not root), returns `LocalBackend` and logs
    a warning naming what is missing: in-process tools still run, and sandbox tools are then
    refused with ``denied`` rather than run unconfined.
    """
    try:
        return SandboxedBackend(sandbox)
    except SandboxUnavailable as exc:
        log.warning("tool calls will not be sandboxed: %s", exc)
        return LocalBackend()
