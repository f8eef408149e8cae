"""Tools from a real MCP server (the `mcp` package's server, started by the test) over stdio and
Streamable HTTP, used directly and by an agent."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from _scripted import ScriptedModel

from agentrt import Agent, Limits
from agentrt.errors import ToolError
from agentrt.tools import MCPToolset

pytest.importorskip("mcp", reason="MCP needs the 'mcp' package (agentrt[mcp])")
pytestmark = pytest.mark.anyio

SERVER = [sys.executable, str(Path(__file__).with_name("_mcp_server.py"))]


async def test_stdio_server_tools_map_names_schemas_and_hints() -> None:
    async with MCPToolset(SERVER, prefix="t") as mcp:
        tools = {t.name: t for t in mcp.tools}
    assert set(tools) == {"t.word_count", "t.file_size", "t.fail", "t.slow"}  # "file-size" made plannable
    wc = tools["t.word_count"]
    assert wc.parameters["properties"]["text"]["type"] == "string"
    assert wc.description == "Count the words in a text."
    assert (wc.read_only, wc.idempotent, wc.open_world, wc.destructive) == (True, True, False, False)
    assert tools["t.fail"].open_world  # MCP's default for openWorldHint is true


async def test_calls_return_values_and_errors_as_results(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"12345")
    async with MCPToolset(SERVER, limits=Limits(timeout=1.0)) as mcp:
        tools = {t.name: t for t in mcp.tools}
        ok = await tools["word_count"].call({"text": "one two three"})
        assert ok.ok and ok.value == 3
        size = await tools["file_size"].call({"path": str(f)})
        assert size.ok and size.value == 5
        bad = await tools["word_count"].call({"text": 7})
        assert bad.error_kind == "invalid_args" and "not of type 'string'" in bad.error
        missing = await tools["word_count"].call({})
        assert missing.error_kind == "invalid_args" and "'text' is a required property" in missing.error
        failed = await tools["fail"].call({"reason": "x"})
        assert failed.error_kind == "tool_error"
        slow = await tools["slow"].call({"seconds": 5})
        assert slow.error_kind == "timeout"
        # the session survives a call abandoned at its timeout
        again = await tools["word_count"].call({"text": "still alive"})
        assert again.ok and again.value == 2
    closed = await tools["word_count"].call({"text": "a"})
    assert closed.error_kind == "tool_error" and "closed" in closed.error


async def test_a_server_that_cannot_start_is_a_clear_error() -> None:
    with anyio.fail_after(30), pytest.raises(ToolError, match="cannot open MCP server"):
        async with MCPToolset([sys.executable, "-c", "import sys; sys.exit(3)"]):
            pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_streamable_http_server() -> None:
    port = _free_port()
    proc = subprocess.Popen([*SERVER, "--http", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("the MCP HTTP server did not start")
                await anyio.sleep(0.1)
        async with MCPToolset(f"http://127.0.0.1:{port}/mcp", prefix="web") as mcp:
            wc = next(t for t in mcp.tools if t.name == "web.word_count")
            res = await wc.call({"text": "over http"})
        assert res.ok and res.value == 2
    finally:
        proc.terminate()
        proc.wait(10)


async def test_an_agent_plans_parallel_calls_to_mcp_tools() -> None:
    plan = ['1. t.word_count(text="a b")\n2. t.word_count(text="c d e")\n3. t.fail(reason="r")\n4. join()']
    model = ScriptedModel([plan], [{"thought": "ok", "action": "answer", "answer": "2 and 3"}])
    async with MCPToolset(SERVER, prefix="t") as mcp:
        res = await Agent(model, mcp.tools).run("count")
    assert res.results[1].value == 2 and res.results[2].value == 3
    assert res.results[3].error_kind == "tool_error"  # a failing MCP tool is a value; siblings finish
    assert "t.word_count" in model.planner_prompts[0][0].content  # the planner saw the MCP tools


async def test_a_server_launched_in_the_sandbox_works_and_leaves_nothing() -> None:
    from agentrt.errors import SandboxError

    try:
        from agentrt.sandbox import sandboxed_command

        launcher = sandboxed_command(Limits(memory="256M", pids=32, network="none"))
    except SandboxError as exc:
        pytest.skip(f"no sandbox here: {exc}")
    async with MCPToolset(SERVER, launcher=launcher, limits=Limits(timeout=20)) as mcp:
        tools = {t.name: t for t in mcp.tools}
        ok = await tools["word_count"].call({"text": "inside the sandbox"})
        hidden = await tools["file_size"].call({"path": "/root/.bashrc"})  # /root is hidden there
    assert ok.ok and ok.value == 3
    assert hidden.error_kind == "tool_error"
    leftover = subprocess.run(["pgrep", "-f", "_mcp_server.py"], capture_output=True, text=True).stdout.split()
    assert leftover == []
