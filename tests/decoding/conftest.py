"""Fixtures of the decoding tests: the model endpoint (the registered engine when one runs)."""

from __future__ import annotations

import anyio
import pytest


@pytest.fixture(scope="session")
def decoding_base_url(request: pytest.FixtureRequest) -> str:
    """The OpenAI base URL of a local engine: the registered (shared) one when it answers, else
    the session's `local_engine` (started once for all model tests)."""
    from agentrt.config import get_settings
    from agentrt.llm import running_engine

    state = anyio.run(running_engine, get_settings())
    if state is not None:
        return state.base_url
    return request.getfixturevalue("local_engine").base_url
