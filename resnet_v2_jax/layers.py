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
