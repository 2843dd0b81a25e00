"""What summing bfloat16 weight gradients across devices costs in precision, emulated on a CPU.

Why: in the default sharded step XLA's GPU compiler sums each conv's weight gradient across
devices in bfloat16 (BENCHMARKS.md, "bf16 gradient sums"): the partial gradient is the weight-
gradient convolution's bfloat16 output, and the all-reduce comes before the cast to the float32
parameter. One device rounds each weight gradient to bfloat16 once, after the convolution's float32
accumulation; N devices each round their share, then the all-reduce adds the shares in bfloat16,
rounding after each add (modelled as a ring: N - 1 adds in sequence, the longest chain).
config.explicit_data_parallel adds the rounded shares in float32. A CPU's XLA computes bfloat16
convolutions in float32 and sums in float32 there, so the real program cannot show it; this
emulates the three paths on a network's real per-device gradient shares:

- `one_device`: bf16(exact sum);
- `explicit`: the float32 sum of bf16(share_i);
- `sharded`: acc = bf16(share_0), then acc = bf16(acc + bf16(share_i)) for i = 1 .. N - 1.

The shares: the float32 network's gradient for each BN group of `--group` examples (one at a time,
each group its own BN statistics, as config.bn_group_size), summed in float64 over each device's
groups; every device count sees the same loss. Against the exact float64 sum, one JSON line per
device count: each conv kernel's relative L2 error (median and max over kernels) and the whole
set's, per path. One rounding to nearest moves a value by at most 2^-8 of itself (bfloat16's 8-bit
significand), and over many values its relative L2 error comes to a little under 2^-9. For scale,
`half_batches_apart`: the batch's two halves' gradients apart, relative to the whole batch's (the
minibatch noise SGD runs on); and what one device's own roundings do to the same exact sum, as
relative L2 errors of all conv gradients: `bf16_network`, the bfloat16 network's gradient
(activations and convolution outputs in bfloat16, as the experiments train on a GPU; a CPU's XLA
rounds to bfloat16 in other places than a GPU's), and `bf16_images`, the float32 network's on the
images rounded to bfloat16 and nothing else. Random weights and images, at initialisation (the
first steps' gradients).

    python bench/bf16_grad_sum_check.py [--config=experiments/cifar10_resnet110.py] [--batch=128]
        [--group=8] [--devices=2,4,8,16]

Pod scale: `--batch=512 --group=2 --devices=1,2,4,16,64,256` (ResNet-110, 256 groups of 2; 49 s on
this 2-core CPU). Memory grows as groups x parameters x 8 bytes (float64 per-group gradients): 3.5
GB for this, by that count, not measured; ResNet-50 at 256 groups would need ~52 GB.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bf16(x: np.ndarray) -> np.ndarray:
    """Round float32/float64 to the nearest bfloat16 (ties to even), back as float64."""
    import ml_dtypes

    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def paths(shares: np.ndarray) -> dict[str, np.ndarray]:
    """The three sums of `shares` (devices, ...): see the module docstring."""
    rounded = [bf16(s) for s in shares]
    ring = rounded[0]
    for r in rounded[1:]:
        ring = bf16(ring + r)  # float32 add of two bfloat16 values is exact; then one rounding
    return {"one_device": bf16(shares.sum(0)),
            "explicit": np.asarray(np.sum(np.asarray(rounded, np.float32), 0, dtype=np.float32), np.float64),
            "sharded": ring}


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / (np.linalg.norm(want) + 1e-300))


def group_gradients(config, batch: int, group: int, seed: int = 0, dtype: str = "float32",
                    summed: bool = False, bf16_images: bool = False) -> list[np.ndarray]:
    """Per BN group, the gradient of the batch's mean cross-entropy w.r.t. each conv kernel (leaves
    of 4 dimensions, a scanned stage's stack split per unit) of the network computing in `dtype`
    (float32 parameters either way), the images rounded to bfloat16 first if `bf16_images`:
    [(groups, *kernel shape)] as float64, or with `summed` only their sum over the groups,
    [(1, *kernel shape)]."""
    import jax
    import jax.numpy as jnp

    from resnet_v2_jax import config as config_lib
    from resnet_v2_jax import networks

    config.model.dtype = dtype
    model = networks.build(config.model)  # its BN over what it is applied to: one group
    size = config.image_size or config_lib.DATASET_INFO[config.dataset]["image_size"]
    variables = networks.init_variables(model, size, seed=seed)
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch // group, group, size, size, 3))
    images = jnp.asarray(bf16(images) if bf16_images else images, jnp.float32)
    labels = jnp.asarray(rng.integers(0, config.model.num_classes, (batch // group, group)), jnp.int32)

    def group_loss(params, x, y):  # this group's share of the batch's mean loss
        logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)) / batch

    grad = jax.jit(jax.grad(group_loss))  # one group at a time: the network's custom VJPs do not vmap
    per_group = [jax.tree.leaves(grad(variables["params"], x, y)) for x, y in zip(images, labels)]
    kernels = []
    for leaves in zip(*per_group):
        if summed:  # a groups-th of the memory
            g = sum(np.asarray(a, np.float64) for a in leaves)[None]
        else:
            g = np.stack([np.asarray(a, np.float64) for a in leaves])
        if g.ndim == 5:
            kernels.append(g)
        elif g.ndim == 6:  # a scanned stage's stacked kernels: each unit's its own
            kernels += [g[:, u] for u in range(g.shape[1])]
    return kernels


def measure(kernels: list[np.ndarray], devices: int) -> dict:
    """Each path's relative errors over the conv kernels, the groups dealt to `devices` in order."""
    out = {"devices": devices}
    errors = {name: [] for name in ("one_device", "explicit", "sharded")}
    total = {name: 0.0 for name in errors}
    norm = 0.0
    for g in kernels:
        shares = g.reshape(devices, -1, *g.shape[1:]).sum(1)  # each device's groups, exactly
        exact = shares.sum(0)
        norm += float(np.sum(exact**2))
        for name, got in paths(shares).items():
            errors[name].append(relative_error(got, exact))
            total[name] += float(np.sum((got - exact) ** 2))
    for name, e in errors.items():
        out[name] = {"median": float(np.median(e)), "max": float(np.max(e)), "all": float(np.sqrt(total[name] / norm))}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "experiments" / "cifar10_resnet110.py"))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--devices", default="2,4,8,16")
    p.add_argument("--depth", type=int, help="override config.model.depth (tests: a small network)")
    args = p.parse_args(argv)

    import jax

    spec = importlib.util.spec_from_file_location("experiment", args.config)
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    config = experiment.get_config()
    if args.depth:
        config.model.depth = args.depth
    kernels = group_gradients(config, args.batch, args.group)
    groups = args.batch // args.group
    # For scale, the minibatch's own noise: the two halves' gradients against each other, relative
    # to the whole batch's (all conv kernels together)
    halves = [np.concatenate([g[h * groups // 2:(h + 1) * groups // 2].sum(0).ravel() for g in kernels])
              for h in (0, 1)]
    noise = relative_error(halves[0], halves[1]) * np.linalg.norm(halves[1]) / np.linalg.norm(halves[0] + halves[1])
    # For scale, what one device's roundings already do to the same exact gradient: the bfloat16
    # network's (activations and convolutions' outputs in bfloat16, as the experiments train on a
    # GPU), and the float32 network's on the images rounded to bfloat16, nothing else changed
    exact = np.concatenate([g.sum(0).ravel() for g in kernels])
    against_exact = {
        name: round(relative_error(np.concatenate([g.ravel() for g in group_gradients(
            config, args.batch, args.group, summed=True, **kwargs)]), exact), 5)
        for name, kwargs in (("bf16_network", {"dtype": "bfloat16"}), ("bf16_images", {"bf16_images": True}))}
    for devices in map(int, args.devices.split(",")):
        if groups % devices:
            print(json.dumps({"devices": devices, "error": f"{groups} groups do not divide among {devices}"}))
            continue
        line = measure(kernels, devices)
        print(json.dumps(line | {"half_batches_apart": round(float(noise), 4), **against_exact, "experiment": config.experiment, "depth": config.model.depth, "batch": args.batch,
                                 "group": args.group, "kernels": len(kernels), "jax": jax.__version__}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
