"""Batch normalisation and initialisers as the official Torch code sets them up.

Flax's `nn.BatchNorm` reduces over every non-feature axis of the global (sharded) batch. The paper
computed statistics per GPU (64 images on each of 2 GPUs), so this module can also reduce over
groups of `group_size` examples: that is a reshape, not a collective, and it gives the same result
on one device or a pod. Statistics are always float32, whatever the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# N(0, sqrt(2 / (k*k*C_out))): He fan-out normal, not fan-in truncated (resnet-1k-layers, fb.resnet.torch).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# Torch's nn.Linear default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the official code zeroes the bias.
dense_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


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
        and jax.default_backend() == "cpu"
    )
    if simple and kwargs.get("preferred_element_type") is None:
        return _conv_same(lhs, rhs)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, **kwargs)


class BatchNorm(nn.Module):
    """BN with gamma 1, beta 0, epsilon 1e-5 and running-average momentum 0.9 (Torch's 0.1)."""

    use_running_average: bool
    group_size: int = 0  # 0: the whole batch; g: statistics over consecutive groups of g examples
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    scale_init: Any = nn.initializers.ones

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))

        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            n = x.shape[0]
            g = self.group_size if 0 < self.group_size < n else n
            if n % g:
                raise ValueError(f"bn_group_size={g} does not divide the batch of {n} examples")
            xf = x.astype(jnp.float32).reshape((n // g, g) + x.shape[1:])
            axes = tuple(range(1, xf.ndim - 1))
            mean = xf.mean(axes, keepdims=True)
            var = jnp.maximum((xf * xf).mean(axes, keepdims=True) - mean * mean, 0.0)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean.mean(axes + (0,)).reshape(c)
                ra_var.value = m * ra_var.value + (1 - m) * var.mean(axes + (0,)).reshape(c)
            x = x.reshape(xf.shape)

        # y = x * mul + add with per-channel float32 factors: one fused multiply-add in `dtype`.
        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        add = bias - mean * mul
        y = x.astype(self.dtype) * mul.astype(self.dtype) + add.astype(self.dtype)
        return y.reshape((-1,) + y.shape[2:]) if not self.use_running_average else y
