"""Energy: the CPU-time x TDP estimate from measured CPU seconds, cgroup CPU time, RAPL counters."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentrt.tracing import (
    JOULES_PER_OUTPUT_TOKEN,
    MEMORY_WATTS_PER_GB,
    EnergyMeter,
    Rapl,
    TraceStore,
    cgroup_cpu_seconds,
    cpu_power,
    energy_for_cpu_seconds,
    process_cpu_seconds,
)
from agentrt.tracing import (
    semconv as sc,
)


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1


def test_estimate_follows_the_formula_with_measured_cpu_seconds() -> None:
    t0 = os.times()
    with EnergyMeter(memory_bytes=2_000_000_000, rapl=Rapl("/nonexistent")) as m:
        _burn(0.3)
    t1 = os.times()
    e = m.energy
    assert e is not None and e.method == "estimated:cpu-tdp"
    own = (t1.user - t0.user) + (t1.system - t0.system)
    assert m.cpu_seconds >= 0.25 and m.cpu_seconds == pytest.approx(own, abs=0.03)
    w = cpu_power().watts_per_thread
    expect_cpu = m.cpu_seconds * w
    expect_mem = 2.0 * MEMORY_WATTS_PER_GB * m.wall_seconds
    assert e.cpu_joules == pytest.approx(expect_cpu) and e.memory_joules == pytest.approx(expect_mem)
    assert e.joules == pytest.approx(expect_cpu + expect_mem)
    assert energy_for_cpu_seconds(2.0, watts_per_thread=5.0).joules == 10.0


def test_process_cpu_seconds_of_another_process() -> None:
    code = "import time,sys\nend=time.process_time()+0.3\nwhile time.process_time()<end: pass\nprint(time.process_time(), flush=True)\nsys.stdin.read()"
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        own = float(p.stdout.readline())  # the child's own count, before it idles on stdin
        assert process_cpu_seconds(p.pid) == pytest.approx(own, abs=0.05)
    finally:
        p.communicate("")
    with pytest.raises(ProcessLookupError):
        process_cpu_seconds(p.pid)


def _new_cgroup() -> Path:
    for base in (Path("/sys/fs/cgroup/cpuacct"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if not (base / "cgroup.procs").exists():
            continue
        path = base / f"agentrt-trace-test-{os.getpid()}"
        try:
            path.mkdir()
        except OSError:
            continue
        if (path / "cpuacct.usage").exists() or (path / "cpu.stat").exists():
            return path
        path.rmdir()
    pytest.skip("no writable cgroup with CPU accounting here (needs root and cgroup v1 cpuacct or v2)")


def test_cgroup_cpu_seconds_of_a_call_and_its_energy() -> None:
    cg = _new_cgroup()
    code = "import sys,time\nsys.stdin.readline()\nend=time.process_time()+0.3\nwhile time.process_time()<end: pass\nprint(time.process_time())"
    try:
        before = cgroup_cpu_seconds(cg)
        p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        (cg / "cgroup.procs").write_text(str(p.pid))  # move it in before it starts burning
        out, _ = p.communicate("go\n")
        used = cgroup_cpu_seconds(cg) - before
        # the interpreter's start-up may run before the move (its CPU time is in `out`, not in the
        # cgroup): under load that is tens of ms, so compare within 0.1 s
        assert used == pytest.approx(float(out), abs=0.1) and used >= 0.3
        e = energy_for_cpu_seconds(used)
        assert e.joules == pytest.approx(used * cpu_power().watts_per_thread)
    finally:
        cg.rmdir()
    with pytest.raises(FileNotFoundError, match="not a cgroup"):
        cgroup_cpu_seconds("/tmp")


def test_cpu_power_from_the_tdp_table_or_the_fallback(tmp_path: Path) -> None:
    known = tmp_path / "known"
    known.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7763 64-Core Processor\n")
    unknown = tmp_path / "unknown"
    unknown.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n")
    assert cpu_power(str(known)).watts_per_thread == pytest.approx(280 / 128)
    p = cpu_power(str(unknown))
    assert p.watts_per_thread == 4.0 and "CodeCarbon" in p.source


def test_rapl_counters_with_wraparound_give_measured_energy(tmp_path: Path) -> None:
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000000\n")
    (zone / "energy_uj").write_text("999000000\n")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-zone (core): not counted
    rapl = Rapl(tmp_path)
    assert rapl.available and [z.name for z in rapl.zones] == ["intel-rapl:0"]
    assert rapl.read_joules() == 0.0
    (zone / "energy_uj").write_text("4000000\n")  # wrapped: 1 J to the top + 4 J
    assert rapl.read_joules() == pytest.approx(5.0)
    with EnergyMeter(rapl=rapl) as m:
        _burn(0.1)
        (zone / "energy_uj").write_text("24000000\n")  # 20 J for the whole package
    assert m.energy.method == "measured"
    assert 0 < m.energy.joules <= 20.0  # this process's share of the node's CPU time
    assert not Rapl(tmp_path / "none").available
    with pytest.raises(FileNotFoundError):
        Rapl(tmp_path / "none").read_joules()


def test_remote_llm_spans_get_a_token_estimate(store: TraceStore) -> None:
    tracer = store.tracer()
    with tracer.run(agent="remote") as run:
        with tracer.chat("gpt-4o", provider="openai") as c:
            c.record_usage(input_tokens=100, output_tokens=250)
        with tracer.chat("gpt-4o", provider="openai") as c:
            c.record_usage(input_tokens=10, output_tokens=10)
            c.record_energy(7.0, "measured")  # an explicit figure wins
    assert store.flush()
    spans = [s for s in store.spans(run.run_id) if s.operation == sc.CHAT]
    first = next(s for s in spans if s.attributes[sc.USAGE_OUTPUT_TOKENS] == 250)
    assert first.attributes[sc.ENERGY_METHOD] == "estimated:tokens"
    assert first.attributes[sc.ENERGY_JOULES] == pytest.approx(250 * JOULES_PER_OUTPUT_TOKEN)
    s = store.run(run.run_id)
    assert s.energy_j == pytest.approx(250 * JOULES_PER_OUTPUT_TOKEN + 7.0) and s.energy_method == "mixed"


def test_gpu_energy_from_nvml_over_a_window() -> None:
    from agentrt.tracing import Nvml

    gpu = Nvml()
    if not gpu.available:
        pytest.skip(f"no GPU energy counter here: {gpu.reason}")
    watts = gpu.power_watts()
    with EnergyMeter(gpu=gpu, rapl=Rapl("/nonexistent")) as m:
        time.sleep(2.0)  # NVML's counter updates every 20-100 ms: a window of seconds
    e = m.energy
    assert e.method == "estimated:cpu-tdp+gpu-nvml"
    assert e.gpu_joules > 0 and e.joules == pytest.approx(e.cpu_joules + e.memory_joules + e.gpu_joules)
    # an idle-ish GPU draws roughly constant power: energy ~ power x time
    assert e.gpu_joules == pytest.approx(watts * m.wall_seconds, rel=0.5)
