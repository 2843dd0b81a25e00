"""The train state and the jit-compiled train and eval steps, data-parallel over a device mesh.

No TensorFlow here: the benchmark and GPU machines import this module without it. The batch
is a global array sharded along its first axis over every device of every process
(`NamedSharding(mesh, P("data"))`); the state is replicated and donated. BN statistics over
the batch then become cross-device reductions that XLA inserts, so they cover the global batch
(or `bn_group_size` groups) exactly as on one device. With config.explicit_data_parallel the step
instead runs per device in a shard_map and averages the gradients itself (`compile_steps`).

A non-finite loss, gradient or update never reaches the parameters: the step keeps the previous state
and records the first bad step in `nan_step`, which the host reads at its next log point.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import tempfile
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_v2_jax import augment, networks, optim, scan_reads


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    nan_step: jax.Array  # -1, or the first step whose loss or gradient was not finite


def use_compilation_cache(path: str) -> str | None:
    """Points JAX's persistent compilation cache at `path` (config.compilation_cache_dir) and
    returns the directory in use, or None for "off".

    Compiles that take over a second (jax_persistent_cache_min_compile_time_secs) are stored, so
    the train and eval steps are, and tiny helper jits are not. Call before the first compile:
    JAX fixes the cache directory then.
    """
    if path == "off":  # also overrides $JAX_COMPILATION_CACHE_DIR
        try:
            jax.config.update("jax_enable_compilation_cache", False)
        except AttributeError:  # a JAX without the switch: no cache unless a dir was set
            pass
        return None
    if not path:
        already = (getattr(jax.config, "jax_compilation_cache_dir", None)
                   or os.environ.get("JAX_COMPILATION_CACHE_DIR"))
        path = already or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "resnet_v2_jax", "xla")
    if "://" not in path:  # a local folder it cannot write: JAX would warn at every compile
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            print(f"warning: the compilation cache {path} is not writable ({type(e).__name__}: "
                  f"{e.strerror or e}); compiling without it (set config.compilation_cache_dir)",
                  file=sys.stderr, flush=True)
            return use_compilation_cache("off")
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def apply_xla_flags(xla_flags: str) -> str | None:
    """Adds config.xla_flags to $XLA_FLAGS and returns the XLA_FLAGS in effect.

    XLA reads $XLA_FLAGS once, when JAX starts its backends, so this must run before the first
    device query; later, a flag not yet in effect is reported and not applied (a warning, or an
    info line for GPU flags on a CPU, where they change nothing). A flag the user already set in
    $XLA_FLAGS keeps the user's value. XLA parses its GPU flags on every platform (a CPU run accepts
    and ignores them), so one config serves CPU, GPU and TPU. A malformed value is a ValueError
    (`config.validate_xla_flags`) before anything is set: XLA itself would abort the process.
    """
    from absl import logging

    from resnet_v2_jax import config as config_lib

    config_lib.validate_xla_flags(xla_flags)
    current = os.environ.get("XLA_FLAGS", "")
    have = {flag.split("=")[0] for flag in current.split()}
    extra = [flag for flag in xla_flags.split() if flag.split("=")[0] not in have]
    if extra and _backends_started():
        # GPU flags missed by a CPU run (a notebook on a laptop) lose nothing: no warning then.
        lost = not (jax.default_backend() == "cpu" and all(f.startswith("--xla_gpu_") for f in extra))
        (logging.warning if lost else logging.info)(
            "config.xla_flags not applied (%s): JAX's backends had already started; set them in "
            "$XLA_FLAGS before the first JAX computation, or restart the process", " ".join(extra))
    elif extra:
        os.environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
    return os.environ.get("XLA_FLAGS") or None


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # a JAX without the query: assume not started
        return False


DATA_AXIS = "data"  # the mesh's one axis: the batch's


def make_mesh(devices=None) -> Mesh:
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices, (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything the steps close over: the model, optimizer and input description."""

    model: Any
    tx: optax.GradientTransformation
    image_shape: tuple[int, int, int]
    num_classes: int
    norm: tuple[np.ndarray, np.ndarray] | None = None  # (mean, std) for on-device normalisation
    augment: bool = False  # pad-crop-flip on device (augment_on_device)
    colour: bool = False  # ImageNet: colour augmentation on device (augment.colour_lighting)
    colour_jitter: float = 0.4  # its blend strength (augment.COLOUR_JITTER; 0: PCA lighting alone)


def make_task(config, image_shape, norm=None, device_augment: bool = False, device_colour: bool = False) -> Task:
    """`device_augment`: the pipeline hands out row indices and the step pad-crop-flips on device.
    `device_colour`: the step applies `augment.colour_lighting` to the (uint8) training images, with
    the jitter of `config.imagenet_augment`'s recipe."""
    model = networks.build(config.model, bn_group_size=config.bn_group_size)
    scan_reads.use(bool(config.model.scan_unit_reads))  # how this process lowers scans on a GPU
    return Task(model, optim.optimizer(config), tuple(image_shape), config.model.num_classes,
                None if norm is None else tuple(np.asarray(a, np.float32) for a in norm), device_augment,
                device_colour, augment.COLOUR_JITTER[config.imagenet_augment])


def create_state(task: Task, seed: int) -> TrainState:
    init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
    # The parameters do not depend on how a stage compiles (scan, scan_unroll, remat: the same values,
    # tests/test_train.py), so they are made through the form quickest to compile: one unit per loop
    # iteration, no remat. On 2 idle CPU cores that cut the init (trace, compile, run) of ResNet-164 as
    # configured (no loop) from 15.4 to 5.2 s and of the unrolled ResNet-110 from 9.9 to 4.0 s.
    model = task.model.clone(scan=True, scan_unroll=1, remat=False)
    variables = model.init(init_rng, jnp.zeros((1,) + task.image_shape, jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=task.tx.init(params),
        rng=rng,
        nan_step=jnp.full((), -1, jnp.int32),
    )


def abstract_state(task: Task, seed: int = 0):
    return jax.eval_shape(functools.partial(create_state, task, seed))


# How a CPU compiles the state's initialiser: LLVM at -O1. jax.random's threefry is slow to
# compile at XLA's default -O2, and the values are the same bits (the initialiser draws each
# value on its own, no reduction to reorder; tests/test_train.py checks it against -O2): the
# quick start's init compiled in 4.6 s, at -O1 in 2.1 s (2026-11-28, this project's 2-core CPU).
# GPUs and TPUs keep their defaults.
CPU_INIT_OPTIONS = {"xla_backend_optimization_level": 1}


def state_initializer(task: Task, seed: int, mesh: Mesh):
    """The jitted function that creates the state directly on the devices, replicated."""
    options = CPU_INIT_OPTIONS if mesh.devices.flat[0].platform == "cpu" else None
    return jax.jit(functools.partial(create_state, task, seed), out_shardings=replicated(mesh),
                   compiler_options=options)


def init_state(task: Task, seed: int, mesh: Mesh) -> TrainState:
    return state_initializer(task, seed, mesh)()


def _images(task: Task, batch, rng=None, train_images=None, part=None):
    """The float images of a batch. Given as floats: used as they are. Gathered from on-device
    data (`augment_on_device`, CIFAR): normalised with `task.norm`, then pad-cropped and flipped
    while training (`rng` given), so the padding is the mean colour. Given as uint8 pixels
    (ImageNet): colour-augmented while training, then normalised. `part`: `train_step`'s."""
    if "index" in batch:
        images = augment.normalize(train_images[batch["index"]], *task.norm, jnp.float32)
        return augment.pad_crop_flip(rng, images, part=part) if task.augment and rng is not None else images
    if batch["image"].dtype == jnp.uint8:
        images = batch["image"]
        if task.colour and rng is not None:
            images = augment.colour_lighting(rng, images, task.colour_jitter, part=part)
    else:
        return batch["image"]
    return augment.normalize(images, *task.norm, jnp.float32)


# Leaves of at least this many values get a sum of their own in `global_norm`, the rest one sum of
# their concatenation.
NORM_OWN_SUM_MIN = 1 << 18


def global_norm(tree) -> jax.Array:
    """optax.tree.norm with few kernels, each reading at the memory's pace. XLA gives a sum per leaf a
    kernel per leaf (41-81 in the goal networks, launched from the host), and one sum of all leaves
    concatenated a kernel that picks each value's leaf with a branch: for ResNet-50's 81 leaves 375
    branches, 186 scalar and no vector loads in the H200's code, 0.30 ms for 102 MB (0.34 TB/s, twice
    a step; 2026-11-28). So the large leaves, 95% of ResNet-50's values, are summed alone (vector
    loads, no branch) and only the small ones concatenated: 15 large leaves in ResNet-50 (62 more
    launches a step in XLA's H200 code), 2-6 in the CIFAR networks (4-19 more)."""
    leaves = [x.astype(jnp.float32) for x in jax.tree.leaves(tree)]
    sums = [jnp.sum(x * x) for x in leaves if x.size >= NORM_OWN_SUM_MIN]
    small = [jnp.ravel(x) for x in leaves if x.size < NORM_OWN_SUM_MIN]
    if small:
        flat = jnp.concatenate(small)
        sums.append(jnp.sum(flat * flat))
    return jnp.sqrt(sum(sums, jnp.float32(0)))


def train_step(task: Task, state: TrainState, batch, train_images=None, part=None):
    """One SGD step on the batch. `part` = (device index, devices) where the step runs on one
    device's share of the batch (config.explicit_data_parallel, `compile_steps`): the gradients,
    the updated BN statistics and the metrics are then averaged over the devices in one float32
    all-reduce, and each device's augmentation draws are its rows of the whole batch's."""
    rng = jax.random.fold_in(state.rng, state.step)
    aug_rng, dropout_rng = jax.random.split(rng)
    images = _images(task, batch, aug_rng, train_images, part)
    labels = batch["label"]

    def loss_fn(params):
        logits, updates = task.model.apply(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True,
            mutable=["batch_stats"], rngs={"dropout": dropout_rng})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    error = jnp.mean(jnp.argmax(logits, -1) != labels)
    if part is not None:
        grads, batch_stats, loss, error = jax.lax.pmean((grads, batch_stats, loss, error), DATA_AXIS)
    grad_norm = global_norm(grads)
    updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    # A finite gradient times an absurd learning rate can still overflow the parameters.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(global_norm(params))
    ok = finite & (state.nan_step < 0)
    new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
    new = new.replace(nan_step=jnp.where(finite | (state.nan_step >= 0), state.nan_step, state.step))
    metrics = {"loss": loss, "error": error, "grad_norm": grad_norm}
    return new, metrics


def eval_step(task: Task, state: TrainState, batch):
    """Sums over the real (mask 1) examples, so padded last batches count exactly."""
    logits = task.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                              _images(task, batch), train=False)
    labels, mask = batch["label"], batch["mask"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    top5 = jnp.any(jax.lax.top_k(logits, min(5, logits.shape[-1]))[1] == labels[:, None], axis=-1)
    return {
        "loss": jnp.sum(loss * mask),
        "errors": jnp.sum((jnp.argmax(logits, -1) != labels) * mask),
        "top5_errors": jnp.sum((~top5) * mask),
        "count": jnp.sum(mask),
    }


def compile_steps(task: Task, mesh: Mesh, auto_layouts: bool = False, explicit: bool = False):
    """(train_step, eval_step) jitted over the mesh; train donates the state.

    `explicit` (config.explicit_data_parallel): the train step runs in a shard_map, each device on
    its share of the batch, and `train_step` averages the gradients, BN statistics and metrics in
    one all-reduce (a BN group spanning devices sums its statistics across them inside BN,
    `layers._across_devices`). Why: in the sharded step each BN's cross-device sums
    are an all-reduce of their own; XLA's GPU compiler combines them into one buffer and cuts each
    result out of it in a kernel of its own (ResNet-164 b128 on two H200s, counted without them:
    818 such kernels, 2,743 launches against 1,895 on one), and it sums the conv weight gradients
    across devices in bfloat16, their dtype at the convolution. Explicitly: 2,052 launches, the
    gradients summed in float32 (bench/launch_counts.jsonl).

    `auto_layouts` (config.auto_param_layouts): the state's leaves of 4 and more dimensions (conv
    kernels, stacked or not, and their momentum) in layouts XLA chooses, the same in and out; call
    the train step through `compile_train`, which puts the state in them. Why: on a GPU XLA
    otherwise transposes every conv kernel into cuDNN's layout each step (ResNet-50 on an H200,
    2026-11-28 profile: 85 cast-and-transpose kernels, 0.76 ms at 1.3 TB/s); counted for an H200
    without one (bench/param_layouts_check.py): 950 -> 856 launches, 112 -> 33 transposes. A CPU's
    XLA keeps them row-major. The eval step takes whatever layout its arguments have."""
    rep, data = replicated(mesh), batch_sharding(mesh)
    state_spec = rep
    if auto_layouts:
        from jax.experimental.layout import Format

        state_spec = jax.tree.map(lambda a: Format(param_layout(a.ndim), rep) if a.ndim >= 4 else rep,
                                  abstract_state(task))

    step = functools.partial(train_step, task)
    if explicit:
        def per_device(state, batch, train_images):
            return train_step(task, state, batch, train_images, (jax.lax.axis_index(DATA_AXIS), mesh.size))

        step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=(P(), P()),
                             check_vma=False)

    def on_mesh(state, batch, train_images=None):
        # traced with the mesh as the context mesh: layers that place kernels per device read it
        # there (layers._per_device, layers._explicit_devices)
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return step(state, batch, train_images)

    on_mesh.__name__ = "train_step"  # the program's name: jit_train_step
    train = jax.jit(on_mesh, in_shardings=(state_spec, data, rep),
                    out_shardings=(state_spec, rep), donate_argnums=0)
    evaluate = jax.jit(functools.partial(eval_step, task), in_shardings=(rep, data), out_shardings=rep)
    return train, evaluate


def param_layout(ndim: int):
    """The layout `compile_steps(auto_layouts=True)` asks for the state's conv kernels: Layout.AUTO,
    XLA's pick. A CPU's XLA picks row-major, so tests put the H200's pick here (output channels
    first) to run the GPU's case: checkpoints saved from, and restored into, layouts not row-major."""
    del ndim
    from jax.experimental.layout import Layout

    return Layout.AUTO


def compile_train(train_fn, state, batch, train_images):
    """(compiled train step, state in the layouts it takes) for these arguments' shapes and shardings.
    A train step of `compile_steps(auto_layouts=True)` is only called this way: XLA picks its state
    layouts when it compiles, from shapes (not arrays), and the state is then copied into them."""
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
    compiled = train_fn.lower(shapes, batch, train_images).compile()
    return compiled, jax.device_put(state, compiled.input_formats[0][0])


def synthetic_batch(task: Task, mesh: Mesh, batch_size: int, seed: int = 0, dtype=jnp.float32):
    """A random batch made directly on the devices, sharded: benchmarks and `dataset=synthetic`."""

    def make(key):
        k1, k2 = jax.random.split(key)
        shape = (batch_size,) + task.image_shape
        if dtype == jnp.uint8:  # pixels, as the ImageNet pipeline sends them
            image = jax.random.randint(k1, shape, 0, 256, jnp.int32).astype(jnp.uint8)
        else:
            image = jax.random.normal(k1, shape, dtype)
        return {
            "image": image,
            "label": jax.random.randint(k2, (batch_size,), 0, task.num_classes, jnp.int32),
        }

    return jax.jit(make, out_shardings=batch_sharding(mesh))(jax.random.PRNGKey(seed))
