"""JSONL benchmark results -> a grouped bar chart of images/s (PNG) and a markdown table.

    python bench/chart.py RESULTS.jsonl [MORE.jsonl ...] --png bench/throughput.png --md table.md

Reads lines of `python -m resnet_v2_jax.benchmark --json` (key `impl`: ours, plain_flax, ...) and of
the PyTorch peer (`peer`: torch-eager, torch-compile; `img_s`). Lines without a throughput
(failed, skipped, did-not-finish markers) are listed under the table, never drawn: the chart holds
only what was measured. Ours with `scan` false is drawn as "ours-unrolled"; ours fed uint8 pixels
(ImageNet experiments: normalisation, and colour for the inception recipe, on device) says so.
One bar group per (model, batch, mode), one bar per implementation.

Where a line of ours carries `loop_images_per_second` (steps back to back, one block at the end:
the way training runs and the PyTorch peer is timed), that is its figure, so bars compare alike;
the `timing` column says which figure each row is (older lines: the blocked median only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(paths) -> tuple[list[dict], list[dict], list[dict]]:
    """(measured rows, compile-only rows, lines that measured nothing)."""
    rows, compiled, missing = [], [], []
    for path in paths:
        for line in Path(path).read_text().splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if "compare" in r:
                continue
            loop = r.get("loop_images_per_second")
            ips = loop or r.get("images_per_second", r.get("img_s"))
            if r.get("timing") == "compile only":
                compiled.append(r)
                continue
            if ips is None:
                missing.append(r)
                continue
            mode = r.get("mode", "train")
            impl = r.get("impl") or r.get("peer")
            if impl == "ours" and r.get("scan") is False:
                impl = "ours-unrolled"
            if impl.startswith("ours") and r.get("input", "float32") != "float32":
                impl += f" ({r['input']} input)"  # ImageNet: on-device normalisation (+ colour)
            if (r.get("scan_unroll") or 1) > 1:
                impl += f" +unroll{r['scan_unroll']}"
            if r.get("xla_gpu_perf_flags"):  # lines of 2026-11-26, before config.xla_flags
                impl += " +XLA GPU flags"
            elif r.get("xla_flags"):
                # the flags' names: their values are in the line's xla_flags (BENCHMARKS.md lists them)
                # (not the profiling one the benchmark adds: it changes nothing outside the profile)
                named = [f.split("=")[0].replace("--xla_gpu_", "") for f in r["xla_flags"].split()
                         if "during_profiling" not in f]
                impl += "".join(" +" + n for n in named)
            if r.get("remat"):
                impl += f" +remat({r.get('remat_policy')})"
            if r.get("bn_recompute_mask"):
                impl += " +BN mask recomputed"
            if r.get("bn_partial_sums"):
                impl += " +BN partial sums"
            if r.get("bn_pallas_sums"):
                impl += " +BN sums in Pallas"
            if r.get("stem_space_to_depth"):
                impl += " +stem space-to-depth"
            if r.get("stem_align_channels"):
                impl += " (16 channels)"
            if r.get("auto_param_layouts"):
                impl += " +XLA's param layouts"
            if r.get("bn_recompute_output"):
                impl += " +BN output recomputed"
            if r.get("scan_unit_reads"):
                impl += " +unit reads"
            if r.get("conv1x1_fusion"):
                impl += " +BN-ReLU in 1x1 GEMMs"
            if r.get("bn_group") and r["bn_group"] < r["batch"]:
                impl += f" +BN over {r['bn_group']}"
            if (r.get("distinct_batches") or 1) > 1:
                impl += f" +{r['distinct_batches']} batches"
            rows.append({
                "impl": impl,
                "model": r["model"],
                "batch": r["batch"],
                "mode": mode,
                "dtype": r.get("dtype", "bf16-autocast" if "peer" in r else ""),
                "images_per_second": float(ips),
                "step_ms": r.get("loop_ms") if loop else r.get("step_ms"),
                "timing": ("back to back" if "peer" in r else
                           f"back to back (blocked median {r['step_ms']:.1f} ms)" if loop else "blocked median"),
                "compile_s": r.get("compile_s", r.get("warmup_s")),
                "peak_gib": (r["peak_bytes_in_use"] / 2**30 if r.get("peak_bytes_in_use") else r.get("peak_gib")),
                # An --also run has no device peak of its own: XLA's allocation for its step stands in.
                "xla_peak_gib": (r["compiled_peak_bytes"] / 2**30 if r.get("compiled_peak_bytes")
                                 and not r.get("peak_bytes_in_use") and r.get("device_kind") != "cpu" else None),
                "device": r.get("device_kind", ""),
            })
    return rows, compiled, missing


def markdown(rows, missing, compiled=()) -> str:
    lines = ["| model | batch | mode | implementation | dtype | step (ms) | images/s | timing | compile or warm-up (s) "
             "| peak memory (GiB; XLA's: its allocation for the step) | device |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["batch"], r["mode"], r["impl"])):
        mem = ("" if r["peak_gib"] is None else f"{r['peak_gib']:.2f}") or (
            "" if r.get("xla_peak_gib") is None else f"{r['xla_peak_gib']:.2f} (XLA's)")
        comp = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        step = "" if r["step_ms"] is None else f"{r['step_ms']:.1f}"
        lines.append(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['impl']} | {r['dtype']} | {step} | "
                     f"{r['images_per_second']:.1f} | {r['timing']} | {comp} | {mem} | {r['device']} |")
    for r in compiled:
        peak = r.get("compiled_peak_bytes")
        lines.append(f"\nCompile only: {r['model']} batch {r['batch']} {r.get('dtype') or ''}: compile "
                     f"{r['compile_s']:.1f} s, XLA's compiled bytes "
                     f"{'n/a' if peak is None else f'{peak / 2**30:.2f} GiB'}, cache {r.get('compilation_cache')}")
    for r in missing:
        lines.append(f"\nNot measured: {json.dumps(r)}")
    return "\n".join(lines) + "\n"


SHORT_DTYPE = {"bfloat16": "bf16", "bf16-autocast": "bf16", "float32": "f32"}


def bars(rows) -> tuple[list, list, dict]:
    """(groups, bar labels, {group + (label,): images/s}). When the rows hold more than one dtype
    (a CPU comparison in float32 and bf16), each label names its dtype, so no bar hides another."""
    dtypes = {SHORT_DTYPE.get(r["dtype"], r["dtype"]) for r in rows}

    def label(r):
        return f"{r['impl']} {SHORT_DTYPE.get(r['dtype'], r['dtype'])}" if len(dtypes) > 1 else r["impl"]

    groups = sorted({(r["model"], r["batch"], r["mode"]) for r in rows})
    labels = sorted({label(r) for r in rows}, key=lambda i: (not i.startswith("ours"), i))
    value = {(r["model"], r["batch"], r["mode"], label(r)): r["images_per_second"] for r in rows}
    return groups, labels, value


def short_labels(rows) -> list[dict]:
    """The rows with `impl` cut to "ours" or the peer's name, for a chart of each experiment as
    configured, whose levers the table's own lines name; SystemExit if two rows would share a bar."""
    out = [dict(r, impl="ours" if r["impl"].startswith("ours") else r["impl"].split(" ")[0]) for r in rows]
    keys = [(r["model"], r["batch"], r["mode"], r["impl"], r["dtype"]) for r in out]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise SystemExit(f"--short_labels: more than one line for {sorted(dup)[0]}; pass one line each")
    return out


def chart(rows, png: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, impls, value = bars(rows)
    # Each group holds only the bars it has, centred on its tick; an implementation keeps its colour.
    present = {group: [i for i in impls if group + (i,) in value] for group in groups}
    width = 0.8 / max(1, max(len(p) for p in present.values()))
    colours = plt.get_cmap("tab20" if len(impls) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) + 2) + 3, 4.5))
    for k, impl in enumerate(impls):
        xs, ys = [], []
        for g, group in enumerate(groups):
            if impl in present[group]:
                j, m = present[group].index(impl), len(present[group])
                xs.append(g + (j - (m - 1) / 2) * width)
                ys.append(value[group + (impl,)])
        drawn = ax.bar(xs, ys, width, label=impl, color=colours(k))
        ax.bar_label(drawn, labels=[f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in drawn.datavalues], fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{m}\nbatch {b}" + ("" if mode == "train" else f"\n{mode}") for m, b, mode in groups])
    values = list(value.values())
    log = min(values) > 0 and max(values) / min(values) > 20  # models 20x apart: small bars stay visible
    if log:
        ax.set_yscale("log")
    ax.set_ylabel("images / second (higher is better" + (", log scale)" if log else ")"))
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=9)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the axes, never over a bar
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+")
    p.add_argument("--png", default="bench/throughput.png")
    p.add_argument("--md", default="")
    p.add_argument("--title", default="training step throughput")
    p.add_argument("--models", default="", help="comma-separated model names to draw (default: all)")
    p.add_argument("--short_labels", action="store_true",
                   help="bars named 'ours' or the peer's name alone (one line of each per model: as configured)")
    a = p.parse_args()
    rows, compiled, missing = load(a.results)
    if a.short_labels:
        rows = short_labels(rows)
    if a.models:
        rows = [r for r in rows if r["model"] in a.models.split(",")]
    table = markdown(rows, missing, compiled)
    if a.md:
        Path(a.md).write_text(table)
    print(table)
    if rows:
        chart(rows, a.png, a.title)


if __name__ == "__main__":
    main()
