"""The `none` backend: unconfined but timed; says that limits are not enforced."""

from __future__ import annotations

import pytest

from agentrt.errors import SandboxUnavailable
from agentrt.sandbox import NoneBackend, get_backend
from agentrt.tools import Limits

pytestmark = pytest.mark.anyio


def _triple(x: int) -> int:
    return 3 * x


async def test_callable_runs_in_process_and_is_timed():
    sb = NoneBackend().start()
    r = await sb.exec(_triple, args={"x": 4})
    assert r.ok and r.value == 12 and r.usage.model_extra["limits_enforced"] is False


async def test_argv_timeout_kills_its_process_group():
    sb = NoneBackend().start()
    r = await sb.exec(["/bin/sh", "-c", "sleep 30 & sleep 30"], Limits(timeout=0.3))
    assert r.error_kind == "timeout" and r.usage.wall_seconds < 5
    ok = await sb.exec(["/bin/sh", "-c", "echo hi"])
    assert ok.ok and ok.value["stdout"] == "hi\n"


def test_docker_backend_says_it_is_not_available_or_builds():
    try:
        be = get_backend("docker")
    except SandboxUnavailable as exc:  # names what is missing and how to start it
        assert "docker engine api" in str(exc).lower() and "podman-service" in str(exc)
    else:
        assert be.name == "docker"


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="namespace"):
        get_backend("chroot")


async def test_tool_runs_in_process_with_its_schema():
    from agentrt.tools import tool

    @tool
    def double(x: int) -> int:
        """Double x."""
        return 2 * x

    sb = NoneBackend().start()
    r = await sb.exec(double, args={"x": "4"})
    assert r.ok and r.value == 8 and r.usage.model_extra["limits_enforced"] is False
    bad = await sb.exec(double, args={"x": "four"})
    assert bad.error_kind == "invalid_args"
