"""The residual units of the paper: Fig. 4's activation placements and Fig. 2's shortcuts.

A unit is `y = h(x) + F(x)`, `x_next = f(y)`. Every Fig. 4 unit is one `Order`: the ops before
the first conv (the pre-activation), between convs, after the last conv, and after the addition
(`B` = BN, `R` = ReLU). Read `ORDERS` next to Fig. 4:

    (a) original            W B R W B, add, R        ->  Order("",   "BR", "B",  "R")
    (b) BN after addition   W B R W,   add, B R      ->  Order("",   "BR", "",   "BR")
    (c) ReLU before add     W B R W B R, add         ->  Order("",   "BR", "BR", "")
    (d) ReLU-only preact    R W B R W B, add         ->  Order("R",  "BR", "B",  "")
    (e) full pre-activation B R W B R W, add         ->  Order("BR", "BR", "",   "")

The same Order also fixes the network's ends (see networks.py): the stem is conv1 followed by
`end + post` (conv1 acts as the last conv of a unit with no addition), and the head applies
`pre` after the last addition. So full pre-activation gets no BN-ReLU after conv1 (the first
unit's pre-activation is "the activation after conv1") and one BN-ReLU before pooling.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from resnet_v2_jax.layers import BatchNorm, ConvKernel, conv_init, scan_friendly_conv


@dataclasses.dataclass(frozen=True)
class Order:
    pre: str  # before the first conv; shared by both paths in a stage's first unit
    mid: str  # between convs
    end: str  # after the last conv, before the addition
    post: str  # after the addition


ORDERS = {
    "original": Order("", "BR", "B", "R"),
    "bn_after_add": Order("", "BR", "", "BR"),
    "relu_before_add": Order("", "BR", "BR", ""),
    "relu_only_preact": Order("R", "BR", "B", ""),
    "full_preact": Order("BR", "BR", "", ""),
}


def apply_ops(ops: str, x, norm: Callable[..., nn.Module], last_norm_init=None, name: str | None = None):
    """Applies a string of `B`/`R` ops; `last_norm_init` overrides the last BN's gamma init."""
    for i, op in enumerate(ops):
        if op == "B":
            kw = {"name": f"{name}{i}"} if name else {}
            if last_norm_init is not None and "B" not in ops[i + 1 :]:
                kw["scale_init"] = last_norm_init
            x = norm(relu=ops[i + 1 : i + 2] == "R", **kw)(x)  # "BR": one fused op
        elif i == 0 or ops[i - 1] != "B":
            x = nn.relu(x)
    return x


def conv_layout(block: str, features: int, strides: int, stride_on: str):
    """(kernel, features, stride) of each conv of F: basic, bottleneck (4x expansion) or single."""
    if block == "basic":
        return [(3, features, strides), (3, features, 1)]
    if block == "single":
        return [(3, features, strides)]
    on_1x1 = stride_on == "1x1"  # resnet-1k-layers; "3x3" is fb.resnet.torch and timm
    return [
        (1, features, strides if on_1x1 else 1),
        (3, features, 1 if on_1x1 else strides),
        (1, 4 * features, 1),
    ]


class ResidualUnit(nn.Module):
    """One unit of Fig. 2/Fig. 4, in basic, bottleneck or single-conv form.

    `transition` marks the first unit of a stage (dimension-increasing): there both paths read
    the one pre-activated tensor. `shortcut_path` is `identity`, `project` (1x1 conv of the
    shortcut input, strided; with BN only for units without pre-activation, as the original
    ResNet) or `zero_pad` (option A: subsample and pad channels with zeros). `shortcut` then
    applies the Fig. 2 variant on top of h(x).
    """

    features: int
    block: str = "basic"
    unit: str = "full_preact"
    strides: int = 1
    transition: bool = False
    shortcut_path: str = "identity"
    shortcut: str = "identity"
    shortcut_scale: float = 0.5
    scale_residual: bool = False
    gate_bias_init: float = -6.0
    shortcut_dropout: float = 0.5
    stride_on: str = "3x3"
    zero_init_last: bool = False
    train: bool = True
    # The network's BN with its options (group size, the kernel levers) bound; the unit adds the
    # mode and dtype. One factory, so a new BN option is one field of `ResNet`, not one per module.
    norm: Callable[..., nn.Module] = BatchNorm
    dtype: Any = jnp.float32
    # In training, a BN-ReLU whose only consumer is the next conv runs with it as one op whose
    # backward recomputes the BN-ReLU output from BN's saved input (config.model.bn_recompute_output).
    bn_recompute_output: bool = False

    @nn.compact
    def __call__(self, x):
        order = ORDERS[self.unit]
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init,
                                 conv_general_dilated=scan_friendly_conv)
        norm = functools.partial(self.norm, use_running_average=not self.train, dtype=self.dtype)

        # `pending`: a tensor whose BN-ReLU the next conv applies (bn_recompute_output), else None.
        fuse = self.bn_recompute_output and self.train
        pending = x if fuse and order.pre == "BR" and not self.transition else None
        preact = x if pending is not None else apply_ops(order.pre, x, norm)
        shortcut_in = preact if self.transition else x
        layout = conv_layout(self.block, self.features, self.strides, self.stride_on)
        out_features = layout[-1][1]

        # Residual branch F.
        zero_last_bn = self.zero_init_last and "B" in order.end
        f = preact
        for i, (k, feats, s) in enumerate(layout):
            last = i == len(layout) - 1
            init = nn.initializers.zeros if (last and self.zero_init_last and not zero_last_bn) else conv_init
            if pending is None:
                f = conv(feats, (k, k), strides=s, padding=[(k // 2, k // 2)] * 2, kernel_init=init,
                         name=f"Conv_{i}")(f)
            else:  # the same parameters as the two modules it replaces
                kernel = ConvKernel((k, k, pending.shape[-1], feats), init, name=f"Conv_{i}")()
                f = norm(relu=True)(pending, conv=(kernel, s, k // 2))
            f = checkpoint_name(f, "conv")
            ops = order.end if last else order.mid
            pending = f if fuse and not last and ops == "BR" else None
            if pending is None:
                f = apply_ops(ops, f, norm, nn.initializers.zeros if (last and zero_last_bn) else None)

        # Shortcut h.
        h = shortcut_in
        if self.shortcut_path == "project":
            h = conv(out_features, (1, 1), strides=self.strides, name="projection")(h)
            if not order.pre:
                h = norm(name="projection_bn")(h)
        elif self.shortcut_path == "zero_pad":
            h = h[:, :: self.strides, :: self.strides, :]
            h = jnp.pad(h, [(0, 0)] * 3 + [(0, out_features - h.shape[-1])])

        if self.shortcut == "constant_scaling":
            h = self.shortcut_scale * h
            if self.scale_residual:
                f = self.shortcut_scale * f
        elif self.shortcut in ("exclusive_gating", "shortcut_only_gating"):
            gate = nn.Conv(out_features, (1, 1), strides=self.strides, use_bias=True, dtype=self.dtype,
                           kernel_init=conv_init, bias_init=nn.initializers.constant(self.gate_bias_init),
                           name="gate")(shortcut_in)
            g = nn.sigmoid(gate)
            h = (1 - g) * h
            if self.shortcut == "exclusive_gating":
                f = g * f
        elif self.shortcut == "dropout":
            # The paper's "dropout shortcut" statistically scales h by 0.5: masks without
            # rescaling in training, the expectation (1 - rate) * h at test time.
            keep = 1.0 - self.shortcut_dropout
            if self.train:
                mask = jax.random.bernoulli(self.make_rng("dropout"), keep, h.shape)
                h = h * mask.astype(h.dtype)
            else:
                h = keep * h

        return apply_ops(order.post, h + f, norm)
