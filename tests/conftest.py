"""Shared pytest configuration: async tests run on anyio's asyncio backend."""

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
