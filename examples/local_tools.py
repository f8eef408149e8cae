"""Tools over real local data: the installed Python packages and the standard library.

Every machine with agentrt installed has both, so these questions have true answers anywhere
(the numbers differ from machine to machine). On first use the tools build a SQLite database,
``<agentrt data dir>/examples/packages.sqlite``, from :mod:`importlib.metadata` and the standard
library's source files; it is rebuilt only when the installed packages or the interpreter change.

The tools return plain typed values (``str``, ``int``, ``float``) so that a small planner can
feed them straight into ``calculator``; name lookups forgive case, ``-`` versus ``_``, quotes and
phrases like "the pydantic package".

Use it from the command line::

    agentrt run --tools-from examples/local_tools.py \\
        "What is the combined size in KB of the pydantic and networkx packages?"

or from Python: ``from local_tools import tools``. The file defines ``TOOLS``, ``tools()`` and
``PLAN_EXAMPLES`` (a worked plan for the planner prompt).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import re
import sqlite3
import sys
import sysconfig
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

from agentrt.config import get_settings
from agentrt.planner import PlanExample
from agentrt.tools import Limits, Tool, tool
from agentrt.tools.builtin import calculator, sqlite_tool

__all__ = ["PLAN_EXAMPLES", "TOOLS", "build_database", "database_path", "tools"]

log = logging.getLogger(__name__)

#: Bump when the tables below change, so an old cached database is rebuilt.
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE packages (
    name TEXT PRIMARY KEY,          -- distribution name as published, e.g. 'pydantic'
    normalized TEXT NOT NULL,       -- PEP 503 form: lower case, runs of -_. as '-'
    version TEXT NOT NULL,
    summary TEXT,
    file_count INTEGER NOT NULL,    -- files listed in the distribution's RECORD
    size_bytes INTEGER NOT NULL,    -- total size of those files on disk
    requires_count INTEGER NOT NULL -- declared requirements (extras included)
);
CREATE TABLE stdlib_modules (
    name TEXT PRIMARY KEY,          -- dotted module name, e.g. 'json.decoder'
    kind TEXT NOT NULL,             -- 'source', 'extension' (C, a shared library) or 'builtin'
    path TEXT,                      -- the file; NULL for builtin modules
    lines INTEGER                   -- lines of Python source; NULL unless kind = 'source'
);
"""

_QUERY_DESCRIPTION = (
    "Run one read-only SQL query on the local packages database and return the rows. Tables: "
    "packages(name, version, summary, file_count, size_bytes, requires_count); "
    "stdlib_modules(name, kind, path, lines)."
)

# Python's own tests are most of the standard library's files and not what anyone asks about.
_SKIP_STDLIB_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages"})


def database_path() -> Path:
    """Where the database lives: ``<data dir>/examples/packages.sqlite``."""
    return get_settings().data_dir / "examples" / "packages.sqlite"


def _normalize_package(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _fingerprint() -> str:
    """What the database's contents depend on: interpreter, stdlib location, installed set."""
    h = hashlib.sha256()
    h.update(f"{SCHEMA_VERSION}\n{sys.version}\n{sys.prefix}\n".encode())
    h.update(sysconfig.get_paths()["stdlib"].encode())
    for line in sorted(f"{d.metadata['Name']}=={d.version}@{d.locate_file('')}"
                       for d in metadata.distributions()):
        h.update(line.encode() + b"\n")
    return h.hexdigest()


def _count_lines(path: Path) -> int:
    data = path.read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _package_rows() -> list[tuple]:
    rows: dict[str, tuple] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name or _normalize_package(name) in rows:
            continue  # the first on sys.path wins, as for imports
        files = dist.files or []
        size = 0
        for f in files:
            try:
                size += os.stat(f.locate()).st_size
            except OSError:
                size += f.size or 0  # listed but gone (or not a plain path): trust RECORD
        rows[_normalize_package(name)] = (
            name, _normalize_package(name), dist.version, dist.metadata["Summary"],
            len(files), size, len(dist.requires or []),
        )
    return list(rows.values())


def _stdlib_rows() -> list[tuple]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    dynload = stdlib / "lib-dynload"
    rows: list[tuple] = []
    for top in sorted(sys.stdlib_module_names):
        if top in sys.builtin_module_names:
            rows.append((top, "builtin", None, None))
        elif (stdlib / top / "__init__.py").is_file():
            for dirpath, dirnames, filenames in os.walk(stdlib / top):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_STDLIB_DIRS)
                rel = Path(dirpath).relative_to(stdlib).parts
                for fn in sorted(filenames):
                    if not fn.endswith(".py"):
                        continue
                    parts = rel if fn == "__init__.py" else (*rel, fn[:-3])
                    path = Path(dirpath, fn)
                    rows.append((".".join(parts), "source", str(path), _count_lines(path)))
        elif (stdlib / f"{top}.py").is_file():
            path = stdlib / f"{top}.py"
            rows.append((top, "source", str(path), _count_lines(path)))
        else:
            ext = sorted(dynload.glob(f"{top}.*.so")) + sorted(dynload.glob(f"{top}.*.pyd"))
            if ext:
                rows.append((top, "extension", str(ext[0]), None))
            # else: not built for this platform (winreg on Linux, ...)
    return rows


def build_database(path: Path | None = None) -> Path:
    """Build the database at ``path`` (default :func:`database_path`), replacing any there.

    Written to a temporary file and renamed into place, so a reader never sees half a database.

    Returns:
        the path written.
    """
    path = path or database_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        conn = sqlite3.connect(tmp)
        try:
            conn.executescript(SCHEMA)
            conn.executemany("INSERT INTO packages VALUES (?, ?, ?, ?, ?, ?, ?)", _package_rows())
            conn.executemany("INSERT INTO stdlib_modules VALUES (?, ?, ?, ?)", _stdlib_rows())
            conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("fingerprint", _fingerprint()), ("python", sys.version.split()[0]),
                ("schema_version", str(SCHEMA_VERSION)),
            ])
            conn.commit()
        finally:
            conn.close()
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; it is no secret
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("built %s", path)
    return path


def _stored_fingerprint(path: Path) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


class _Catalog(NamedTuple):
    # a NamedTuple, not a dataclass: a loader may exec this file without registering it in
    # sys.modules, which dataclasses need
    path: Path
    packages: dict[str, sqlite3.Row]  # by normalized name
    modules: dict[str, sqlite3.Row]  # by dotted name


_lock = threading.Lock()
_catalogs: dict[Path, _Catalog] = {}


def _catalog() -> _Catalog:
    """The database for this process, built or rebuilt first if stale (once per process)."""
    path = database_path()
    with _lock:  # parallel first calls build once
        cat = _catalogs.get(path)
        if cat is None:
            if _stored_fingerprint(path) != _fingerprint():
                build_database(path)
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            conn.row_factory = sqlite3.Row
            try:
                packages = {r["normalized"]: r for r in conn.execute("SELECT * FROM packages")}
                modules = {r["name"]: r for r in conn.execute("SELECT * FROM stdlib_modules")}
            finally:
                conn.close()
            cat = _catalogs[path] = _Catalog(path, packages, modules)
        return cat


_FILLER = re.compile(
    r"^(?:the\s+)?(?:python(?:'s)?\s+)?(?:standard\s+library\s+|stdlib\s+)?(?:module\s+|package\s+)?"
    r"|\s+(?:python\s+)?(?:standard\s+library\s+)?(?:package|library|distribution|module|"
    r"dist)$",
    re.IGNORECASE,
)


def _clean(text: str) -> str:
    text = text.strip().strip("`'\"").strip()
    for _ in range(3):
        text = _FILLER.sub("", text).strip().strip("`'\"").strip()
    return text


def _closest(key: str, names: list[str]) -> tuple[str | None, list[str]]:
    """The one clearly best close match of ``key`` (ratio >= 0.85, 0.05 ahead of the next),
    and the close names to suggest otherwise."""
    scored = sorted(((difflib.SequenceMatcher(None, key, n).ratio(), n) for n in names),
                    reverse=True)
    near = [n for r, n in scored[:5] if r >= 0.5]
    if scored and scored[0][0] >= 0.85 and (len(scored) == 1 or scored[0][0] - scored[1][0] >= 0.05):
        return scored[0][1], near
    return None, near


def _find_package(name: str) -> sqlite3.Row:
    cat = _catalog()
    cleaned = _clean(name)
    key = _normalize_package(re.split(r"\s*(?:[=<>!~;\[]|\s\d)", cleaned, maxsplit=1)[0])
    if key in cat.packages:
        return cat.packages[key]
    best, near = _closest(key, list(cat.packages))
    if best is not None:
        log.debug("package %r taken as %r", name, best)
        return cat.packages[best]
    if cleaned in cat.modules:
        raise ValueError(f"{cleaned!r} is a standard library module, not an installed package; "
                         "use stdlib_module_lines for modules")
    hint = f"close names: {', '.join(cat.packages[n]['name'] for n in near)}" if near else (
        f"{len(cat.packages)} packages are installed; list them with sqlite_query")
    raise ValueError(f"no installed Python package named {name!r}; {hint}")


def _find_module(module: str) -> sqlite3.Row:
    cat = _catalog()
    key = _clean(module).replace("/", ".").replace("\\", ".")
    key = re.sub(r"\.py$", "", key)
    key = re.sub(r"\.__init__$", "", key)
    for candidate in (key, key.lower(), key.replace("-", "_"), key.lower().replace("-", "_")):
        if candidate in cat.modules:
            return cat.modules[candidate]
    best, near = _closest(key.lower(), list(cat.modules))
    if best is not None:
        log.debug("module %r taken as %r", module, best)
        return cat.modules[best]
    if _normalize_package(key) in cat.packages:
        raise ValueError(f"{key!r} is an installed package, not a standard library module; "
                         "use package_file_count or package_size_kb for packages")
    hint = f"close names: {', '.join(near)}" if near else "try a name like 'json.decoder'"
    raise ValueError(f"no standard library module named {module!r}; {hint}")


_LIMITS = Limits(memory="128M", cpu=1, timeout=60)  # the first call may build the database
_OPTS = dict(read_only=True, idempotent=True, limits=_LIMITS)


@tool(**_OPTS)
def package_version(name: str) -> str:
    """Return the installed version of a Python package, e.g. "2.11.7".

    Args:
        name: the package's name, e.g. "pydantic".
    """
    return _find_package(name)["version"]


@tool(**_OPTS)
def package_size_kb(name: str) -> float:
    """Return the total size in KB (1 KB = 1024 bytes) of the files of an installed Python package.

    Args:
        name: the package's name, e.g. "networkx".
    """
    return round(_find_package(name)["size_bytes"] / 1024, 1)


@tool(**_OPTS)
def package_file_count(name: str) -> int:
    """Return how many files an installed Python package has.

    Args:
        name: the package's name, e.g. "anyio".
    """
    return int(_find_package(name)["file_count"])


@tool(**_OPTS)
def stdlib_module_lines(module: str) -> int:
    """Return the number of source lines of a Python standard library module (not of a package).

    Args:
        module: the dotted module name, e.g. "json.decoder"; a package counts its __init__.py.
    """
    row = _find_module(module)
    if row["kind"] != "source":
        raise ValueError(f"{row['name']} is a {row['kind']} module written in C; "
                         "it has no Python source lines")
    return int(row["lines"])


@tool(name="sqlite_query", description=_QUERY_DESCRIPTION, **_OPTS)
def sqlite_query(sql: str) -> list[dict]:
    """Run one read-only SQL query.

    Args:
        sql: one SQLite SELECT statement, e.g. "SELECT name, version FROM packages LIMIT 5".
    """
    # the builtin tool opens, authorizes and time-limits the read-only connection; building it
    # waits for the database, which this module only makes on first use
    return _query_tool().fn(sql=sql)  # type: ignore[misc]


def _query_tool() -> Tool:
    cat = _catalog()
    with _lock:
        t = _query_tools.get(cat.path)
        if t is None:
            t = _query_tools[cat.path] = sqlite_tool(cat.path, description=_QUERY_DESCRIPTION,
                                                     limits=_LIMITS)
        return t


_query_tools: dict[Path, Tool] = {}

#: The example's tools, for ``agentrt run --tools-from examples/local_tools.py``.
TOOLS: list[Tool] = [
    package_version, package_size_kb, package_file_count, stdlib_module_lines, calculator,
    sqlite_query,
]


def tools() -> list[Tool]:
    """The example's tools (a fresh list; the tools themselves are shared)."""
    return list(TOOLS)


#: One worked example for the planner prompt: independent lookups first, arithmetic last.
PLAN_EXAMPLES = [
    PlanExample(
        question="How many more files does the rich package have than the typer package?",
        plan=(
            '1. package_file_count(name="rich")\n'
            '2. package_file_count(name="typer")\n'
            '3. calculator(expression="$1 - $2")\n'
            "4. join()"
        ),
    )
]


if __name__ == "__main__":
    import json

    for question_tool, arg in ((package_version, "pydantic"), (package_size_kb, "networkx"),
                               (package_file_count, "anyio"), (stdlib_module_lines, "json.decoder")):
        print(f"{question_tool.name}({arg!r}) = {json.dumps(question_tool.fn(arg))}")

