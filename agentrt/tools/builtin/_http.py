"""``http_get``: fetch a URL from an allow-list of hosts (off unless the caller names the hosts).

The allow-list is checked on the URL the model wrote and again on every redirect (a redirect to
another host is refused, not followed). Responses are cut at ``max_bytes``; only text-like
content types are returned as text, anything else as a short description. The HTTP client is
httpx2.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from agentrt.errors import ToolError
from agentrt.tools import Limits, Tool, tool

__all__ = ["http_get_tool"]

_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/xhtml", "+json", "+xml")


def _parse_allowed(hosts: Iterable[str]) -> set[tuple[str, int | None]]:
    allowed: set[tuple[str, int | None]] = set()
    for h in hosts:
        host, port = h.strip().lower(), ""
        if host.count(":") == 1:
            host, port = host.split(":")
        if not host or ":" in host:
            raise ToolError(f"bad allowed host {h!r}: use 'host' or 'host:port'")
        try:
            allowed.add((host, int(port) if port else None))
        except ValueError:
            raise ToolError(f"bad allowed host {h!r}: the port must be a number") from None
    if not allowed:
        raise ToolError("http_get needs at least one allowed host")
    return allowed


def http_get_tool(allowed_hosts: Iterable[str], *, max_bytes: int = 200_000, timeout: float = 15.0,
                  name: str = "http_get") -> Tool:
    """Make an ``http_get`` tool that may fetch only from ``allowed_hosts``.

    Args:
        allowed_hosts: ``"host"`` (any port) or ``"host:port"`` entries; compared with the URL's
            host, lower-cased, exactly (no wildcards: ``example.com`` does not allow
            ``api.example.com``).
        max_bytes: response bytes kept (the rest is cut, and the result says so).
        timeout: seconds for the whole request.
        name: the tool's name.

    Returns:
        A read-only, idempotent, open-world tool returning ``{"status", "content_type", "text",
        "truncated"}``.

    Raises:
        ToolError: the allow-list is empty or malformed.
    """
    allowed = _parse_allowed(allowed_hosts)
    shown = ", ".join(sorted(f"{h}:{p}" if p else h for h, p in allowed))

    def check(url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise PermissionError(f"only http and https URLs are allowed, not {parts.scheme or 'no scheme'!r}")
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if (host, None) not in allowed and (host, port) not in allowed:
            raise PermissionError(f"host {host}:{port} is not allowed (allowed: {shown})")

    @tool(name=name, read_only=True, idempotent=True, open_world=True,
          limits=Limits(timeout=timeout + 5, memory="128M", network=tuple(sorted(
              f"{h}:{p}" for h, port in allowed for p in ((port,) if port else (80, 443))))))
    async def http_get(url: str) -> dict[str, Any]:
        """Fetch a web page or API response by HTTP GET (only from allowed hosts).

        Args:
            url: the full http(s) URL.
        """
        import httpx2

        check(url)
        async with httpx2.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            for _ in range(5):
                async with client.stream("GET", url) as resp:
                    if resp.is_redirect and "location" in resp.headers:
                        url = str(resp.url.join(resp.headers["location"]))
                        check(url)
                        continue
                    body = bytearray()
                    async for chunk in resp.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            break
                    ctype = resp.headers.get("content-type", "")
                    truncated = len(body) > max_bytes
                    data = bytes(body[:max_bytes])
                    if any(t in ctype for t in _TEXT_TYPES) or not ctype:
                        text = data.decode(resp.encoding or "utf-8", errors="replace")
                    else:
                        text = f"({len(data)} bytes of {ctype}, not shown)"
                    return {"status": resp.status_code, "content_type": ctype, "text": text,
                            "truncated": truncated}
        raise RuntimeError("too many redirects")

    http_get.description += f" Allowed hosts: {shown}."
    return http_get
