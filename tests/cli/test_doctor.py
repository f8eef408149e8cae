"""`agentrt doctor` and `agentrt engine`: classification of what a host has, and exit codes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from agentrt.cli import app
from agentrt.cli._doctor import MISSING, Check, cgroup_layout

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE_V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_hybrid_host_with_hugetlb_only_v2_counts_as_hybrid() -> None:
    kind, detail = cgroup_layout(HYBRID, lambda mp: "hugetlb\n")
    assert kind == "hybrid"
    assert "memory" in detail and "/sys/fs/cgroup/unified" in detail and "hugetlb" in detail


def test_v2_with_memory_cpu_pids_counts_as_v2() -> None:
    kind, detail = cgroup_layout(PURE_V2, lambda mp: "cpuset cpu io memory pids\n")
    assert kind == "v2" and "memory" in detail


def test_v2_without_controllers_and_no_v1_is_none() -> None:
    assert cgroup_layout(PURE_V2, lambda mp: "")[0] == "none"
    assert cgroup_layout("", lambda mp: None)[0] == "none"


def _fake_checks(status: str) -> list[Check]:
    return [Check("model parts", "ok", "fine"), Check("bubblewrap", status, "bwrap absent",
                                                     "apt-get install -y bubblewrap")]


@pytest.mark.parametrize(("strict", "code"), [(False, 0), (True, 1)])
def test_doctor_exits_nonzero_only_when_strict(
    monkeypatch: pytest.MonkeyPatch, strict: bool, code: int
) -> None:
    monkeypatch.setattr("agentrt.cli._doctor.run_checks", lambda settings, engine: _fake_checks(MISSING))
    result = CliRunner().invoke(app, ["doctor", "--no-engine"] + (["--strict"] if strict else []))
    assert result.exit_code == code, result.output
    assert "apt-get install -y bubblewrap" in result.output


def test_doctor_runs_every_real_check_without_the_engine() -> None:
    result = CliRunner().invoke(app, ["doctor", "--no-engine"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for part in ("model parts", "model assembled", "local engine", "bubblewrap", "cgroups",
                 "BCC", "kernel headers", "container engine", "RAPL"):
        assert part in result.output
