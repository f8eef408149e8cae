"""Shared pytest configuration: async tests run on anyio's asyncio backend."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def _traces_and_memory_in_temporary_stores(tmp_path_factory: pytest.TempPathFactory):
    """Runs made by tests are traced into a store of their own, not the user's trace store."""
    from agentrt.tracing import TraceStore, set_tracer

    import os

    store = TraceStore(tmp_path_factory.mktemp("traces") / "traces.sqlite")
    set_tracer(store.tracer())
    # and their episodes go to a memory store of their own, embedded without a model (fast);
    # tests of the memory store itself pick their own paths and embedders
    # (in the environment too, so `agentrt ...` subprocesses of tests do the same)
    saved = {k: os.environ.get(k) for k in ("AGENTRT_MEMORY__PATH", "AGENTRT_MEMORY__EMBEDDER",
                                            "AGENTRT_TRACE_PATH")}
    os.environ["AGENTRT_TRACE_PATH"] = str(store.path)
    os.environ["AGENTRT_MEMORY__PATH"] = str(tmp_path_factory.mktemp("memory") / "memory.db")
    os.environ["AGENTRT_MEMORY__EMBEDDER"] = "hashing"
    yield store
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    set_tracer(None)
    store.close()


def local_model_missing() -> str | None:
    """Why the real local model cannot run here (a skip reason), or None when it can."""
    import importlib.util

    from agentrt.config import get_settings
    from agentrt.errors import ModelNotInstalled
    from agentrt.llm import find_parts, model_status

    if importlib.util.find_spec("xllamacpp") is None:
        return "xllamacpp is not installed (pip install 'agentrt[llm]')"
    try:
        find_parts()
    except ModelNotInstalled as exc:
        if not model_status(get_settings()).assembled:
            return str(exc)
    return None


@pytest.fixture(scope="session")
def require_local_model() -> None:
    """Skip the test (with the reason) when the real local model cannot run here."""
    reason = local_model_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def local_engine():
    """ONE local engine (port 0, 2 slots) for every `model` test of the session.

    Uses the user's data dir (``$AGENTRT_HOME`` overrides) so the assembled model is reused.
    Started and stopped with `anyio.run` because the engine is a child process, not bound to an
    event loop, so every test's own loop can talk to it.
    """
    import anyio

    from agentrt.config import get_settings
    from agentrt.llm import LocalEngine

    reason = local_model_missing()
    if reason:
        pytest.skip(reason)
    engine = LocalEngine(get_settings(engine={"port": 0, "parallel": 2, "context": 4096}))
    anyio.run(engine.start)
    yield engine
    anyio.run(engine.stop)



_model_tests = {"ran": 0, "skipped": 0}


def pytest_runtest_logreport(report) -> None:
    if "model" not in report.keywords:
        return
    if report.skipped:
        _model_tests["skipped"] += 1
    elif report.when == "call":
        _model_tests["ran"] += 1


def pytest_sessionfinish(session, exitstatus) -> None:  # noqa: ARG001
    """Fail the run when the local model is installed but every `model` test was skipped.

    Skipping with a reason is right where the model is missing; where it is installed, a run in
    which no model test ran proves nothing about the real model, so it must not pass silently.
    """
    if session.config.getoption("-m") or _model_tests["ran"] or not _model_tests["skipped"]:
        return
    if local_model_missing() is None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"ERROR: the local model is installed but all {_model_tests['skipped']} "
                                "model tests were skipped", red=True)
        session.exitstatus = 1
