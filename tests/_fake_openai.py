"""A minimal OpenAI-compatible chat endpoint on loopback for CLI tests in a subprocess or CliRunner
(non-streaming JSON replies), where the model is not what the test is about and the local engine
must not be started.

``fake_openai(reply)`` serves ``POST .../chat/completions``: ``reply(body) -> str`` gives the
assistant message's content for each request body; usage is fixed per call.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def schema_name(body: dict[str, Any]) -> str | None:
    """The ``response_format`` JSON-schema name of a request (``join`` for the joiner), if any."""
    return ((body.get("response_format") or {}).get("json_schema") or {}).get("name")


@contextmanager
def fake_openai(reply: Callable[[dict[str, Any]], str], *, prompt_tokens: int = 10,
                completion_tokens: int = 5) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """Yield ``(base_url, bodies)``: the endpoint's ``/v1`` URL and every request body it received."""
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            bodies.append(body)
            out = json.dumps({
                "object": "chat.completion", "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": reply(body)}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", bodies
    finally:
        server.shutdown()
        server.server_close()
