"""Executor: tasks and references, the task fetching unit (scheduler) and executor backends
(local, sandboxed, Ray)."""

from agentrt.executor._admission import AdmissionController, AdmissionDenied, Grant, observe_session
from agentrt.executor._backend import ExecutorBackend, LocalBackend
from agentrt.executor._ray import RayBackend, ray_backend
from agentrt.executor._sandboxed import SandboxedBackend, default_backend
from agentrt.executor._scheduler import (
    Scheduler,
    SchedulerEvent,
    Session,
    TaskFinished,
    TaskSkipped,
    TaskStarted,
    TaskTiming,
    critical_path,
    makespan,
)
from agentrt.executor._task import REF_PATTERN, Ref, Task, TaskStatus, find_refs, resolve_refs

__all__ = [
    "REF_PATTERN", "AdmissionController", "AdmissionDenied", "ExecutorBackend", "Grant", "LocalBackend", "RayBackend", "Ref", "SandboxedBackend", "Scheduler", "SchedulerEvent", "Session",
    "Task", "TaskFinished", "TaskSkipped", "TaskStarted", "TaskStatus", "TaskTiming", "critical_path",
    "default_backend", "find_refs", "makespan", "observe_session", "ray_backend", "resolve_refs",
]
