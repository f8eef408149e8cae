"""AgentCgroup trace replay: many agent tasks at once under a memory budget, three policies.

Data: the resource traces of AI coding agents on SWE tasks in ``../shared/data/agentcgroup/``
(eunomia-bpf/agentcgroup @ 5af9e7b, GPL-2.0, used as benchmark input only; Zheng et al. 2026,
"AgentCgroup: Understanding and Controlling OS Resources of AI Agents"): per task,
``resources.json`` (1 Hz samples of the agent container's memory and CPU) and ``tool_calls.json``
(each tool call with its start and end time).

Replay: each tool call becomes a real process in the namespace sandbox (bubblewrap + its own
cgroup), running ``benchmarks/_replay_call.py``, which holds the memory the trace shows *above the
task's baseline* during the call (the baseline, the agent's own process between calls, is the
median of the samples outside tool calls and is not replayed) and burns the trace's CPU share, on
the trace's schedule: a task's calls start at their traced offsets (time-compressed) or when the
task's previous call ends, whichever is later (an agent's calls are sequential). Scaled to fit a
2-core, 24 GiB machine in ~10 minutes: time / ``time_scale``, memory x ``mem_scale``, CPU share x
``cpu_scale`` (see the result's ``config``).

Budget: 70 % of the sum of the tasks' peaks (a task's peak = its largest call: scaled memory plus
the replay interpreter's own footprint, measured at start). Systems, each in a session cgroup
whose memory limit is the budget (the "machine"):

- ``unlimited``: no per-task or per-call limit; when the tasks together exceed the budget, the
  kernel's OOM killer picks a victim;
- ``static``: each task a container with a static limit of budget / tasks (per-sandbox limits,
  as E2B, Modal, OpenHands set them);
- ``agentrt``: per-call intents (the call's own traced peak: an agent declaring its hint as
  AgentCgroup's agent did, 5 of 5) with ``memory_burst`` 1.5, and admission control
  (`agentrt.executor.AdmissionController` over the budget): calls that do not fit wait in order.

Reported per system: calls completed, OOM kills (and other failures), makespan, memory
utilisation (the session groups' usage sampled every 50 ms: mean and peak over the budget);
for agentrt also the admission decisions. Systems alternate within a round (order rotated per
round); ratios are taken within a round.

Targets (issue 5): >= 99 % of calls complete under agentrt while static limits lose calls;
agentrt's makespan <= 1.2 x the unlimited run's.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from agentrt.executor import AdmissionController, observe_session
from agentrt.sandbox import NamespaceBackend, NamespaceSandbox
from agentrt.sandbox._namespace import shared_driver
from agentrt.tools import Limits

MiB = 2**20
REPLAY = str(Path(__file__).with_name("_replay_call.py"))
DEFAULTS: dict[str, Any] = {
    "tasks": 16,
    "min_calls": 10,
    "min_duration_s": 60,
    "max_duration_s": 480,
    "time_scale": 20.0,
    "mem_scale": 0.25,
    "cpu_scale": 0.5,
    "budget_fraction": 0.7,
    "burst": 1.5,
    "rounds": 2,
    "sample_ms": 50,
    "stress_rounds": 1,
    "stress_hold_s": 1.0,
}


@dataclass
class Call:
    """One replayed tool call: start offset in the task (s, unscaled), tool name, steps."""

    start: float
    tool: str
    steps: list[tuple[float, int, float]]  # (seconds scaled, MiB scaled, cpu fraction)

    @property
    def mib(self) -> int:
        return max((m for _, m, _ in self.steps), default=0)


@dataclass
class TaskTrace:
    name: str
    calls: list[Call] = field(default_factory=list)
    baseline_mb: float = 0.0
    trace_peak_mb: float = 0.0


def _mb(text: str) -> float:
    m = re.match(r"\s*([\d.]+)\s*([kKMG]i?B|B)", text.split("/")[0])
    if not m:
        raise ValueError(f"cannot parse memory {text!r}")
    return float(m.group(1)) * {"B": 1 / MiB, "K": 1 / 1024, "M": 1.0, "G": 1024.0}[m.group(2)[0].upper()]


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def load_trace(d: Path, cfg: dict[str, Any]) -> TaskTrace | None:
    """One task's calls as replay steps, or None when the task does not fit the selection."""
    try:
        samples = json.loads((d / "resources.json").read_text())["samples"]
        calls = json.loads((d / "tool_calls.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    if len(samples) < 10 or len(calls) < cfg["min_calls"]:
        return None
    t0 = samples[0]["epoch"]
    ts = [s["epoch"] - t0 for s in samples]
    mem = [_mb(s["mem_usage"]) for s in samples]
    cpu = [float(str(s.get("cpu_percent", "0")).rstrip("%") or 0) / 100 for s in samples]
    dur = ts[-1]
    if not cfg["min_duration_s"] <= dur <= cfg["max_duration_s"]:
        return None
    windows = []
    for c in calls:
        s = _epoch(c["timestamp"]) - t0
        e = _epoch(c.get("end_timestamp") or c["timestamp"]) - t0
        if 0 <= s <= dur:
            windows.append((s, max(e, s), c.get("tool", "?")))
    outside = [m for t, m in zip(ts, mem, strict=True) if not any(s <= t <= e + 1 for s, e, _ in windows)]
    base = statistics.median(outside or mem)
    task = TaskTrace(d.parent.parent.name + "/" + d.parent.name, baseline_mb=base, trace_peak_mb=max(mem))
    for s, e, tool in sorted(windows):
        # the samples covering [s, e] (1 Hz: the one at or after e shows the call's last second)
        idx = [i for i, t in enumerate(ts) if s - 1 < t <= e + 1] or [min(range(len(ts)), key=lambda i: abs(ts[i] - s))]
        steps = []
        seg = max(e - s, 0.0) / len(idx)
        for i in idx:
            seconds = max(seg / cfg["time_scale"], 0.005)
            mib = int(round(max(0.0, mem[i] - base) * cfg["mem_scale"]))
            steps.append((round(seconds, 4), mib, round(min(1.0, cpu[i]) * cfg["cpu_scale"], 3)))
        task.calls.append(Call(start=s, tool=tool, steps=steps))
    return task


def select_tasks(data: Path, cfg: dict[str, Any]) -> list[TaskTrace]:
    """``cfg["tasks"]`` tasks, evenly spaced over the sorted names of those that fit the selection."""
    cands = []
    for d in sorted(data.glob("all_images_*/*/attempt_1")):
        t = load_trace(d, cfg)
        if t is not None:
            cands.append(t)
    n = min(cfg["tasks"], len(cands))
    if n == 0:
        raise FileNotFoundError(f"no usable traces under {data}")
    return [cands[int(i * len(cands) / n)] for i in range(n)]


def _argv(call: Call) -> list[str]:
    return [sys.executable, "-S", REPLAY, json.dumps(call.steps, separators=(",", ":"))]


@dataclass
class _Run:
    results: list[Any] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)


async def _sample(groups: list[Path], run: _Run, every: float, stop: anyio.Event) -> None:
    while not stop.is_set():
        total = 0
        for g in groups:
            try:
                total += int((g / "memory.usage_in_bytes").read_text())
            except (OSError, ValueError):
                pass
        run.samples.append(total)
        with anyio.move_on_after(every):
            await stop.wait()


def aligned_offsets(tasks: list[TaskTrace]) -> list[float]:
    """Per-task start delays (s, unscaled) that make every task's largest call start at once."""
    peak_starts = [max(t.calls, key=lambda c: c.mib).start for t in tasks]
    latest = max(peak_starts)
    return [latest - s for s in peak_starts]


def held_peaks(tasks: list[TaskTrace], hold_s: float) -> list[TaskTrace]:
    """Copies of ``tasks`` whose largest call holds its peak for at least ``hold_s`` (scaled s)."""
    out = []
    for t in tasks:
        big = max(t.calls, key=lambda c: c.mib)
        calls = []
        for c in t.calls:
            if c is big:
                k = max(range(len(c.steps)), key=lambda i: c.steps[i][1])
                steps = list(c.steps)
                sec, mib, cpu = steps[k]
                steps[k] = (max(sec, hold_s), mib, cpu)
                c = Call(start=c.start, tool=c.tool, steps=steps)
            calls.append(c)
        out.append(TaskTrace(t.name, calls, t.baseline_mb, t.trace_peak_mb))
    return out


async def _replay(system: str, tasks: list[TaskTrace], budget: int, overhead_mib: int, ns: NamespaceBackend,
                  cfg: dict[str, Any], progress: Any, offsets: list[float] | None = None) -> dict[str, Any]:
    driver = shared_driver()
    n = len(tasks)
    run = _Run()
    ctl: AdmissionController | None = None
    if system == "static":
        share = budget // n
        sandboxes = [NamespaceSandbox(ns, driver.session(memory_max=share), None) for _ in tasks]
    else:
        sb = NamespaceSandbox(ns, driver.session(memory_max=budget), None)
        sandboxes = [sb] * n
    if system == "agentrt":
        ctl = AdmissionController(budget=budget)
        observe_session(sandboxes[0])
    groups = list(dict.fromkeys(s.session.dirs["memory"] for s in sandboxes))
    timeout = 300.0

    def limits_for(call: Call) -> Limits:
        if system == "unlimited":
            return Limits(memory=budget, memory_burst=1.0, pids=16, timeout=timeout)
        if system == "static":
            return Limits(memory=budget // n, memory_burst=1.0, pids=16, timeout=timeout)
        # the call's own peak (scaled trace + the interpreter), rounded up to a MiB, plus 2 MiB slack
        intent = (call.mib + overhead_mib + 2) * MiB
        return Limits(memory=intent, memory_burst=cfg["burst"], pids=16, timeout=timeout)

    # stress: every task's largest call starts at the same moment (a barrier across tasks: replays
    # drift behind their schedule by the spawn cost of their earlier calls, so offsets alone do not)
    arrived = 0
    all_there = anyio.Event()

    async def barrier() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == n:
            all_there.set()
        await all_there.wait()

    async def one_task(i: int, task: TaskTrace, t0: float) -> None:
        sbx = sandboxes[i]
        shift = offsets[i] if offsets else 0.0
        big = max(task.calls, key=lambda c: c.mib)
        for call in task.calls:
            due = t0 + (call.start + shift) / cfg["time_scale"]
            delay = due - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
            if offsets is not None and call is big:
                await barrier()
            lim = limits_for(call)
            if ctl is None:
                r = await sbx.exec(_argv(call), lim)
            else:
                async with ctl.reserve(lim, task.name) as g:
                    r = ctl.finish(g, await sbx.exec(_argv(call), g.limits_for(lim)), lim)
            run.results.append((task.name, call, r))

    stop = anyio.Event()
    t0 = time.monotonic()
    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(_sample, groups, run, cfg["sample_ms"] / 1000, stop)
            async with anyio.create_task_group() as tg:
                for i, task in enumerate(tasks):
                    tg.start_soon(one_task, i, task, t0)
            makespan = time.monotonic() - t0
            stop.set()
    finally:
        for s in dict.fromkeys(sandboxes):
            s.close()
    total = len(run.results)
    ok = sum(1 for _, _, r in run.results if r.ok)
    kinds: dict[str, int] = {}
    for _, _, r in run.results:
        if not r.ok:
            kinds[r.error_kind or "?"] = kinds.get(r.error_kind or "?", 0) + 1
    oom = sum(1 for _, _, r in run.results if r.error_kind == "oom" or r.usage.oom_killed
              or (not r.ok and r.usage.exit_status in (137, -9)))
    lost_tasks = len({name for name, _, r in run.results if not r.ok})
    out: dict[str, Any] = {
        "calls": total, "completed": ok, "completion_rate": round(ok / total, 4) if total else None,
        "oom_kills": oom, "failures_by_kind": kinds, "tasks_with_a_lost_call": lost_tasks,
        "makespan_seconds": round(makespan, 2),
        "memory_mean_mib": round(statistics.fmean(run.samples) / MiB, 1) if run.samples else None,
        "memory_peak_mib": round(max(run.samples) / MiB, 1) if run.samples else None,
        "memory_utilisation_mean": round(statistics.fmean(run.samples) / budget, 3) if run.samples else None,
        "memory_utilisation_peak": round(max(run.samples) / budget, 3) if run.samples else None,
    }
    if ctl is not None:
        waits = [r.usage.model_extra.get("admission_wait_seconds", 0.0) for _, _, r in run.results]
        out["admission"] = {**ctl.stats(), "wait_seconds_total": round(sum(waits), 2),
                            "wait_seconds_max": round(max(waits, default=0.0), 3),
                            "calls_that_waited": sum(1 for w in waits if w > 0.001)}
    progress(f"{system}{' (peaks aligned)' if offsets else ''}: {ok}/{total} calls completed, {oom} OOM kills, makespan {makespan:.1f} s, "
             f"memory mean {out['memory_utilisation_mean']} / peak {out['memory_utilisation_peak']} of budget")
    return out


async def _overhead_mib(ns: NamespaceBackend) -> int:
    """Peak memory of the replay interpreter itself (an empty schedule), MiB, rounded up."""
    sb = ns.start("agentcgroup-probe")
    try:
        peaks = []
        for _ in range(3):
            r = await sb.exec([sys.executable, "-S", REPLAY, "[[0.01,0,0]]"], Limits(memory="256M"))
            if not r.ok:
                raise RuntimeError(f"the replay worker failed in the sandbox: {r.error}")
            peaks.append(r.usage.memory_peak_bytes or 0)
    finally:
        sb.close()
    return int(math.ceil(max(peaks) / MiB))


async def _bench(cfg: dict[str, Any], progress: Any) -> dict[str, Any]:
    data = Path(cfg["data"]) / "agentcgroup"
    tasks = select_tasks(data, cfg)
    ns = NamespaceBackend(prewarm=0)
    overhead = await _overhead_mib(ns)
    peaks = [max(c.mib for c in t.calls) + overhead for t in tasks]
    budget = int(cfg["budget_fraction"] * sum(peaks) * MiB)
    n_calls = sum(len(t.calls) for t in tasks)
    progress(f"{len(tasks)} tasks, {n_calls} calls, sum of peaks {sum(peaks)} MiB, budget {budget // MiB} MiB, "
             f"replay interpreter {overhead} MiB")
    systems = ["unlimited", "static", "agentrt"]
    rounds: list[dict[str, Any]] = []
    for k in range(int(cfg["rounds"])):
        order = systems if k % 2 == 0 else systems[::-1]
        progress(f"round {k + 1}: {', '.join(order)}")
        rounds.append({s: await _replay(s, tasks, budget, overhead, ns, cfg, progress) for s in order})
    # stress: the same tasks shifted so that every task's largest call starts at the same moment,
    # each holding its peak for stress_hold_s (time compression makes a traced second last 50 ms,
    # too short for bursts of different tasks to meet): the sum of the peaks, 1/0.7 of the
    # budget, is then asked for at once
    offsets = aligned_offsets(tasks)
    stressed = held_peaks(tasks, float(cfg["stress_hold_s"]))
    stress: list[dict[str, Any]] = []
    for k in range(int(cfg["stress_rounds"])):
        order = systems if k % 2 == 0 else systems[::-1]
        progress(f"stress round {k + 1} (peaks aligned): {', '.join(order)}")
        stress.append({s: await _replay(s, stressed, budget, overhead, ns, cfg, progress, offsets) for s in order})

    def mean(system: str, key: str) -> float | None:
        vals = [r[system][key] for r in rounds if r[system].get(key) is not None]
        return round(statistics.fmean(vals), 4) if vals else None

    summary = {s: {"completion_rate": mean(s, "completion_rate"), "oom_kills": mean(s, "oom_kills"),
                   "makespan_seconds": mean(s, "makespan_seconds"),
                   "memory_utilisation_mean": mean(s, "memory_utilisation_mean"),
                   "memory_utilisation_peak": mean(s, "memory_utilisation_peak"),
                   "rounds": [r[s] for r in rounds]} for s in systems}
    ratio = [r["agentrt"]["makespan_seconds"] / r["unlimited"]["makespan_seconds"] for r in rounds]
    worst_agentrt = min(r["agentrt"]["completion_rate"] for r in rounds)
    static_lost = min(r["static"]["calls"] - r["static"]["completed"] for r in rounds)
    targets = [
        {"name": "agentrt_calls_completed", "value": worst_agentrt, "goal": ">= 0.99", "met": worst_agentrt >= 0.99},
        {"name": "static_limits_lose_calls", "value": static_lost, "goal": "> 0 calls lost in every round",
         "met": static_lost > 0},
        {"name": "agentrt_makespan_vs_unlimited", "value": round(max(ratio), 3), "goal": "<= 1.2 (worst round)",
         "met": max(ratio) <= 1.2},
    ]
    config = {k: v for k, v in cfg.items() if k != "data"}
    config.update({
        "data": "../shared/data/agentcgroup (eunomia-bpf/agentcgroup @ 5af9e7b, all_images_*/<task>/attempt_1)",
        "selection": f"tasks with >= {cfg['min_calls']} tool calls and {cfg['min_duration_s']}-"
                     f"{cfg['max_duration_s']} s of trace, sorted by name, {len(tasks)} evenly spaced",
        "task_names": [t.name for t in tasks], "calls": n_calls,
        "scaling": f"time / {cfg['time_scale']:g} (a {cfg['max_duration_s']} s trace replays in "
                   f"{cfg['max_duration_s'] / cfg['time_scale']:g} s), memory above the task's baseline x "
                   f"{cfg['mem_scale']:g}, CPU share x {cfg['cpu_scale']:g}",
        "replay_interpreter_mib": overhead, "task_peaks_mib": peaks, "sum_of_peaks_mib": sum(peaks),
        "budget_mib": budget // MiB,
        "intent": "agentrt: each call's own traced peak (scaled) + the interpreter + 2 MiB, memory_burst "
                  f"{cfg['burst']}; static: budget / tasks per task; unlimited: only the budget",
    })
    config["stress"] = ("peaks_aligned (synthetic, from the same traces): each task delayed so that its largest "
                        "call is due when every other task's is, and it starts only when every task has reached "
                        "its largest call (a barrier), holding its peak for at least "
                        f"{cfg['stress_hold_s']:g} s (delays, unscaled s: "
                        + ", ".join(f"{x:.0f}" for x in offsets) + ")")
    summary["peaks_aligned"] = {s: [r[s] for r in stress] for s in systems}
    stress_ratio = [r["agentrt"]["makespan_seconds"] / r["unlimited"]["makespan_seconds"] for r in stress]
    notes = _notes(rounds, stress)
    return {"bench": "agentcgroup", "config": config, "systems": summary,
            "ratios": {"agentrt_makespan_over_unlimited_per_round": [round(x, 3) for x in ratio],
                       "peaks_aligned_agentrt_makespan_over_unlimited": [round(x, 3) for x in stress_ratio]},
            "targets": targets, "notes": notes}


def _notes(rounds: list[dict[str, Any]], stress: list[dict[str, Any]]) -> list[str]:
    queued = sum(r["agentrt"]["admission"]["waited"] for r in rounds)
    queued_stress = sum(r["agentrt"]["admission"]["waited"] for r in stress)
    return [
        "targets are judged on the traces' own schedule (systems.unlimited/static/agentrt); peaks_aligned is a "
        "stress run reported beside them",
        f"unlimited's peak memory reached {max(r['unlimited']['memory_utilisation_peak'] for r in rounds)} of the "
        "budget on the traces' schedule: bursts of different tasks rarely coincide, so admission control "
        f"queued {queued} calls there over all rounds (it throttled bursting calls instead: admission.throttles); "
        f"with the peaks aligned it queued {queued_stress}",
        "admission.calls_that_waited counts calls whose admission took over 1 ms, which includes lowering other "
        "calls' limits (the kernel reclaims synchronously), not only queueing",
    ]


def _config(config: dict[str, Any]) -> dict[str, Any]:
    cfg = dict(DEFAULTS)
    for k, v in config.items():
        if k in DEFAULTS and v is not None:
            cfg[k] = json.loads(v) if isinstance(v, str) else v
    cfg["data"] = config.get("data") or str(Path(__file__).resolve().parents[2] / "shared" / "data")
    if config.get("limit"):
        cfg["tasks"] = int(config["limit"])
    return cfg


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Run the replay; ``config`` overrides `DEFAULTS` (values may be JSON strings).

    Returns:
        ``{"bench", "config", "systems", "ratios", "targets"}`` (DESIGN.md's result format; the
        caller adds commit, when and machine).
    """
    progress = config.get("progress") or (lambda msg: None)
    return anyio.run(_bench, _config(config), progress)


if __name__ == "__main__":
    out = run({"progress": lambda m: print(m, flush=True)})
    print(json.dumps(out["targets"], indent=1))
