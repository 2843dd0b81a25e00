"""Does cuDNN take a BN-ReLU as the prologue of a convolution? One op at a time, on the GPU.

`model.conv1x1_fusion` puts a unit's BN-ReLU inside the 1x1 convolutions' GEMMs (cuDNN-fusion
regions that XLA compiles as one GEMM kernel). A 3x3 convolution is no GEMM: for a region around
one, XLA's deviceless compile for an H200 leaves an unresolved custom fusion, so only a GPU can
say whether cuDNN compiles it and how fast. If it does, every BN-ReLU -> conv of every network
(ResNet-110's units have only 3x3 ones) could skip writing the BN-ReLU output.

For each shape: the forward of BN-ReLU -> conv (bf16, NHWC, per-channel float32 factors) as XLA
compiles it (an elementwise kernel, then cuDNN's convolution) and as one cuDNN-fusion region; the
median of `--iters` calls each, the largest difference between the two outputs, or the error
that compiling the region raised; for the 1x1 shapes also the region around a matrix product that
the option compiles (`layers._bn_relu_gemm`). One JSON line per shape and way. Needs no TensorFlow:

  python3 bench/conv_region_check.py [--iters=50]
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from resnet_v2_jax import layers

flags.DEFINE_integer("iters", 50, "timed calls per way and shape")

# (name, batch, size, in channels, kernel, out channels): the goal models' BN-ReLU -> conv shapes
SHAPES = [  # the 1x1 ones first: a region XLA or cuDNN cannot compile may end the process
    ("in50 1x1 256->64", 256, 56, 256, 1, 64),
    ("in50 1x1 1024->256", 256, 14, 1024, 1, 256),
    ("cifar164 1x1 64->16", 128, 32, 64, 1, 16),
    ("cifar110 3x3 16", 128, 32, 16, 3, 16),
    ("in50 3x3 64", 256, 56, 64, 3, 64),
]


def bn_relu_conv(x, mul, add, w):
    y = jnp.maximum(layers._scale_shift(x, mul, add, x.dtype), 0)  # the model's BN-ReLU arithmetic
    return jax.lax.conv_general_dilated(y, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        preferred_element_type=jnp.float32).astype(x.dtype)


def timed(fn, args, iters: int) -> tuple[float, jax.Array]:
    out = jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), out


def main(argv):
    del argv
    from jax._src.cudnn.fusion import cudnn_fusion  # JAX's private API, as layers._gemm_fusion uses it

    iters = flags.FLAGS.iters
    for name, n, size, c, k, o in SHAPES:
        keys = jax.random.split(jax.random.PRNGKey(0), 4)
        args = (jax.random.normal(keys[0], (n, size, size, c), jnp.bfloat16),
                1 + 0.1 * jax.random.normal(keys[1], (c,)), 0.1 * jax.random.normal(keys[2], (c,)),
                (0.1 * jax.random.normal(keys[3], (k, k, c, o))).astype(jnp.bfloat16))
        gb = (n * size * size * (c + o) * 2) / 1e9  # x read, output written: the fused op's floor
        base = {"shape": name, "device": jax.devices()[0].device_kind, "jax_version": jax.__version__,
                "min_gb": round(gb, 4)}
        ms, ref = timed(jax.jit(bn_relu_conv), args, iters)
        print(json.dumps({**base, "way": "xla", "ms": round(ms, 4)}), flush=True)
        # the option's own form first, for 1x1: the region around a matrix product (layers._bn_relu_gemm)
        ways = {"gemm_region": gemm_region(cudnn_fusion)} if k == 1 else {}
        ways["cudnn_fusion"] = cudnn_fusion(bn_relu_conv)
        for way, fn in ways.items():
            try:
                ms, out = timed(jax.jit(fn), args, iters)
            except Exception as e:  # noqa: BLE001 - the answer may be "cuDNN does not take it": say so
                print(json.dumps({**base, "way": way, "error": f"{type(e).__name__}: {str(e)[:300]}"}), flush=True)
                continue
            diff = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))))
            scale = float(jnp.max(jnp.abs(ref.astype(jnp.float32))))
            print(json.dumps({**base, "way": way, "ms": round(ms, 4), "max_abs_diff": diff, "max_abs": scale}),
                  flush=True)


def gemm_region(cudnn_fusion):
    """BN-ReLU -> 1x1 conv as the option compiles it: a region around `layers._bn_relu_gemm`."""
    def fn(x, mul, add, w):
        c, o = w.shape[2:]
        z = cudnn_fusion(layers._bn_relu_gemm)(x.reshape(1, -1, c), mul.reshape(1, 1, c), add.reshape(1, 1, c),
                                               w.reshape(c, o), dtype=jnp.dtype(x.dtype))
        return z.reshape(x.shape[:-1] + (o,))
    return fn


if __name__ == "__main__":
    app.run(main)
