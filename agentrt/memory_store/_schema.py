"""SQLite schema and connection set-up of the memory store (the one source of truth).

Pragmas (measured in ../shared/notes/memory_sleeptime.md section 5): WAL journal; ``synchronous``
NORMAL (durability ``process``) or FULL (durability ``power``); busy_timeout 5 s; mmap 256 MiB;
cache 64 MiB; ``journal_size_limit`` 64 MiB.

What each durability mode guarantees (SQLite docs, "PRAGMA synchronous" and "WAL"):

* ``process`` (WAL + NORMAL): a transaction is in the WAL file (the OS page cache) when commit
  returns, so it survives the *process* being killed at any point (tested with SIGKILL). After an
  OS crash or power loss the most recent transactions may roll back; the database is never
  corrupted. The WAL is fsynced only at checkpoints.
* ``power`` (WAL + FULL): the WAL is fsynced on every commit, so a returned commit survives power
  loss too, if the disk honours flushes. Costs one fsync per commit (about 2.7 ms on this VM), which
  group commit amortises over every append waiting at that moment. Power loss cannot be tested
  on these machines; this guarantee is SQLite's, not measured here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["EDGE_TYPES", "SCHEMA_VERSION", "connect", "create_schema"]

SCHEMA_VERSION = 1
#: Edge types of the episodic graph. ``next`` is implicit in ``events.prev_id`` (no row per append).
EDGE_TYPES = ("next", "ref", "causal", "derived_from", "about")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events(
    id          INTEGER PRIMARY KEY,      -- rowid: increases with every append, never reused
    session     TEXT NOT NULL,
    ts          REAL NOT NULL,            -- world time of the event (unix seconds)
    recorded_at REAL NOT NULL,            -- system time it was stored (unix seconds)
    expired_at  REAL,                     -- system time it was forgotten (superseded), else NULL
    role        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    text        TEXT NOT NULL,            -- the full text, or a preview when blob is set
    blob        TEXT,                     -- sha256 of the full text in the blob store
    size        INTEGER NOT NULL,         -- bytes of the full UTF-8 text
    emb         BLOB,                     -- INT8 codes, dim bytes
    emb_scale   REAL,                     -- per-vector scale: vector = scale * codes
    prev_id     INTEGER,                  -- previous event of the same session
    meta        TEXT                      -- JSON object or NULL
);
CREATE INDEX IF NOT EXISTS events_session_ts ON events(session, ts);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind);
CREATE INDEX IF NOT EXISTS events_prev ON events(prev_id);
CREATE VIRTUAL TABLE IF NOT EXISTS events_fts USING fts5(text, content='', tokenize='unicode61');
CREATE TABLE IF NOT EXISTS edges(
    id          INTEGER PRIMARY KEY,
    src         INTEGER NOT NULL REFERENCES events(id),
    dst         INTEGER NOT NULL REFERENCES events(id),
    type        TEXT NOT NULL CHECK (type IN ('ref', 'causal', 'derived_from', 'about')),
    valid_from  REAL,                     -- world time the relation starts to hold (NULL: always)
    valid_to    REAL,                     -- world time it stops holding (NULL: still holds)
    recorded_at REAL NOT NULL,            -- system time this row was written
    expired_at  REAL,                     -- system time it was superseded (NULL: current belief)
    meta        TEXT
);
CREATE INDEX IF NOT EXISTS edges_src ON edges(src, type);
CREATE INDEX IF NOT EXISTS edges_dst ON edges(dst, type);
CREATE TABLE IF NOT EXISTS blocks(
    label      TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT
);
CREATE TABLE IF NOT EXISTS block_history(
    label      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    updated_by TEXT,
    PRIMARY KEY (label, version)
);
"""


def connect(path: Path, *, durability: str, readonly: bool = False) -> sqlite3.Connection:
    """Open ``path`` with the store's pragmas; autocommit mode (transactions are explicit)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'power' else 'NORMAL'}")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA mmap_size=268435456")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA journal_size_limit=67108864")
    # checkpoint every ~40 MB of WAL instead of ~4 MB: a checkpoint inside a commit stalls it for
    # milliseconds (measured: append p99 9 ms at the default 1,000 pages, 0.3 ms at 10,000)
    conn.execute("PRAGMA wal_autocheckpoint=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
