"""What eBPF needs on this host, and what is loaded: BCC import, tracefs, status, program listing.

Sources: bpf(2) for ``BPF_PROG_GET_NEXT_ID`` / ``BPF_PROG_GET_FD_BY_ID`` /
``BPF_OBJ_GET_INFO_BY_FD`` and ``struct bpf_prog_info`` (include/uapi/linux/bpf.h); the BCC
set-up facts in shared/notes/sandbox_cgroup.md B.c and B.d (Debian's bcc from the project's
Python through a path file, headers linked at /lib/modules/$(uname -r)/build).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrt.errors import SandboxUnavailable

__all__ = ["DEBIAN_BCC", "TRACEFS", "EbpfStatus", "ebpf_status", "ensure_tracefs", "import_bcc",
           "loaded_programs", "program_ids"]

log = logging.getLogger(__name__)

#: Where tracefs is mounted (BCC reads tracepoint ids there).
TRACEFS = Path("/sys/kernel/tracing")
#: Where Debian's python3-bpfcc puts the bcc package.
DEBIAN_BCC = Path("/usr/lib/python3/dist-packages/bcc")


# --------------------------------------------------------------------------- availability


@dataclass(frozen=True)
class EbpfStatus:
    """Whether this host can run agentrt's eBPF parts, and why not.

    Attributes:
        available: BCC imports, kernel headers and tracefs are present, and this process may
            load BPF programs (root); nothing was loaded to find out.
        detail: one line for humans (``agentrt doctor``).
        missing: what is missing and the command that adds it ("" when available).
    """

    available: bool
    detail: str
    missing: str = ""


def import_bcc() -> Any:
    """Import Debian's ``bcc`` module (``python3-bpfcc``), linked into this venv by scripts/setup.

    Raises:
        SandboxUnavailable: bcc is not importable (names the fix). Never ``pip install bcc``:
            that PyPI name is an unrelated lattice library.
    """
    try:
        import bcc

        return bcc
    except ImportError as exc:
        if DEBIAN_BCC.is_dir():
            raise SandboxUnavailable(
                f"eBPF: Debian's bcc is at {DEBIAN_BCC} but this Python cannot import it ({exc}); "
                "run scripts/setup (it adds a path file pointing at only that package)") from exc
        raise SandboxUnavailable("eBPF: BCC is not installed: apt-get install -y bpfcc-tools python3-bpfcc "
                                 "linux-headers-amd64 && scripts/setup") from exc


def ensure_tracefs() -> None:
    """Mount tracefs at /sys/kernel/tracing when it is absent (root only; BCC needs its ids).

    Raises:
        SandboxUnavailable: tracefs is not mounted and cannot be.
    """
    if (TRACEFS / "events").is_dir():
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"tracefs", str(TRACEFS).encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise SandboxUnavailable(f"eBPF: tracefs is not mounted at {TRACEFS} and mounting it failed "
                                 f"({os.strerror(err)}): mount -t tracefs tracefs {TRACEFS}")
    log.info("mounted tracefs at %s", TRACEFS)


def ebpf_status() -> EbpfStatus:
    """Check, without loading anything, the parts the eBPF monitor and network policy need."""
    headers = Path(f"/lib/modules/{platform.release()}/build")
    if os.geteuid() != 0:
        return EbpfStatus(False, f"not root (uid {os.geteuid()}): loading BPF programs needs CAP_BPF "
                                 "and CAP_SYS_ADMIN", "run agentrt as root")
    try:
        bcc = import_bcc()
    except SandboxUnavailable as exc:
        return EbpfStatus(False, str(exc).removeprefix("eBPF: "),
                          "apt-get install -y bpfcc-tools python3-bpfcc && scripts/setup")
    if not headers.exists():
        return EbpfStatus(False, f"kernel headers missing at {headers} (BCC compiles probes against them)",
                          "apt-get install -y linux-headers-amd64 && scripts/setup   (links them there)")
    if not (TRACEFS / "events").is_dir():
        return EbpfStatus(False, f"tracefs is not mounted at {TRACEFS}", f"mount -t tracefs tracefs {TRACEFS}")
    return EbpfStatus(True, f"bcc {getattr(bcc, '__version__', '?')} from {Path(bcc.__file__).parent}, "
                            f"headers at {headers} -> {os.path.realpath(headers)}")


# --------------------------------------------------------------------------- BPF object listing

_SYS_BPF = 321  # x86_64 (arch/x86/entry/syscalls/syscall_64.tbl)
_BPF_PROG_GET_NEXT_ID, _BPF_PROG_GET_FD_BY_ID, _BPF_OBJ_GET_INFO_BY_FD = 11, 13, 15


def _prog_info(libc: Any, fd: int) -> tuple[int, int, str] | None:
    info = (ctypes.c_uint8 * 256)()
    g = (ctypes.c_uint64 * 16)()
    g[0] = fd | (ctypes.sizeof(info) << 32)  # bpf_fd (u32), info_len (u32)
    g[1] = ctypes.addressof(info)
    if libc.syscall(_SYS_BPF, _BPF_OBJ_GET_INFO_BY_FD, ctypes.byref(g), ctypes.sizeof(g)) != 0:
        return None
    raw = bytes(info)
    return (int.from_bytes(raw[4:8], "little"), int.from_bytes(raw[0:4], "little"),
            raw[64:80].split(b"\0", 1)[0].decode(errors="replace"))


def program_ids(bpf: Any) -> list[int]:
    """Kernel ids of the programs a BCC ``BPF`` object has loaded (x86_64)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    infos = [_prog_info(libc, f.fd) for f in list(bpf.funcs.values())] if bpf is not None else []
    return sorted(i[0] for i in infos if i is not None)


def loaded_programs() -> list[tuple[int, int, str]]:
    """Every BPF program loaded in the kernel now: ``[(id, prog type, name)]``.

    Walks ``BPF_PROG_GET_NEXT_ID`` / ``BPF_PROG_GET_FD_BY_ID`` / ``BPF_OBJ_GET_INFO_BY_FD``
    (bpf(2); ``struct bpf_prog_info``: type at offset 0, id at 4, name[16] at 64), as ``bpftool
    prog show`` does. agentrt's programs are named ``art_*``.

    Raises:
        SandboxUnavailable: not x86_64, or the bpf syscall is refused (not root).
    """
    if platform.machine() != "x86_64":
        raise SandboxUnavailable(f"loaded_programs: the bpf syscall number is known for x86_64 only, "
                                 f"not {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    out: list[tuple[int, int, str]] = []
    start = 0
    while True:
        attr = (ctypes.c_uint32 * 32)()
        attr[0] = start
        if libc.syscall(_SYS_BPF, _BPF_PROG_GET_NEXT_ID, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return out
            raise SandboxUnavailable(f"bpf(BPF_PROG_GET_NEXT_ID): {os.strerror(err)}")
        start = attr[1]
        q = (ctypes.c_uint32 * 32)()
        q[0] = start
        fd = libc.syscall(_SYS_BPF, _BPF_PROG_GET_FD_BY_ID, ctypes.byref(q), ctypes.sizeof(q))
        if fd < 0:  # unloaded between the two calls
            continue
        try:
            info = _prog_info(libc, fd)
            if info is not None:
                out.append(info)
        finally:
            os.close(fd)
