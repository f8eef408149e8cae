"""Executor: tasks and references, the task fetching unit (scheduler) and executor backends."""

from agentrt.executor._task import REF_PATTERN, Ref, Task, TaskStatus, find_refs, resolve_refs

__all__ = ["REF_PATTERN", "Ref", "Task", "TaskStatus", "find_refs", "resolve_refs"]
