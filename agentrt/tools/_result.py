"""`ToolResult`: what every tool call returns — a value or an error, with its usage."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ErrorKind", "ToolResult", "ToolUsage"]

ErrorKind = Literal[
    "timeout", "oom", "killed", "denied", "invalid_args", "tool_error", "skipped",
    "cancelled", "limit_exceeded",
]


class ToolUsage(BaseModel):
    """Resources one call used. A field is ``None`` where the backend cannot measure it.

    Attributes:
        wall_seconds: wall-clock time from start to end of the call.
        cpu_seconds: user + system CPU time of the call.
        memory_peak_bytes: peak memory of the call.
        exit_status: process exit status (sandboxed calls), ``None`` in-process.
        oom_killed: the kernel's OOM killer ended the call.
        timed_out: the call ran past its ``Limits.timeout`` and was killed.
    """

    model_config = ConfigDict(extra="allow")

    wall_seconds: float = 0.0
    cpu_seconds: float | None = None
    memory_peak_bytes: int | None = None
    exit_status: int | None = None
    oom_killed: bool = False
    timed_out: bool = False


class ToolResult(BaseModel):
    """Outcome of one tool call: ``ok`` with a JSON-serialisable ``value``, or an error.

    Attributes:
        ok: the call succeeded.
        value: its return value (JSON-serialisable) when ``ok``.
        error: a human-readable message when not ``ok``.
        error_kind: what kind of failure (see ``ErrorKind``).
        usage: resources used.
        reused: the value is a stored result of an earlier identical call of a read-only,
            idempotent tool (sleep-time compute, `agentrt.sleeptime`), not a new call.
    """

    ok: bool
    value: Any = None
    error: str | None = None
    error_kind: ErrorKind | None = None
    usage: ToolUsage = Field(default_factory=ToolUsage)
    reused: bool = False

    @classmethod
    def success(cls, value: Any, usage: ToolUsage | None = None) -> ToolResult:
        return cls(ok=True, value=value, usage=usage or ToolUsage())

    @classmethod
    def failure(cls, kind: ErrorKind, message: str, usage: ToolUsage | None = None) -> ToolResult:
        return cls(ok=False, error=message, error_kind=kind, usage=usage or ToolUsage())

    def describe(self, limit: int = 2000) -> str:
        """A short text form for prompts: the value, or ``ERROR(kind): message``."""
        if self.ok:
            text = self.value if isinstance(self.value, str) else _json(self.value)
        else:
            text = f"ERROR({self.error_kind}): {self.error}"
        return text if len(text) <= limit else text[: limit - 3] + "..."


def _json(value: Any) -> str:
    import json

    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)
