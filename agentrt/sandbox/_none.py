"""The ``none`` backend: no isolation, for trusted code; calls are still timed.

A callable (or `Tool`) runs in this process (a sync one in a worker thread, abandoned at its
timeout). An argv runs as a plain child process in its own session, killed with its process group
at the timeout. Memory, CPU, pids and network limits are *not* enforced: every result says so
(``usage.limits_enforced = False``).
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.to_thread
from pydantic_core import to_jsonable_python

from agentrt.sandbox._base import ExecTarget, Outcome, outcome_result
from agentrt.tools import Limits, Tool, ToolResult, ToolUsage

__all__ = ["NoneBackend", "NoneSandbox"]


class NoneSandbox:
    """A session of the ``none`` backend (nothing to set up or tear down)."""

    def __init__(self) -> None:
        self.label: str | None = None

    async def exec(self, target: ExecTarget, limits: Limits | None = None, stdin: bytes | None = None,
                   *, args: Mapping[str, Any] | None = None) -> ToolResult:
        """Run ``target`` unconfined, under ``limits.timeout`` only (see `Sandbox.exec`)."""
        if isinstance(target, Tool):
            limits = limits or target.limits
            tool = target if limits == target.limits else target.model_copy(update={"limits": limits})
            r = await tool.call(dict(args or {}))
            r.usage.limits_enforced = False  # type: ignore[attr-defined]
            return r
        limits = limits or Limits()
        if isinstance(target, (list, tuple)):
            return await self._argv([str(a) for a in target], limits, stdin)
        start = time.perf_counter()
        fn = target
        try:
            with anyio.move_on_after(limits.timeout) as scope:
                if inspect.iscoroutinefunction(fn):
                    value = await fn(**(args or {}))
                else:
                    value = await anyio.to_thread.run_sync(lambda: fn(**(args or {})), abandon_on_cancel=True)
        except Exception as exc:
            return ToolResult.failure("tool_error", f"{type(exc).__name__}: {exc}",
                                      ToolUsage(wall_seconds=time.perf_counter() - start, limits_enforced=False))
        usage = ToolUsage(wall_seconds=time.perf_counter() - start, timed_out=scope.cancelled_caught,
                          limits_enforced=False)
        if scope.cancelled_caught:
            return ToolResult.failure("timeout", f"timed out after {limits.timeout:g} s", usage)
        return ToolResult.success(to_jsonable_python(value), usage)

    async def _argv(self, argv: list[str], limits: Limits, stdin: bytes | None) -> ToolResult:
        t0 = time.perf_counter()
        timed_out = False
        try:
            proc = await anyio.open_process(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            start_new_session=True)
        except OSError as exc:
            return ToolResult.failure("tool_error", f"cannot run {argv[0]}: {exc}",
                                      ToolUsage(limits_enforced=False))
        out = err = b""
        try:
            with anyio.move_on_after(limits.timeout) as scope:
                async with proc:
                    from agentrt.sandbox._namespace import OUTPUT_CAP, _feed, _pump

                    bo, be = bytearray(), bytearray()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_pump, proc.stdout, bo, OUTPUT_CAP)
                        tg.start_soon(_pump, proc.stderr, be, OUTPUT_CAP)
                        if stdin is not None:
                            tg.start_soon(_feed, proc, stdin)
                        await proc.wait()
                    out, err = bytes(bo), bytes(be)
            timed_out = scope.cancelled_caught
        finally:
            if proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await proc.wait()
        o = Outcome(returncode=proc.returncode if proc.returncode is not None else -9,
                    stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"),
                    wall_seconds=time.perf_counter() - t0, timed_out=timed_out,
                    usage={"limits_enforced": False})
        return outcome_result(o, limits)

    def close(self) -> None:
        """Nothing to release."""


class NoneBackend:
    """``none`` backend: in-process callables and unconfined child processes, timed only."""

    name = "none"

    def start(self, session: str | None = None) -> NoneSandbox:
        """Open a session (no resources are held)."""
        sb = NoneSandbox()
        sb.label = session
        return sb
