"""`python -m resnet_v2_jax.input_benchmark --config=experiments/imagenet_resnet50.py`: host input speed.

Times the real input pipeline of `input_pipeline.create(config)` (for ImageNet: TFDS records ->
JPEG decode fused with the crop -> the experiment's augmentation -> normalised float32 batches as
numpy, exactly what the training loop consumes), once per `--threads` value (`data_threads`: a
private tf.data pool of that many threads, ops single-threaded).

Per-core speed is images per CPU-second of this process (user + system time of all its threads
over the timed batches), which also counts the Python loop and the copies into numpy. `cores_for_target` = target images/s / images per
CPU-second, rounded up: how many cores one accelerator needs at that step rate.

Without the real ImageNet, `--sample_dir=DIR` prepares (once) and reads the small imagenet2012
of `sample_imagenet` (real photographs cut to ImageNet's sizes, prepared by TFDS's builder); it
never writes into `config.data_dir`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import sys
import time

from absl import flags, logging

KEYS = ("dataset", "split", "augment", "image_size", "batch", "threads", "batches", "warmup", "seconds",
        "images_per_second", "cpu_seconds", "images_per_cpu_second",
        "cores_busy", "target_images_per_second", "cores_for_target", "epoch_starts", "machine_cores", "sample",
        "tensorflow_version", "date")


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def run(config, threads: int, batches: int, warmup: int, split: str = "train", target: float = 0.0,
        sample: bool = False) -> dict:
    """Times `batches` batches of `split` after `warmup` untimed ones with `threads` tf.data threads."""
    from resnet_v2_jax import input_pipeline
    from resnet_v2_jax.tf_import import tf

    config = config.copy_and_resolve_references()
    config.data_threads = threads
    data = input_pipeline.create(config)
    # Steady state only: training opens each next epoch ahead in a background thread, which here
    # would time part of an epoch that is not counted (epoch_starts says how many starts are in).
    data.LOOKAHEAD_BATCHES = 0
    batches_iter = data.train_batches(0) if split == "train" else _cycle(data.test_batches)
    for _ in range(warmup):
        next(batches_iter)
    images = 0
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    for _ in range(batches):
        images += len(next(batches_iter)["label"])
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    # Each new epoch restarts the pipeline (file shuffle, shuffle-buffer fill): on a small dataset
    # that start-up, not the steady state, would dominate, so say how many the timing includes.
    size = data.num_train if split == "train" else data.num_test
    epoch_starts = ((warmup + batches) * images // batches - 1) // max(size, 1)
    if cpu <= 0:
        raise ValueError(f"{batches} batches used no measurable CPU time; time more (--batches)")
    per_cpu_second = images / cpu
    augment = (config.imagenet_augment if config.augment else "none") if split == "train" else "centre_crop"
    return {
        "dataset": config.dataset, "split": split, "augment": augment,
        "image_size": data.image_size if split == "train" else data.eval_image_size,
        "batch": config.batch_size if split == "train" else config.eval_batch_size,
        "threads": threads, "batches": batches, "warmup": warmup, "seconds": round(seconds, 6),
        "images_per_second": round(images / seconds, 1),
        "cpu_seconds": round(cpu, 6), "images_per_cpu_second": round(per_cpu_second, 1),
        "cores_busy": round(cpu / seconds, 2), "target_images_per_second": target,
        "cores_for_target": math.ceil(target / per_cpu_second) if target else None,
        "epoch_starts": epoch_starts,
        "machine_cores": os.cpu_count(), "sample": sample, "tensorflow_version": tf.__version__,
        "date": datetime.date.today().isoformat(),
    }


def _cycle(make):
    while True:
        yield from make()


def format_result(r: dict) -> str:
    need = f"; {r['cores_for_target']} cores for {r['target_images_per_second']:.0f} images/s" \
        if r["cores_for_target"] else ""
    if r["epoch_starts"]:
        need += f" (includes {r['epoch_starts']} epoch start(s): use more images or fewer batches)"
    return (f"{r['dataset']} {r['split']} ({r['augment']}, {r['image_size']}px) batch {r['batch']}, "
            f"{r['threads']} thread(s) on a {r['machine_cores']}-core machine{' [sample data]' if r['sample'] else ''}:\n"
            f"  {r['images_per_second']:.1f} images/s, "
            f"{r['images_per_cpu_second']:.1f} images per CPU-second, {r['cores_busy']:.2f} cores busy{need}")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    try:
        threads = [int(t) for t in f.threads.split(",")]
    except ValueError:
        threads = [0]
    if min(threads) < 1 or f.batches < 1 or f.warmup < 0:
        print("error: --threads must be positive integers (e.g. 1,2), --batches >= 1, --warmup >= 0",
              file=sys.stderr)
        sys.exit(2)
    config = f.config
    sample = bool(f.sample_dir)
    try:
        if sample:
            from resnet_v2_jax import sample_imagenet

            if config.dataset != "imagenet2012":
                raise ValueError(f"--sample_dir makes an imagenet2012 sample; the config reads {config.dataset}")
            config.data_dir = os.path.abspath(f.sample_dir)
            with contextlib.redirect_stdout(sys.stderr):  # TFDS's progress: stdout stays JSON
                sample_imagenet.prepare(config.data_dir, train=f.sample_images, val=f.sample_images // 4)
        from resnet_v2_jax import config as config_lib

        config_lib.validate(config)
        results = [run(config, t, f.batches, f.warmup, f.split, f.target, sample) for t in threads]
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    for r in results:
        print(json.dumps(r) if f.json else format_result(r), flush=True)


def define_flags() -> None:
    from resnet_v2_jax import cli

    cli.define_config_flag()
    flags.DEFINE_string("threads", "1", "Comma-separated tf.data thread counts to time, e.g. 1,2.")
    flags.DEFINE_integer("batches", 10, "Timed batches per thread count.")
    flags.DEFINE_integer("warmup", 2, "Untimed batches first (pipeline start, shuffle buffer fill).")
    flags.DEFINE_enum("split", "train", ["train", "test"], "train: augmented batches; test: eval crops.")
    flags.DEFINE_float("target", 9000.0, "Images/s one accelerator consumes; gives cores_for_target.")
    flags.DEFINE_bool("json", False, "Print one JSON object per thread count instead of text.")
    flags.DEFINE_string("sample_dir", "", "Prepare/read the sample imagenet2012 here (not the real data).")
    flags.DEFINE_integer("sample_images", 6400, "Training images in a new --sample_dir sample (25 batches of "
                         "256); a quarter as many for validation.")


def cli_main(argv=None) -> None:
    from resnet_v2_jax import cli

    cli.run(main, define_flags, argv)


if __name__ == "__main__":
    cli_main()
