"""Energy per span: RAPL counters where the host has them, else a CPU-time x TDP estimate.

Methods, in order of preference (each `Energy` says which one produced it):

- ``measured``: RAPL package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``; AMD CPUs
  expose the same tree), wraparound handled with ``max_energy_range_uj``. A call's share is the
  package energy over its window times the call's CPU seconds over the whole node's CPU seconds
  in that window (Kepler's attribution, sustainable-computing-io/kepler
  ``docs/developer/power-attribution-guide.md``).
- ``estimated:cpu-tdp``: CPU seconds x per-thread power (TDP / hardware threads of the CPU model
  found in ``/proc/cpuinfo``; `CPU_TDP_TABLE`), plus memory power per GB x GB x wall seconds.
  An unknown model uses 4 W per thread, CodeCarbon's default for a CPU it does not know (mlco2/
  codecarbon ``docs/explanation/methodology.md``; it logged exactly that on these machines).
  Memory: 0.375 W per GB, CodeCarbon v2's "3 W per 8 GB".
- GPU: NVML's ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded; Volta and
  newer), through ``nvidia-ml-py`` (extra ``[gpu]``), when `EnergyMeter` is given ``gpu=True``
  and a GPU is present. It counts the whole device (as CodeCarbon and Zeus do), so a GPU shared
  by other work over-attributes. The method then gets ``+gpu-nvml`` (e.g.
  ``estimated:cpu-tdp+gpu-nvml``: CPU estimated, GPU measured); with RAPL too it stays ``measured``.
- ``estimated:tokens``: remote models, per output token: 0.3 Wh for a typical GPT-4o query of about
  500 output tokens (Epoch AI, J. You, "How much energy does ChatGPT use?", Feb 2025) =
  0.6 mWh = 2.16 J per output token. A rough prior with a wide error (the notes cite 0.24 Wh for a
  median Gemini prompt and 0.34 Wh median for frontier models); prompt tokens are not counted.

CPU seconds come from the call's cgroup (`cgroup_cpu_seconds`: cgroup v1 ``cpuacct.usage``, v2
``cpu.stat usage_usec``) or a process (`process_cpu_seconds`: ``/proc/PID/stat`` utime+stime of all
its threads, plus its reaped children) — for a local LLM call, the engine process.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Self

__all__ = [
    "CPU_TDP_TABLE",
    "JOULES_PER_OUTPUT_TOKEN",
    "MEMORY_WATTS_PER_GB",
    "CpuPower",
    "Energy",
    "EnergyMeter",
    "Rapl",
    "cgroup_cpu_seconds",
    "cpu_power",
    "energy_for_cpu_seconds",
    "energy_for_tokens",
    "node_cpu_seconds",
    "process_cpu_seconds",
]

#: Memory power, W per GB of memory in use (CodeCarbon v2 methodology: 3 W per 8 GB).
MEMORY_WATTS_PER_GB = 3.0 / 8.0
#: CodeCarbon's default per-thread power for a CPU model it does not know, in W.
FALLBACK_WATTS_PER_THREAD = 4.0
#: Remote LLMs: J per output token (Epoch AI 2025: ~0.3 Wh per ~500-output-token GPT-4o query).
JOULES_PER_OUTPUT_TOKEN = 0.3 * 3600 / 500

#: CPU model (regex on /proc/cpuinfo "model name") -> (TDP in W, hardware threads per socket).
#: Values from the vendors' spec pages (ark.intel.com, amd.com product pages).
CPU_TDP_TABLE: list[tuple[str, float, int]] = [
    (r"EPYC 7763\b", 280.0, 128),
    (r"EPYC 7742\b", 225.0, 128),
    (r"EPYC 9654\b", 360.0, 192),
    (r"Xeon\(R\) Platinum 8480\+", 350.0, 112),
    (r"Xeon\(R\) Platinum 8259CL", 210.0, 48),
    (r"Xeon\(R\) Gold 6248\b", 150.0, 40),
    (r"Core\(TM\) i9-13900K\b", 125.0, 32),
    (r"Ryzen 9 7950X\b", 170.0, 32),
]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class Energy:
    """Energy of one span or call.

    Attributes:
        joules: total energy, J.
        method: ``measured`` or ``estimated:<model>`` (``cpu-tdp``, ``tokens``).
        cpu_joules, memory_joules, gpu_joules: the parts, J.
        cpu_seconds, wall_seconds: the inputs it was computed from (None if not used).
    """

    joules: float
    method: str
    cpu_joules: float = 0.0
    memory_joules: float = 0.0
    cpu_seconds: float | None = None
    wall_seconds: float | None = None
    gpu_joules: float = 0.0

    @property
    def wh(self) -> float:
        return self.joules / 3600.0


@dataclass(frozen=True, slots=True)
class CpuPower:
    """Per-thread power of this machine's CPU, and where the number comes from."""

    model: str
    watts_per_thread: float
    source: str


def _cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


@lru_cache(maxsize=4)
def cpu_power(cpuinfo: str = "/proc/cpuinfo") -> CpuPower:
    """Per-thread power from the CPU model in ``cpuinfo`` and `CPU_TDP_TABLE` (else 4 W/thread)."""
    model = _cpu_model(cpuinfo)
    for pattern, tdp, threads in CPU_TDP_TABLE:
        if re.search(pattern, model):
            return CpuPower(model, tdp / threads, f"TDP table: {tdp:g} W / {threads} threads")
    return CpuPower(model, FALLBACK_WATTS_PER_THREAD,
                    f"model not in the TDP table: {FALLBACK_WATTS_PER_THREAD:g} W/thread (CodeCarbon default)")


def energy_for_cpu_seconds(cpu_seconds: float, *, memory_bytes: int = 0, wall_seconds: float = 0.0,
                           watts_per_thread: float | None = None) -> Energy:
    """Estimate energy from CPU time and memory held: the ``estimated:cpu-tdp`` model.

    ``joules = cpu_seconds x watts_per_thread + memory_bytes / 1e9 x MEMORY_WATTS_PER_GB x wall_seconds``

    Args:
        cpu_seconds: user + system CPU seconds of the call (all its threads/processes).
        memory_bytes: memory the call held (peak or mean), bytes.
        wall_seconds: how long it held that memory, seconds.
        watts_per_thread: override; default `cpu_power()` of this machine.
    """
    if cpu_seconds < 0 or memory_bytes < 0 or wall_seconds < 0:
        raise ValueError("cpu_seconds, memory_bytes and wall_seconds must be >= 0")
    w = cpu_power().watts_per_thread if watts_per_thread is None else watts_per_thread
    cpu_j = cpu_seconds * w
    mem_j = memory_bytes / 1e9 * MEMORY_WATTS_PER_GB * wall_seconds
    return Energy(cpu_j + mem_j, "estimated:cpu-tdp", cpu_j, mem_j, cpu_seconds, wall_seconds)


def energy_for_tokens(output_tokens: int) -> Energy:
    """Estimate the energy of a remote LLM call from its output tokens (``estimated:tokens``)."""
    j = max(0, output_tokens) * JOULES_PER_OUTPUT_TOKEN
    return Energy(j, "estimated:tokens", cpu_joules=j)


def process_cpu_seconds(pid: int | None = None, *, children: bool = True) -> float:
    """User + system CPU seconds of a process (all threads), from ``/proc/PID/stat``.

    Args:
        pid: process id; None for this process.
        children: add the CPU time of its children that it has waited for (cutime + cstime).

    Raises:
        ProcessLookupError: no such process.
    """
    path = f"/proc/{'self' if pid is None else pid}/stat"
    try:
        with open(path) as f:
            data = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(f"no process {pid} ({path} does not exist)") from None
    fields = data[data.rindex(")") + 2:].split()  # comm may contain spaces; fields start at state
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of proc(5))
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _CLK_TCK


def cgroup_cpu_seconds(path: str | os.PathLike[str]) -> float:
    """CPU seconds used by every process ever in a cgroup.

    Reads ``cpuacct.usage`` (cgroup v1, ns) or ``cpu.stat`` ``usage_usec`` (cgroup v2).

    Raises:
        FileNotFoundError: the directory has neither file (not a cgroup with CPU accounting).
    """
    p = Path(path)
    v1 = p / "cpuacct.usage"
    if v1.is_file():
        return int(v1.read_text()) / 1e9
    v2 = p / "cpu.stat"
    if v2.is_file():
        for line in v2.read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
    raise FileNotFoundError(f"{p} has no cpuacct.usage (cgroup v1) nor cpu.stat usage_usec (cgroup v2): "
                            "not a cgroup with CPU accounting")


def node_cpu_seconds(stat: str = "/proc/stat") -> float:
    """Busy CPU seconds of the whole machine since boot (all CPUs; /proc/stat, idle and iowait excluded)."""
    with open(stat) as f:
        parts = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


class Rapl:
    """RAPL package energy counters under a powercap tree (default ``/sys/class/powercap``).

    `available` is False where the tree or its package zones are missing (these VMs have none).
    """

    def __init__(self, root: str | os.PathLike[str] = "/sys/class/powercap") -> None:
        self.root = Path(root)
        self.zones = sorted(p for p in self.root.glob("intel-rapl:*") if re.fullmatch(r"intel-rapl:\d+", p.name)) \
            if self.root.is_dir() else []
        self._last: dict[Path, int] = {}
        self._total_uj = 0

    @property
    def available(self) -> bool:
        return bool(self.zones) and all((z / "energy_uj").is_file() for z in self.zones)

    def read_joules(self) -> float:
        """Monotonic package energy in J since this object's first read (wraparound handled).

        Raises:
            FileNotFoundError: no RAPL package zone here (message names the path).
        """
        if not self.available:
            raise FileNotFoundError(f"no RAPL package zones (intel-rapl:N/energy_uj) under {self.root}")
        for z in self.zones:
            now = int((z / "energy_uj").read_text())
            last = self._last.get(z)
            if last is not None:
                delta = now - last
                if delta < 0:  # the counter wrapped
                    delta += int((z / "max_energy_range_uj").read_text())
                self._total_uj += delta
            self._last[z] = now
        return self._total_uj / 1e6


class Nvml:
    """Energy counters of NVIDIA GPUs through NVML (``pip install 'agentrt[gpu]'``).

    Args:
        indices: GPU indices to count; default all.

    `available` is False (and `reason` says why) without nvidia-ml-py, without a GPU or driver,
    or on GPUs older than Volta (no total-energy counter).
    """

    def __init__(self, indices: list[int] | None = None) -> None:
        self.reason = ""
        self._handles: list[object] = []
        self.names: list[str] = []
        try:
            import pynvml
        except ModuleNotFoundError:
            self.reason = "nvidia-ml-py is not installed (pip install 'agentrt[gpu]')"
            return
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            for i in (range(count) if indices is None else indices):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)  # raises NotSupported before Volta
                self._handles.append(h)
                name = pynvml.nvmlDeviceGetName(h)
                self.names.append(name.decode() if isinstance(name, bytes) else str(name))
        except pynvml.NVMLError as exc:
            self.reason = f"NVML: {exc}"
            self._handles = []
        if not self._handles and not self.reason:
            self.reason = "no NVIDIA GPU found"

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def read_joules(self) -> float:
        """Total energy of the counted GPUs since the driver loaded, J.

        Raises:
            FileNotFoundError: NVML is not usable here (the message says why).
        """
        if not self._handles:
            raise FileNotFoundError(f"no GPU energy counter: {self.reason}")
        return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1e3

    def power_watts(self) -> float:
        """Current power draw of the counted GPUs, W (nvmlDeviceGetPowerUsage)."""
        return sum(self._nvml.nvmlDeviceGetPowerUsage(h) for h in self._handles) / 1e3


class EnergyMeter:
    """Measure (or estimate) the energy of a block of work done by a process or a cgroup.

    ``with EnergyMeter(pid=engine_pid) as m: ...`` then ``m.energy`` (an `Energy`). With RAPL
    available the method is ``measured`` (package energy x the target's share of the node's CPU
    time); otherwise ``estimated:cpu-tdp`` from the target's CPU seconds.

    Args:
        pid: process whose CPU time counts (threads included); default this process.
        cgroup: cgroup directory whose CPU time counts (takes precedence over pid).
        memory_bytes: memory held during the block (adds the memory term of the estimate).
        rapl: a `Rapl` to use; default one on ``/sys/class/powercap``.
        gpu: also count GPU energy through NVML: True (all GPUs, if any) or an `Nvml`.
    """

    def __init__(self, *, pid: int | None = None, cgroup: str | os.PathLike[str] | None = None,
                 memory_bytes: int = 0, rapl: Rapl | None = None, gpu: bool | Nvml = False) -> None:
        self.pid = pid
        self.cgroup = cgroup
        self.memory_bytes = memory_bytes
        self.rapl = rapl if rapl is not None else Rapl()
        self.gpu = Nvml() if gpu is True else (gpu or None)
        self.energy: Energy | None = None
        self.cpu_seconds = 0.0
        self.wall_seconds = 0.0

    def _cpu(self) -> float:
        if self.cgroup is not None:
            return cgroup_cpu_seconds(self.cgroup)
        return process_cpu_seconds(self.pid, children=True)

    def __enter__(self) -> Self:
        self._rapl_on = self.rapl.available
        if self._rapl_on:
            self._j0 = self.rapl.read_joules()
            self._node0 = node_cpu_seconds()
        self._gpu_on = self.gpu is not None and self.gpu.available
        if self._gpu_on:
            self._g0 = self.gpu.read_joules()  # type: ignore[union-attr]
        self._cpu0 = self._cpu()
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_seconds = max(0.0, self._cpu() - self._cpu0)
        self.wall_seconds = time.monotonic() - self._t0
        if self._rapl_on:
            joules = self.rapl.read_joules() - self._j0
            node = node_cpu_seconds() - self._node0
            share = min(1.0, self.cpu_seconds / node) if node > 0 else 0.0
            self.energy = Energy(joules * share, "measured", joules * share, 0.0, self.cpu_seconds, self.wall_seconds)
        else:
            self.energy = energy_for_cpu_seconds(self.cpu_seconds, memory_bytes=self.memory_bytes,
                                                 wall_seconds=self.wall_seconds)
        if self._gpu_on:
            g = self.gpu.read_joules() - self._g0  # type: ignore[union-attr]
            e = self.energy
            method = e.method if e.method == "measured" else e.method + "+gpu-nvml"
            self.energy = Energy(e.joules + g, method, e.cpu_joules, e.memory_joules, e.cpu_seconds,
                                 e.wall_seconds, gpu_joules=g)
