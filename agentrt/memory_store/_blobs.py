"""Content-addressed blob files for long texts: ``<root>/ab/cdef...`` named by their sha256.

Written tmp -> fsync -> rename -> fsync(dir) *before* the row that references them commits, so a
committed row never points at a missing file; a crash between the two leaves an unreferenced file
that :meth:`BlobStore.gc` removes later. The name is the checksum, so a read verifies the bytes.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from agentrt.errors import MemoryStoreError

__all__ = ["BlobStore"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Immutable blobs under ``root``, addressed by the hex sha256 of their bytes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha[2:]

    def put(self, data: bytes) -> str:
        """Store ``data`` durably (fsynced) and return its sha256; storing the same bytes twice is free."""
        sha = hashlib.sha256(data).hexdigest()
        dest = self.path(sha)
        if dest.is_file() and dest.stat().st_size == len(data):
            return sha
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        return sha

    def get(self, sha: str) -> bytes:
        """The blob's bytes.

        Raises:
            MemoryStoreError: the file is missing or its bytes do not match its sha256 (corrupt).
        """
        try:
            data = self.path(sha).read_bytes()
        except OSError as exc:
            raise MemoryStoreError(f"blob {sha} is missing: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != sha:
            raise MemoryStoreError(f"blob {sha} is corrupt (sha256 mismatch)")
        return data

    def all(self) -> dict[str, int]:
        """Every blob file: sha256 -> size in bytes (temporary files excluded)."""
        out: dict[str, int] = {}
        if not self.root.is_dir():
            return out
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for f in sub.iterdir():
                    if not f.name.startswith("."):
                        out[sub.name + f.name] = f.stat().st_size
        return out

    def gc(self, referenced: set[str], *, grace_s: float = 3600.0) -> tuple[int, int]:
        """Delete blob files no row references and older than ``grace_s`` seconds.

        The grace period protects a blob written by a writer whose row has not committed yet.
        Returns ``(files removed, bytes freed)``.
        """
        removed = freed = 0
        now = time.time()
        if not self.root.is_dir():
            return 0, 0
        for sub in self.root.iterdir():
            if not (sub.is_dir() and len(sub.name) == 2):
                continue
            for f in sub.iterdir():
                st = f.stat()
                if now - st.st_mtime < grace_s:
                    continue
                if f.name.startswith(".") or (sub.name + f.name) not in referenced:
                    f.unlink()
                    removed += 1
                    freed += st.st_size
        return removed, freed
