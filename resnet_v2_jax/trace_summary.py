"""What the device did during a few profiled steps: busy time, idle gaps, kernel counts and the kernels
that take the time, from a JAX profiler trace (`jax.profiler.trace(..., create_perfetto_trace=True)`).

Why: on an H200 the CIFAR steps run thousands of tiny kernels, and with command buffers the host no
longer bounds them (BENCHMARKS.md), so what is left is the GPU's own time. Whether that is kernel
work (then fewer or faster kernels pay) or gaps between kernels (then launch latency does) decides
the next lever, and a benchmark line can carry the answer without TensorBoard or xprof, which the
GPU machines lack. `benchmark --profile_steps=N` adds `summarize(...)` to its JSON line.

Kernels are the complete ("X") events on the stream threads ("Stream #...") of every process whose
name starts with "/device:" (one per GPU). The same process also holds summary rows ("XLA Modules",
"XLA Ops", "Steps") that span or repeat the kernels, so they are left out; a device process with no
stream thread counts all its threads. On a CPU there is no device process: the summary then says so
(`device_events` 0) and holds no timings. These names have not yet been seen here on a GPU; a public
report of JAX GPU traces (marin-community/marin issue 3345, 2026) names the processes "/device:GPU:0"
to "/device:GPU:7" and the kernels' threads "Stream #118(MemcpyD2H,MemcpyD2D,Compute,Memset)".
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os

# First match wins; matched against the event's name and argument values, lower-cased.
CATEGORIES = (
    ("convolution", ("conv", "xmma", "cudnn", "implicit_gemm", "dgrad", "wgrad", "fprop")),
    ("matmul", ("gemm", "cublas", "dot", "matmul")),
    ("reduction", ("reduce", "reduction")),
    ("copy", ("memcpy", "memset", "copy")),
    ("fusion", ("fusion",)),
)


# Kernel durations, microseconds: upper bounds of the histogram's bins (the last is open). Whether the
# step's time sits in a few long kernels or thousands of ~2 us ones says what removing kernels is worth.
DURATION_BINS_US = (3, 10, 30)


def duration_bin(us: float) -> str:
    lo = 0
    for hi in DURATION_BINS_US:
        if us < hi:
            return f"{lo}-{hi}us"
        lo = hi
    return f">={lo}us"


def category(event: dict) -> str:
    text = " ".join([event.get("name", "")] + [str(v) for v in (event.get("args") or {}).values()]).lower()
    for cat, needles in CATEGORIES:
        if any(n in text for n in needles):
            return cat
    return "other"


def load_perfetto(log_dir: str) -> dict:
    """The newest perfetto trace JAX wrote under `log_dir`; FileNotFoundError if there is none."""
    paths = sorted(glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {log_dir}")
    with gzip.open(paths[-1], "rt") as f:
        return json.load(f)


def _union_us(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def host_top(events: list[dict], steps: int, top: int) -> list[dict]:
    """The host's events by name, per step, longest first: where a step call's host time goes
    (`dispatch_ms`), such as updating CUDA graphs before launching them. Events nest (an executor
    holds the thunks it runs), so each name's time includes the names inside it. The Python tracer's
    events (names starting with "$", such as this benchmark's own loop) are left out by the caller."""
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        by_name[e["name"]][0] += float(e["dur"])
        by_name[e["name"]][1] += 1
    return [{"name": k[:120], "ms": round(v[0] / (1e3 * steps), 3), "count": round(v[1] / steps, 1)}
            for k, v in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]]


def device_kernels(trace: dict | list) -> tuple[list[dict], dict, dict]:
    """(kernel events, {pid: process name}, {(pid, tid): device thread name}) of a trace."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    processes = {e["pid"]: str((e.get("args") or {}).get("name", "")) for e in events
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
    threads = {(e["pid"], e.get("tid")): str((e.get("args") or {}).get("name", "")) for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name" and e.get("pid") in devices}
    streams = {key for key, name in threads.items() if name.lower().startswith("stream")}
    with_streams = {pid for pid, _ in streams}
    kernel_threads = streams | {key for key in threads if key[0] not in with_streams}

    def is_kernel(e):
        key = (e.get("pid"), e.get("tid"))
        return e.get("pid") in devices and (key in kernel_threads or key not in threads)

    return [e for e in events if e.get("ph") == "X" and "dur" in e and is_kernel(e)], processes, threads


def kernel_table(trace: dict | list, steps: int) -> list[dict]:
    """Every kernel name of the trace with its time and launches per step, longest first: `summarize`'s
    `top` without the cut, for `bench/kernel_bandwidth.py`, which sets each fusion's time beside the
    bytes XLA's program says it moves."""
    by_name = collections.defaultdict(lambda: [0.0, 0])
    for e in device_kernels(trace)[0]:
        by_name[e["name"]][0] += float(e["dur"])
        by_name[e["name"]][1] += 1
    return [{"name": k, "ms": round(v[0] / (1e3 * steps), 4), "count": round(v[1] / steps, 1)}
            for k, v in sorted(by_name.items(), key=lambda kv: -kv[1][0])]


def summarize(trace: dict | list, steps: int, top: int = 12) -> dict:
    """Per-step device time of a trace covering `steps` steps (milliseconds, counts per step).

    `busy_ms`: time at least one kernel ran (overlaps counted once); `span_ms`: first kernel start to
    last kernel end; `idle_ms` = span - busy, the gaps; `kernel_ms`: the kernels' summed durations;
    `by_duration`: the kernels by how long each ran (`DURATION_BINS_US`); `host_top`: the host's
    events by name (`host_top`), also where the trace holds no device events (a CPU).
    """
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    kernels, processes, threads = device_kernels(events)
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
    # The trace's process and device thread names say where to look when the numbers look wrong.
    out = {"steps": steps, "device_events": len(kernels), "processes": sorted(set(processes.values())),
           "device_threads": sorted(set(threads.values())),
           "host_top": host_top([e for e in events if e.get("ph") == "X" and "dur" in e
                                 and e.get("pid") not in devices
                                 and not str(e.get("name", "")).startswith("$")], steps, top)}
    if not kernels:
        return out
    spans = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kernels]
    busy, span = _union_us(spans), max(b for _, b in spans) - min(a for a, _ in spans)
    by_cat = collections.defaultdict(lambda: [0.0, 0])
    by_dur = {duration_bin(lo): [0.0, 0] for lo in (0,) + DURATION_BINS_US}
    for e in kernels:
        for table, key in ((by_cat, category(e)), (by_dur, duration_bin(float(e["dur"])))):
            table[key][0] += float(e["dur"])
            table[key][1] += 1
    per = 1e3 * steps  # microseconds over all steps -> milliseconds per step
    out.update({
        "kernels_per_step": round(len(kernels) / steps, 1),
        "busy_ms": round(busy / per, 3),
        "span_ms": round(span / per, 3),
        "idle_ms": round((span - busy) / per, 3),
        "kernel_ms": round(sum(float(e["dur"]) for e in kernels) / per, 3),
        "by_category": {k: {"ms": round(v[0] / per, 3), "count": round(v[1] / steps, 1)}
                        for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1][0])},
        "by_duration": {k: {"ms": round(v[0] / per, 3), "count": round(v[1] / steps, 1)} for k, v in by_dur.items()},
        "top": [dict(k, name=k["name"][:120], ms=round(k["ms"], 3)) for k in kernel_table(events, steps)[:top]],
    })
    return out
