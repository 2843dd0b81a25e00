"""The one default configuration, and the checks that reject a bad one before anything compiles.

Every experiment file in `experiments/` starts from `default()` and overrides a few fields, so
each field has exactly one meaning and one default across the project. `validate()` is called
by every entry point (main, summary, benchmark, the notebook helpers) before a model is built,
so a typo costs a one-line error, not a compile and a traceback.
"""

from __future__ import annotations

import ml_collections

UNITS = ("original", "bn_after_add", "relu_before_add", "relu_only_preact", "full_preact")
SHORTCUTS = (
    "identity",
    "constant_scaling",
    "exclusive_gating",
    "shortcut_only_gating",
    "conv1x1",
    "dropout",
)
BLOCKS = ("basic", "bottleneck", "single")
FAMILIES = ("cifar", "imagenet")
SHORTCUT_TYPES = ("A", "B", "C")
STRIDE_ON = ("3x3", "1x1")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("nothing", "conv", "dots")
DATASETS = ("digits", "cifar10", "cifar100", "imagenet2012", "synthetic")
SCHEDULES = ("paper_steps", "epochs_step", "cosine", "constant")
OPTIMIZERS = ("sgd",)
NAN_POLICIES = ("stop", "rollback")
NORMALIZATIONS = ("channel", "pixel_mean")
IMAGENET_AUGMENTS = ("scale", "inception")
# CUDA graphs through convolutions and loops (default()'s comment says why the CIFAR family wants them).
COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer=+CONVOLUTION,+WHILE,+CONDITIONAL"
# ... whose independent kernels may run concurrently (XLA's default order serialises them).
CONCURRENT_GRAPHS = "--xla_gpu_command_buffer_scheduling_mode=CONCURRENT"
# ... and whose buffers XLA keeps at stable addresses (virtual-memory remapping, after profiling the
# first steps), so a graph is relaunched as it is instead of having its kernels' buffer addresses
# updated before each launch. XLA falls back to updating them where it cannot remap. jaxlib >= 0.11.2
# (earlier XLAs abort on the value), so the CIFAR flags add it only where the installed jaxlib knows it.
UPDATE_FREE_GRAPHS = "--xla_gpu_command_buffer_update_mode=SKIP_PROFILED"
# CIFAR_XLA_FLAGS, all three where the jaxlib knows them, is defined below known_xla_flags.
# The paper's CIFAR runs used 2 GPUs, each with its own BN statistics over its half of the batch
# (PAPER.md: "batch 128 on 2 GPUs (64 per GPU, so BN statistics over 64 images)"; resnet-1k-layers
# runs ResNet-1001 at batch 64 with -nGPU 2). The CIFAR experiments set
# bn_group_size = batch_size // PAPER_GPUS, on any number of devices.
PAPER_GPUS = 2

# ImageNet family: depth -> (block, units per stage). From PAPER.md "Architectures".
IMAGENET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
# Layers per unit for the CIFAR family: depth = layers * 3n + 2.
CIFAR_LAYERS_PER_UNIT = {"basic": 2, "bottleneck": 3, "single": 1}

# What each dataset looks like to the model; `image_size`/`num_classes` fields override.
DATASET_INFO = {
    "digits": dict(image_size=8, num_classes=10, num_train=1437, num_test=360),
    "cifar10": dict(image_size=32, num_classes=10, num_train=50000, num_test=10000),
    "cifar100": dict(image_size=32, num_classes=100, num_train=50000, num_test=10000),
    "imagenet2012": dict(image_size=224, num_classes=1000, num_train=1281167, num_test=50000),
    "synthetic": dict(image_size=32, num_classes=10, num_train=50000, num_test=10000),
}


def default() -> ml_collections.ConfigDict:
    """The paper's CIFAR-10 full pre-activation ResNet-164 recipe; experiments override fields."""
    c = ml_collections.ConfigDict()
    c.experiment = "default"
    c.paper_error = -1.0  # the paper's test error (%) this config reproduces; -1 when none.

    m = c.model = ml_collections.ConfigDict()
    m.family = "cifar"
    m.depth = 164
    m.block = "bottleneck"  # depths such as 110 and 164 fit both forms: always explicit.
    m.unit = "full_preact"
    m.shortcut = "identity"
    m.shortcut_scale = 0.5  # constant_scaling: h(x) = scale * x
    m.scale_residual = False  # constant_scaling: also F <- scale * F (the 0.5/0.5 case)
    m.gate_bias_init = -6.0  # gating: b_g, the paper's best value
    m.shortcut_dropout = 0.5  # dropout shortcut: drop rate
    m.shortcut_type = "B"  # A zero-pad, B project where dimensions change, C always project
    m.stride_on = "3x3"  # fb.resnet.torch/timm; "1x1" is resnet-1k-layers
    m.num_classes = 10
    m.width = 1.0
    m.dtype = "float32"
    m.scan = True  # fold identical units of a stage with nn.scan (fast compile for 1001 layers)
    # Units per loop iteration of a scanned stage: on a GPU each iteration of XLA's while loop costs
    # a host round trip for its condition, so k > 1 trades compile time for fewer trips.
    m.scan_unroll = 1
    # On a GPU, each unit of a loop iteration reads its rows of the stacked parameters and saved
    # tensors by its own index instead of slicing one block per iteration (scan_reads.py says why):
    # the H200 code of JAX 0.11.2's XLA for ResNet-1001 then loads vectors where it loaded single
    # elements in 24 of its 400 largest kernels (8.65 GB a step), with 11 fewer kernels of 10,908.
    # Timed on one H200 (bf16, batch 64, 2026-11-28): 1,530 against 1,534 images/s, the same loss. Off.
    m.scan_unit_reads = False
    m.remat = False
    m.remat_policy = "conv"
    # BN-ReLU's backward recomputes its ReLU mask from the saved input instead of letting XLA store the
    # forward's: XLA's count for an H200 says ResNet-50 at batch 256 then moves 79.4 instead of 85.9 GB
    # a step and allocates 9.0 instead of 11.0 GiB, for 98 more kernels (BENCHMARKS.md). Timed on one
    # H200 (2026-11-27): ResNet-50 35.0 against 35.2 ms a step, within the noise, so a memory lever.
    m.bn_recompute_mask = False
    # BN's forward sums each channel in one kernel of 16-32 partial sums, which the kernel computing
    # the per-channel factors adds up, instead of XLA's two reduction kernels: XLA's count for an
    # H200 says 11% fewer kernels for ResNet-110 (1,295 -> 1,150) and 9% for ResNet-164, whose steps
    # are kernel-bound there. The kernels removed are small ones, and the first pass then runs on
    # 16-32 thread blocks where XLA uses 128-256. Timed on one H200 with serial CUDA graphs
    # (2026-11-27, BENCHMARKS.md): ResNet-1001 +9.5%, ResNet-110 -8%, ResNet-164 -3%, ResNet-50 -2%;
    # with concurrent graphs ResNet-110 the same, ResNet-1001 +4.4%; with the update-free graphs
    # (third run) ResNet-1001 -0.8%, ResNet-164 -11%. Off.
    m.bn_partial_sums = False
    # BN's per-channel sums, forward and backward, in a hand-written Pallas (Triton) kernel on a GPU
    # (column_sums.py): [rows, 128-column] slabs per program read as ~4096-value tiles, where XLA's
    # reductions ran BN's sums at 0.6-3.5 TB/s in the H200's ResNet-50 profile (2026-11-28; its
    # elementwise passes reach 3.9-4.4). XLA's count for an H200 (deviceless, JAX 0.11.2): ResNet-50
    # 950 -> 951 kernels, 85.8 -> 79.6 GB. On one H200 (2026-11-28, session 21): ResNet-50 8,346 ->
    # 8,750 images/s; on by default for the ImageNet family (`imagenet`), not timed on CIFAR. On
    # several devices each runs it on its own rows (a shard_map); off a GPU, and on GPUs before
    # Ampere or without CUDA (layers.PALLAS_SUMS_MIN_CAPABILITY), XLA's sums.
    m.bn_pallas_sums = False
    # A BN-ReLU whose only consumer is the next convolution runs with it as one op whose backward
    # recomputes the BN-ReLU output from BN's saved input, instead of keeping it: in a scanned stage
    # every kept tensor is a stacked buffer that XLA zero-fills, writes and reads back each step.
    # ResNet-1001 on a CPU (2026-11-27, batch 16, float32): the same loss, step 4.0 against 4.5-5.4 s,
    # compile 16.8 against 19-20 s, XLA's allocation 1.6 against 2.9 GB; XLA's count for an H200:
    # 12% fewer bytes, 2% fewer kernels (unrolled steps: the same program). On one H200 (bf16, batch
    # 64, 2026-11-27, third run): 47.2 against 48.7 ms a step, 2.8 against 5.0 GiB.
    m.bn_recompute_output = True
    # With bn_recompute_output, a unit's own BN-ReLU before a 1x1 stride-1 convolution (bottleneck
    # units) runs on a CUDA GPU as one matrix product that applies the BN-ReLU to its input as it
    # reads it, in the forward and in the weight gradient (layers._bn_relu_gemm, cuDNN-fusion regions
    # that XLA gives to cuDNN or its Triton GEMM), so the BN-ReLU output is never written. One device;
    # jaxlib >= 0.11.2. XLA's count for an H200 (2026-11-27, session 16, BENCHMARKS.md "BN-ReLU
    # inside the 1x1 convolutions"): kernels and bytes ResNet-50 -5.1% and -2.4%, ResNet-164 -6.7%
    # and -3.4%, ResNet-1001 -4.2% and -3.0%; its compile there 15-30% longer. Timed on one H200
    # (bf16, 2026-11-28, steps back to back): ResNet-50 -7.2% (same process), ResNet-1001 +0.6%,
    # ResNet-164 +12.7% (14,463 against 12,838 images/s, two processes; compile 49 s, 4.4 against
    # 1.8 GiB). Off: no gain but on ResNet-164 (try it there). On several devices each runs its
    # own rows' products (layers._per_device).
    m.conv1x1_fusion = False
    # The ImageNet stem's 7x7 stride-2 convolution on 3 channels as a 4x4 stride-1 one on the input's
    # 2x2 blocks (12 channels; layers.space_to_depth_conv): same parameters and result to float
    # rounding, a shape the GPU's tensor cores take better. On one H200 (bf16, batch 256, 2026-11-27,
    # third run) ResNet-50 took 33.9 against 35.0 ms a step (+3.2%). CIFAR networks have no stem.
    m.stem_space_to_depth = True
    # With stem_space_to_depth, the blocked stem input's 12 channels padded with zeros to 16 in
    # bfloat16 (a pixel's channels a multiple of 16 bytes; the kernel gets zero rows): the same
    # result. In the H200's ResNet-50 profile (2026-11-28) cuDNN padded the 12-channel operands
    # itself (four padding kernels, 0.25 ms a step) and ran one sm80 CUTLASS convolution (0.44 ms).
    # On one H200 (2026-11-28, session 21): ResNet-50 8,346 -> 8,382 images/s alone; on by default
    # for the ImageNet family (`imagenet`), with the two levers it pays beside.
    m.stem_align_channels = False
    m.zero_init_last = False  # zero-init each unit's last layer (timm option; not the paper's)

    c.dataset = "cifar10"
    c.image_size = 0  # 0: the dataset's own size (synthetic: set it, e.g. 224 for ImageNet shapes)
    c.data_dir = ""  # TFDS data dir; "" means TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.normalization = "channel"
    # digits/CIFAR: the train set lives on the accelerators and each step gathers and augments its
    # rows there, so no host work per step (the host path, False, measured ~20,000 images per
    # CPU-second: BENCHMARKS.md). ImageNet ignores it: it streams uint8 crops, and the step
    # normalises (and colour-augments) them on device.
    c.augment_on_device = True
    c.imagenet_augment = "scale"
    c.imagenet_eval_size = 224  # 224: centre crop of 256-resized; 320: full 320-resized image
    c.shuffle_buffer = 16384  # ImageNet only: CIFAR and digits are permuted whole in memory
    c.data_threads = 0  # ImageNet only: tf.data threads per process (0: one per core, tf.data's default)
    c.augment = True  # train-time augmentation (pad-crop-flip for CIFAR; off for a plain check)

    c.batch_size = 128  # global, over all devices and hosts
    c.eval_batch_size = 500
    # 0: BN statistics over the global batch; g: over groups of g consecutive examples (the whole
    # batch when it is g or fewer). The CIFAR experiments set half their batch (PAPER_GPUS).
    c.bn_group_size = 0
    c.num_train_steps = 64000
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.lr_base_batch = 0  # >0: learning_rate * batch_size / lr_base_batch
    c.schedule = "paper_steps"
    c.lr_boundaries = (32000, 48000)  # steps (paper_steps) or epochs (epochs_step)
    c.lr_decay = 0.1
    c.warmup_steps = 400
    c.warmup_lr = 0.01
    c.momentum = 0.9
    c.nesterov = False
    c.weight_decay = 1e-4
    c.decay_bn_and_bias = True  # official code: decay coupled into the gradient on all params

    # The state's conv kernels (and their momentum) in layouts XLA picks for the train step, where
    # it otherwise transposes them into cuDNN's layout every step (step.compile_steps). Counted for
    # an H200 without one (2026-11-28): ResNet-50 950 -> 856 launches, 112 -> 33 transposes; its
    # profile gave those transposes 0.76 ms of 30.9. On one H200 (2026-11-28, session 21): ResNet-50
    # 8,346 -> 8,399 images/s alone; on by default for the ImageNet family (`imagenet`). Checkpoints
    # save from and restore into those layouts (tested with the H200's conv layout on a CPU;
    # training with it has not run on a GPU). Not timed on CIFAR, whose steps are launch-bound.
    c.auto_param_layouts = False
    # On several devices, the train step as explicit data parallelism: each device runs the network
    # on its share of the batch, and the gradients, BN statistics and metrics are averaged in one
    # float32 all-reduce (step.compile_steps). The sharded step sums each BN's vectors across
    # devices in an all-reduce of its own, which XLA's GPU compiler cuts out of one combined buffer
    # in a kernel each, and sums the conv weight gradients in bfloat16. Counted for two H200s
    # without them (2026-11-28, session 20): ResNet-164 b128 2,743 -> 2,052 launches (one H200:
    # 1,895). A BN group spanning devices (bn_group_size 0, the whole batch, or several devices'
    # examples) sums its statistics across them inside BN. Not timed: the device machines have one GPU.
    c.explicit_data_parallel = False

    c.seed = 0
    c.log_every_steps = 100
    c.eval_every_steps = 4000
    c.checkpoint_every_steps = 4000
    c.keep_checkpoints = 3
    c.nan_policy = "stop"
    c.collective_timeout_s = 300
    # JAX's persistent compilation cache: a restarted or repeated run loads its compiled steps
    # instead of compiling them again. "": $XDG_CACHE_HOME (or ~/.cache)/resnet_v2_jax/xla, or
    # $JAX_COMPILATION_CACHE_DIR when set; a path (gs:// works); "off": no cache.
    c.compilation_cache_dir = ""
    # XLA flags the program sets before JAX starts (a flag already in $XLA_FLAGS keeps its value).
    # CIFAR steps launch thousands of small kernels, so the host launching them bounds the step on a
    # GPU; command buffers (CUDA graphs) through convolutions and loops replay them as a few graphs.
    # On one H200 (bf16, 2026-11-27, BENCHMARKS.md) they took ResNet-110 from 15.5 to 10.7 ms,
    # ResNet-164 (unrolled) from 21.1 to 13.8 ms and ResNet-1001 from 70.1 to 66.0 ms a step; the
    # GPU-bound ImageNet ResNet-50 lost 8% with them, so imagenet() clears this. Letting the graphs
    # run independent kernels concurrently then took ResNet-110 from 10.2 to 8.3 ms and ResNet-1001
    # from 65.0 to 51.8 ms (same H200, second run); ResNet-164 went from 14.9 to 15.5 ms. Graphs
    # relaunched without updating their buffer addresses (UPDATE_FREE_GRAPHS, jaxlib >= 0.11.2) then
    # took ResNet-110 fed two batches in turn from 8.8 to 8.0 ms, ResNet-1001 from 47.2 to 45.9 ms,
    # and ResNet-164 to 13.0 ms (third run, 2026-11-27; serial graphs had run it in 13.8-14.9 ms).
    c.xla_flags = CIFAR_XLA_FLAGS
    return c


def imagenet(depth: int, paper_error: float, augment: str, eval_size: int) -> ml_collections.ConfigDict:
    """The fb.resnet.torch ImageNet recipe (batch 256, lr 0.1 /10 at epochs 30 and 60, 90 epochs)."""
    c = default()
    c.experiment = f"imagenet_resnet{depth}"
    c.paper_error = paper_error
    c.dataset = "imagenet2012"
    c.model.family, c.model.depth, c.model.num_classes = "imagenet", depth, 1000
    c.model.block = IMAGENET_STAGES[depth][0]
    c.model.dtype = "bfloat16"
    c.imagenet_augment, c.imagenet_eval_size = augment, eval_size
    c.batch_size, c.eval_batch_size = 256, 250
    c.lr_base_batch = 256  # linear scaling: lr 0.1 per 256 images
    c.schedule, c.lr_boundaries, c.warmup_steps = "epochs_step", (30, 60), 0
    c.num_train_steps = 90 * DATASET_INFO["imagenet2012"]["num_train"] // 256
    c.eval_every_steps, c.checkpoint_every_steps = 5000, 2500
    c.xla_flags = ""  # GPU-bound: command buffers cost ResNet-50 8% on an H200 (default()'s comment)
    # The three levers prepared in session 19, timed on one H200 (bf16, batch 256, 2026-11-28,
    # session 21, one process, steps back to back; bench/gpu_2026-11-28b/): ResNet-50 8,346 img/s
    # without them, 8,750 with bn_pallas_sums, 8,382 with stem_align_channels, 8,399 with
    # auto_param_layouts, 8,916 with all three (8,938 in a second process), 11.1 -> 9.4 GiB.
    # Off a GPU bn_pallas_sums leaves XLA's sums; the other two are exact (zero channels, layouts).
    c.model.bn_pallas_sums = c.model.stem_align_channels = c.auto_param_layouts = True
    return c


def _choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(map(str, valid))}")


def _positive(name: str, value) -> None:
    if not value > 0:
        raise ValueError(f"{name}={value!r} must be positive")


def stage_units(model: ml_collections.ConfigDict) -> tuple[str, tuple[int, ...]]:
    """(block, units per stage) for a model config, or ValueError naming the bad field."""
    _choice("model.family", model.family, FAMILIES)
    _choice("model.block", model.block, BLOCKS)
    depth = model.depth
    if model.family == "imagenet":
        if depth not in IMAGENET_STAGES:
            raise ValueError(
                f"model.depth={depth!r} is not an ImageNet depth; choose one of "
                f"{', '.join(map(str, IMAGENET_STAGES))}"
            )
        block, units = IMAGENET_STAGES[depth]
        return block, units
    layers = CIFAR_LAYERS_PER_UNIT[model.block]
    n, rest = divmod(depth - 2, 3 * layers)
    if not isinstance(depth, int) or rest or n < 1:
        raise ValueError(
            f"model.depth={depth!r} is not valid for CIFAR {model.block} units: it must be "
            f"{3 * layers}n+2 with n>=1 (e.g. {', '.join(str(3 * layers * k + 2) for k in (1, 3, 9, 18))})"
        )
    return model.block, (n, n, n)


def validate_model(model: ml_collections.ConfigDict) -> None:
    _choice("model.unit", model.unit, UNITS)
    _choice("model.shortcut", model.shortcut, SHORTCUTS)
    _choice("model.shortcut_type", model.shortcut_type, SHORTCUT_TYPES)
    _choice("model.stride_on", model.stride_on, STRIDE_ON)
    _choice("model.dtype", model.dtype, DTYPES)
    _choice("model.remat_policy", model.remat_policy, REMAT_POLICIES)
    _positive("model.width", model.width)
    _positive("model.num_classes", model.num_classes)
    if not isinstance(model.scan_unroll, int) or model.scan_unroll < 1:
        raise ValueError(f"model.scan_unroll={model.scan_unroll!r} must be an integer >= 1")
    stage_units(model)
    if model.family == "imagenet" and model.block != IMAGENET_STAGES[model.depth][0]:
        raise ValueError(
            f"model.block={model.block!r} does not match ImageNet ResNet-{model.depth}, "
            f"which uses {IMAGENET_STAGES[model.depth][0]!r} units"
        )
    if not 0.0 <= model.shortcut_dropout < 1.0:
        raise ValueError(f"model.shortcut_dropout={model.shortcut_dropout!r} must be in [0, 1)")
    if model.bn_pallas_sums and model.bn_partial_sums:
        raise ValueError("model.bn_pallas_sums=True and model.bn_partial_sums=True are two ways to reduce BN's "
                         "sums: set one")
    if model.stem_align_channels and not model.stem_space_to_depth:
        raise ValueError("model.stem_align_channels=True needs model.stem_space_to_depth=True: it pads the "
                         "channels of the stem's 2x2 blocks")
    if model.conv1x1_fusion and not model.bn_recompute_output:
        raise ValueError("model.conv1x1_fusion=True needs model.bn_recompute_output=True: it fuses the "
                         "BN-ReLU that the following convolution applies")


# The first jaxlib whose XLA knows a flag ("--name") or one of its values ("--name=VALUE"), for the
# flags the configs set that older ones do not: the concurrent mode found by searching the jaxlib
# wheels' libraries for the name (setup.cfg's jax floor covers it), SKIP_PROFILED the version the
# H200 ran (0.10.2's XLA aborts on it; 0.11.0 and 0.11.1 untried).
XLA_FLAG_MIN_JAXLIB = {"--xla_gpu_command_buffer_scheduling_mode": (0, 7, 1), UPDATE_FREE_GRAPHS: (0, 11, 2)}


def _jaxlib_version() -> tuple[int, ...] | None:
    from importlib import metadata

    try:
        return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:3] if p.isdigit())
    except metadata.PackageNotFoundError:
        return None


def _newer_jaxlib_needed(flag: str) -> tuple[int, ...] | None:
    """The jaxlib `flag` needs when the installed one is older (unknown versions pass), else None."""
    needs = [XLA_FLAG_MIN_JAXLIB.get(key) for key in (flag, flag.split("=")[0])]
    need, have = max((n for n in needs if n), default=None), _jaxlib_version()
    return need if have and need and have < need else None


def known_xla_flags(*flags: str) -> str:
    """The flags the installed jaxlib's XLA knows, space-separated: what a config may set by default
    without aborting an older XLA (`validate_xla_flags` refuses the rest, naming the jaxlib)."""
    return " ".join(f for f in flags if not _newer_jaxlib_needed(f))


# Every CIFAR experiment's XLA flags (default()'s comment has the timings).
CIFAR_XLA_FLAGS = known_xla_flags(COMMAND_BUFFERS, CONCURRENT_GRAPHS, UPDATE_FREE_GRAPHS)


def validate_xla_flags(xla_flags: str) -> None:
    """XLA aborts the process (a C++ fatal error) on a malformed $XLA_FLAGS or a flag it does not
    know: reject both here instead, with what to do."""
    bad = [flag for flag in xla_flags.split() if not flag.startswith("--xla_")]
    if bad:
        raise ValueError(f"xla_flags={xla_flags!r}: {bad[0]!r} is not an XLA flag (--xla_...); "
                         "separate flags with spaces")
    for flag in xla_flags.split():
        need = _newer_jaxlib_needed(flag)
        if need:
            have = _jaxlib_version()
            raise ValueError(
                f"xla_flags: {flag} needs jaxlib >= {'.'.join(map(str, need))} (installed: "
                f"{'.'.join(map(str, have))}), whose XLA would abort on it; upgrade jax and jaxlib, or "
                f"leave the flag out (--config.xla_flags=...)")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ValueError with a one-line message naming the first bad field."""
    validate_model(config.model)
    _choice("dataset", config.dataset, DATASETS)
    _choice("schedule", config.schedule, SCHEDULES)
    _choice("optimizer", config.optimizer, OPTIMIZERS)
    _choice("nan_policy", config.nan_policy, NAN_POLICIES)
    _choice("normalization", config.normalization, NORMALIZATIONS)
    _choice("imagenet_augment", config.imagenet_augment, IMAGENET_AUGMENTS)
    _choice("imagenet_eval_size", config.imagenet_eval_size, (224, 320))
    for name in ("batch_size", "eval_batch_size", "num_train_steps", "learning_rate",
                 "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        _positive(name, config[name])
    validate_xla_flags(config.xla_flags)
    if config.data_threads < 0:
        raise ValueError(f"data_threads={config.data_threads!r} must be 0 (one per core) or positive")
    if config.bn_group_size < 0:
        raise ValueError(f"bn_group_size={config.bn_group_size!r} must be 0 (global batch) or positive")
    if num_devices is not None:
        for name in ("batch_size", "eval_batch_size"):
            if config[name] % num_devices:
                raise ValueError(
                    f"{name}={config[name]} is not divisible by the {num_devices} devices; "
                    f"use a multiple of {num_devices}"
                )
        per_device = config.batch_size // num_devices
        # A group as large as the batch is the batch (BatchNorm does so). Otherwise a group is part
        # of one device's examples, or whole devices' examples (XLA then sums it across them).
        group = min(config.bn_group_size, config.batch_size)
        if not group:
            fits = True
        elif group <= per_device:
            fits = per_device % group == 0
        else:
            fits = group % per_device == 0 and config.batch_size % group == 0
        if not fits:
            raise ValueError(
                f"bn_group_size={config.bn_group_size} does not divide the per-device batch "
                f"{per_device} (batch_size {config.batch_size} over {num_devices} devices), nor is it a "
                f"multiple of it dividing the batch; use a divisor of {per_device}, or 0 for the whole batch"
            )
