"""`RayBackend`: an executor backend that runs each dispatched tool call as a Ray task.

The task's resource request comes from the call's `Limits`: ``num_cpus`` = ``Limits.cpu``
(cores, fractional), ``memory`` = ``Limits.memory`` (the memory intent, bytes), plus custom
resources (and ``GPU``) declared per tool name with ``resources=``. Ray's resources are only
scheduling labels ("resource requirements of tasks or actors do NOT impose limits on actual
physical resource usage", docs.ray.io, Resources), so the limits are enforced on the worker as on
one machine: a ``runs_in="sandbox"`` tool runs there through the namespace sandbox, each call in
its own cgroup (`agentrt.sandbox`); an in-process tool runs in the worker process, under its
timeout. A sandbox tool is never run unconfined: where the worker has no sandbox, the call comes
back ``denied`` naming what is missing.

What comes back is always a `ToolResult`: the tool's value or its error, or

- ``denied``: no node of the cluster has the CPUs, memory or custom resources the call asks for
  (checked up front against ``ray.nodes()``, so an infeasible task is refused, never left
  pending forever), or the worker cannot sandbox a sandbox tool;
- ``killed``: the worker process or its node died during the call (Ray's ``WorkerCrashedError``,
  ``NodeDiedError`` ...). Ray retries such a task (``max_retries``) only when the tool is marked
  ``idempotent``; a tool's own exception is never retried;
- ``oom``: Ray's memory monitor killed the worker because its node ran out of memory;
- ``cancelled``: the task was cancelled by someone else.

Cancelling `submit` (the run is cancelled, a usage limit stops it) cancels the Ray task with
``ray.cancel(force=True)``, which kills its worker process, and with it the call's sandbox
(bubblewrap runs with ``--die-with-parent``).

An in-process sync tool that outlives its timeout on a worker keeps running in that worker's
thread, its result discarded (as with `LocalBackend`); a tool that must be killed at its timeout
should declare ``runs_in="sandbox"``.

Waiting never blocks the event loop: the ObjectRef is awaited as an asyncio future (or, under
trio, ``ray.get`` runs in a worker thread). Starting a local Ray takes ~4-6 s here; it runs in a
thread that lives as long as the cluster, because Ray's processes die with the thread that
started them (they are spawned with a parent-death signal).

Tools travel to the workers by cloudpickle: a function at module level goes by reference, so its
module must be importable on every worker (install the package there, or ship it with a Ray
``runtime_env``); a local Ray started here gives its workers this process's ``sys.path``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.to_thread

from agentrt.errors import AgentrtError, ExecutorUnavailable, SandboxUnavailable
from agentrt.executor._task import Task
from agentrt.tools import Limits, Tool, ToolResult, ToolUsage

__all__ = ["RayBackend", "ray_backend"]

log = logging.getLogger(__name__)

#: Object store of a local Ray started by agentrt, in bytes: tool values are small JSON.
LOCAL_OBJECT_STORE_BYTES = 100 * 2**20
#: Seconds to wait for a TCP connection to a cluster's address before giving up on it.
CONNECT_TIMEOUT_SECONDS = 5.0
#: Seconds a snapshot of the cluster's nodes is trusted for the feasibility check.
NODES_TTL_SECONDS = 5.0
#: Resource names that are not requests a task can make (Ray's own bookkeeping).
_NOT_REQUESTABLE = ("object_store_memory",)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ExecutorUnavailable(
            f"the ray executor needs the ray package, which is not importable here ({exc}): "
            "pip install 'agentrt[ray]'") from None
    return ray


# -- the worker side ----------------------------------------------------------------------------

#: This worker process's sandbox sessions by backend name, or why the backend cannot run here.
_worker_sandboxes: dict[str, Any] = {}
#: Tools this worker process has loaded, by the sha1 of their payload (unpickling one costs
#: ~0.4 ms here, a third of a no-op call's round trip).
_worker_tools: dict[bytes, Tool] = {}
#: This worker process's event loop, kept between calls (a new one per call costs ~0.3 ms).
_worker_loop: Any = None


def _load_tool(payload: bytes) -> Tool:
    key = hashlib.sha1(payload).digest()
    tool = _worker_tools.get(key)
    if tool is None:
        import cloudpickle

        tool = cloudpickle.loads(payload)
        if len(_worker_tools) >= 256:
            _worker_tools.clear()
        _worker_tools[key] = tool
    return tool


def _run_async(fn: Any) -> Any:
    global _worker_loop
    if _worker_loop is None:
        import asyncio

        _worker_loop = asyncio.Runner()
    return _worker_loop.run(fn())


def _worker_sandbox(name: str) -> Any:
    """This worker process's sandbox session for backend ``name`` (opened once), or the reason
    (a string) it cannot run on this node."""
    found = _worker_sandboxes.get(name)
    if found is None:
        from agentrt.sandbox import get_backend

        try:
            found = get_backend(name).start("ray-worker")
        except SandboxUnavailable as exc:
            found = str(exc)
        _worker_sandboxes[name] = found
    return found


def run_on_worker(payload: bytes, args: dict[str, Any], limits: Limits, sandbox: str | None,
                  sandbox_all: bool = False) -> ToolResult:
    """The body of every Ray task: load the tool, run one call under ``limits``, return its result.

    Runs in a Ray worker process. ``payload`` is the cloudpickled `Tool`; ``sandbox`` names the
    sandbox backend for ``runs_in="sandbox"`` tools (and, with ``sandbox_all``, for every tool);
    ``None`` refuses them (``denied``). ``usage`` gains ``ray_node_id`` and ``ray_worker_pid``.

    Raises:
        SandboxError: the sandbox itself failed (a runtime failure, re-raised on the driver).
    """
    import ray

    node = ray.get_runtime_context().get_node_id()
    where = {"ray_node_id": node, "ray_worker_pid": os.getpid()}
    try:
        tool = _load_tool(payload)
    except Exception as exc:  # the tool's module is missing on this node: the call's failure
        return ToolResult.failure(
            "tool_error",
            f"the tool could not be loaded on Ray node {node}: {type(exc).__name__}: {exc}; the module "
            "defining it must be importable on every worker (install it there, or ship it with the "
            "backend's runtime_env)", ToolUsage(**where))
    if tool.runs_in == "sandbox" or (sandbox_all and sandbox is not None):
        if sandbox is None:
            return ToolResult.failure(
                "denied", f"tool {tool.name!r} must run in a sandbox (runs_in='sandbox'), and this Ray "
                "backend has none (sandbox=None): give it a sandbox backend", ToolUsage(**where))
        sb = _worker_sandbox(sandbox)
        if isinstance(sb, str):
            return ToolResult.failure(
                "denied",
                f"tool {tool.name!r} must run in a sandbox, and the {sandbox} sandbox cannot run on Ray "
                f"node {node}: {sb}", ToolUsage(**where))

        target: Any = tool
        fn_module = getattr(tool.fn, "__module__", None)
        if fn_module == "__main__" or fn_module not in sys.modules:
            # The function came by value (the driver's __main__, a file loaded by path): the
            # sandbox cannot import it by name here, so it goes there by value too (a partial has
            # no name to look up); its arguments are validated here instead.
            from agentrt.errors import InvalidArguments

            try:
                args = tool.validate_args(args)
            except InvalidArguments as exc:
                return ToolResult.failure("invalid_args", str(exc), ToolUsage(**where))
            target = functools.partial(tool.fn)

        async def call() -> ToolResult:
            return await sb.exec(target, limits, args=args)
    else:
        if limits != tool.limits:
            tool = tool.model_copy(update={"limits": limits})

        async def call() -> ToolResult:
            return await tool.call(args)
    result = _run_async(call)
    return result.model_copy(update={"usage": result.usage.model_copy(update=where)})


# -- the driver side ----------------------------------------------------------------------------


class _Owner:
    """The thread that starts a local Ray (or connects), keeps it, and shuts it down.

    Ray spawns its processes (GCS, raylet, workers) with a parent-death signal bound to the
    *thread* that called ``ray.init``: started from a pooled thread that later exits, the cluster
    dies with it. This thread lives until `stop`.
    """

    def __init__(self, init: Any) -> None:
        self._init = init
        self._started = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="agentrt-ray-owner", daemon=True)

    def _main(self) -> None:
        import ray

        try:
            self._init()
        except BaseException as exc:  # handed to the caller of start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._stop.wait()
        ray.shutdown()

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class RayBackend:
    """Runs each tool call as a Ray task whose resource request comes from its `Limits`.

    Args:
        address: a running cluster: ``"auto"`` (the one on this node, or ``RAY_ADDRESS``), or
            ``"ray://host:10001"`` / ``"host:6379"``. ``None``: start a local Ray (``num_cpus``
            CPUs, a small object store, no dashboard, quiet logs) and stop it on exit.
        num_cpus: CPUs of the local Ray (``address=None`` only).
        object_store_memory: bytes of the local Ray's object store.
        sandbox: sandbox backend the workers use for ``runs_in="sandbox"`` tools (``namespace``,
            ``docker``); ``None`` or ``"none"``: such tools are refused (``denied``), as by
            `LocalBackend`.
        sandbox_all: run in-process tools in the workers' sandbox too (each call in a sandbox
            worker process under its tool's limits).
        retries: how often Ray retries a task whose worker or node died, for ``idempotent`` tools
            (Ray's ``max_retries``); other tools are never retried.
        resources: custom Ray resources per tool name, e.g. ``{"render": {"GPU": 1, "big_disk": 1}}``
            (``GPU`` becomes ``num_gpus``).
        runtime_env: Ray runtime environment of the job (e.g. ``{"py_modules": [...]}`` to ship the
            tools' code to a remote cluster); for a local Ray the workers also get this process's
            ``sys.path`` as ``PYTHONPATH``.
        check_feasible: refuse (``denied``) a call no node can ever hold. Turn off on an
            autoscaling cluster, where nodes that can hold it may still come.

    Use ``async with RayBackend() as backend:``; or call `start` / `close` (a `submit` before
    any `start` starts it, and `close` then stops it). If Ray is already initialised in this
    process, that cluster is used and left running.

    Raises:
        ExecutorUnavailable: (on start) ray is not installed, or the cluster cannot be reached.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int = 2,
                 object_store_memory: int = LOCAL_OBJECT_STORE_BYTES, sandbox: str | None = "namespace",
                 sandbox_all: bool = False,
                 retries: int = 2, resources: Mapping[str, Mapping[str, float]] | None = None,
                 runtime_env: Mapping[str, Any] | None = None, check_feasible: bool = True) -> None:
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        self.address = address
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.sandbox = None if sandbox in (None, "none") else sandbox
        self.sandbox_all = sandbox_all
        self.retries = retries
        self.resources = {k: dict(v) for k, v in (resources or {}).items()}
        self.runtime_env = dict(runtime_env or {})
        self.check_feasible = check_feasible
        self._ray: Any = None
        self._remote: Any = None
        self._owner: _Owner | None = None
        self._lock = threading.Lock()
        self._users = 0
        self._nodes: list[dict[str, float]] = []
        self._nodes_at = -math.inf
        self._payloads: dict[int, tuple[Tool, bytes]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._remote is not None

    @property
    def owns_cluster(self) -> bool:
        """This backend started (or connected) Ray and will shut it down on close."""
        return self._owner is not None

    def start(self) -> None:
        """Start a local Ray or connect to ``address`` (blocking: ~4-6 s for a local Ray here).

        Re-entrant: each `start` needs a `close`; the last `close` stops what this started.

        Raises:
            ExecutorUnavailable: ray is missing, or the cluster cannot be reached.
        """
        with self._lock:
            self._users += 1
            if self._remote is not None:
                return
            try:
                self._start()
            except BaseException:
                self._users -= 1
                raise

    def _start_once(self) -> None:
        """Start on first use (one user, however many calls race here); `close` releases it."""
        with self._lock:
            if self._remote is None:
                self._start()
                self._users += 1

    def _start(self) -> None:
        ray = _import_ray()
        if not ray.is_initialized():
            if self.address not in (None, "auto", "local"):
                _check_reachable(self.address)
            owner = _Owner(self._init_kwargs_call(ray))
            try:
                owner.start()
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray"
                raise ExecutorUnavailable(f"cannot start or reach {where}: {type(exc).__name__}: {exc}") from exc
            self._owner = owner
        elif self.address is not None:
            log.info("Ray is already initialised in this process; using that cluster, not %s", self.address)
        self._ray = ray
        self._remote = ray.remote(run_on_worker)

    def _init_kwargs_call(self, ray: Any) -> Any:
        env = dict(self.runtime_env)
        kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        if self.address is None:
            # The workers of a local cluster see what this process sees (tools defined in scripts,
            # tests, notebooks' modules), unless the caller ships its own PYTHONPATH.
            env_vars = dict(env.get("env_vars") or {})
            env_vars.setdefault("PYTHONPATH", os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)))
            env["env_vars"] = env_vars
            # "local": a new cluster even where RAY_ADDRESS or a `ray start` cluster exists
            kwargs.update(address="local", num_cpus=self.num_cpus, object_store_memory=self.object_store_memory,
                          include_dashboard=False)
        else:
            kwargs["address"] = self.address
        if env:
            kwargs["runtime_env"] = env
        return lambda: ray.init(**kwargs)

    def close(self) -> None:
        """Release this user; the last one shuts down a Ray this backend started. Idempotent."""
        with self._lock:
            if self._users > 0:
                self._users -= 1
            if self._users > 0 or self._remote is None:
                return
            owner, self._owner = self._owner, None
            self._remote = None
            self._nodes_at = -math.inf
            self._payloads.clear()
        if owner is not None:
            owner.stop()

    async def __aenter__(self) -> RayBackend:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close)

    # -- resources ---------------------------------------------------------------------------

    def task_options(self, tool: Tool, limits: Limits) -> dict[str, Any]:
        """The Ray task options of one call: resources from ``limits``, retries from the tool.

        Returns:
            ``{"num_cpus", "memory", "max_retries", "retry_exceptions", "name"}`` plus
            ``num_gpus`` / ``resources`` where ``resources=`` declares them for this tool.
        """
        opts: dict[str, Any] = {
            "num_cpus": limits.cpu, "memory": limits.memory,
            "max_retries": self.retries if tool.idempotent else 0, "retry_exceptions": False,
            "name": f"agentrt:{tool.name}",
        }
        custom = dict(self.resources.get(tool.name, {}))
        gpus = custom.pop("GPU", None)
        if gpus:
            opts["num_gpus"] = gpus
        if custom:
            opts["resources"] = custom
        return opts

    def _demand(self, opts: Mapping[str, Any]) -> dict[str, float]:
        demand = {"CPU": float(opts["num_cpus"]), "memory": float(opts["memory"])}
        if opts.get("num_gpus"):
            demand["GPU"] = float(opts["num_gpus"])
        demand.update({k: float(v) for k, v in (opts.get("resources") or {}).items()})
        return demand

    def nodes(self, *, refresh: bool = False) -> list[dict[str, float]]:
        """Total resources of each alive node (``{"CPU": 2.0, "memory": bytes, ...}``), cached
        for `NODES_TTL_SECONDS` (a blocking GCS call when refreshed)."""
        now = time.monotonic()
        if refresh or now - self._nodes_at > NODES_TTL_SECONDS:
            self._nodes = [dict(n.get("Resources") or {}) for n in self._ray.nodes() if n.get("Alive")]
            self._nodes_at = now
        return self._nodes

    def infeasible(self, tool: Tool, limits: Limits) -> str | None:
        """Why no node of the cluster can ever run this call, or ``None`` if one can."""
        demand = self._demand(self.task_options(tool, limits))
        nodes = self.nodes()
        for node in nodes:
            if all(node.get(k, 0.0) >= v for k, v in demand.items()):
                return None
        asked = _resources_text(demand)
        if not nodes:
            return f"tool {tool.name!r} asks for {asked}, and the Ray cluster has no alive node"
        best = max(nodes, key=lambda n: (n.get("CPU", 0.0), n.get("memory", 0.0)))
        have = _resources_text({k: best.get(k, 0.0) for k in demand})
        return (f"tool {tool.name!r} asks for {asked}, more than any Ray node has (the largest has "
                f"{have}); lower its Limits or add nodes that have it")

    # -- calls ---------------------------------------------------------------------------------

    def _payload(self, tool: Tool) -> bytes:
        hit = self._payloads.get(id(tool))
        if hit is not None and hit[0] is tool:
            return hit[1]
        import cloudpickle

        module = sys.modules.get(getattr(tool.fn, "__module__", None) or "")
        if module is not None and module.__name__ != "__main__" and not _importable(module.__name__):
            # loaded from a file by path (agentrt run --tools-from): no worker could import it
            # by name, so its functions travel by value
            cloudpickle.register_pickle_by_value(module)
        data = cloudpickle.dumps(tool)
        if len(self._payloads) >= 256:
            self._payloads.clear()
        self._payloads[id(tool)] = (tool, data)
        return data

    async def submit(self, task: Task, tool: Tool, args: dict[str, Any], limits: Limits) -> ToolResult:
        """Run ``tool`` with ``args`` as one Ray task under ``limits`` (see `ExecutorBackend.submit`).

        Raises:
            ExecutorUnavailable: the backend was not started and Ray cannot start.
            AgentrtError: the worker's runtime failed (e.g. its sandbox), re-raised here.
        """
        if self._remote is None:
            await anyio.to_thread.run_sync(self._start_once)
        ray = self._ray
        if self.check_feasible:
            if time.monotonic() - self._nodes_at > NODES_TTL_SECONDS:
                await anyio.to_thread.run_sync(self.nodes)
            reason = self.infeasible(tool, limits)
            if reason is not None:
                return ToolResult.failure("denied", reason)
        opts = self.task_options(tool, limits)
        try:
            payload = self._payload(tool)
        except Exception as exc:
            return ToolResult.failure(
                "tool_error", f"tool {tool.name!r} cannot be sent to Ray workers (it must be picklable "
                f"with cloudpickle): {type(exc).__name__}: {exc}")
        t0 = time.perf_counter()
        ref = self._remote.options(**opts).remote(payload, args, limits, self.sandbox, self.sandbox_all)
        try:
            result: ToolResult = await _wait(ref)
        except anyio.get_cancelled_exc_class():
            # force: a running call cannot be interrupted otherwise (sync tools, sandboxed calls)
            ray.cancel(ref, force=True)
            raise
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, AgentrtError):
                raise cause from None
            raise
        except ray.exceptions.TaskCancelledError:
            return ToolResult.failure("cancelled", f"task {task.id}: its Ray task was cancelled",
                                      ToolUsage(wall_seconds=time.perf_counter() - t0))
        except ray.exceptions.OutOfMemoryError as exc:
            return ToolResult.failure(
                "oom", f"Ray's memory monitor killed the worker running {tool.name!r}: its node ran out "
                f"of memory ({_first_line(exc)})", ToolUsage(wall_seconds=time.perf_counter() - t0, oom_killed=True))
        except ray.exceptions.RayError as exc:
            # worker crashed or was killed, node died, raylet died, object lost
            retried = (f" (after {opts['max_retries']} retries: the tool is idempotent)"
                       if opts["max_retries"] else " (not retried: the tool is not marked idempotent)")
            return ToolResult.failure(
                "killed", f"the Ray worker running {tool.name!r} was lost: {type(exc).__name__}: "
                f"{_first_line(exc)}{retried}", ToolUsage(wall_seconds=time.perf_counter() - t0))
        return result


async def _wait(ref: Any) -> Any:
    """The value of ``ref``, awaited without blocking the event loop."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # not asyncio (trio): ray.get in a thread, abandoned if cancelled
        pass
    else:
        return await ref
    import ray

    return await anyio.to_thread.run_sync(ray.get, ref, abandon_on_cancel=True)


def _check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Fail fast when nothing listens at a cluster's ``host:port`` (``ray.init`` would retry for
    minutes).

    Raises:
        ExecutorUnavailable: the address has no port, or a TCP connection to it fails.
    """
    import socket

    hostport = address.removeprefix("ray://").rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ExecutorUnavailable(f"Ray address {address!r} must be 'auto', 'host:port' or 'ray://host:port'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ExecutorUnavailable(
            f"cannot reach the Ray cluster at {address!r}: {exc}; is its head node running "
            "(ray start --head) and the port open from here?") from None


def _importable(module: str) -> bool:
    """Whether ``module``'s top-level package can be found by name on ``sys.path``."""
    import importlib.machinery

    top = module.partition(".")[0]
    return top in sys.builtin_module_names or importlib.machinery.PathFinder.find_spec(top) is not None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _resources_text(res: Mapping[str, float]) -> str:
    parts = []
    for k, v in res.items():
        if k == "CPU":
            parts.append(f"{v:g} CPUs")
        elif k == "memory":
            parts.append(f"{v / 2**30:.2f} GiB memory")
        elif k == "GPU":
            parts.append(f"{v:g} GPUs")
        elif k not in _NOT_REQUESTABLE:
            parts.append(f"{v:g} {k}")
    return ", ".join(parts)


def ray_backend(address: str | None = None, **options: Any) -> RayBackend:
    """A `RayBackend` for ``address`` (``None``: a local Ray started and stopped by agentrt).

    Use it as ``async with ray_backend() as backend:``, or hand it to ``Agent(sandbox=...)`` (the
    agent enters it). ``options`` are `RayBackend`'s keyword arguments.

    Raises:
        ExecutorUnavailable: ray is not installed (checked here, before any start).
    """
    _import_ray()
    return RayBackend(address, **options)
