"""BN's sums alone on a GPU: XLA's reductions against column_sums' Pallas kernel (model.bn_pallas_sums),
per ResNet-50 shape, in microseconds and TB/s, forward (x, x^2) and backward (the masked gradient
and its product with x-hat, from x and gy), with a few kernel shapes (tile values, warps, programs).

Why: the whole-step line says whether the lever pays; this says where, and which tile shape, in
~1 minute of device time, so that the kernel can be tuned without another profile. Each sum runs
`--reps` times inside one jit-compiled loop whose input changes one element per iteration (so XLA
cannot hoist the sum out of the loop); time per sum = (time(reps + 1) - time(1)) / reps, so the
host's dispatch is not in it. One JSON line per (shape, pass, implementation); the kernel's lines
carry `max_rel_diff`, its sums against XLA's (relative to the largest; float32 rounding is ~1e-6).
Last, a `summary` line per (pass, implementation): the times weighted by how many of ResNet-50's
BNs have each shape, the microseconds a step would spend on BN's sums that way.

    python bench/bn_sums_check.py [--batch=256] [--reps=50] [--variants=tile4k_w4,tile8k_w8] [--deadline_s=S]

On a CPU (plumbing only: the kernel under Pallas's interpreter), e.g. `--batch=2 --reps=2 --shapes=7x64`.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (spatial size, channels) of ResNet-50's BN inputs, every stage, in the order of the time XLA's
# reductions of that shape lost against 4 TB/s in the 2026-11-28 profile (the deadline cuts the tail).
# (Until session 21 the list also timed 7x1024, which no BN of ResNet-50 has.)
SHAPES = ["14x1024", "14x256", "28x512", "56x256", "28x128", "7x2048", "7x512", "56x64", "28x256",
          "56x128", "14x512"]
# column_sums.Tiling per variant: (values a tile, warps a program, target programs[, sms])
# (2026-11-28, session 21: the 14x14 and 7x7 shapes, 12-25 MB an array, ran at 0.7-2 TB/s in every
# tiling of 528 programs, so the `_p1k` variants try twice the programs there. Session 22: the
# `_sm132` variants, the plans balanced over an H200's 132 multiprocessors; 15 of the 22 plans,
# 11 shapes and 2 passes, ran 448 programs, 18% above an even share on the busiest one.)
VARIANTS = {"tile4k_w4": (4096, 4, 528), "tile8k_w8": (8192, 8, 528), "tile8k_w4": (8192, 4, 528),
            "tile16k_w8": (16384, 8, 528), "tile2k_w4": (2048, 4, 528), "tile4k_w4_p1k": (4096, 4, 1056),
            "tile8k_w8_p1k": (8192, 8, 1056), "programs264": (4096, 4, 264),
            "tile4k_w4_sm132": (4096, 4, 528, 132), "tile8k_w8_sm132": (8192, 8, 528, 132)}


def resnet50_bn_shapes(stages=(3, 4, 6, 3)) -> collections.Counter:
    """{"SxC": how many of ResNet-50's BNs see an S x S x C input} (224 pixels; stem and max pool
    leave 56): pre-activation bottleneck units, whose first unit of a stage sees the stage's input
    in its first BN and in its second (the stride is on the 3x3, config.model.stride_on), then the
    final BN. So that the per-shape times add up to what a step spends (the `summary` lines)."""
    counts, size, channels = collections.Counter(), 56, 64
    for i, units in enumerate(stages):
        width, out = 64 * 2**i, 256 * 2**i
        end = size // (1 if i == 0 else 2)
        counts.update([f"{size}x{channels}", f"{size}x{width}", f"{end}x{width}"])  # the first unit
        counts.update({f"{end}x{out}": units - 1, f"{end}x{width}": 2 * (units - 1)})
        size, channels = end, out
    counts[f"{size}x{channels}"] += 1  # the final BN
    return counts


def summaries(rows: list[dict], counts: collections.Counter) -> list[dict]:
    """Per (pass, implementation): microseconds a step, each shape's time times its BN count, over
    the shapes timed (`missing`: those not, e.g. cut by the deadline). Then per pass the
    `best_per_shape` bound: each shape's fastest implementation (its `choices`), what a per-shape
    tiling table could gain over one tiling for all."""
    times = collections.defaultdict(dict)
    for r in rows:
        if r.get("us") is not None:
            times[(r["pass"], r["impl"])][r["shape"].split("x", 1)[1]] = r["us"]
    lines = [{"summary": name, "impl": impl, "step_us": round(sum(counts[s] * us for s, us in got.items()), 1),
              "missing": sorted(set(counts) - set(got))} for (name, impl), got in times.items()]
    for name in dict.fromkeys(name for name, _ in times):  # the fastest timed implementation of each shape
        best = {}
        for (p, impl), got in times.items():
            for s, us in got.items():
                if p == name and s in counts and (s not in best or us < best[s][1]):
                    best[s] = (impl, us)
        lines.append({"summary": name, "impl": "best_per_shape",
                      "step_us": round(sum(counts[s] * us for s, (_, us) in best.items()), 1),
                      "choices": {s: impl for s, (impl, _) in sorted(best.items())},
                      "missing": sorted(set(counts) - set(best))})
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--variants", default="tile4k_w4,tile8k_w8,tile4k_w4_sm132,tile8k_w8_sm132,tile8k_w8_p1k",
                   help=f"of {', '.join(VARIANTS)}; each line says whether it is its pass's tiling (default)")
    p.add_argument("--deadline_s", type=float, default=1e9, help="stop starting shapes after this many seconds")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from resnet_v2_jax import column_sums, layers

    gpu = jax.default_backend() == "gpu"
    if not gpu:
        column_sums.PLATFORMS = column_sums.PLATFORMS | {jax.default_backend()}
    dtype = jnp.bfloat16
    start = time.perf_counter()

    def forward_xla(x, v):
        xf = x.astype(jnp.float32)
        return layers._group_sums(xf, xf * xf, (0,))

    def masked_tiles(t, v):  # layers._bn_train_bwd's, relu=True
        g, _, xhat = layers._bn_grad_terms(t[0], t[1], *v, True, dtype)
        return g, g * xhat

    def backward_xla(x, gy, v):
        g, _, xhat = layers._bn_grad_terms(x, gy, *v[:, 0], True, dtype)
        return layers._group_sums(g, g * xhat, (0,))

    def timed(fn, arrays, reps):
        """Seconds per call of fn(*arrays), its input changed one element per iteration (one compile:
        the trip count is an argument)."""
        def loop(n, *arrays):
            def body(i, carry):
                a, acc = carry
                a = [a[0].at[0, 0].set(i.astype(a[0].dtype))] + list(a[1:])
                s, ss = fn(*a)
                return a, acc + s.sum() + ss.sum()
            return jax.lax.fori_loop(0, n, body, (list(arrays), jnp.float32(0)))[1]

        run = jax.jit(loop)
        times = {}
        for n in (1, reps + 1):
            jax.block_until_ready(run(jnp.int32(n), *arrays))  # compile (once), warm
            t0 = time.perf_counter()
            jax.block_until_ready(run(jnp.int32(n), *arrays))
            times[n] = time.perf_counter() - t0
        return max(times[reps + 1] - times[1], 0.0) / reps

    key = jax.random.key(0)
    printed = []
    for shape in args.shapes.split(","):
        if time.perf_counter() - start > args.deadline_s:
            print(json.dumps({"skipped": shape, "reason": "deadline"}), flush=True)
            continue
        size, c = map(int, shape.split("x"))
        rows = args.batch * size * size
        k1, k2, k3 = jax.random.split(jax.random.fold_in(key, rows * c), 3)
        x = jax.random.normal(k1, (rows, c), dtype)
        gy = jax.random.normal(k2, (rows, c), dtype)
        v = jnp.stack([jnp.zeros(c), jnp.ones(c), jnp.ones(c), 0.1 * jax.random.normal(k3, (c,))])[:, None]
        for name, fn, arrays, nbytes in (("forward", forward_xla, (x, v), rows * c * 2),
                                         ("backward", backward_xla, (x, gy, v), 2 * rows * c * 2)):
            rows_out = []
            want = jax.jit(fn)(*arrays)
            impls = [("xla", fn, None)]
            own = column_sums.FORWARD if name == "forward" else column_sums.BACKWARD
            for variant in args.variants.split(","):
                tiling = column_sums.Tiling(*VARIANTS[variant])

                def pallas(*a, name=name, tiling=tiling):
                    if name == "forward":
                        return column_sums.column_sums(lambda t, _: (t[0], t[0] * t[0]), [a[0]], (), 1,
                                                       not gpu, tiling)
                    return column_sums.column_sums(masked_tiles, [a[0], a[1]], list(a[2]), 1, not gpu, tiling)
                impls.append((f"pallas:{variant}", pallas, tiling))
            for impl, f, tiling in impls:
                row = {"shape": f"{args.batch}x{shape}", "rows": rows, "channels": c, "pass": name, "impl": impl}
                if tiling is not None:
                    plan = column_sums.plan(rows, c, 1, tiling)
                    row |= {"plan": plan, "default": tiling == own}
                    if plan is None:
                        rows_out.append(row | {"error": "no plan"})
                        continue
                    # programs, and the busiest of an H200's 132 multiprocessors' share against an even one
                    programs, its = column_sums.program_count(rows, c, plan), plan[2]
                    row |= {"programs": programs, "busiest_vs_even": round(
                        column_sums.busiest_tiles(programs, its, 132) / (programs * its / 132), 3)}
                try:
                    if tiling is not None:  # the sums themselves, against XLA's (float32 rounding: ~1e-6)
                        got = jax.jit(f)(*arrays)
                        row["max_rel_diff"] = max(
                            float(jnp.max(jnp.abs(g.ravel() - w.ravel())) / (jnp.max(jnp.abs(w)) + 1e-30))
                            for g, w in zip(got, want))
                    s = timed(f, arrays, args.reps)
                    row |= {"us": round(s * 1e6, 2), "tbps": round(nbytes / s / 1e12, 3) if s else None}
                except Exception as e:  # noqa: BLE001 - one failing variant must not cost the others
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                rows_out.append(row)
            for row in rows_out:
                print(json.dumps(row | {"device": jax.devices()[0].device_kind, "jax": jax.__version__}), flush=True)
            printed += rows_out
    for line in summaries(printed, resnet50_bn_shapes()):  # ResNet-50's shapes at this batch
        print(json.dumps(line | {"batch": args.batch}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
