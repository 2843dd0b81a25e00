"""One 3x3 convolution's forward and both gradients, XLA against PyTorch (oneDNN), on this machine.

    python bench/cpu_conv_parts.py [--batch=32] [--calls=20]

BENCHMARKS.md ("Side by side with the PyTorch peer on this CPU") explains the CPU gap with these
numbers: NHWC `lax.conv_general_dilated` forward, its input gradient as the convolution our custom
VJP uses, and its weight gradient (`layers._conv_same`'s backward, transposed operands), against
`torch.nn.functional.conv2d` and `torch.nn.grad.conv2d_input` / `conv2d_weight` in channels-last,
at the CIFAR stage shapes. Milliseconds per call, the mean of `--calls` after warm-up; one JSON
line per shape. PyTorch is optional (its fields are null without it).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

SHAPES = ((32, 16), (16, 32), (8, 64))  # (height = width, channels) of the three CIFAR stages
DN = ("NHWC", "HWIO", "NHWC")


def _ms(fn, calls: int) -> float:
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(calls):
        out = fn()
    jax.block_until_ready(out)
    return round((time.perf_counter() - t0) / calls * 1e3, 3)


def xla(n: int, h: int, c: int, calls: int) -> dict:
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    x, g = jax.random.normal(k[0], (n, h, h, c)), jax.random.normal(k[1], (n, h, h, c))
    w = jax.random.normal(k[2], (3, 3, c, c))
    fwd = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN))
    dx = jax.jit(lambda g, w: jax.lax.conv_general_dilated(
        g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), (1, 1), "SAME", dimension_numbers=DN))
    dw = jax.jit(lambda x, g: jax.lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1), [(1, 1)] * 2, dimension_numbers=DN))
    return {"xla_fwd_ms": _ms(lambda: fwd(x, w), calls), "xla_dx_ms": _ms(lambda: dx(g, w), calls),
            "xla_dw_ms": _ms(lambda: dw(x, g), calls)}


def torch_ms(n: int, h: int, c: int, calls: int) -> dict:
    try:
        import torch
        from torch.nn.grad import conv2d_input, conv2d_weight
    except ImportError:
        return {"torch_fwd_ms": None, "torch_dx_ms": None, "torch_dw_ms": None}

    def timed(fn):
        for _ in range(3):  # oneDNN builds its primitives on the first calls
            fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return round((time.perf_counter() - t0) / calls * 1e3, 3)

    cl = torch.channels_last
    x, g = torch.randn(n, c, h, h).to(memory_format=cl), torch.randn(n, c, h, h).to(memory_format=cl)
    w = torch.randn(c, c, 3, 3).to(memory_format=cl)
    with torch.no_grad():
        return {"torch_fwd_ms": timed(lambda: torch.nn.functional.conv2d(x, w, padding=1)),
                "torch_dx_ms": timed(lambda: conv2d_input(x.shape, w, g, padding=1)),
                "torch_dw_ms": timed(lambda: conv2d_weight(x, w.shape, g, padding=1)),
                "torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--calls", type=int, default=20)
    a = p.parse_args()
    for h, c in SHAPES:
        row = {"shape": f"{a.batch}x{h}x{h}x{c}", "backend": jax.default_backend(), "jax_version": jax.__version__}
        row.update(xla(a.batch, h, c, a.calls))
        row.update(torch_ms(a.batch, h, c, a.calls))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
