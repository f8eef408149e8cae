"""The example agents answer their default questions correctly with the real local model.

Each example runs in-process against the session's local engine, with the agentrt data dir (the
package database, the document folder) in a temporary directory; answers are checked against
values computed here from the same machine's installation.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from importlib import metadata
from pathlib import Path

import anyio
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.model


def _load(name: str):
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def on_local_engine(local_engine, tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))
    monkeypatch.setenv("AGENTRT_BASE_URL", local_engine.base_url)
    monkeypatch.delenv("AGENTRT_CONFIG", raising=False)


def _numbers(text: str) -> list[float]:
    return [float(x.replace(",", "")) for x in re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)]


def test_data_agent_adds_two_package_sizes(on_local_engine):
    data_agent = _load("data_agent")
    result = data_agent.ask()
    kb = sum(sum(f.locate().stat().st_size for f in metadata.files(d) if f.locate().exists())
             for d in ("pydantic", "networkx")) / 1024
    assert not result.partial and len(result.plan) >= 3
    assert any(abs(n - kb) <= 0.01 * kb for n in _numbers(result.answer)), (result.answer, kb)
    assert result.trace_id


def test_mcp_agent_uses_the_mcp_servers_tools(on_local_engine):
    pytest.importorskip("mcp", reason="needs the 'mcp' package (agentrt[mcp])")
    import json.decoder
    import json.encoder

    mcp_agent = _load("mcp_agent")
    result = anyio.run(lambda: mcp_agent.run(mcp_agent.DEFAULT_QUESTION, verbose=False))
    lines = sum(Path(m.__file__).read_bytes().count(b"\n") for m in (json.encoder, json.decoder))
    assert [t.tool for t in result.plan[:2]] == ["stdlib.module_lines"] * 2
    assert lines in [int(n) for n in _numbers(result.answer)], (result.answer, lines)


def test_research_agent_reads_two_documents(on_local_engine):
    research_agent = _load("research_agent")
    result = research_agent.ask()
    read = {t.args.get("name") for t in result.plan}
    assert {"rich", "typer"} <= read, result.plan
    answer = result.answer.lower()
    assert "terminal" in answer and "cli" in answer, result.answer
