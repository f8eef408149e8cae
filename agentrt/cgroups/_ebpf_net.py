"""Network policy in the kernel: cgroup connect4/6 and sendmsg4/6 programs, per call or session.

One BPF object per runtime holds four ``BPF_PROG_TYPE_CGROUP_SOCK_ADDR`` programs (one function
per attach type: BCC caches ``load_func`` by name, so one function cannot serve two types) and
the policy maps. `NetPolicy.attach` attaches the four programs to a v2 cgroup directory (a call's,
or a session's) and writes its policy, keyed by that directory's cgroup id:

- ``connect()`` on IPv4/IPv6 sockets (TCP, and UDP ``connect``) and ``sendto``/``sendmsg`` with
  a destination on UDP sockets are allowed only to the listed ``host:port`` pairs; every other
  one fails at once with ``EPERM`` (the program returns 0). ``host:*`` allows every port of a
  host; an empty list denies all. IPv4-mapped IPv6 destinations (``::ffff:a.b.c.d``) are checked
  as IPv4.
- Processes the call forks are in its cgroup, so they inherit the policy; the call cannot
  remove or widen it (no write access to cgroupfs, no CAP_BPF in the sandbox, and any program
  attached below would still be this one, which checks every policy above it).
- The program checks the policy of the current cgroup and of each ancestor
  (``bpf_get_current_ancestor_cgroup_id``); every one found must allow the destination. So a
  session-level policy covers every call below it, and a call's own policy can only narrow it.
  Programs are attached with ``BPF_F_ALLOW_OVERRIDE``, so a call's attachment replaces its
  session's program for the call (one program runs per connect; it still checks both policies).
- Host names are resolved once, when the policy is attached (``getaddrinfo``); the call itself
  gets no DNS unless its resolver is listed (e.g. ``"127.0.0.53:53"``).

Not covered by these hooks: AF_UNIX sockets (abstract ones in the host network namespace stay
reachable; path sockets are hidden by the sandbox's mounts), ``bind``/``listen``, and raw sockets
(which need CAP_NET_RAW, dropped in the sandbox).

`NetAttachment.close` detaches the programs and deletes the policy (do it before removing the
cgroup); programs attached with the legacy ``BPF_PROG_ATTACH`` (as BCC does) otherwise outlive
the process until the directory is removed (shared/notes/sandbox_cgroup.md B.c).

Sources: include/uapi/linux/bpf.h (``struct bpf_sock_addr``, ``user_port`` in network byte
order), bpf-helpers(7), and the measurements in shared/notes/sandbox_cgroup.md B.c.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentrt.cgroups._ebpf_sys import (
    ebpf_status,
    ensure_tracefs,
    import_bcc,
    program_ids,
)
from agentrt.errors import SandboxError, SandboxUnavailable

__all__ = ["NetAttachment", "NetPolicy", "parse_allow", "shared_net_policy"]

log = logging.getLogger(__name__)

#: bpf(2) attach flag: a descendant cgroup may attach its own program in place of this one.
_BPF_F_ALLOW_OVERRIDE = 1
#: Ancestor levels searched for a policy (a cgroup deeper than this under the v2 root is not).
MAX_LEVELS = 16

_PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <linux/in.h>

struct policy_t { u64 denied; u64 allowed; };
struct key4_t { u64 owner; u32 addr; u32 port; };
struct key6_t { u64 owner; u32 addr[4]; u32 port; u32 pad; };

BPF_HASH(policy, u64, struct policy_t, %(max_policies)d);
BPF_HASH(allow4, struct key4_t, u8, %(max_entries)d);
BPF_HASH(allow6, struct key6_t, u8, %(max_entries)d);

static __always_inline int allowed4(u64 owner, u32 addr, u32 port) {
    struct key4_t k;
    __builtin_memset(&k, 0, sizeof(k));
    k.owner = owner; k.addr = addr; k.port = port;
    if (allow4.lookup(&k)) return 1;
    k.port = 0;
    return allow4.lookup(&k) != 0;
}

static __always_inline int allowed6(u64 owner, u32 a0, u32 a1, u32 a2, u32 a3, u32 port) {
    struct key6_t k;
    __builtin_memset(&k, 0, sizeof(k));
    k.owner = owner; k.addr[0] = a0; k.addr[1] = a1; k.addr[2] = a2; k.addr[3] = a3; k.port = port;
    if (allow6.lookup(&k)) return 1;
    k.port = 0;
    return allow6.lookup(&k) != 0;
}

/* Every policy on the way from the current cgroup up to the root must allow the destination
 * (a call's policy narrows its session's, never widens it); none found: deny (fail closed).
 * The verdict is counted on the innermost policy. */
static __always_inline int check(int v4, u32 a0, u32 a1, u32 a2, u32 a3, u32 port) {
    struct policy_t *inner = 0;
    int ok = 1;
    u64 id = bpf_get_current_cgroup_id();
    struct policy_t *p = policy.lookup(&id);
    if (p) {
        inner = p;
        if (!(v4 ? allowed4(id, a3, port) : allowed6(id, a0, a1, a2, a3, port))) ok = 0;
    }
    #pragma unroll
    for (int lvl = %(max_levels)d; lvl >= 0; lvl--) {
        u64 a = bpf_get_current_ancestor_cgroup_id(lvl);
        if (a == 0 || a == id) continue;
        p = policy.lookup(&a);
        if (!p) continue;
        if (!inner) inner = p;
        if (!(v4 ? allowed4(a, a3, port) : allowed6(a, a0, a1, a2, a3, port))) ok = 0;
    }
    if (!inner) return 0;
    if (ok) __sync_fetch_and_add(&inner->allowed, 1);
    else __sync_fetch_and_add(&inner->denied, 1);
    return ok;
}

static __always_inline int check4(struct bpf_sock_addr *ctx) {
    return check(1, 0, 0, 0, ctx->user_ip4, bpf_ntohs((u16)ctx->user_port));
}

static __always_inline int check6(struct bpf_sock_addr *ctx) {
    u32 port = bpf_ntohs((u16)ctx->user_port);
    u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
    if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff))  /* ::ffff:a.b.c.d is checked as IPv4 */
        return check(1, 0, 0, 0, a3, port);
    return check(0, a0, a1, a2, a3, port);
}

int art_connect4(struct bpf_sock_addr *ctx) { return check4(ctx); }
int art_sendmsg4(struct bpf_sock_addr *ctx) { return check4(ctx); }
int art_connect6(struct bpf_sock_addr *ctx) { return check6(ctx); }
int art_sendmsg6(struct bpf_sock_addr *ctx) { return check6(ctx); }
"""

#: function -> BCC attach type name (``bcc.BPFAttachType``).
_HOOKS = {"art_connect4": "CGROUP_INET4_CONNECT", "art_connect6": "CGROUP_INET6_CONNECT",
          "art_sendmsg4": "CGROUP_UDP4_SENDMSG", "art_sendmsg6": "CGROUP_UDP6_SENDMSG"}


@dataclass(frozen=True)
class AllowEntry:
    """One resolved allow-list entry: an address (IPv4 or IPv6) and a port (0 = any)."""

    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    source: str = field(default="", compare=False)


def parse_allow(entries: Sequence[str]) -> list[AllowEntry]:
    """Resolve ``"host:port"`` strings (``"[v6]:port"``, ``"host:*"`` for any port).

    Raises:
        ValueError: an entry is not ``host:port``, the port is not 1-65535 or ``*``, or the host
            does not resolve.
    """
    out: list[AllowEntry] = []
    for e in entries:
        host, sep, port_s = e.strip().rpartition(":")
        if not sep or not host:
            raise ValueError(f"network allow-list entry {e!r} is not host:port")
        host = host.strip("[]")
        if port_s == "*":
            port = 0
        elif port_s.isdigit() and 1 <= int(port_s) <= 65535:
            port = int(port_s)
        else:
            raise ValueError(f"network allow-list entry {e!r}: the port must be 1-65535 or *")
        try:
            addrs = {ipaddress.ip_address(host)}
        except ValueError:
            try:
                infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            except socket.gaierror as exc:
                raise ValueError(f"network allow-list entry {e!r}: {host!r} does not resolve ({exc})") from exc
            addrs = {ipaddress.ip_address(i[4][0]) for i in infos}
        out += [AllowEntry(a, port, e) for a in sorted(addrs, key=str)]
    return out


class NetAttachment:
    """A policy attached to one cgroup directory; `close` detaches it (idempotent).

    Attributes:
        cgroup_dir: the v2 directory the programs are attached to.
        cgroup_id: its id (the policy's key).
        allow: the resolved entries.
    """

    def __init__(self, policy: NetPolicy, cgroup_dir: Path, cgroup_id: int, fd: int,
                 allow: list[AllowEntry], keys: list[tuple[bytes, Any]]) -> None:
        self.policy = policy
        self.cgroup_dir = cgroup_dir
        self.cgroup_id = cgroup_id
        self.allow = allow
        self._fd: int | None = fd
        self._keys = keys
        self._final: tuple[int, int] | None = None

    def counts(self) -> tuple[int, int]:
        """``(denied, allowed)``: connects and sendmsgs refused and let through while this was the
        innermost policy of the connecting process."""
        if self._final is not None:
            return self._final
        return self.policy._counts(self.cgroup_id)

    def close(self) -> tuple[int, int]:
        """Detach the programs and delete the policy; return the final `counts`."""
        if self._fd is None:
            return self._final or (0, 0)
        self._final = self.counts()
        self.policy._detach(self)
        return self._final

    def __enter__(self) -> NetAttachment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NetPolicy:
    """The runtime's cgroup socket programs; `attach` puts an allow-list on a v2 directory.

    Example::

        with NetPolicy() as net, net.attach(call.v2_dir, ["127.0.0.1:8080"]):
            ... a connect to 127.0.0.1:8080 succeeds, any other fails with EPERM ...

    Raises (from `start`):
        SandboxUnavailable: BCC, headers or root are missing, or the programs did not load.
    """

    def __init__(self, max_policies: int = 4096, max_entries: int = 65536) -> None:
        self.max_policies = max_policies
        self.max_entries = max_entries
        self._bpf: Any = None
        self._fns: dict[str, Any] = {}
        self._types: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._attached: set[NetAttachment] = set()

    @property
    def running(self) -> bool:
        return self._bpf is not None

    def program_ids(self) -> list[int]:
        """Kernel ids of the four loaded programs (empty when closed)."""
        return program_ids(self._bpf)

    def start(self) -> NetPolicy:
        """Compile and load the four programs (~0.3-1 s); nothing is attached yet."""
        if self._bpf is not None:
            return self
        status = ebpf_status()
        if not status.available and "tracefs" in status.detail:
            ensure_tracefs()
            status = ebpf_status()
        if not status.available:
            raise SandboxUnavailable(f"eBPF: {status.detail}; fix: {status.missing}")
        bcc = import_bcc()
        text = _PROGRAM % {"max_policies": self.max_policies, "max_entries": self.max_entries,
                           "max_levels": MAX_LEVELS}
        try:
            b = bcc.BPF(text=text.encode(), cflags=["-w"])
            for fn, at in _HOOKS.items():
                self._types[fn] = getattr(bcc.BPFAttachType, at)
                self._fns[fn] = b.load_func(fn.encode(), bcc.BPF.CGROUP_SOCK_ADDR, attach_type=self._types[fn])
        except Exception as exc:
            raise SandboxUnavailable(f"eBPF: the network policy programs did not load: {exc}") from exc
        self._bpf = b
        return self

    def attach(self, cgroup_dir: str | os.PathLike[str], allow: Sequence[str]) -> NetAttachment:
        """Allow only ``allow`` (``host:port`` strings; empty = deny all) from ``cgroup_dir`` down.

        Raises:
            ValueError: an entry does not parse or resolve.
            SandboxError: the policy is not started, or the programs could not be attached (e.g.
                another exclusive program is attached there already).
        """
        if self._bpf is None:
            raise SandboxError("the eBPF network policy is not started (NetPolicy.start())")
        entries = parse_allow(allow)
        d = Path(cgroup_dir)
        cgid = d.stat().st_ino
        b = self._bpf
        keys: list[tuple[bytes, Any]] = []
        with self._lock:
            b[b"policy"][b[b"policy"].Key(cgid)] = b[b"policy"].Leaf()
            for e in entries:
                if isinstance(e.addr, ipaddress.IPv4Address):
                    t = b[b"allow4"]
                    k = t.Key()
                    k.owner, k.addr, k.port = cgid, int.from_bytes(e.addr.packed, "little"), e.port
                    t[k] = t.Leaf(1)
                    keys.append((b"allow4", k))
                else:
                    t = b[b"allow6"]
                    k = t.Key()
                    k.owner, k.port = cgid, e.port
                    for i in range(4):  # network-order words, as the kernel stores user_ip6
                        k.addr[i] = int.from_bytes(e.addr.packed[4 * i:4 * i + 4], "little")
                    t[k] = t.Leaf(1)
                    keys.append((b"allow6", k))
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            done: list[str] = []
            try:
                for fn in _HOOKS:
                    import_bcc().BPF.attach_func(self._fns[fn], fd, self._types[fn], _BPF_F_ALLOW_OVERRIDE)
                    done.append(fn)
            except Exception as exc:
                for fn in done:
                    self._detach_one(fn, fd)
                os.close(fd)
                self._forget(cgid, keys)
                raise SandboxError(f"cannot attach the network policy to {d}: {exc}") from exc
            att = NetAttachment(self, d, cgid, fd, entries, keys)
            self._attached.add(att)
        return att

    def _detach_one(self, fn: str, fd: int) -> None:
        try:
            import_bcc().BPF.detach_func(self._fns[fn], fd, self._types[fn])
        except Exception as exc:  # the directory may be gone already: nothing stays attached then
            log.debug("detach %s: %s", fn, exc)

    def _forget(self, cgid: int, keys: list[tuple[bytes, Any]]) -> None:
        b = self._bpf
        for name, k in keys:
            try:
                del b[name][k]
            except KeyError:
                pass
        try:
            del b[b"policy"][b[b"policy"].Key(cgid)]
        except KeyError:
            pass

    def _counts(self, cgid: int) -> tuple[int, int]:
        try:
            leaf = self._bpf[b"policy"][self._bpf[b"policy"].Key(cgid)]
        except (KeyError, TypeError):
            return (0, 0)
        return int(leaf.denied), int(leaf.allowed)

    def _detach(self, att: NetAttachment) -> None:
        with self._lock:
            fd, att._fd = att._fd, None
            if fd is None:
                return
            if self._bpf is not None:
                for fn in _HOOKS:
                    self._detach_one(fn, fd)
                self._forget(att.cgroup_id, att._keys)
            os.close(fd)
            self._attached.discard(att)

    def close(self) -> None:
        """Detach every attachment still open and unload the programs. Idempotent."""
        for att in list(self._attached):
            att.close()
        b, self._bpf = self._bpf, None
        if b is not None:
            b.cleanup()
        self._fns.clear()

    def __enter__(self) -> NetPolicy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


_shared: NetPolicy | None = None
_shared_error: str | None = None
_shared_lock = threading.Lock()


def shared_net_policy() -> tuple[NetPolicy | None, str | None]:
    """This process's one `NetPolicy`, loaded on first use: ``(policy, None)`` or ``(None, why)``.

    Closed at interpreter exit (atexit): every attachment is detached, the programs unloaded.
    """
    global _shared, _shared_error
    with _shared_lock:
        if _shared is None and _shared_error is None:
            pol = NetPolicy()
            try:
                pol.start()
            except SandboxUnavailable as exc:
                _shared_error = str(exc)
                log.info("eBPF network policy off: %s", exc)
            else:
                import atexit

                atexit.register(pol.close)
                _shared = pol
        return _shared, _shared_error
