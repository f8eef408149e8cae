"""File tools bound to allowed root directories: ``read_file``, ``list_dir`` and ``grep``.

Every path a call names is resolved (symlinks and ``..`` followed) and refused unless the result
lies under one of the roots; a relative path is taken relative to each root in turn. ``read_file``
also checks the file it actually opened (through ``/proc/self/fd``), so a symlink swapped in
between the check and the open is caught. These tools run in process and only read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated

from pydantic import Field

from agentrt.errors import ToolError
from agentrt.tools import Limits, Tool, tool

__all__ = ["file_tools"]

#: Directories ``grep`` does not descend into: version control and caches, never what is sought.
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".tox",
                       ".mypy_cache", ".pytest_cache", ".ruff_cache"})
_MAX_LIST = 1000  # entries list_dir returns
_MAX_GREP_FILE = 8 * 1024**2  # bytes: grep skips larger files
_MAX_GREP_FILES = 20_000  # files grep opens per call
_MAX_LINE = 300  # characters of a matching line returned
_BINARY_PROBE = 8192  # bytes inspected for NUL to call a file binary

_LIMITS = Limits(memory="256M", cpu=1, timeout=30)


class _Roots:
    """The allowed roots and the check that a path lies under one of them."""

    def __init__(self, roots: Iterable[str | os.PathLike[str]]) -> None:
        resolved: list[Path] = []
        for root in roots:
            p = Path(root).expanduser()
            if not p.is_dir():
                raise ToolError(f"file tools root {str(root)!r} is not an existing directory")
            r = p.resolve(strict=True)
            if r not in resolved:
                resolved.append(r)
        if not resolved:
            raise ToolError("file tools need at least one root directory")
        self.paths = resolved

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.paths)

    def root_of(self, path: Path) -> Path | None:
        for r in self.paths:
            if path == r or path.is_relative_to(r):
                return r
        return None

    def resolve(self, path: str) -> Path:
        """The existing path under a root that ``path`` names.

        Raises:
            PermissionError: it resolves outside every root.
            FileNotFoundError: nothing exists there.
        """
        if "\x00" in path:
            raise ValueError("a path cannot contain NUL bytes")
        path = path.strip().strip("`'\"") or "."
        given = Path(path)
        candidates = [given] if given.is_absolute() else [r / given for r in self.paths]
        outside: Path | None = None
        inside = False
        for c in candidates:
            real = c.resolve()
            if self.root_of(real) is None:
                outside = outside or real
                continue
            inside = True
            if real.exists():
                return real
        if outside is not None and not inside:
            raise PermissionError(f"{path!r} resolves to {str(outside)!r}, outside the allowed "
                                  f"roots ({self}); only paths under them can be read")
        raise FileNotFoundError(f"no such file or directory: {path!r} (under {self})")

    def display(self, path: Path) -> str:
        """How a found path is shown: relative to its root with one root, else absolute."""
        if len(self.paths) == 1:
            rel = path.relative_to(self.paths[0]).as_posix()
            return rel or "."
        return str(path)


def _open_checked(path: Path, roots: _Roots) -> int:
    """Open ``path`` read-only and verify that the file opened is under a root."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    link = f"/proc/self/fd/{fd}"
    if os.path.exists(link):
        real = Path(os.readlink(link))
        if roots.root_of(real) is None:
            os.close(fd)
            raise PermissionError(f"{str(path)!r} changed to point outside the allowed roots")
    return fd


def _is_binary(head: bytes) -> bool:
    return b"\x00" in head[:_BINARY_PROBE]


def _is_top(path: str) -> bool:
    return path.strip().strip("`'\"") in ("", ".", "./")


def _walk(start: Path, roots: _Roots) -> Iterator[Path]:
    if start.is_file():
        yield start
        return
    for dirpath, dirnames, filenames in os.walk(start, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if p.is_symlink():
                real = p.resolve()
                if roots.root_of(real) is None or not real.is_file():
                    continue
            yield p


def file_tools(roots: Iterable[str | os.PathLike[str]]) -> list[Tool]:
    """The tools ``read_file``, ``list_dir`` and ``grep``, restricted to ``roots``.

    Args:
        roots: directories the tools may read under; a relative path in a call is looked up
            under each root in order.

    Returns:
        ``[read_file, list_dir, grep]``, read-only and idempotent.

    Raises:
        ToolError: a root is not an existing directory, or no root was given.
    """
    allowed = _Roots(roots)
    where = f"under {allowed}" if len(allowed.paths) > 1 else f"under {allowed.paths[0]}"

    def read_file(path: str, max_bytes: Annotated[int, Field(ge=1, le=16 * 1024**2)] = 65536) -> str:
        """Read a text file and return its contents.

        Args:
            path: the file, relative to the root or absolute.
            max_bytes: read at most this many bytes; longer files end with a truncation note.
        """
        real = allowed.resolve(path)
        if real.is_dir():
            raise IsADirectoryError(f"{path!r} is a directory; use list_dir to see its entries")
        fd = _open_checked(real, allowed)
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(max_bytes + 1)
        if _is_binary(data):
            raise ValueError(f"{path!r} is a binary file ({size} bytes); read_file returns text only")
        if len(data) > max_bytes:
            text = data[:max_bytes].decode("utf-8", errors="replace")
            return text + f"\n[truncated: first {max_bytes} of {size} bytes shown]"
        return data.decode("utf-8", errors="replace")

    def list_dir(path: str = ".") -> list[str]:
        """List the entries of a directory, sorted; directories end with "/".

        Args:
            path: the directory, relative to the root or absolute; "." is the root (with
                several roots, "." lists the roots).
        """
        if len(allowed.paths) > 1 and _is_top(path):
            return [f"{r}/" for r in allowed.paths]
        real = allowed.resolve(path)
        if not real.is_dir():
            raise NotADirectoryError(f"{path!r} is a file, not a directory; use read_file")
        entries = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(real))
        if len(entries) > _MAX_LIST:
            return entries[:_MAX_LIST] + [f"... and {len(entries) - _MAX_LIST} more entries"]
        return entries

    def grep(pattern: str, path: str = ".",
             max_matches: Annotated[int, Field(ge=1, le=1000)] = 50) -> list[str]:
        """Search text files for a regular expression; returns matches as "file:line: text".

        Directories are searched recursively, skipping version-control and cache directories,
        binary files and files over 8 MiB.

        Args:
            pattern: a Python regular expression (case-sensitive); escape ( ) [ ] . * + ? with \\.
            path: the file or directory to search, relative to the root or absolute; "."
                searches every root.
            max_matches: stop after this many matching lines.
        """
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}; "
                             "escape special characters with a backslash") from None
        starts = allowed.paths if _is_top(path) else [allowed.resolve(path)]
        files = (f for start in starts for f in _walk(start, allowed))
        matches: list[str] = []
        for n, file in enumerate(files):
            if n >= _MAX_GREP_FILES:
                matches.append(f"... stopped after searching {_MAX_GREP_FILES} files")
                break
            try:
                if file.stat().st_size > _MAX_GREP_FILE:
                    continue
                with open(_open_checked(file.resolve(), allowed), "rb") as f:
                    data = f.read()
            except OSError:
                continue  # unreadable (permissions, vanished): not a match, not a failure
            if _is_binary(data):
                continue
            shown = allowed.display(file.resolve() if file.is_symlink() else file)
            for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
                if rx.search(line):
                    if len(matches) == max_matches:
                        matches.append(f"... more matches not shown (max_matches={max_matches})")
                        return matches
                    text = line.strip()
                    matches.append(f"{shown}:{lineno}: {text[:_MAX_LINE]}")
        return matches

    opts = dict(read_only=True, idempotent=True, limits=_LIMITS)
    return [
        tool(name="read_file", description=f"Read a text file {where} and return its contents.",
             **opts)(read_file),
        tool(name="list_dir", description=f"List the files and directories in a directory {where}.",
             **opts)(list_dir),
        tool(name="grep", description=f'Search text files {where} for a regular expression; '
             'returns "file:line: text" lines.', **opts)(grep),
    ]
