"""Batch normalisation and initialisers as the official Torch code sets them up.

Flax's `nn.BatchNorm` reduces over every non-feature axis of the global (sharded) batch. The paper
computed statistics per GPU (64 images on each of 2 GPUs), so this module can also reduce over
groups of `group_size` examples: that is a reshape, not a collective, and it gives the same result
on one device or a pod. Statistics are always float32, whatever the compute dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from resnet_v2_jax import column_sums

# N(0, sqrt(2 / (k*k*C_out))): He fan-out normal, not fan-in truncated (resnet-1k-layers, fb.resnet.torch).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# Torch's nn.Linear default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the official code zeroes the bias.
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


# The backend the network is traced for; None: jax.default_backend(). bench/gpu_launches.py sets "gpu"
# to compile for a GPU on a machine whose default backend is the CPU.
TARGET_PLATFORM: str | None = None


def _platform() -> str:
    """The backend the network is traced for ("cpu", "gpu", "tpu"): the forms below that exist for
    one backend's compiler choose by it."""
    return TARGET_PLATFORM or jax.default_backend()


@jax.custom_vjp
def _conv_same(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_same_fwd(x, w):
    return _conv_same(x, w), (x, w)


def _conv_same_bwd(res, g):
    # Both gradients as plain NHWC convolutions of physically transposed operands: XLA's CPU
    # backend then keeps its fast convolution inside while loops (scan), where its own transpose
    # rule falls to a naive loop nest (measured 30x slower on the weight gradient).
    x, w = res
    k = w.shape[0]
    dx = _conv_same(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2).astype(g.dtype))
    dw = jax.lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)).astype(x.dtype), (1, 1),
        [(k // 2, k // 2)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return dx.astype(x.dtype), jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)


_conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


def scan_friendly_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                       dimension_numbers=None, feature_group_count=1, **kwargs):
    """`lax.conv_general_dilated` for nn.Conv, with a CPU-friendly gradient for stride-1 odd
    square kernels with "same" padding (every conv of a scanned unit); the rest is unchanged."""
    k = rhs.shape[0]
    simple = (
        tuple(window_strides) == (1, 1) and rhs.shape[0] == rhs.shape[1] and k % 2 == 1
        and list(map(tuple, padding)) == [(k // 2, k // 2)] * 2 and not kwargs.get("precision")
        and (lhs_dilation is None or tuple(lhs_dilation) == (1, 1))
        and (rhs_dilation is None or tuple(rhs_dilation) == (1, 1)) and feature_group_count == 1
        and _platform() == "cpu"
    )
    if simple and kwargs.get("preferred_element_type") is None:
        return _conv_same(lhs, rhs)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, **kwargs)


def space_to_depth_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                        dimension_numbers=None, feature_group_count=1, *, align_bytes=0, **kwargs):
    """A stride-2 NHWC convolution (the ImageNet stem's 7x7 on 3 channels) computed as a stride-1
    convolution of the input's 2x2 blocks (H/2, W/2, 4C) with the kernel zero-padded to an even size
    and regrouped to (K'/2, K'/2, 4C, O): the same products and sums, same parameters, same result.

    Why: a 3-channel input fits the GPU's tensor-core convolutions badly (in the H200's profile of
    ResNet-50 at batch 256, 2026-11-27, a 1.5 ms forward and a 0.9 ms weight-gradient kernel run once
    a step, most likely the stem's: 7% of the step); 12 channels at stride 1 is how MLPerf's
    ResNet-50 stems are fed. The input is shifted by `p % 2` rows and columns before it is blocked,
    so that the blocked convolution's padding is symmetric (p // 2 blocks a side), which cuDNN
    applies itself; XLA materialises an asymmetric one as a padded copy. Other geometries go to
    `scan_friendly_conv` unchanged.

    `align_bytes` (config.model.stem_align_channels): zero channels are appended to the blocks and
    zero input rows to the kernel until a pixel's channels fill a multiple of that many bytes (12 ->
    16 channels in bfloat16 for 16 bytes). The products added are zeros. Why: in the H200's profile
    of ResNet-50 (2026-11-28) cuDNN padded the 12-channel bfloat16 operands itself, in four
    `nhwcAddPaddingKernel` calls (0.25 ms a step) and 100+ MB workspaces, and ran one sm80 CUTLASS
    convolution (0.44 ms) among its sm90 kernels."""
    s = 2
    n, h, w, c = lhs.shape
    kh, kw, _, o = rhs.shape
    plain = (
        tuple(window_strides) != (s, s) or feature_group_count != 1 or kwargs.get("precision")
        or (lhs_dilation is not None and tuple(lhs_dilation) != (1, 1))
        or (rhs_dilation is not None and tuple(rhs_dilation) != (1, 1))
        or any(lo != hi for lo, hi in map(tuple, padding))
    )
    geometry = []
    for size, k, (p, _) in zip((h, w), (kh, kw), map(tuple, padding)):
        out = (size + 2 * p - k) // s + 1
        blocks, taps = p // s, -(-k // s)  # the blocked conv's padding a side, and its kernel size
        rows = out + taps - 1 - 2 * blocks  # input blocks it reads
        shift, end = p % s, s * rows - p % s - size  # zeros before the input; after it (< 0: crop)
        read = min(size, s * (out - 1) + k - p)  # input rows the convolution's taps reach
        plain = plain or (end < 0 and s * rows - shift < read)
        geometry.append((blocks, taps, rows, shift, end))
    if plain:
        return scan_friendly_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, **kwargs)
    (bh, th, rh, sh, eh), (bw, tw, rw, sw, ew) = geometry
    x = jax.lax.pad(lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (sh, eh, 0), (sw, ew, 0), (0, 0, 0)))
    x = x.reshape(n, rh, s, rw, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, rh, rw, s * s * c)
    k = jnp.pad(rhs, ((0, s * th - kh), (0, s * tw - kw), (0, 0), (0, 0)))
    k = k.reshape(th, s, tw, s, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(th, tw, s * s * c, o)
    if align_bytes:
        per = max(1, align_bytes // jnp.dtype(lhs.dtype).itemsize)
        extra = -(s * s * c) % per
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
        k = jnp.pad(k, ((0, 0), (0, 0), (0, extra), (0, 0)))
    return jax.lax.conv_general_dilated(x, k, (1, 1), [(bh, bh), (bw, bw)],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), **kwargs)


def _group_sums(a, b, axes):
    """(sum a, sum b) over `axes` in one variadic reduction: on the GPU one kernel pair instead of
    three kernels, and each launch counts where the host, not the GPU, bounds the step."""
    sa, sb = jax.lax.reduce((a, b), (jnp.float32(0), jnp.float32(0)),
                            lambda x, y: (x[0] + y[0], x[1] + y[1]), axes)
    return jnp.expand_dims(sa, axes), jnp.expand_dims(sb, axes)


# XLA's GPU emitter sums at most 4096 rows of a column in one kernel without atomics; a longer sum
# becomes two kernels, a pass over the rows into partial sums and a pass over the partials. It adds
# up fewer than 32 partials per channel (64 under 32 channels) inline, inside the kernel that uses
# them (reduction_utils.cc, IsUnnestedReductionFasterThanElemental, ReductionIsRaceFree).
_ONE_KERNEL_ROWS = 4096


def _partial_count(rows: int, channels: int) -> int:
    """How many partial sums per channel `_partial_sums` makes; 1: leave the reduction to XLA."""
    p = 32 if channels < 32 else 16
    if rows <= _ONE_KERNEL_ROWS or rows % p or rows // p > _ONE_KERNEL_ROWS:
        return 1
    return p


def _partial_sums(a, b, axes):
    """`_group_sums` as one kernel of p partial sums per channel, added up where they are used.

    For BN's forward this saves the GPU one kernel per BN (the per-channel factors take the partials
    and add them), at the price of a first pass with p row groups instead of XLA's ~sqrt(rows)."""
    rows = math.prod(a.shape[i] for i in axes)
    p = _partial_count(rows, a.shape[-1])
    if p == 1:
        return _group_sums(a, b, axes)
    split = (a.shape[0], p, rows // p, a.shape[-1])
    sa, sb = _group_sums(a.reshape(split), b.reshape(split), (2,))  # (G, p, 1, C)
    keep = (a.shape[0],) + (1,) * len(axes) + (a.shape[-1],)
    return sa.sum(1).reshape(keep), sb.sum(1).reshape(keep)


def _batch_mesh():
    """The context mesh the step is traced under (`step.compile_steps` sets it), whose axes all shard
    the batch; None where there is none, it has one device, or the step already runs per device
    (config.explicit_data_parallel: inside its shard_map the arrays are the device's own)."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty or mesh.size == 1 or mesh.are_all_axes_manual else mesh


def _local_groups(groups: int, rows: int, devices: int) -> tuple[int, int] | None:
    """(groups, rows a group) on one of `devices` devices holding consecutive equal slices of
    `groups` groups of `rows` rows: whole groups, or one group's share. None where a slice would
    straddle a group boundary (config.validate's bn_group_size rule rules that out)."""
    if groups >= devices:
        return (groups // devices, rows) if groups % devices == 0 else None
    share = devices // groups
    return (1, rows // share) if devices % groups == 0 and rows % share == 0 else None


def _per_device(fn, groups: int, rows, per_group=(), whole=()):
    """fn(local_groups, rows, per_group, whole) on each device's share of the batch, its outputs'
    first axes concatenated in device order; on one device (no `_batch_mesh`), fn(groups, ...).

    `rows`: arrays (groups * rows a group, ...) whose first axis the batch shards; `per_group`:
    (groups, ...) factors, each device given its own groups' (one group where it holds a share);
    `whole`: arrays every device reads whole. Why: XLA's partitioner cannot split a custom call (a
    Pallas kernel, a cuDNN fusion) and gathers its operands onto every device: compiled for two
    H200s, ResNet-50 with bn_pallas_sums all-gathered 93 whole activations a step, ResNet-164 with
    conv1x1_fusion 145. In a shard_map each device's kernel reads its own rows."""
    mesh = _batch_mesh()
    if mesh is None:
        return fn(groups, rows, per_group, whole)
    from jax.sharding import PartitionSpec as P

    devices, axes = mesh.size, tuple(mesh.axis_names)
    local_g = _local_groups(groups, rows[0].shape[0] // groups, devices)[0]
    n_rows, n_group = len(rows), len(per_group)
    # Whole groups a device: each device reads the factors it computed (sharded as the groups are;
    # read whole, XLA would all-gather each, 96 a ResNet-164 step on two H200s). A share of one
    # group: the factors come from sums across devices, on every device already.
    split = groups >= devices

    def body(*ops):
        own = ops[n_rows:n_rows + n_group]
        if not split:
            first = jax.lax.axis_index(axes) * groups // devices  # this device's group
            own = [jax.lax.dynamic_slice_in_dim(v, first, local_g) for v in own]
        return fn(local_g, ops[:n_rows], own, ops[n_rows + n_group:])

    specs = (P(axes),) * n_rows + (P(axes) if split else P(),) * n_group + (P(),) * len(whole)
    return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P(axes), check_vma=False)(
        *rows, *per_group, *whole)


def _pallas_plan(x, tiling):
    """`column_sums.plan` for grouped x (G, g, ..., C), per device (`_batch_mesh`), where the traced
    platform compiles the kernel; else None (XLA's sums)."""
    if not pallas_sums_available():
        return None
    mesh = _batch_mesh()
    local = _local_groups(x.shape[0], math.prod(x.shape[1:-1]), mesh.size if mesh else 1)
    return local and column_sums.plan(local[1], x.shape[-1], local[0], tiling)


# The oldest CUDA GPUs that run config.model.bn_pallas_sums' kernel: Ampere (8.0), whose Triton code
# has native bfloat16; timed on an H200 (9.0). An older CUDA GPU, or one that reports no CUDA compute
# capability (ROCm), keeps XLA's sums: the ImageNet experiments set the lever, and on a V100 or T4
# the step must still compile.
PALLAS_SUMS_MIN_CAPABILITY = (8, 0)


def _capability(device) -> tuple[int, ...] | None:
    """A CUDA device's compute capability as (major, minor), from JAX's "9.0" string (JAX's own
    cuDNN code reads it so); None if it reports none (ROCm's "gfx90a", a CPU)."""
    try:
        got = tuple(int(p) for p in str(getattr(device, "compute_capability", "")).split(".")[:2])
    except ValueError:
        return None
    return got if len(got) == 2 else None


@functools.cache
def _pallas_sums_gpu_ok() -> bool:
    """Whether this process's GPUs run the kernel (PALLAS_SUMS_MIN_CAPABILITY); said once where not.
    True without a local GPU: bench/gpu_launches.py compiles for an H200 on a CPU machine."""
    gpus = [d for d in jax.local_devices() if d.platform == "gpu"]
    if not gpus:
        return True
    got = _capability(gpus[0])
    if got is None or got < PALLAS_SUMS_MIN_CAPABILITY:
        logging.warning("model.bn_pallas_sums ignored on %s (compute capability %s; the kernel needs a CUDA GPU "
                        "of %s or later): BN keeps XLA's sums", gpus[0].device_kind,
                        ".".join(map(str, got)) if got else getattr(gpus[0], "compute_capability", "none"),
                        ".".join(map(str, PALLAS_SUMS_MIN_CAPABILITY)))
        return False
    return True


def pallas_sums_available() -> bool:
    """Whether the platform the network is traced for compiles config.model.bn_pallas_sums' kernel
    (on a GPU: one of PALLAS_SUMS_MIN_CAPABILITY or later)."""
    platform = _platform()
    return platform in column_sums.PLATFORMS and (platform != "gpu" or _pallas_sums_gpu_ok())


def _pallas_sums(fn, x, arrays, vectors, tiling):
    """`column_sums.column_sums` over grouped x's rows, kept dims as `_group_sums` returns them. On
    several devices each sums its own groups, or its share of one (`_per_device`), and XLA adds the
    shares across devices (an all-gather of (devices, C) floats, as for its own sums)."""
    g, c = x.shape[0], x.shape[-1]
    interpret = _platform() != "gpu"
    sa, sb = _per_device(lambda lg, rows, vecs, _: column_sums.column_sums(fn, rows, vecs, lg, interpret, tiling),
                         g, [a.reshape(-1, c) for a in arrays], [v.reshape(g, c) for v in vectors])
    if sa.shape[0] != g:  # each group's shares, on consecutive devices
        sa, sb = _group_sums(sa.reshape(g, -1, c), sb.reshape(g, -1, c), (1,))
    keep = (g,) + (1,) * (x.ndim - 2) + (c,)
    return sa.reshape(keep), sb.reshape(keep)


def _scale_shift(x, mul, add, dtype):
    """x * mul + add with per-channel float32 factors: one fused multiply-add in `dtype`. The forward,
    the eval path and the backward's ReLU mask all use it, so the mask matches the forward exactly."""
    return x.astype(dtype) * mul.astype(dtype) + add.astype(dtype)


def _explicit_devices() -> int:
    """The devices of the explicit data-parallel step (config.explicit_data_parallel) where the
    network is traced inside its shard_map, whose arrays are one device's; else 1."""
    mesh = jax.sharding.get_abstract_mesh()
    return mesh.size if not mesh.empty and mesh.are_all_axes_manual else 1


def _across_devices(sums, spread: int):
    """Per-group sums added over the `spread` consecutive devices that share each BN group, inside
    the explicit step's shard_map (1: the groups are the device's own)."""
    if spread == 1:
        return sums
    mesh = jax.sharding.get_abstract_mesh()
    axes, devices = tuple(mesh.axis_names), mesh.size
    index = jax.lax.axis_index(axes) // spread
    # Gathered, not psum'd: XLA's GPU compiler concatenates a psum's operands into one buffer and
    # cuts them out again, 3 kernels more a psum (ResNet-50 on two H200s: 1,525 launches against
    # 1,213 sharded); the gather is the form XLA's partitioner gives the sharded step's BN sums.
    every = jax.lax.all_gather(sums, axes)
    return jax.tree.map(lambda v: v.reshape((devices // spread, spread) + v.shape[1:]).sum(1)[index], every)


def _bn_statistics(x, scale, bias, epsilon, sums, spread=1):
    """x grouped as (G, g, ..., C). (mean, var, mul, add): float32 per-group statistics and the
    factors of BN's output x * mul + add. `sums`, how training reduces BN's sums (`BatchNorm._sums`):
    "xla", XLA's reductions; "partials", the forward's as one XLA kernel of partial sums
    (config.model.bn_partial_sums); "pallas", forward and backward in `column_sums`' kernel where
    the platform compiles it (config.model.bn_pallas_sums). `spread`: devices a group spans in the
    explicit data-parallel step (`_across_devices`)."""
    axes = tuple(range(1, x.ndim - 1))
    count = math.prod(x.shape[a] for a in axes) * spread
    if sums == "pallas" and _pallas_plan(x, column_sums.FORWARD):
        s, ss = _pallas_sums(lambda t, v: (t[0], t[0] * t[0]), x, [x], (), column_sums.FORWARD)
    else:
        xf = x.astype(jnp.float32)
        s, ss = (_partial_sums if sums == "partials" else _group_sums)(xf, xf * xf, axes)
    s, ss = _across_devices((s, ss), spread)
    mean = s / count
    var = jnp.maximum(ss / count - mean * mean, 0.0)
    mul = scale * jax.lax.rsqrt(var + epsilon)
    return mean, var, mul, bias - mean * mul


def _saved_statistics(mean, var, mul, add, epsilon):
    """The per-channel vectors BN's backward reads (`_bn_train_bwd` unpacks them in this order)."""
    return jnp.stack([mean, jax.lax.rsqrt(var + epsilon), mul, add])


def _bn_forward(x, scale, bias, relu, epsilon, dtype, sums, spread=1):
    """x grouped as (G, g, ..., C). (y, mean, var, mul, add) with float32 per-group statistics."""
    mean, var, mul, add = _bn_statistics(x, scale, bias, epsilon, sums, spread)
    y = _scale_shift(x, mul, add, dtype)
    return (jnp.maximum(y, 0) if relu else y), mean, var, mul, add


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _bn_train(x, scale, bias, relu, epsilon, dtype, recompute_mask=False, sums="xla", spread=1):
    return _bn_forward(x, scale, bias, relu, epsilon, dtype, sums, spread)[:3]


def _bn_train_fwd(x, scale, bias, relu, epsilon, dtype, recompute_mask, sums, spread):
    y, mean, var, mul, add = _bn_forward(x, scale, bias, relu, epsilon, dtype, sums, spread)
    # Saved: the input and one stack of per-channel vectors (scale * rstd is `mul`). Autodiff
    # would save the float32 copy of x, the ReLU mask and about six per-channel intermediates:
    # inside a scan each is one more stacked buffer, and one more kernel per unit on the GPU.
    res = (x, _saved_statistics(mean, var, mul, add, epsilon))
    if relu and recompute_mask:
        # The backward's mask is the forward's arithmetic on the same values, so XLA merges the two
        # and keeps the forward's mask (1 byte an element, written and read back). Behind a barrier
        # the saved values are new to XLA, and the backward recomputes the mask from x, which it
        # reads anyway. In float32 the gradients agree to rounding (tests); in bfloat16 another
        # fusion may round x * mul + add differently, so the mask can differ where it is ~0.
        res = jax.lax.optimization_barrier(res)
    return (y, mean, var), res


def _bn_grad_terms(x, gy, mean, rstd, mul, add, relu, dtype):
    """(gz, centred, xhat) of BN's backward, elementwise: the float32 gradient behind the ReLU's mask
    (the forward's arithmetic in `dtype`), x centred and x normalised. On whole arrays or on
    `column_sums`' tiles (x and gy in float32 there, which `dtype` holds exactly): the same mask."""
    gz = gy.astype(jnp.float32)
    if relu:
        gz = jnp.where(_scale_shift(x, mul, add, dtype) > 0, gz, 0.0)
    centred = x.astype(jnp.float32) - mean
    return gz, centred, centred * rstd


def _bn_train_bwd(relu, epsilon, dtype, recompute_mask, sums, spread, res, cotangents):
    """The textbook BN gradient per group, plus the (usually zero) cotangents of mean and var.

    Its sums are XLA's unless `sums` is "pallas": split like the forward's "partials", they made XLA
    store the float32 products (counted for an H200: 109 more full-size kernels for ResNet-110).
    Where a group spans devices (`spread`), x's gradient takes the group's sums over its devices;
    the scale and bias gradients are this device's share (the step averages them over devices)."""
    del epsilon, recompute_mask
    x, (mean, rstd, mul, add) = res
    gy, gmean, gvar = cotangents
    axes = tuple(range(1, x.ndim - 1))
    count = math.prod(x.shape[a] for a in axes) * spread
    gz, centred, xhat = _bn_grad_terms(x, gy, mean, rstd, mul, add, relu, dtype)
    if sums == "pallas" and _pallas_plan(x, column_sums.BACKWARD):
        def tile_sums(t, v):  # the same terms on column_sums' [br, bc] tiles of (x, gy)
            g, _, h = _bn_grad_terms(t[0], t[1], *v, relu, dtype)
            return g, g * h

        sum_gz, sum_gz_xhat = _pallas_sums(tile_sums, x, [x, gy], [mean, rstd, mul, add], column_sums.BACKWARD)
    else:
        sum_gz, sum_gz_xhat = _group_sums(gz, gz * xhat, axes)
    group_gz, group_gz_xhat = _across_devices((sum_gz, sum_gz_xhat), spread)
    dx = (mul / count) * (count * gz - group_gz - xhat * group_gz_xhat)
    dx = dx + gmean / count + gvar * (2.0 / count) * centred
    param_axes = (0,) + axes
    c = x.shape[-1]
    return dx.astype(x.dtype), jnp.sum(sum_gz_xhat, param_axes).reshape(c), jnp.sum(sum_gz, param_axes).reshape(c)


_bn_train.defvjp(_bn_train_fwd, _bn_train_bwd)


def _conv(y, kernel, strides: int, padding: int):
    """nn.Conv's convolution (NHWC, HWIO, explicit padding) for a kernel already in y's dtype."""
    return scan_friendly_conv(y, kernel, (strides, strides), [(padding, padding)] * 2,
                              dimension_numbers=("NHWC", "HWIO", "NHWC"))


# Platforms whose XLA compiles a `jax._src.cudnn.fusion.cudnn_fusion` region (config.model.conv1x1_fusion):
# the region becomes one GEMM kernel, cuDNN's or XLA's own Triton one, whichever its autotuner picks.
# Tests add "cpu" with the region left as it is, to run the same arithmetic here.
GEMM_FUSION_PLATFORMS = {"gpu"}
# The first jaxlib whose XLA compiles ResNet-50 with the regions for an H200, the version the H200
# runs (deviceless compile, 2026-11-27): 0.10.2's HLO verifier rejects the program after XLA's
# computation deduplicator merges two identical regions.
GEMM_FUSION_MIN_JAXLIB = (0, 11, 2)


@functools.cache
def _cudnn_fusion():
    """JAX's (private) cuDNN-fusion wrapper where this jaxlib compiles it, else None, said once."""
    from jax._src.lib import version

    try:
        from jax._src.cudnn.fusion import cudnn_fusion
    except ImportError:  # pragma: no cover - a JAX without it keeps the convolutions
        cudnn_fusion = None
    if cudnn_fusion is None or tuple(version[:3]) < GEMM_FUSION_MIN_JAXLIB:
        logging.warning("model.conv1x1_fusion ignored: it needs jaxlib >= %s with jax._src.cudnn.fusion "
                        "(this is %s); the convolutions stay", ".".join(map(str, GEMM_FUSION_MIN_JAXLIB)),
                        ".".join(map(str, version)))
        return None
    if "rocm" in getattr(jax.devices()[0].client, "platform_version", "").lower():
        logging.warning("model.conv1x1_fusion ignored: cuDNN fusions need a CUDA GPU; the convolutions stay")
        return None
    return cudnn_fusion


def _gemm_fusion(fn):
    """`fn` (elementwise ops around one matrix product) as one fused GEMM kernel on the platforms of
    GEMM_FUSION_PLATFORMS; None elsewhere, or where this jaxlib cannot compile it."""
    if _platform() not in GEMM_FUSION_PLATFORMS:
        return None
    if _platform() != "gpu":
        return fn
    wrap = _cudnn_fusion()
    return None if wrap is None else wrap(fn)


def gemm_fusion_available() -> bool:
    """Whether the platform the network is traced for compiles the fused GEMMs of
    config.model.conv1x1_fusion (the benchmark's line reports what the compile got)."""
    return _gemm_fusion(_bn_relu_gemm) is not None


def _fused_1x1(kernel, strides: int, padding: int, fuse: bool) -> bool:
    """Whether conv(relu(BN(x))) runs as one GEMM with the BN-ReLU as its prologue: a 1x1, stride-1
    convolution."""
    return fuse and kernel.shape[:2] == (1, 1) and strides == 1 and padding == 0


def _bn_relu_gemm(x, mul, add, w, dtype):
    """relu(x * mul + add) @ w: x (groups, rows, K) with each group's factors mul, add (groups, 1, K),
    w (K, N); in `dtype`, float32 accumulation."""
    y = jnp.maximum(_scale_shift(x, mul, add, dtype), 0)
    return jax.lax.dot_general(y, w, (((2,), (0,)), ((), ())), preferred_element_type=jnp.float32).astype(dtype)


def _bn_relu_gemm_wgrad(x, mul, add, gz, dtype):
    """relu(x * mul + add)^T @ gz for each group, (groups, K, N): the 1x1 convolution's weight
    gradient, BN-ReLU recomputed inside, before the sum over groups. One contracting dimension and the
    groups as a batch dimension: the H200's cuDNN (JAX 0.11.2, 2026-11-28) compiled no candidate for
    the same product contracting (groups, rows) at once, in every unit of ResNet-50, -164 and -1001."""
    y = jnp.maximum(_scale_shift(x, mul, add, dtype), 0)
    return jax.lax.dot_general(y, gz, (((1,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8, 9, 10))
def _bn_relu_conv(x, scale, bias, kernel, epsilon, dtype, sums, strides, padding, gemm_fusion, spread=1):
    """conv(relu(BN(x))) for grouped x, kernel in `dtype`: (z, mean, var). `_bn_train` followed by
    the convolution, except for what the backward keeps: x, not the BN-ReLU output y.

    `gemm_fusion` (config.model.conv1x1_fusion): where `_fused_1x1` holds and the platform compiles
    it, the forward and the weight gradient are matrix products that apply the BN-ReLU to x as
    they read it, so y is never written: XLA otherwise writes y in a kernel of its own and reads it
    back in the convolution (its automatic GEMM fusion takes the ReLU into the product but not
    the per-channel scale and shift)."""
    return _bn_relu_conv_fwd(x, scale, bias, kernel, epsilon, dtype, sums, strides, padding,
                             gemm_fusion, spread)[0]


def _bn_relu_conv_fwd(x, scale, bias, kernel, epsilon, dtype, sums, strides, padding, gemm_fusion, spread):
    fused = _gemm_fusion(_bn_relu_gemm) if _fused_1x1(kernel, strides, padding, gemm_fusion) else None
    if fused is None:
        (y, mean, var), bn_res = _bn_train_fwd(x, scale, bias, True, epsilon, dtype, False, sums, spread)
        z = _conv(y.reshape((-1,) + y.shape[2:]), kernel, strides, padding)
        return (z, mean, var), (*bn_res, kernel)
    # BN's statistics and saved vectors as `_bn_train_fwd` has them; its output is the product's prologue.
    mean, var, mul, add = _bn_statistics(x, scale, bias, epsilon, sums, spread)
    (g, k), n = (x.shape[0], x.shape[-1]), kernel.shape[-1]
    z = _per_device(lambda lg, xs, f, w: fused(xs[0].reshape(lg, -1, k), *f, *w, dtype=dtype).reshape(-1, n),
                    g, [x.reshape(-1, k)], [mul.reshape(g, 1, k), add.reshape(g, 1, k)], [kernel.reshape(k, n)])
    stats = _saved_statistics(mean, var, mul, add, epsilon)
    return (z.reshape((-1,) + x.shape[2:-1] + (n,)), mean, var), (x, stats, kernel)


def _bn_relu_conv_bwd(epsilon, dtype, sums, strides, padding, gemm_fusion, spread, res, cotangents):
    """The convolution's gradients from y recomputed (one elementwise pass over x, which the BN
    gradient reads anyway; with `gemm_fusion`, inside the weight gradient's product), then
    `_bn_train`'s backward."""
    x, stats, kernel = res
    gz, gmean, gvar = cotangents
    _, _, mul, add = stats
    fused = _gemm_fusion(_bn_relu_gemm_wgrad) if _fused_1x1(kernel, strides, padding, gemm_fusion) else None
    if fused is None:
        y = jnp.maximum(_scale_shift(x, mul, add, dtype), 0)
        _, pullback = jax.vjp(lambda y, k: _conv(y, k, strides, padding), y.reshape((-1,) + y.shape[2:]), kernel)
        gy, gkernel = pullback(gz)
    else:
        (g, k), n = (x.shape[0], x.shape[-1]), kernel.shape[-1]
        # each device's groups' products, or its share of one group's, added up over all
        gkernel = _per_device(lambda lg, r, f, _: fused(r[0].reshape(lg, -1, k), *f, r[1].reshape(lg, -1, n),
                                                        dtype=dtype),
                              g, [x.reshape(-1, k), gz.reshape(-1, n)], [mul.reshape(g, 1, k), add.reshape(g, 1, k)])
        gkernel = gkernel.sum(0).astype(kernel.dtype).reshape(kernel.shape)
        gy = jax.lax.dot_general(gz.reshape(-1, n), kernel.reshape(k, n), (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32).astype(gz.dtype)
    dx, dscale, dbias = _bn_train_bwd(True, epsilon, dtype, False, sums, spread, (x, stats),
                                      (gy.reshape(x.shape), gmean, gvar))
    return dx, dscale, dbias, gkernel


_bn_relu_conv.defvjp(_bn_relu_conv_fwd, _bn_relu_conv_bwd)


class ConvKernel(nn.Module):
    """nn.Conv's kernel parameter alone (its name, shape, init and dtype: the same values from the
    same key), for a convolution that `BatchNorm(relu=True)(x, conv=...)` computes."""

    shape: tuple[int, ...]
    kernel_init: Any = conv_init

    @nn.compact
    def __call__(self):
        return self.param("kernel", self.kernel_init, self.shape, jnp.float32)


def _pool_windows(x, window: int, stride: int, padding: int):
    """The window*window strided views of -inf-padded NHWC x, in the window's row-major order.

    On a GPU each view is a clamped gather of x with -inf where the window reaches into the
    padding, not a strided slice of a padded copy: XLA's GPU code for the pad branches per element
    and loads one element at a time (the ResNet-50 stem's two pool kernels: 36 scalar loads and ~20
    branches a thread), the gathers none, with 4-channel vector loads (compiled for an H200,
    2026-11-27, session 14). Elsewhere the slices: on a CPU the gather forms made the pool's forward
    and backward together 3x slower, and a TPU's gathers have not been tried. The same values either way (tests run both)."""
    if _platform() != "gpu":
        xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-jnp.inf)
        n, hp, wp, c = xp.shape
        ho, wo = (hp - window) // stride + 1, (wp - window) // stride + 1
        return [jax.lax.slice(xp, (0, a, b, 0), (n, a + stride * (ho - 1) + 1, b + stride * (wo - 1) + 1, c),
                              (1, stride, stride, 1)) for a in range(window) for b in range(window)]
    n, h, w, c = x.shape
    ho, wo = (h + 2 * padding - window) // stride + 1, (w + 2 * padding - window) // stride + 1
    top = jax.lax.broadcasted_iota(jnp.int32, (n, ho, wo, c), 1) * stride - padding  # each window's first row
    left = jax.lax.broadcasted_iota(jnp.int32, (n, ho, wo, c), 2) * stride - padding
    views = []
    for a in range(window):
        rows = jnp.clip(stride * jnp.arange(ho) + a - padding, 0, h - 1)
        for b in range(window):
            cols = jnp.clip(stride * jnp.arange(wo) + b - padding, 0, w - 1)
            inside = (top + a >= 0) & (top + a < h) & (left + b >= 0) & (left + b < w)
            views.append(jnp.where(inside, x[:, rows][:, :, cols], -jnp.inf))
    return views


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window: int, stride: int, padding: int):
    """Square max pooling of NHWC x (the ImageNet stem's 3x3, stride 2, padding 1), with a cheaper gradient.

    XLA's gradient of a max pool is select-and-scatter, which its GPU compiler turns into an arg-max
    pass writing int32 window coordinates, a scatter and a slice: 4.2 GB of the 89.2 GB a ResNet-50
    step at batch 256 moved with it, in XLA's count for an H200. Here the forward keeps, as int8, which element
    of each window is the first maximum, and the gradient is one elementwise pass: 3.2 GB less, and
    0.45 GiB less memory. Same values, and the same element gets the gradient when several tie
    (the first in row-major window order, as select-and-scatter's `>=`): tests compare with
    `jax.grad` of `nn.max_pool` exactly, ties included."""
    return functools.reduce(jnp.maximum, _pool_windows(x, window, stride, padding))


def _max_pool_fwd(x, window, stride, padding):
    views = _pool_windows(x, window, stride, padding)
    y = functools.reduce(jnp.maximum, views)
    first = jnp.full(y.shape, len(views), jnp.int8)
    for k in reversed(range(len(views))):
        first = jnp.where(views[k] == y, jnp.int8(k), first)
    return y, (first, x.shape)


def _max_pool_bwd(window, stride, padding, res, g):
    return (_max_pool_bwd_gathered if _platform() == "gpu" else _max_pool_bwd_phases)(window, stride, padding, res, g)


def _max_pool_bwd_phases(window, stride, padding, res, g):
    """Each input element gathers its 1 to 4 window shares, phase by phase, instead of adding up nine
    strided scatters of the whole grid: the padded grid's rows P = stride * q + r (phase r) take
    share a = r + stride * j from output row q - j, so a phase is a sum of shifted (not strided)
    shares, and the phases interleave by a reshape. Same sums in the same order (a ascending)."""
    first, (n, h, w, c) = res
    ho, wo = g.shape[1], g.shape[2]
    qh, qw = -(-(h + 2 * padding) // stride), -(-(w + 2 * padding) // stride)
    g32, zero = g.astype(jnp.float32), jnp.float32(0)
    rows = []
    for r in range(stride):
        cols = []
        for s in range(stride):
            acc = jnp.zeros((n, qh, qw, c), jnp.float32)
            for j in range(-(-(window - r) // stride)):
                for i in range(-(-(window - s) // stride)):
                    part = jnp.where(first == (r + stride * j) * window + s + stride * i, g32, zero)
                    acc = acc + jax.lax.pad(part, zero, ((0, 0, 0), (j, qh - ho - j, 0), (i, qw - wo - i, 0),
                                                         (0, 0, 0)))
            cols.append(acc)
        rows.append(jnp.stack(cols, axis=3))  # (n, qh, qw, stride, c): column phases
    dxp = jnp.stack(rows, axis=2).reshape(n, qh * stride, qw * stride, c)  # (n, qh, r, qw, s, c) interleaved
    return (dxp[:, padding:padding + h, padding:padding + w].astype(g.dtype),)


def _max_pool_bwd_gathered(window, stride, padding, res, g):
    """Each input element tests its 1-4 windows by value, without a branch: on the padded input grid,
    row P = stride * m + r (phase r) is row a = r + stride * j of output row m - j's window, so for
    each shift (j, i) the gradient and the first-maximum index, read at output (m - j, k - i)
    through a clamped gather, count where that window exists and its index is (a, b). Same sums in
    the same order (j, then i, ascending) as the scatter's.

    The GPU's form: XLA's GPU code for `_max_pool_bwd_phases`' interleave branches on each pixel's
    column parity, and a warp holds two neighbouring pixels, so every warp ran both branches, with
    scalar loads: the H200 took 0.94 ms for its 0.57 GB (0.6 TB/s; ResNet-50, batch 256, 2026-11-27,
    third run). Compiled for an H200 (bench/gpu_launches.py's target), this form is one kernel with
    no branch and 4-channel vector loads (2026-11-27, session 14). On the project's 2-core CPU it took
    59 against the phases' 13 ms (batch 16, 112x112x64, float32; same session)."""
    first, (n, h, w, c) = res
    ho, wo = g.shape[1], g.shape[2]
    qh, qw = -(-(h + 2 * padding) // stride), -(-(w + 2 * padding) // stride)
    blocks = (n, qh, stride, qw, stride, c)  # the padded input grid as (output row, phase) x (column, phase)

    def grid(axis):
        return jax.lax.broadcasted_iota(jnp.int32, blocks, axis).reshape(n, qh * stride, qw * stride, c)

    def spread(x):  # an output-grid array read at each input element's output row and column
        return jnp.broadcast_to(x[:, :, None, :, None, :], blocks).reshape(n, qh * stride, qw * stride, c)

    r, s, m, k = grid(2), grid(4), grid(1), grid(3)
    # The barrier keeps g in its own dtype between BN's backward and this pass: without it XLA drops
    # the float32 -> bfloat16 -> float32 round trip and writes and reads the gradient in float32
    # (ResNet-50 on an H200, counted without one, 2026-11-28: 78.93 -> 78.72 GB a step, the same
    # 857 launches; the H200's profile read it at 1.63 TB/s in float32).
    g32 = jax.lax.optimization_barrier(g).astype(jnp.float32)
    dxp = jnp.zeros((n, qh * stride, qw * stride, c), jnp.float32)
    for j in range(-(-window // stride)):
        rows = jnp.clip(jnp.arange(qh) - j, 0, ho - 1)
        for i in range(-(-window // stride)):
            cols = jnp.clip(jnp.arange(qw) - i, 0, wo - 1)
            a, b = r + stride * j, s + stride * i
            exists = (m >= j) & (m - j < ho) & (k >= i) & (k - i < wo) & (a < window) & (b < window)
            hit = exists & (spread(first[:, rows][:, :, cols]) == (a * window + b).astype(first.dtype))
            dxp = dxp + jnp.where(hit, spread(g32[:, rows][:, :, cols]), 0.0)
    return (dxp[:, padding:padding + h, padding:padding + w].astype(g.dtype),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


class BatchNorm(nn.Module):
    """BN with gamma 1, beta 0, epsilon 1e-5 and running-average momentum 0.9 (Torch's 0.1).

    `relu=True` is BN followed by ReLU, computed (and differentiated) as one op. In training the
    gradient is written by hand (`_bn_train`): the same function, fewer saved tensors and kernels."""

    use_running_average: bool
    group_size: int = 0  # 0: the whole batch; g: statistics over consecutive groups of g examples
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    scale_init: Any = nn.initializers.ones
    relu: bool = False
    recompute_mask: bool = False  # the backward recomputes the ReLU mask (config.model.bn_recompute_mask)
    partial_sums: bool = False  # the forward's sums as one kernel of partials (config.model.bn_partial_sums)
    pallas_sums: bool = False  # the sums as column_sums' kernel (config.model.bn_pallas_sums)
    conv1x1_fusion: bool = False  # BN-ReLU as a following 1x1 conv's GEMM prologue (config.model.conv1x1_fusion)

    def _sums(self) -> str:
        """How training reduces BN's per-channel sums (`_bn_statistics` lists the three ways)."""
        return "pallas" if self.pallas_sums else "partials" if self.partial_sums else "xla"

    @nn.compact
    def __call__(self, x, conv: tuple | None = None):
        """`conv`: (kernel, strides, padding) of a convolution to apply to the output (BN-ReLU only):
        in training its backward then recomputes the BN-ReLU output instead of keeping it."""
        if conv is not None and not self.relu:
            raise ValueError("BatchNorm(conv=...) needs relu=True")
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))

        if self.use_running_average:
            mul = scale * jax.lax.rsqrt(ra_var.value + self.epsilon)
            add = bias - ra_mean.value * mul
            y = _scale_shift(x, mul, add, self.dtype)
            y = jnp.maximum(y, 0) if self.relu else y
            return y if conv is None else _conv(y, conv[0].astype(self.dtype), *conv[1:])

        n = x.shape[0]
        total = n * _explicit_devices()  # the batch: in the explicit data-parallel step, all devices'
        group = self.group_size if 0 < self.group_size < total else total
        g, spread = min(group, n), max(1, group // n)  # spread: devices one group spans
        if n % g or group % g:
            raise ValueError(f"bn_group_size={group} does not divide the batch of {total} examples")
        grouped = x.reshape((n // g, g) + x.shape[1:])
        if conv is None:
            y, mean, var = _bn_train(grouped, scale, bias, self.relu, self.epsilon, jnp.dtype(self.dtype),
                                     self.recompute_mask, self._sums(), spread)
            y = y.reshape((-1,) + y.shape[2:])
        else:
            kernel, strides, padding = conv
            y, mean, var = _bn_relu_conv(grouped, scale, bias, kernel.astype(self.dtype), self.epsilon,
                                         jnp.dtype(self.dtype), self._sums(), strides, padding,
                                         self.conv1x1_fusion, spread)
        if not self.is_initializing():
            axes = tuple(range(grouped.ndim - 1))
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean).mean(axes).reshape(c)
            ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(var).mean(axes).reshape(c)
        return y
