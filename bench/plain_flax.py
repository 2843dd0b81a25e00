"""The "plain jit-compiled Flax" reference: the same pre-activation ResNet, written the obvious way.

A straightforward `nn.Module` that loops over its units (no `nn.scan`, no remat, no custom conv
gradient), `flax.linen.BatchNorm`, `optax.sgd` with momentum and coupled weight decay, one
`jax.jit` with the state donated and no sharding annotations. It is what a Flax user would write
in an afternoon, and the yardstick for "our step is no slower than a plain jit Flax step".

Same architecture as `resnet_v2_jax.networks.ResNet` for full pre-activation units with identity
shortcuts (option A zero-padding or option B projections where dimensions change; stride on the
3x3 or, for ResNet-1001, on the first 1x1): the parameter count is identical, which
tests/test_benchmark.py asserts. Initialisers are Flax defaults: they do not change the speed.

Used by `python -m resnet_v2_jax.benchmark --config=... --baseline` (or `--compare`), which loads
this file by path and times it with the same timing loop as our step.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

IMAGENET_STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3),
                   18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class Unit(nn.Module):
    features: int
    bottleneck: bool
    strides: int
    shortcut: str  # "identity", "project" or "zero_pad"
    stride_on_1x1: bool
    norm: Any
    conv: Any

    @nn.compact
    def __call__(self, x):
        out = 4 * self.features if self.bottleneck else self.features
        pre = nn.relu(self.norm()(x))
        if self.shortcut == "project":
            h = self.conv(out, (1, 1), strides=self.strides)(pre)
        elif self.shortcut == "zero_pad":
            h = x[:, :: self.strides, :: self.strides, :]
            h = jnp.pad(h, [(0, 0)] * 3 + [(0, out - h.shape[-1])])
        else:
            h = x
        s = self.strides
        if self.bottleneck:
            f = self.conv(self.features, (1, 1), strides=s if self.stride_on_1x1 else 1)(pre)
            f = self.conv(self.features, (3, 3), strides=1 if self.stride_on_1x1 else s)(nn.relu(self.norm()(f)))
            f = self.conv(out, (1, 1))(nn.relu(self.norm()(f)))
        else:
            f = self.conv(self.features, (3, 3), strides=s)(pre)
            f = self.conv(self.features, (3, 3))(nn.relu(self.norm()(f)))
        return h + f


class PlainResNet(nn.Module):
    stage_sizes: tuple[int, ...]
    bottleneck: bool
    imagenet: bool
    num_classes: int
    shortcut_type: str = "B"
    stride_on_1x1: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                 dtype=self.dtype)
        conv = functools.partial(nn.Conv, use_bias=False, padding="SAME", dtype=self.dtype)
        x = x.astype(self.dtype)
        if self.imagenet:
            x = conv(64, (7, 7), strides=2, padding=[(3, 3)] * 2)(x)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1)] * 2)
            base = 64
        else:
            x = conv(16, (3, 3))(x)
            base = 16
        for i, n in enumerate(self.stage_sizes):
            features = base * 2**i
            out = 4 * features if self.bottleneck else features
            for j in range(n):
                strides = 2 if (i > 0 and j == 0) else 1
                changes = strides != 1 or x.shape[-1] != out
                shortcut = ("project" if self.shortcut_type == "B" else "zero_pad") if changes else "identity"
                x = Unit(features, self.bottleneck, strides, shortcut, self.stride_on_1x1, norm, conv)(x)
        x = nn.relu(norm()(x))
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


def build(model) -> PlainResNet:
    """The plain network for a `config.model` (full pre-activation, identity shortcuts, type A/B)."""
    if model.unit != "full_preact" or model.shortcut != "identity" or model.shortcut_type not in ("A", "B"):
        raise ValueError("the plain Flax baseline covers full_preact units with identity shortcuts of type A "
                         f"or B only (got unit={model.unit!r}, shortcut={model.shortcut!r}, "
                         f"shortcut_type={model.shortcut_type!r})")
    if model.width != 1.0:
        raise ValueError(f"the plain Flax baseline has width 1 only (got model.width={model.width!r})")
    if model.family == "imagenet":
        stages, bottleneck = IMAGENET_STAGES[model.depth], model.depth >= 50
    else:
        layers = {"basic": 2, "bottleneck": 3}[model.block]
        n = (model.depth - 2) // (3 * layers)
        stages, bottleneck = (n, n, n), model.block == "bottleneck"
    return PlainResNet(tuple(stages), bottleneck, model.family == "imagenet", model.num_classes,
                       model.shortcut_type, model.stride_on == "1x1", jnp.dtype(model.dtype))


def step_fns(config, image_shape, seed: int = 0):
    """(init, train_step, eval_step) of the plain network, not jitted: `make` jits them as a Flax user
    would, and benchmark.lower_step lowers them for another target (bench/gpu_launches.py)."""
    model = build(config.model)
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.sgd(config.learning_rate, momentum=config.momentum or None, nesterov=config.nesterov))

    def init():
        variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + tuple(image_shape)), train=False)
        params = variables["params"]
        return {"params": params, "batch_stats": variables["batch_stats"], "opt_state": tx.init(params)}

    def train_step(state, batch):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": state["batch_stats"]}, batch["image"],
                                          train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new = {"params": optax.apply_updates(state["params"], updates), "batch_stats": batch_stats,
               "opt_state": opt_state}
        return new, {"loss": loss}

    def eval_step(state, batch):
        logits = model.apply({"params": state["params"], "batch_stats": state["batch_stats"]}, batch["image"],
                             train=False)
        return {"errors": jnp.sum(jnp.argmax(logits, -1) != batch["label"])}

    return init, train_step, eval_step


def make(config, image_shape, seed: int = 0):
    """(state, train_step, eval_step) for the plain network: jitted, state donated, one device."""
    init, train_step, eval_step = step_fns(config, image_shape, seed)
    return jax.jit(init)(), jax.jit(train_step, donate_argnums=0), jax.jit(eval_step)


def param_count(config, image_shape) -> int:
    model = build(config.model)
    x = jnp.zeros((1,) + tuple(image_shape))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    return int(sum(a.size for a in jax.tree.leaves(variables["params"])))


if __name__ == "__main__":
    import sys

    from resnet_v2_jax import benchmark

    benchmark.cli_main(sys.argv[:1] + ["--baseline"] + sys.argv[1:])
