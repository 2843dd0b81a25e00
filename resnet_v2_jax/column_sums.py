"""BN's per-channel sums as one hand-written GPU kernel (Pallas on Triton): config.model.bn_pallas_sums.

Why: in the H200's profile of ResNet-50 at batch 256 (2026-11-28, BENCHMARKS.md) XLA's reduction
kernels for BN's sums ran at 0.6-3.5 TB/s (BN's forward statistics 2.15 TB/s overall, the backward's
sums 2.95) where its elementwise passes reach 3.9-4.4: ~1.3 ms a step above 3.5 TB/s, mostly in the
14x14 and 7x7 stages. XLA splits each column sum into ~sqrt(rows) row groups of a few hundred rows,
each thread block summing a 32-column strip; this kernel instead gives each program a
[rows, 128-column] slab, read as [br, bc] tiles of ~4096 values (16-byte vector loads) into two
float32 accumulator tiles, summed once at the end. It writes one partial sum per program and
channel; XLA adds the partials up (its second reduction kernel today, so the kernel count stays).

`column_sums` takes the elementwise work to sum (`fn`) as a Python function of the loaded tiles, so
BN's forward (x, x^2) and backward (the masked gradient and its product with x-hat) share it, each
with its own `Tiling`. On one H200 (2026-11-28, session 21) ResNet-50's step ran 8,346 -> 8,750
images/s with this kernel, and 8,916-8,964 with the two other ImageNet levers (BENCHMARKS.md). On a
CPU (tests) it runs under Pallas's interpreter when "cpu" is in PLATFORMS; elsewhere `plan` returns
None and BN keeps XLA's sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Platforms whose backend compiles the kernel (Triton: CUDA and ROCm GPUs). Tests add "cpu", where the
# kernel runs under Pallas's interpreter: the same program, op by op.
PLATFORMS = {"gpu"}
MAX_COLUMNS = 128  # bc: 256 bytes of bfloat16 per tile row


class Tiling(NamedTuple):
    """How a pass reads its columns: `values` in one [br, bc] tile, `warps` a program, and about
    `programs` programs (528: 4 per streaming multiprocessor of an H100/H200, 132).

    `sms` (0: off), a balanced plan for that many multiprocessors: among the program counts within
    2x of `programs`, the one whose busiest multiprocessor reads the fewest tiles. Why: ResNet-50's
    row counts are 2^a 7^b, never a multiple of 132, and the count nearest 528 is 448 in 15 of its
    22 plans (11 shapes, 2 passes): 52 multiprocessors run 4 programs while 80 run 3, 18% above an
    even share, where 392 or 784 programs are within 1% of it (untimed: bench/bn_sums_check.py's
    `_sm132` variants). `DEVICE`: the count this process's GPU reports (`multiprocessors`)."""
    values: int
    warps: int
    programs: int
    sms: int = 0


DEVICE = -1  # Tiling.sms: the default GPU's multiprocessor count, read when a plan is made


def multiprocessors(sms: int) -> int:
    """`sms`, or for `DEVICE` the multiprocessors of this process's GPUs (`core_count`: 132 for an
    H100/H200 SXM, 108 for an A100), 0 (plans unbalanced) without a GPU. Read at trace time, so
    that one setting serves every GPU and importing this module starts no backend. The GPUs are
    found as `layers` finds them for the kernel's capability check."""
    if sms != DEVICE:
        return sms
    gpus = [d for d in jax.local_devices() if d.platform == "gpu"]
    return int(getattr(gpus[0], "core_count", 0) or 0) if gpus else 0


# bench/bn_sums_check.py on one H200 (2026-11-28, session 21, ResNet-50's 11 BN shapes at batch 256,
# bench/gpu_2026-11-28b/levers/bn_sums.jsonl): the forward's one array (x) ran faster as 4096-value
# tiles of 4 warps than as 8192 of 8 in 7 of the 11 shapes; the backward's two (x, gy) as 8192-value
# tiles of 8 warps in 9 (e.g. 56x56x256: 284 -> 232 us, 14x14x1024: 99 -> 80 us; ~0.5 ms a step summed over the
# network's BNs, not yet timed in the whole step).
FORWARD = Tiling(4096, 4, 528)  # 32 values per thread, two float32 accumulators
BACKWARD = Tiling(8192, 8, 528)


def _pow2_divisor(n: int) -> int:
    return n & -n


def plan(rows: int, channels: int, groups: int = 1, tiling: Tiling = FORWARD) -> tuple[int, int, int] | None:
    """(bc, br, iterations) for sums over `rows` rows (per group) of `channels` columns: programs read
    [br * iterations, bc] slabs. None where the kernel does not fit: channels not a power of two
    (Triton tiles are), or rows with no even factor."""
    if channels < 1 or channels & (channels - 1) or rows < 2:
        return None
    bc = min(channels, MAX_COLUMNS)
    br = min(tiling.values // bc, _pow2_divisor(rows))
    if br < 2:
        return None
    steps = rows // br
    per_row_group = groups * (channels // bc)
    # the iteration count dividing `steps` whose program count is nearest tiling.programs (in ratio);
    # with tiling.sms, the busiest multiprocessor's tiles first
    divisors = [d for d in range(1, steps + 1) if steps % d == 0]

    def off_target(d):
        return abs(math.log(per_row_group * (steps // d) / tiling.programs))

    sms = multiprocessors(tiling.sms)
    if not sms:
        return bc, br, min(divisors, key=off_target)
    near = [d for d in divisors if off_target(d) <= math.log(2) + 1e-9] or divisors
    return bc, br, min(near, key=lambda d: (busiest_tiles(per_row_group * (steps // d), d, sms), off_target(d)))


def program_count(rows: int, channels: int, planned: tuple[int, int, int], groups: int = 1) -> int:
    """Programs a `plan` launches: each reads one [br * iterations, bc] slab of one group."""
    bc, br, its = planned
    return groups * (rows // (br * its)) * (channels // bc)


def busiest_tiles(programs: int, iterations: int, sms: int) -> int:
    """Tiles the busiest of `sms` multiprocessors reads, programs dealt out evenly: the kernel's
    critical path where bandwidth is per multiprocessor."""
    return -(-programs // sms) * iterations


def column_sums(fn: Callable, arrays: Sequence[jax.Array], vectors: Sequence[jax.Array] = (),
                groups: int = 1, interpret: bool = False, tiling: Tiling = FORWARD) -> tuple[jax.Array, jax.Array]:
    """(sum a, sum b) over the rows of each group, float32 (groups, C), where (a, b) = fn(tiles, vecs)
    elementwise: `tiles` the float32 [br, bc] tiles of `arrays` (each (groups * rows, C)), `vecs`
    the `vectors` (each (groups, C): per-group, per-channel factors) as float32 [1, bc]. The caller
    checks `plan` first. The partials are added up in one variadic reduction: one XLA kernel for
    both sums (two `.sum`s made two). The vectors are separate operands: stacked into one, XLA
    would write the stack in a kernel of its own (49 more launches a ResNet-50 step, counted for
    an H200), where it otherwise fuses each vector into the kernel that computes it."""
    from jax.experimental import pallas as pl

    total, c = arrays[0].shape
    rows = total // groups
    bc, br, its = plan(rows, c, groups, tiling)
    slab = br * its
    per_group = rows // slab
    programs = groups * per_group
    n = len(arrays)

    def kernel(*refs):
        ins, vec_refs, (s_ref, ss_ref) = refs[:n], refs[n:-2], refs[-2:]
        vecs = [r[...].astype(jnp.float32) for r in vec_refs]

        def body(i, acc):
            tiles = [r[pl.ds(i * br, br), :].astype(jnp.float32) for r in ins]
            a, b = fn(tiles, vecs)
            return acc[0] + a, acc[1] + b

        zero = jnp.zeros((br, bc), jnp.float32)
        s, ss = jax.lax.fori_loop(0, its, body, (zero, zero))
        s_ref[...] = jnp.sum(s, axis=0, keepdims=True)
        ss_ref[...] = jnp.sum(ss, axis=0, keepdims=True)

    in_specs = [pl.BlockSpec((slab, bc), lambda p, q: (p, q)) for _ in arrays]
    in_specs += [pl.BlockSpec((1, bc), lambda p, q: (p // per_group, q)) for _ in vectors]
    operands = list(arrays) + [v.astype(jnp.float32) for v in vectors]
    out = jax.ShapeDtypeStruct((programs, c), jnp.float32)
    kwargs = {}
    if not interpret:
        from jax.experimental.pallas import triton as plgpu

        kwargs["compiler_params"] = plgpu.CompilerParams(num_warps=tiling.warps, num_stages=3)
    s, ss = pl.pallas_call(
        kernel, grid=(programs, c // bc), in_specs=in_specs,
        out_specs=[pl.BlockSpec((1, bc), lambda p, q: (p, q))] * 2, out_shape=[out, out],
        interpret=interpret, name="bn_column_sums", **kwargs)(*operands)
    zero = jnp.float32(0)
    return jax.lax.reduce((s.reshape(groups, per_group, c), ss.reshape(groups, per_group, c)), (zero, zero),
                          lambda a, b: (a[0] + b[0], a[1] + b[1]), (1,))
