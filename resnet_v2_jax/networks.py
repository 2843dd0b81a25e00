"""The CIFAR and ImageNet network families, built from `units.ResidualUnit`.

Identical units of a stage (all but its first) are folded with `nn.scan`, so the compiled
program holds one unit body per stage and ResNet-1001 compiles about as fast as ResNet-164.
The stacked parameter layout is the same whether the scan is rolled (`model.scan=True`) or
fully unrolled (`False`, `unroll=length`), or unrolled k units per loop iteration
(`model.scan_unroll=k`), so checkpoints do not depend on the choice.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from resnet_v2_jax import config as config_lib
from resnet_v2_jax.layers import (
    BatchNorm,
    conv_init,
    dense_init,
    max_pool,
    scan_friendly_conv,
    space_to_depth_conv,
)
from resnet_v2_jax.units import ORDERS, ResidualUnit, apply_ops

REMAT_POLICIES = {
    "nothing": jax.checkpoint_policies.nothing_saveable,
    "conv": jax.checkpoint_policies.save_only_these_names("conv"),
    "dots": jax.checkpoint_policies.dots_saveable,
}


class _ScanBody(nn.Module):
    """Adapts a unit to scan's (carry, xs) -> (carry, ys) signature."""

    unit: Any  # a ResidualUnit class, possibly wrapped by nn.remat
    kwargs: dict

    @nn.compact
    def __call__(self, x, _):
        return self.unit(**self.kwargs, name="unit")(x), None


class ResNet(nn.Module):
    stage_sizes: Sequence[int]
    block: str
    family: str = "cifar"
    num_classes: int = 10
    width: float = 1.0
    unit: str = "full_preact"
    shortcut: str = "identity"
    shortcut_scale: float = 0.5
    scale_residual: bool = False
    gate_bias_init: float = -6.0
    shortcut_dropout: float = 0.5
    shortcut_type: str = "B"
    stride_on: str = "3x3"
    zero_init_last: bool = False
    dtype: Any = jnp.float32
    scan: bool = True
    scan_unroll: int = 1
    remat: bool = False
    remat_policy: str = "conv"
    bn_group_size: int = 0
    bn_recompute_mask: bool = False
    bn_partial_sums: bool = False
    bn_pallas_sums: bool = False
    bn_recompute_output: bool = False
    conv1x1_fusion: bool = False
    stem_space_to_depth: bool = False
    stem_align_channels: bool = False

    @nn.compact
    def __call__(self, x, train: bool = True):
        order = ORDERS[self.unit]
        bn = functools.partial(BatchNorm, group_size=self.bn_group_size, recompute_mask=self.bn_recompute_mask,
                               partial_sums=self.bn_partial_sums, pallas_sums=self.bn_pallas_sums,
                               conv1x1_fusion=self.conv1x1_fusion)
        norm = functools.partial(bn, use_running_average=not train, dtype=self.dtype)
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init,
                                 conv_general_dilated=scan_friendly_conv)
        base = max(1, int(round((16 if self.family == "cifar" else 64) * self.width)))

        x = x.astype(self.dtype)
        if self.family == "cifar":
            x = conv(base, (3, 3), padding=[(1, 1)] * 2, name="conv1")(x)
        else:
            x = conv(base, (7, 7), strides=2, padding=[(3, 3)] * 2, name="conv1",
                     **({"conv_general_dilated": functools.partial(
                         space_to_depth_conv, align_bytes=16 if self.stem_align_channels else 0)}
                        if self.stem_space_to_depth else {}))(x)
        x = apply_ops(order.end + order.post, x, norm, name="conv1_bn")  # conv1 as a unit's last conv
        if self.family == "imagenet":
            x = max_pool(x, 3, 2, 1)

        unit_cls = ResidualUnit
        if self.remat:
            unit_cls = nn.remat(ResidualUnit, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=False)
        common = dict(
            block=self.block, unit=self.unit, shortcut=self.shortcut, shortcut_scale=self.shortcut_scale,
            scale_residual=self.scale_residual, gate_bias_init=self.gate_bias_init,
            shortcut_dropout=self.shortcut_dropout, stride_on=self.stride_on,
            zero_init_last=self.zero_init_last, train=train, norm=bn, dtype=self.dtype,
            bn_recompute_output=self.bn_recompute_output,
        )
        project_all = self.shortcut_type == "C" or self.shortcut == "conv1x1"
        for i, n in enumerate(self.stage_sizes):
            features = base * 2**i
            out = 4 * features if self.block == "bottleneck" else features
            strides = 1 if i == 0 else 2
            changes = strides != 1 or x.shape[-1] != out
            path = "project" if project_all or (changes and self.shortcut_type == "B") else (
                "zero_pad" if changes else "identity")
            x = unit_cls(features, strides=strides, transition=changes, shortcut_path=path,
                         name=f"stage{i + 1}_unit1", **common)(x)
            if n > 1:
                rest = dict(common, features=features, shortcut_path="project" if project_all else "identity")
                stage = nn.scan(
                    _ScanBody,
                    variable_axes={"params": 0, "batch_stats": 0},
                    split_rngs={"params": True, "dropout": True},
                    length=n - 1,
                    unroll=min(self.scan_unroll, n - 1) if self.scan else n - 1,
                )
                x, _ = stage(unit_cls, rest, name=f"stage{i + 1}_units")(x, None)

        x = apply_ops(order.pre, x, norm, name="final_bn")  # the final BN-ReLU of pre-activation nets
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=dense_init, bias_init=nn.initializers.zeros,
                        name="fc")(x)


def build(model: ml_collections.ConfigDict, bn_group_size: int = 0) -> ResNet:
    """The network a `config.model` describes; ValueError (naming the field) before any tracing."""
    config_lib.validate_model(model)
    block, stages = config_lib.stage_units(model)
    return ResNet(
        stage_sizes=stages,
        block=block,
        family=model.family,
        num_classes=model.num_classes,
        width=model.width,
        unit=model.unit,
        shortcut=model.shortcut,
        shortcut_scale=model.shortcut_scale,
        scale_residual=model.scale_residual,
        gate_bias_init=model.gate_bias_init,
        shortcut_dropout=model.shortcut_dropout,
        shortcut_type=model.shortcut_type,
        stride_on=model.stride_on,
        zero_init_last=model.zero_init_last,
        dtype=jnp.dtype(model.dtype),
        scan=model.scan,
        scan_unroll=model.scan_unroll,
        remat=model.remat,
        remat_policy=model.remat_policy,
        bn_group_size=bn_group_size,
        bn_recompute_mask=model.bn_recompute_mask,
        bn_partial_sums=model.bn_partial_sums,
        bn_pallas_sums=model.bn_pallas_sums,
        bn_recompute_output=model.bn_recompute_output,
        conv1x1_fusion=model.conv1x1_fusion,
        stem_space_to_depth=model.stem_space_to_depth,
        stem_align_channels=model.stem_align_channels,
    )


def init_variables(model: nn.Module, image_size: int, channels: int = 3, seed: int = 0):
    """Float32 params and BN statistics for one example of the given shape."""
    x = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
    return jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(seed), x)
