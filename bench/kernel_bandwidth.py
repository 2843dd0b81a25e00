"""Each fusion kernel's time on the GPU beside the bytes XLA's program says it moves: which kernels run
far below the card's memory bandwidth, and what bringing them up to it would save a step.

    python bench/kernel_bandwidth.py PREFIX [--tbps=4.0] [--top=25] [--json]

PREFIX is what `python -m resnet_v2_jax.benchmark ... --profile_steps=N --profile_dir=DIR` saved
(`benchmark.save_profile`): PREFIX.kernels.json, every kernel's time and launches per step from the
profile, and PREFIX.hlo.gz, the compiled step that ran. A fusion kernel carries its HLO name in the
trace ("input_reduce_fusion_9" for "input_reduce_fusion.9"), so each is joined with
`gpu_launches.kernel_rows`' bytes per launch; library kernels (cuDNN, cuBLAS) carry the library's
names and are summed by kind instead. Both files come from the same process, so the names agree; a
profile read against another compile's HLO (another jaxlib, another config) would not.

Why: on the H200 (2026-11-27, third run) ResNet-50's step spent 14 of its 30.8 busy ms outside the
convolutions, on ~49 GB by XLA's count, 3.5 TB/s on average; its goal leaves ~11.5 ms for that work,
4.3 TB/s. The average hides the kernels that are far below it: the max pool's backward moved 0.57 GB
in 0.94 ms (0.6 TB/s). This lists them all, worst first.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpu_launches  # noqa: E402

from resnet_v2_jax import trace_summary  # noqa: E402

# A sustained-bandwidth target for memory-bound kernels, TB/s: about 85% of the H200's 4.8 TB/s spec.
# (The H100 SXM's spec is 3.35 TB/s: pass --tbps=2.9 there.)
TARGET_TBPS = 4.0


def load(prefix: str) -> tuple[list[dict], str]:
    """(kernel table, HLO text) saved under `prefix`."""
    kernels = json.loads(Path(prefix + ".kernels.json").read_text())
    with gzip.open(prefix + ".hlo.gz", "rt") as f:
        return kernels, f.read()


def join(kernels: list[dict], hlo: str, tbps: float = TARGET_TBPS) -> dict:
    """The profile's kernels matched to the HLO's by name: `rows` (matched, most time above the target
    bandwidth first; ms and GB per step, unrounded), their totals, and the unmatched kernels' ms by category."""
    by_kernel = {}
    for name, row in gpu_launches.kernel_rows(hlo).items():
        by_kernel.setdefault(gpu_launches.kernel_name(name), dict(row, hlo_name=name))
    rows, unmatched = [], {}
    for k in kernels:
        row = by_kernel.get(k["name"])
        if row is None:
            cat = trace_summary.category({"name": k["name"]})
            unmatched[cat] = unmatched.get(cat, 0.0) + k["ms"]
            continue
        gb = k["count"] * row["bytes"] / 1e9  # per step: launches the profile saw times bytes a launch
        floor = gb / tbps  # ms at the target bandwidth (GB / (TB/s) = ms)
        rows.append({"name": row["hlo_name"], "kind": row["kind"], "ms": k["ms"], "count": k["count"],
                     "hlo_calls": row["calls"], "gb": gb, "tbps": gb / k["ms"] if k["ms"] else None,
                     "above_ms": k["ms"] - floor})
    rows.sort(key=lambda r: -r["above_ms"])
    ms, gb = sum(r["ms"] for r in rows), sum(r["gb"] for r in rows)
    return {"target_tbps": tbps, "matched": len(rows), "matched_ms": ms, "matched_gb": gb,
            "matched_tbps": gb / ms if ms else None, "above_ms": sum(max(r["above_ms"], 0.0) for r in rows),
            "unmatched_ms": dict(sorted(unmatched.items(), key=lambda kv: -kv[1])), "rows": rows}


def format_report(r: dict, top: int = 25) -> str:
    lines = [f"{r['matched']} kernels matched to the HLO: {r['matched_ms']:.3f} ms and {r['matched_gb']:.2f} GB a "
             f"step, {r['matched_tbps'] or 0:.2f} TB/s; at {r['target_tbps']:g} TB/s the slower ones would save "
             f"{r['above_ms']:.3f} ms a step",
             "not matched (library kernels, by kind): "
             + (", ".join(f"{k} {v:.3f} ms" for k, v in r["unmatched_ms"].items()) or "none"),
             "", f"| kernel | kind | ms a step | launches | GB a step | TB/s | ms above {r['target_tbps']:g} TB/s |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"][:top]:
        tbps = "-" if row["tbps"] is None else f"{row['tbps']:.2f}"
        lines.append(f"| {row['name']} | {row['kind']} | {row['ms']:.3f} | {row['count']:g} | {row['gb']:.3f} | "
                     f"{tbps} | {row['above_ms']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prefix", help="the path prefix benchmark --profile_dir wrote (without .kernels.json)")
    p.add_argument("--tbps", type=float, default=TARGET_TBPS, help="target bandwidth, TB/s")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    try:
        kernels, hlo = load(a.prefix)
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename} (give the prefix benchmark --profile_dir wrote)",
              file=sys.stderr)
        return 2
    r = join(kernels, hlo, a.tbps)
    print(json.dumps(r) if a.json else format_report(r, a.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
