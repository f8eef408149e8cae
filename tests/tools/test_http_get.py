"""``http_get``: only allow-listed hosts, redirects re-checked, bodies cut, against a real local server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentrt.errors import ToolError
from agentrt.tools.builtin import http_get_tool

pytestmark = pytest.mark.anyio


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/redirect-out":
            self.send_response(302)
            self.send_header("Location", "http://localhost:1/elsewhere")
            self.end_headers()
            return
        if self.path == "/redirect-in":
            self.send_response(302)
            self.send_header("Location", "/hello")
            self.end_headers()
            return
        body = b"x" * 5000 if self.path == "/big" else b"hello there"
        ctype = "image/png" if self.path == "/png" else "text/plain; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


async def test_fetches_from_an_allowed_host(server: int) -> None:
    get = http_get_tool([f"127.0.0.1:{server}"])
    res = await get.call({"url": f"http://127.0.0.1:{server}/hello"})
    assert res.ok and res.value["status"] == 200 and res.value["text"] == "hello there"
    assert get.read_only and get.open_world and f"127.0.0.1:{server}" in get.limits.network
    same_host_redirect = await get.call({"url": f"http://127.0.0.1:{server}/redirect-in"})
    assert same_host_redirect.value["text"] == "hello there"


async def test_other_hosts_ports_schemes_and_redirects_are_refused(server: int) -> None:
    get = http_get_tool([f"127.0.0.1:{server}"])
    for url in (f"http://localhost:{server}/hello", f"http://127.0.0.1:{server + 1}/hello",
                "file:///etc/passwd", f"ftp://127.0.0.1:{server}/"):
        res = await get.call({"url": url})
        assert res.error_kind == "tool_error" and "PermissionError" in res.error, url
    out = await get.call({"url": f"http://127.0.0.1:{server}/redirect-out"})
    assert not out.ok and "localhost:1 is not allowed" in out.error


async def test_big_and_binary_bodies(server: int) -> None:
    get = http_get_tool(["127.0.0.1"], max_bytes=1000)  # any port of that host
    big = await get.call({"url": f"http://127.0.0.1:{server}/big"})
    assert big.value["truncated"] and len(big.value["text"]) == 1000
    png = await get.call({"url": f"http://127.0.0.1:{server}/png"})
    assert png.value["text"].startswith("(11 bytes of image/png")


def test_allow_list_is_required_and_checked() -> None:
    with pytest.raises(ToolError, match="at least one"):
        http_get_tool([])
    with pytest.raises(ToolError, match="port must be a number"):
        http_get_tool(["example.com:http"])
