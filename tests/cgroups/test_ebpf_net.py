"""Network policy in the kernel: cgroup connect4/6 + sendmsg4/6 programs on real sockets.

Each check runs a real process in a real call cgroup against real local listeners. Needs root,
a cgroup v2 tree and BCC; skips with the reason otherwise.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

import pytest

from agentrt.cgroups import CgroupDriver, NetPolicy, ebpf_status, parse_allow, shim_argv
from agentrt.errors import SandboxUnavailable

PY = sys.executable

#: Tries each destination and prints {name: "ok" | errno name}; "child" repeats it in a forked
#: grandchild (sh -> python), to show the policy is inherited.
PROBE = textwrap.dedent("""
    import errno, json, socket, sys
    def tcp(fam, addr):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(addr); return "ok"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e))
        finally:
            s.close()
    def udp(addr):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(b"x", addr); return "ok"
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e))
    a, b = int(sys.argv[1]), int(sys.argv[2])
    print(json.dumps({"tcp4_a": tcp(socket.AF_INET, ("127.0.0.1", a)), "tcp4_b": tcp(socket.AF_INET, ("127.0.0.1", b)),
                      "tcp6_mapped_a": tcp(socket.AF_INET6, ("::ffff:127.0.0.1", a)),
                      "tcp6_b": tcp(socket.AF_INET6, ("::1", b)), "udp4_b": udp(("127.0.0.1", b))}))
""")


@pytest.fixture(scope="module")
def net():
    st = ebpf_status()
    if not st.available:
        pytest.skip(f"eBPF unavailable here: {st.detail} (fix: {st.missing})")
    try:
        pol = NetPolicy().start()
    except SandboxUnavailable as exc:
        pytest.skip(f"eBPF network policy cannot load here: {exc}")
    yield pol
    pol.close()


@pytest.fixture(scope="module")
def driver():
    try:
        d = CgroupDriver()
    except SandboxUnavailable as exc:
        pytest.skip(f"cgroups unusable here: {exc}")
    if d.layout.v2 is None:
        d.close()
        pytest.skip("no cgroup v2 tree to attach cgroup socket programs to")
    yield d
    d.close()


@pytest.fixture(scope="module")
def ports():
    """Two TCP listeners (IPv4 and IPv6 loopback on the same port numbers where possible)."""
    socks = []
    out = []
    for _ in range(2):
        s4 = socket.socket(socket.AF_INET)
        s4.bind(("127.0.0.1", 0))
        s4.listen(64)
        port = s4.getsockname()[1]
        s6 = socket.socket(socket.AF_INET6)
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s6.bind(("::1", port))
            s6.listen(64)
            socks.append(s6)
        except OSError:
            s6.close()
        socks.append(s4)
        out.append(port)
    yield tuple(out)
    for s in socks:
        s.close()


def probe(call, a: int, b: int, child: bool = False) -> dict[str, str]:
    argv = [PY, "-c", PROBE, str(a), str(b)]
    if child:  # a grandchild: sh forks python
        argv = ["/bin/sh", "-c", 'exec_it() { "$@"; }; exec_it "$0" "$@"; :', *argv]
    r = subprocess.run(shim_argv(call.procs_files, argv), check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_without_policy_everything_connects(driver, ports):
    a, b = ports
    with driver.session() as s, s.call() as call:
        got = probe(call, a, b)
    assert got["tcp4_a"] == got["tcp4_b"] == got["tcp6_mapped_a"] == got["udp4_b"] == "ok"


def test_deny_all_fails_every_connect_at_once_with_eperm(net, driver, ports):
    a, b = ports
    with driver.session() as s, s.call() as call:
        att = net.attach(call.v2_dir, [])
        got = probe(call, a, b)
        denied, allowed = att.close()
    assert set(got.values()) == {"EPERM"}, got
    assert (denied, allowed) == (5, 0)


def test_allow_one_port_lets_only_that_port_through(net, driver, ports):
    a, b = ports
    with driver.session() as s, s.call() as call, net.attach(call.v2_dir, [f"127.0.0.1:{a}"]) as att:
        got = probe(call, a, b)
        assert att.counts() == (3, 2)
    assert got == {"tcp4_a": "ok", "tcp4_b": "EPERM", "tcp6_mapped_a": "ok", "tcp6_b": "EPERM", "udp4_b": "EPERM"}


def test_policy_is_inherited_by_children_and_by_calls_of_a_session(net, driver, ports):
    a, b = ports
    with driver.session() as s:
        with s.call() as call, net.attach(call.v2_dir, [f"127.0.0.1:{b}"]):
            assert probe(call, a, b, child=True)["tcp4_a"] == "EPERM"
            assert probe(call, a, b, child=True)["tcp4_b"] == "ok"
        with net.attach(s.dirs["v2"], [f"127.0.0.1:{a}"]), s.call() as call:  # session-wide
            got = probe(call, a, b)
            assert (got["tcp4_a"], got["tcp4_b"]) == ("ok", "EPERM")
            with net.attach(call.v2_dir, []):  # a call's own policy narrows its session's
                assert probe(call, a, b)["tcp4_a"] == "EPERM"
            with net.attach(call.v2_dir, [f"127.0.0.1:{a}", f"127.0.0.1:{b}"]):  # ... never widens it
                got = probe(call, a, b)
                assert (got["tcp4_a"], got["tcp4_b"]) == ("ok", "EPERM")
            assert probe(call, a, b)["tcp4_a"] == "ok"  # detached: the session's policy again


def test_policy_is_gone_once_detached(net, driver, ports):
    a, b = ports
    with driver.session() as s, s.call() as call:
        att = net.attach(call.v2_dir, [])
        assert probe(call, a, b)["tcp4_a"] == "EPERM"
        att.close()
        att.close()  # idempotent
        assert probe(call, a, b)["tcp4_a"] == "ok"


def test_allow_list_entries_parse_and_resolve():
    got = {(str(e.addr), e.port) for e in parse_allow(["127.0.0.1:80", "[::1]:443", "10.0.0.1:*"])}
    assert got == {("127.0.0.1", 80), ("::1", 443), ("10.0.0.1", 0)}
    assert ("127.0.0.1", 8080) in {(str(e.addr), e.port) for e in parse_allow(["localhost:8080"])}
    for bad in ("127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":80", "no-such-host.invalid:80"):
        with pytest.raises(ValueError):
            parse_allow([bad])
