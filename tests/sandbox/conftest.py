"""Fixtures of the sandbox tests: a real namespace backend, skipped with the reason where absent."""

from __future__ import annotations

import pytest

from agentrt.errors import SandboxUnavailable


@pytest.fixture(scope="module")
def ns_backend():
    from agentrt.sandbox import NamespaceBackend

    try:
        return NamespaceBackend()
    except SandboxUnavailable as exc:
        pytest.skip(f"namespace sandbox unavailable here: {exc}")


@pytest.fixture
async def sandbox(ns_backend):
    sb = ns_backend.start("test")
    yield sb
    session_dirs = list(sb.session.dirs.values())
    sb.close()
    # nothing left behind: the session's groups are gone, with every call group in them
    assert not any(d.exists() for d in session_dirs), session_dirs
