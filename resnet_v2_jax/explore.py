"""Probes behind `notebooks/explore.ipynb`: the unit zoo table, per-unit signal and gradient norms.

The paper's argument (Sec. 3, Eq. 4-5) is about what happens to the signal between units: with
identity `h` and `f`, `x_L = x_l + sum F` forward and `dE/dx_l = dE/dx_L (1 + ...)` backward.
`unit_norms` measures both at initialisation, for every residual unit of a network exactly as
`networks.build` makes it (scanned stages included), in one forward and one backward pass:

* forward: the standard deviation of each unit's output `x_{l+1}`;
* backward: the L2 norm of `dLoss/dx_l`, the gradient at each unit's input, over the batch.

How the per-unit values get out of a scanned stage: `nn.scan` drops `sow`n intermediates, but it
stacks the `params` and `batch_stats` collections along the unit axis. So a method interceptor
gives every `ResidualUnit` call two extra variables: a zero `params` entry `probe_dx` added to the
unit's input (its gradient is `dLoss/dx_l`) and a `batch_stats` entry `probe_std` holding the
output's standard deviation. The network's own code is unchanged and the numbers are the same
with `model.scan` True or False (tested).

No TensorFlow here. Training-set statistics (BN in train mode) are used, as at step 0 of training.
"""

from __future__ import annotations

import copy
import itertools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnet_v2_jax import config as config_lib
from resnet_v2_jax import networks, summary
from resnet_v2_jax.units import ResidualUnit

PROBE_DX = "probe_dx"
PROBE_STD = "probe_std"


def _probing(next_fun, args, kwargs, context):
    """Adds `probe_dx` to each unit's input and records the std of its output in `probe_std`."""
    module = context.module
    if context.method_name != "__call__" or not isinstance(module, ResidualUnit):
        return next_fun(*args, **kwargs)
    x, *rest = args
    x = x + module.param(PROBE_DX, nn.initializers.zeros, x.shape, jnp.float32).astype(x.dtype)
    out = next_fun(x, *rest, **kwargs)
    std = module.variable("batch_stats", PROBE_STD, lambda: jnp.zeros((), jnp.float32))
    if not module.is_initializing():
        std.value = jnp.std(out.astype(jnp.float32))
    return out


def _flat_units(tree, name: str) -> list[tuple[str, jax.Array]]:
    """(unit path, value) for every probe leaf named `name`, in network order, scans unstacked."""
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))
    out = []
    for path, value in flat.items():
        if path[-1] != name:
            continue
        top = path[0]
        if top.endswith("_units"):  # a scanned stage: one row per unit along axis 0
            out += [((top, j), value[j]) for j in range(value.shape[0])]
        else:
            out.append(((top, -1), value))

    def key(item):
        (top, j), _ = item
        stage = int(top[len("stage"):].split("_")[0])
        return (stage, j)

    return [(f"{top}[{j}]" if j >= 0 else top, v) for (top, j), v in sorted(out, key=key)]


def image_shape(config) -> tuple[int, int, int]:
    """The input shape of `config` (the digits have one channel)."""
    return summary._image_shape(config)


def random_batch(config, batch_size: int, seed: int = 0) -> dict:
    """Standard-normal images (what normalised data looks like) and uniform random labels."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.standard_normal((batch_size,) + image_shape(config)).astype(np.float32),
        "label": rng.integers(0, config.model.num_classes, batch_size).astype(np.int32),
    }


def unit_norms(config, batch: dict | None = None, batch_size: int = 8, seed: int = 0) -> dict:
    """Per-unit forward signal and backward gradient norms of `config.model` at initialisation.

    Returns {'names': unit names in network order ('stage1_unit1', 'stage1_units[0]', ...),
    'stage': the stage of each unit (1-based), 'forward': std of each unit's output,
    'backward': ||dLoss/dx_l|| at each unit's input, 'loss': the cross-entropy}. One entry per
    residual unit: the lists have sum(units per stage) entries.
    """
    config = copy.deepcopy(config)
    with config.unlocked():
        config.model.remat = False  # remat wraps the unit class; the numbers do not change
    config_lib.validate_model(config.model)
    model = networks.build(config.model)
    batch = random_batch(config, batch_size, seed) if batch is None else batch
    images = jnp.asarray(batch["image"], jnp.float32)
    labels = jnp.asarray(batch["label"], jnp.int32)
    # Initialised inside the same jit as the probe: one compile per network. The `rbg` key
    # compiles several times faster on CPU than threefry; the initialisers (He fan-out normal,
    # BN gamma 1, ...) are the model's own, so only the random stream differs from training.
    key = jax.random.key(seed, impl="unsafe_rbg")

    @jax.jit
    def run(key):
        init_key, dropout_key = jax.random.split(key)
        with nn.intercept_methods(_probing):
            variables = model.init({"params": init_key, "dropout": dropout_key}, images, train=True)

        def loss_fn(params):
            with nn.intercept_methods(_probing):
                logits, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                              images, train=True, mutable=["batch_stats"],
                                              rngs={"dropout": dropout_key})
            loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
            return loss, updates["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        return loss, stats, grads

    loss, stats, grads = run(key)
    forward = _flat_units(stats, PROBE_STD)
    backward = _flat_units(grads, PROBE_DX)
    names = [n for n, _ in forward]
    assert names == [n for n, _ in backward], (names, [n for n, _ in backward])
    return {
        "names": names,
        "stage": [int(n[len("stage"):].split("_")[0]) for n in names],
        "forward": [float(v) for _, v in forward],
        "backward": [float(jnp.linalg.norm(v.astype(jnp.float32))) for _, v in backward],
        "loss": float(loss),
    }


def variant_config(unit: str, shortcut: str, block: str, depth: int | None = None, dataset: str = "cifar10"):
    """The default CIFAR config with one Fig. 4 unit, one Fig. 2 shortcut and one unit form.

    `depth` defaults to the paper's: ResNet-110 basic, ResNet-164 bottleneck.
    """
    c = config_lib.default()
    c.dataset = dataset
    c.experiment = f"{unit}/{shortcut}/{block}"
    c.model.unit, c.model.shortcut, c.model.block = unit, shortcut, block
    c.model.depth = depth or (110 if block == "basic" else 164)
    return c


def unit_table(blocks=("basic", "bottleneck"), units=config_lib.UNITS, shortcuts=config_lib.SHORTCUTS,
               depths: dict | None = None) -> list[dict]:
    """`summary.analyse` of every (block, unit, shortcut): one row with params and MACs each.

    `depths` maps block -> depth (default: 110 basic, 164 bottleneck).
    """
    rows = []
    for block, unit, shortcut in itertools.product(blocks, units, shortcuts):
        c = variant_config(unit, shortcut, block, (depths or {}).get(block))
        s = summary.analyse(c)
        rows.append({"block": block, "depth": s["depth"], "unit": unit, "shortcut": shortcut,
                     "params": s["params"], "macs": s["macs"]})
    return rows


def format_unit_table(rows: list[dict]) -> str:
    """The rows of `unit_table` as aligned text: params in millions, MACs in millions per image."""
    header = ("block", "depth", "unit", "shortcut", "params (M)", "MACs (M)")
    cells = [header] + [(r["block"], str(r["depth"]), r["unit"], r["shortcut"], f"{r['params'] / 1e6:.3f}",
                         f"{r['macs'] / 1e6:.1f}") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_unit_norms(results: dict, title: str | None = None):
    """Forward std and backward gradient norm per unit, log scale; `results` maps label -> unit_norms().

    Draws on a bare `matplotlib.figure.Figure` (no pyplot state) and returns it.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    ax_f, ax_b = fig.subplots(1, 2)
    for label, r in results.items():
        idx = np.arange(1, len(r["forward"]) + 1)
        style = "-" if "preact" in label else "--"
        ax_f.semilogy(idx, r["forward"], style, label=label)
        ax_b.semilogy(idx, r["backward"], style, label=label)
    ax_f.set(xlabel="residual unit l", ylabel="std of x_{l+1}", title="forward signal")
    ax_b.set(xlabel="residual unit l", ylabel="||dLoss/dx_l||", title="backward gradient")
    for ax in (ax_f, ax_b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
