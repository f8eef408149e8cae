"""Versioned memory blocks with compare-and-swap updates (``MemoryStore.blocks``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from agentrt.errors import MemoryConflict
from agentrt.memory_store._types import Block

if TYPE_CHECKING:
    from agentrt.memory_store._store import MemoryStore

__all__ = ["Blocks"]


class Blocks:
    """Versioned memory blocks updated by compare-and-swap (``store.blocks``).

    ``set(label, value, expected_version)`` succeeds only if the block is still at
    ``expected_version`` (0 to create it); otherwise :class:`~agentrt.errors.MemoryConflict`
    is raised and nothing is written, so a stale writer never overwrites a newer value (the
    lost-update bug of a consolidation job writing back an old snapshot). Every version is kept
    in ``block_history``.
    """

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def get(self, label: str) -> Block:
        row = self._store._reader().execute(
            "SELECT label, value, version, updated_at, updated_by FROM blocks WHERE label=?", (label,)).fetchone()
        return Block(*row) if row else Block(label, "", 0)

    def list(self) -> list[Block]:
        rows = self._store._reader().execute(
            "SELECT label, value, version, updated_at, updated_by FROM blocks ORDER BY label").fetchall()
        return [Block(*r) for r in rows]

    def history(self, label: str) -> list[Block]:
        rows = self._store._reader().execute(
            "SELECT label, value, version, updated_at, updated_by FROM block_history WHERE label=? ORDER BY version",
            (label,)).fetchall()
        return [Block(*r) for r in rows]

    def set(self, label: str, value: str, expected_version: int, *, updated_by: str | None = None) -> Block:
        """Write ``value`` as version ``expected_version + 1``; durable on return.

        Raises:
            MemoryConflict: the block is not at ``expected_version`` any more (or already exists
                when ``expected_version`` is 0).
        """
        def op(conn, _op):
            now = time.time()
            row = conn.execute("SELECT version FROM blocks WHERE label=?", (label,)).fetchone()
            actual = row[0] if row else 0
            if actual != expected_version:
                raise MemoryConflict(f"block {label!r} is at version {actual}, not {expected_version}: "
                                     "re-read it, merge, and retry", label=label,
                                     expected_version=expected_version, actual_version=actual)
            new = actual + 1
            conn.execute("INSERT INTO blocks(label, value, version, updated_at, updated_by) VALUES (?,?,?,?,?) "
                         "ON CONFLICT(label) DO UPDATE SET value=excluded.value, version=excluded.version, "
                         "updated_at=excluded.updated_at, updated_by=excluded.updated_by",
                         (label, value, new, now, updated_by))
            conn.execute("INSERT INTO block_history VALUES (?,?,?,?,?)", (label, new, value, now, updated_by))
            return Block(label, value, new, now, updated_by)
        return self._store._write(op)
