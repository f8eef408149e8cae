"""The local engine: the embedded model served over OpenAI-compatible HTTP on loopback.

`LocalEngine` runs llama.cpp's own HTTP server (through the prebuilt ``xllamacpp`` binding) in a
child process (``python -I .../agentrt/llm/_engine_main.py``), so that a crash, a hang or 2 GB of model
memory never live in the caller's process. The server speaks the OpenAI chat completions API
with SSE streaming (``stream: true``, ``stream_options.include_usage``), JSON-schema constrained
output (``response_format``), parallel slots with continuous batching and prompt caching; the
model is served under `agentrt.config.LOCAL_MODEL_NAME`.

An engine is either *private* (owned by one `LocalEngine` object; it dies with its owner, even
if the owner is killed, because it watches a pipe only the owner holds) or *registered*: it
records itself in ``<data_dir>/engine.json`` so that ``agentrt engine status|stop`` and
`resolve_endpoint` in other processes find it (``agentrt engine start`` runs one detached).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.to_thread
import httpx2

from agentrt.config import LOCAL_MODEL_NAME, Settings
from agentrt.errors import EngineError, ModelNotInstalled
from agentrt.llm._model import INSTALL_FIX, ProgressCallback, ensure_model

__all__ = [
    "EngineState",
    "LocalEngine",
    "check_health",
    "read_state",
    "resolve_endpoint",
    "running_engine",
    "state_path",
    "stop_registered",
]

log = logging.getLogger(__name__)

_STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
_LOG_TAIL_LINES = 40
_PRIVATE_LOG_TTL = 7 * 86400.0  # seconds a leftover private engine log is kept
_WARMUP_TIMEOUT = 120.0  # seconds; the first generation after load can be 5-15x slower


def state_path(settings: Settings) -> Path:
    """``<data_dir>/engine.json``: where a registered engine records itself."""
    return settings.data_dir / "engine.json"


def _proc_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (/proc/PID/stat field 22), or None if gone.

    Recorded with the pid so that a recycled pid is never mistaken for (or killed as) the engine.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z" and _threads(pid) <= 1:  # a zombie whose threads are all gone has exited
        return None
    return int(fields[19])


def _threads(pid: int) -> int:
    """Threads still alive in ``pid`` (0 if gone). A process whose main thread exited shows as a
    zombie while its other threads (here: llama.cpp's HTTP server, still listening) shut down."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


@dataclass(frozen=True)
class EngineState:
    """What ``engine.json`` records about a registered engine.

    Attributes:
        pid: process id of the engine child.
        start_ticks: its start time (clock ticks since boot), to detect pid reuse.
        host, port: where it listens.
        server_url: ``http://host:port`` (``/health``, ``/metrics``).
        base_url: the OpenAI base URL, ``server_url + "/v1"``.
        model_path: the GGUF file served.
        model_name: the name it serves the model under.
        log_path: file receiving the engine's log.
        started_at: UNIX time, seconds.
        parallel, context, threads: slots, total context (tokens) and CPU threads.
    """

    pid: int
    start_ticks: int
    host: str
    port: int
    server_url: str
    base_url: str
    model_path: str
    model_name: str
    log_path: str
    started_at: float
    parallel: int
    context: int
    threads: int

    def is_alive(self) -> bool:
        """Whether the recorded process still runs (same pid and same start time)."""
        return _proc_start_ticks(self.pid) == self.start_ticks


def read_state(settings: Settings) -> EngineState | None:
    """The registered engine, or None; a stale or unreadable ``engine.json`` is removed.

    Stale means its process is gone (or the pid now belongs to another process).
    """
    path = state_path(settings)
    try:
        raw = json.loads(path.read_text())
        state = EngineState(**raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("removing unreadable engine state file %s: %s", path, exc)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    if not state.is_alive():
        log.info("removing stale engine state file %s (pid %d is gone)", path, state.pid)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return state


def _write_state(settings: Settings, state: EngineState) -> None:
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".engine.", suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove_state_if(settings: Settings, pid: int) -> None:
    path = state_path(settings)
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError):
        pass


async def check_health(server_url: str, *, timeout: float = 2.0) -> bool:
    """Whether ``GET {server_url}/health`` answers 200 (model loaded) within ``timeout`` seconds."""
    try:
        async with httpx2.AsyncClient(timeout=timeout, trust_env=False) as client:
            r = await client.get(f"{server_url}/health")
        return r.status_code == 200
    except httpx2.HTTPError:
        return False


async def running_engine(settings: Settings) -> EngineState | None:
    """The registered engine if its process lives and ``/health`` answers, else None."""
    state = read_state(settings)
    if state is not None and await check_health(state.server_url):
        return state
    return None


def _tail(path: Path | None, lines: int = _LOG_TAIL_LINES) -> str:
    if path is None:
        return ""
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=lines)).rstrip()
    except OSError:
        return ""


def _wait_pid_exit(pid: int, timeout: float) -> bool:
    """Block until ``pid`` (not necessarily our child) exits; True if it did within ``timeout`` s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise EngineError(
                f"cannot start the local engine on {host}:{port}: {exc.strerror}. Another "
                f"process uses the port: stop it (`agentrt engine status` shows a running "
                f"agentrt engine), or set AGENTRT_ENGINE__PORT=0 to pick a free port."
            ) from exc


class LocalEngine:
    """The embedded model served by llama.cpp in a child process on loopback.

    Use as ``async with LocalEngine(settings) as eng: ... eng.base_url ...`` or call
    :meth:`start` / :meth:`stop`. Startup assembles the model if needed (about 6 s the first
    time), loads it (about 2-4 s), checks ``/health`` and runs one tiny generation as warm-up.

    Args:
        settings: ``settings.engine`` gives host, port (0 picks a free one), threads, context
            (total tokens, shared by all slots), parallel (slots) and startup_timeout (seconds).
        register: record the engine in ``<data_dir>/engine.json`` for other processes.
        detach: let the engine outlive this process (only with ``register``): it does not watch
            its parent, and leaving ``async with`` does not stop it.
        progress: ``(bytes_done, bytes_total)`` callback while the model is assembled.

    Attributes (valid once started):
        base_url: OpenAI base URL, ``http://host:port/v1``.
        server_url: ``http://host:port``.
        port, pid: where it listens and its process id.
        model_path: the GGUF file served; model_name: the name it is served under.
        log_path: file receiving the engine's log.
        startup_seconds: from spawning the child to a healthy server.
        warmup_seconds: the warm-up generation.
    """

    model_name: str = LOCAL_MODEL_NAME

    def __init__(
        self,
        settings: Settings,
        *,
        register: bool = False,
        detach: bool = False,
        progress: ProgressCallback | None = None,
    ) -> None:
        if detach and not register:
            raise ValueError("a detached engine must be registered, or nothing could stop it")
        self.settings = settings
        self.register = register
        self.detach = detach
        self._progress = progress
        self._proc: subprocess.Popen[bytes] | None = None
        self._private_log = False
        self.base_url = ""
        self.server_url = ""
        self.port = 0
        self.pid = 0
        self.model_path: Path | None = None
        self.log_path: Path | None = None
        self.startup_seconds = 0.0
        self.warmup_seconds = 0.0

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    async def __aenter__(self) -> LocalEngine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.detach:
            await self.stop()

    async def start(self) -> None:
        """Assemble the model if needed, spawn the engine, wait until healthy, warm it up.

        Raises:
            ModelNotInstalled: the model chunks or xllamacpp are missing (message names the fix).
            EngineError: the port is taken, the child exited, or it was not healthy within
                ``settings.engine.startup_timeout`` seconds; the message carries its log tail.
        """
        if self.running:
            return
        eng = self.settings.engine
        if self.register and (other := await running_engine(self.settings)) is not None:
            raise EngineError(
                f"an agentrt engine is already running (pid {other.pid}, {other.base_url}); "
                f"use it, or stop it first with `agentrt engine stop`"
            )
        if importlib.util.find_spec("xllamacpp") is None:
            raise ModelNotInstalled(f"the local engine needs xllamacpp. Fix: {INSTALL_FIX}")
        if eng.port != 0:
            _check_port_free(eng.host, eng.port)
        self.model_path = await anyio.to_thread.run_sync(ensure_model, self.settings, self._progress)

        self.log_path = self._open_log_path()
        t0 = time.perf_counter()
        proc = self._spawn()
        try:
            with anyio.fail_after(eng.startup_timeout):
                line = await anyio.to_thread.run_sync(proc.stdout.readline, abandon_on_cancel=True)  # type: ignore[union-attr]
                if not line:
                    code = await anyio.to_thread.run_sync(proc.wait)
                    raise EngineError(self._failure(f"the engine process exited with status {code} "
                                                    f"before it was ready"))
                ready = json.loads(line)
                self.server_url = ready["base_url"].rstrip("/")
                while not await check_health(self.server_url):
                    if proc.poll() is not None:
                        raise EngineError(self._failure(f"the engine process exited with status "
                                                        f"{proc.returncode} right after start"))
                    await anyio.sleep(0.1)  # only right after the ready line; normally 0 loops
        except TimeoutError:
            self._kill(proc)
            self._proc = None
            raise EngineError(self._failure(
                f"the engine was not healthy within {eng.startup_timeout:.0f} s (raise "
                f"AGENTRT_ENGINE__STARTUP_TIMEOUT on a slow or busy machine)")) from None
        except BaseException:
            self._kill(proc)
            self._proc = None
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        self.startup_seconds = time.perf_counter() - t0
        self.pid = proc.pid
        self.port = int(self.server_url.rsplit(":", 1)[1])
        self.base_url = f"{self.server_url}/v1"
        log.info("local engine pid %d serving %s at %s (started in %.1f s)", self.pid,
                 LOCAL_MODEL_NAME, self.base_url, self.startup_seconds)
        try:
            await self._warm_up()
        except BaseException:
            await self.stop()
            raise
        if self.register:
            _write_state(self.settings, self.state())

    def state(self) -> EngineState:
        """This engine as `EngineState` (what ``engine.json`` records)."""
        if not self.running:
            raise EngineError("the engine is not running")
        eng = self.settings.engine
        return EngineState(
            pid=self.pid, start_ticks=_proc_start_ticks(self.pid) or 0, host=eng.host,
            port=self.port, server_url=self.server_url, base_url=self.base_url,
            model_path=str(self.model_path), model_name=LOCAL_MODEL_NAME,
            log_path=str(self.log_path), started_at=time.time() - self.startup_seconds,
            parallel=eng.parallel, context=eng.context, threads=eng.threads,
        )

    async def wait(self) -> int:
        """Block until the engine process exits by itself; returns its exit status.

        Raises:
            EngineError: the engine was never started (or was stopped).
        """
        proc = self._proc
        if proc is None:
            raise EngineError("the engine is not running")
        return await anyio.to_thread.run_sync(proc.wait, abandon_on_cancel=True)

    async def health(self) -> bool:
        """Whether the engine answers ``/health`` with 200."""
        return self.running and await check_health(self.server_url)

    async def stop(self, grace: float = _STOP_GRACE) -> None:
        """Stop the engine: SIGTERM, then SIGKILL after ``grace`` seconds; frees its port.

        Runs shielded from cancellation, so a cancelled caller still leaves no process behind.
        Idempotent.
        """
        proc = self._proc
        if proc is None:
            return
        with anyio.CancelScope(shield=True):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await anyio.to_thread.run_sync(proc.wait, grace)
                except subprocess.TimeoutExpired:
                    log.warning("engine pid %d ignored SIGTERM for %.0f s; killing it", proc.pid, grace)
                    self._kill(proc)
            if proc.stdin is not None:
                proc.stdin.close()
            self._proc = None
            if self.register:
                _remove_state_if(self.settings, proc.pid)
            if self._private_log and self.log_path is not None:
                with contextlib.suppress(OSError):
                    self.log_path.unlink()
            log.info("local engine pid %d stopped (status %s)", proc.pid, proc.returncode)

    # -- internals -------------------------------------------------------------------------

    def _open_log_path(self) -> Path:
        data_dir = self.settings.data_dir
        if self.register:
            data_dir.mkdir(parents=True, exist_ok=True)
            return data_dir / "engine.log"
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        # A private engine's log is removed at stop; one whose owner was killed stays behind.
        cutoff = time.time() - _PRIVATE_LOG_TTL
        for old in logs.glob("engine-*.log"):
            with contextlib.suppress(OSError):
                if old.stat().st_mtime < cutoff:
                    old.unlink()
        fd, name = tempfile.mkstemp(dir=logs, prefix="engine-", suffix=".log")
        os.close(fd)
        self._private_log = True
        return Path(name)

    def _spawn(self) -> subprocess.Popen[bytes]:
        eng = self.settings.engine
        # The child runs the module file by path in isolated mode (-I: no PYTHON* variables, no
        # user site, no script dir on sys.path): it needs only the stdlib and xllamacpp, so it
        # never imports the agentrt package (fast start, and immune to the caller's sys.path).
        argv = [
            sys.executable, "-I", str(Path(__file__).with_name("_engine_main.py")),
            "--model", str(self.model_path), "--alias", LOCAL_MODEL_NAME,
            "--host", eng.host, "--port", str(eng.port), "--ctx", str(eng.context),
            "--parallel", str(eng.parallel), "--threads", str(eng.threads),
        ]
        if not self.detach:
            argv.append("--watch-stdin")
        assert self.log_path is not None
        with open(self.log_path, "wb") as log_file:  # one log per start
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL if self.detach else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                cwd="/",
                # Own session: a terminal's Ctrl-C reaches only the parent, which then stops
                # the engine in order; a detached engine survives its parent's session ending.
                start_new_session=True,
                close_fds=True,
            )
        self._proc = proc
        log.debug("spawned engine pid %d: %s (log %s)", proc.pid, " ".join(argv), self.log_path)
        return proc

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()

    def _failure(self, what: str) -> str:
        tail = _tail(self.log_path)
        where = f" (full log: {self.log_path})" if self.log_path else ""
        return f"{what}{where}" + (f"\n--- engine log, last lines ---\n{tail}" if tail else "")

    async def _warm_up(self) -> None:
        """One tiny generation, so that the first real request does not pay the cold start."""
        t0 = time.perf_counter()
        body: dict[str, Any] = {
            "model": LOCAL_MODEL_NAME,
            "messages": [{"role": "user", "content": "Say OK."}],
            "max_tokens": 2,
            "temperature": 0.0,
            "cache_prompt": False,
        }
        try:
            async with httpx2.AsyncClient(timeout=_WARMUP_TIMEOUT, trust_env=False) as client:
                r = await client.post(f"{self.base_url}/chat/completions", json=body)
        except httpx2.HTTPError as exc:
            raise EngineError(self._failure(f"the engine's warm-up request failed: {exc!r}")) from exc
        if r.status_code != 200:
            raise EngineError(self._failure(
                f"the engine's warm-up request answered {r.status_code}: {r.text[:500]}"))
        self.warmup_seconds = time.perf_counter() - t0
        log.info("local engine warmed up in %.2f s", self.warmup_seconds)


async def stop_registered(settings: Settings, grace: float = _STOP_GRACE) -> EngineState | None:
    """Stop the engine recorded in ``engine.json`` (from any process): SIGTERM, then SIGKILL.

    Returns:
        The state of the engine stopped, or None when none was running.

    Raises:
        EngineError: the process survived SIGKILL (should not happen) or is not ours to signal.
    """
    state = read_state(settings)
    if state is None:
        return None
    try:
        os.kill(state.pid, signal.SIGTERM)
        exited = await anyio.to_thread.run_sync(_wait_pid_exit, state.pid, grace)
        if not exited:
            log.warning("engine pid %d ignored SIGTERM for %.0f s; killing it", state.pid, grace)
            os.kill(state.pid, signal.SIGKILL)
            if not await anyio.to_thread.run_sync(_wait_pid_exit, state.pid, 5.0):
                raise EngineError(f"engine pid {state.pid} survived SIGKILL")
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        raise EngineError(f"not allowed to stop engine pid {state.pid}: {exc}") from exc
    _remove_state_if(settings, state.pid)
    return state


async def resolve_endpoint(settings: Settings) -> tuple[str, LocalEngine | None]:
    """Where to send chat completions: ``(base_url, engine_to_stop_or_None)``.

    In order: ``settings.base_url`` if set; else a registered engine (``engine.json``) that
    answers ``/health``; else a new private `LocalEngine`, started here, which the caller owns
    and must ``await engine.stop()``.

    Raises:
        ModelNotInstalled, EngineError: as `LocalEngine.start`.
    """
    if settings.base_url:
        return settings.base_url, None
    state = await running_engine(settings)
    if state is not None:
        log.debug("using the registered engine at %s (pid %d)", state.base_url, state.pid)
        return state.base_url, None
    # a private engine takes any free port: the configured one is for the shared engine
    # (`agentrt engine start`), and may be held by an engine of another data dir
    engine = LocalEngine(settings.model_copy(update={"engine": settings.engine.model_copy(update={"port": 0})}))
    await engine.start()
    return engine.base_url, engine
