"""The one exception tree of agentrt.

Every error the runtime raises derives from :class:`AgentrtError`, so a caller can catch at any
level. A *tool's* failure is not an exception: it is a value in its ``ToolResult``. These classes
are for failures of the runtime itself and for bad input handed to it.
"""

from __future__ import annotations

__all__ = [
    "AgentrtError",
    "ConfigError",
    "ModelError",
    "ModelTimeout",
    "ModelHTTPError",
    "ModelNotFound",
    "ModelResponseError",
    "DecodingError",
    "ModelNotInstalled",
    "EngineError",
    "PlanError",
    "ToolError",
    "ToolNotFound",
    "DuplicateTool",
    "InvalidArguments",
    "SandboxError",
    "SandboxUnavailable",
    "ExecutorUnavailable",
    "LimitExceeded",
    "UsageLimitExceeded",
    "SleepBudgetExhausted",
    "RunCancelled",
    "MemoryStoreError",
    "MemoryConflict",
    "EmbedderNotInstalled",
]


class AgentrtError(Exception):
    """Base of every error raised by agentrt."""


class ConfigError(AgentrtError):
    """The configuration (environment, TOML file or arguments) is invalid."""


class ModelError(AgentrtError):
    """A model endpoint failed, or answered with something that is not a valid completion.

    Attributes:
        partial: set when a run stopped on this error: what it had gathered (finished tool
            results kept, e.g. round 1's when the replan call failed), else None.
    """

    partial: object = None


class ModelTimeout(ModelError):
    """The model endpoint did not answer (or stopped streaming) within the configured timeout."""


class ModelHTTPError(ModelError):
    """The model endpoint answered with an HTTP error status that retries did not cure.

    Attributes:
        status_code: the last HTTP status received.
        body: the first 2,000 characters of the last response body.
    """

    def __init__(self, message: str, *, status_code: int, body: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class ModelNotFound(ModelHTTPError):
    """The endpoint answered 404 because it does not serve the requested model name."""


class ModelResponseError(ModelError):
    """The endpoint answered 2xx but the body or stream is malformed, truncated or incomplete."""


class DecodingError(ModelError):
    """Parallel function-call decoding could not produce a valid call (a branch failed, a value
    was truncated or did not parse, or the assembled arguments did not validate)."""


class ModelNotInstalled(ModelError):
    """The embedded local model or its engine is not installed; the message names the fix."""


class EngineError(ModelError):
    """The local engine process failed to start, became unhealthy, or could not be stopped."""


class PlanError(AgentrtError):
    """A plan (or one task of it) is malformed: syntax, unknown tool, bad reference, cycle."""


class ToolError(AgentrtError):
    """A tool definition or registry operation is invalid (not a failure of a tool call)."""


class ToolNotFound(ToolError, KeyError):
    """No tool of that name is registered."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class DuplicateTool(ToolError):
    """A tool of the same name is already registered."""


class InvalidArguments(ToolError):
    """Arguments for a tool call do not validate against its JSON schema."""


class SandboxError(AgentrtError):
    """A sandbox backend could not start or run a call (not the call's own failure)."""


class SandboxUnavailable(SandboxError):
    """A part the sandbox needs is missing on this host (cgroups, bubblewrap, root, a backend).

    The message names the missing part and the command or step that adds it.
    """


class ExecutorUnavailable(AgentrtError):
    """An executor backend cannot run: its package is missing or its cluster is unreachable.

    The message names what is missing and how to add it (e.g. ``pip install 'agentrt[ray]'``).
    """


class LimitExceeded(AgentrtError):
    """A resource limit was exceeded where the runtime, not a tool call, must stop."""


class UsageLimitExceeded(LimitExceeded):
    """A run exceeded its usage limits (tokens, tool calls, wall time or cost).

    Attributes:
        partial: whatever partial result the run had gathered when it stopped, or None.
    """

    def __init__(self, message: str, *, partial: object = None) -> None:
        super().__init__(message)
        self.partial = partial


class SleepBudgetExhausted(LimitExceeded):
    """A sleep-time job stopped because its token budget cannot cover its next LLM call (issue 9)."""


class RunCancelled(AgentrtError):
    """The run was cancelled before it finished."""


class MemoryStoreError(AgentrtError):
    """The episodic memory store failed: its database, blob files or embedder (issue 8)."""


class MemoryConflict(MemoryStoreError):
    """A compare-and-swap update of a memory block lost: the block changed since it was read.

    Attributes:
        label: the block's label.
        expected_version: the version the writer read (and expected to replace).
        actual_version: the version the store holds now (0 when the block does not exist).
    """

    def __init__(self, message: str, *, label: str, expected_version: int, actual_version: int) -> None:
        super().__init__(message)
        self.label = label
        self.expected_version = expected_version
        self.actual_version = actual_version


class EmbedderNotInstalled(MemoryStoreError):
    """The embedding model (or its tokenizer file) is not installed; the message names the fix."""
