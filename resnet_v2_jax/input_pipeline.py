"""Training and evaluation batches for digits, CIFAR-10/100 and ImageNet, read through TFDS.

The one contract that shapes this module: a run that is interrupted and resumed at step s must
see exactly the batches it would have seen. So nothing here keeps state between steps.

* digits, cifar10, cifar100 fit in memory. The global batch at step s is a pure function of
  (config.seed, s): batches are consecutive runs of `batch_size` rows from the concatenation of
  per-epoch permutations `np.random.default_rng([seed, epoch]).permutation(N)` (a batch may
  straddle two epochs), and the CIFAR pad-crop-flip draws come from
  `np.random.default_rng([seed, 1, s])` for the whole global batch. Process p of P takes rows
  [p*B/P, (p+1)*B/P) of that global batch, so batches do not depend on the process count.
  `config.augment` is a no-op for digits: a mirrored digit is another symbol or none.
* imagenet2012 is streamed. Each process reads its own shard of the train split
  (`tfds.split_for_jax_process`, remainder dropped so every shard has the same length M),
  epoch e of the shard is file-shuffled and buffer-shuffled with a seed derived from
  (seed, e, process_index, process_count), and each example's augmentation is seeded by
  (that seed, its position in the epoch). Resuming at step s skips the s*B/P examples already
  consumed (undecoded) in the current epoch. This reproduces the batches exactly as long as
  TFDS reads the files deterministically (the default; `options.deterministic=True` is set);
  unlike the in-memory datasets, the batches depend on the process count. Evaluation reads
  per-process shards of the validation split too, so there global eval batch i is the i-th
  batch of every process's shard side by side (still every example exactly once).

TensorFlow is confined to this module (and `digits.py`, imported through `tf_import.py`), runs on the CPU only, and never sees
the accelerators, which belong to JAX. Everything yielded is numpy.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import math
import socket
from collections.abc import Iterator

import numpy as np
from etils import epath

from resnet_v2_jax import augment, digits
from resnet_v2_jax.config import DATASET_INFO
from resnet_v2_jax.tf_import import tf, tfds

IN_MEMORY = ("digits", "cifar10", "cifar100")
PAD = 4  # the paper's CIFAR padding

_CIFAR_URL_HOST = "www.cs.toronto.edu"  # where TFDS downloads CIFAR from


class Data:
    """What the trainer needs from a dataset: sizes, normalisation and two batch iterators.

    `norm` is (mean, std) as float32 on the 0..255 scale: mean is per channel, shape (C,), or
    the per-pixel mean image, shape (H, W, C), when `normalization='pixel_mean'`; std is per
    channel (for 'pixel_mean' too: the paper only subtracts the mean image, and dividing by a
    fixed per-channel constant keeps the inputs at the scale of 'channel'). digits and CIFAR
    batches from the host are float32, already normalised; ImageNet batches are uint8 pixels
    (cropped, resized, mirrored), and the step normalises every uint8 batch on device with
    `norm` (`augment.normalize`), as it does the rows gathered with `augment_on_device`.
    `eval_image_size` is the side of the test images (ImageNet may evaluate at 320).
    `device_augment` tells the trainer whether to pad-crop-flip the gathered rows on device
    (True only with `augment_on_device` and `augment`, and never for digits); `device_colour`
    whether to apply the ImageNet recipe's colour augmentation on device (`augment.colour_lighting`:
    jitter and lighting for imagenet_augment='inception', lighting for 'scale').
    """

    num_train: int
    num_test: int
    image_size: int
    eval_image_size: int
    channels: int
    num_classes: int
    train_arrays: dict | None
    norm: tuple
    device_augment: bool = False
    device_colour: bool = False

    def train_batches(self, start_step: int = 0) -> Iterator[dict]:
        """This process's slice of the global batch for steps start_step, start_step+1, ...

        Yields {'image': float32 or uint8 (B/P, H, W, C), 'label': int32 (B/P,)}, or, with
        `augment_on_device`, {'index': int32 (B/P,), 'label': int32 (B/P,)}: rows of
        `train_arrays` to gather, augment (`augment.pad_crop_flip` when `device_augment`, keyed
        on the step) and normalise on device, with their labels.
        """
        raise NotImplementedError

    def test_batches(self) -> Iterator[dict]:
        """One pass over the test split, every example exactly once.

        Each dict is this process's slice of a global batch of `eval_batch_size`, padded with
        zeros at the end: {'image': float32, 'label': int32, 'mask': float32 (1 real, 0 pad)}.
        Every process yields the same number of batches, so collectives stay in step.
        """
        raise NotImplementedError


def create(config, process_index: int = 0, process_count: int = 1) -> Data:
    """Prepares (digits), checks (everything else) and opens `config.dataset`."""
    name = config.dataset
    if name == "synthetic":
        raise ValueError("dataset='synthetic' is generated on device by the trainer, not read here")
    if name not in DATASET_INFO:
        raise ValueError(f"dataset={name!r} is not known; choose one of {', '.join(DATASET_INFO)}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % process_count:
            raise ValueError(f"{field}={config[field]} is not divisible by the {process_count} processes")
    builder = _prepared_builder(name, config.data_dir or None, process_count)
    if name in IN_MEMORY:
        return _InMemoryData(config, builder, process_index, process_count)
    return _ImageNetData(config, builder, process_index, process_count)


# ----------------------------------------------------------------------------- preparation


def _prepared_builder(name: str, data_dir: str | None, process_count: int):
    """The dataset's builder, prepared; fails fast with the preparation steps when it is not.

    Checking `is_prepared()` first means a missing dataset costs one readable error rather
    than a network traceback from a download attempt.
    """
    if name == "digits":
        try:
            builder = digits.Digits(data_dir=data_dir)
            if not builder.is_prepared():
                builder.download_and_prepare()  # offline: scikit-learn ships the images
        except OSError as e:  # a data dir under a file, read-only, or a full disk
            raise ValueError(f"cannot prepare digits in the TFDS data dir {data_dir or '(TFDS default)'} "
                             f"({type(e).__name__}: {e.strerror or e}); set config.data_dir to a writable "
                             "directory") from e
        return builder
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        return builder
    root = data_dir or str(epath.Path(builder.data_dir).parent.parent)
    if name == "imagenet2012":
        raise FileNotFoundError(_imagenet_missing(root, builder.data_dir))
    reason = _cannot_download(process_count)
    if reason is None:
        try:
            builder.download_and_prepare()
            return builder
        except Exception as error:  # any failure to fetch means the same fix for the user
            raise FileNotFoundError(_cifar_missing(name, root, f"the download failed: {error}")) from error
    raise FileNotFoundError(_cifar_missing(name, root, reason))


def _cannot_download(process_count: int) -> str | None:
    """Why CIFAR cannot be downloaded here, or None when it can."""
    if process_count > 1:
        return "several processes must not download into the data dir at once"
    try:
        socket.create_connection((_CIFAR_URL_HOST, 443), timeout=5).close()
    except OSError:
        return f"there is no connection to {_CIFAR_URL_HOST}"
    return None


def _cifar_missing(name: str, root: str, reason: str) -> str:
    return (
        f"{name} is not prepared in the TFDS data dir {root} and cannot be downloaded here "
        f"({reason}). On a machine with internet run `tfds build {name} --data_dir DIR`, copy "
        f"DIR/{name} to {root}/{name} (or set config.data_dir to a directory holding it), and "
        f"start again."
    )


def _imagenet_missing(root: str, version_dir: str) -> str:
    return (
        f"imagenet2012 is not prepared in the TFDS data dir {root} (no dataset at {version_dir}), "
        f"and TFDS cannot download it because ImageNet needs manually downloaded files. "
        f"To prepare it, download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
        f"https://image-net.org/download-images (after registering) into "
        f"{root}/downloads/manual/, then run `tfds build imagenet2012 --data_dir {root}` or "
        f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('imagenet2012', "
        f"data_dir='{root}').download_and_prepare()\"` (about 150 GB of disk and a few hours), "
        f"and set config.data_dir={root!r}."
    )


def _check_image_size(config, native: int) -> None:
    if config.image_size not in (0, native):
        raise ValueError(
            f"image_size={config.image_size} does not match {config.dataset}'s {native}x{native} "
            f"images; set image_size=0 (or {native})"
        )


# ----------------------------------------------------------------------------- in memory


@functools.lru_cache(maxsize=8)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    perm.setflags(write=False)  # shared by the cache: nobody may edit it
    return perm


def crop_flip_np(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, pad: int = PAD):
    """numpy twin of `augment.crop_flip`: zero-pad, window at (row, col) offsets, mirror."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = offsets[:, :1] + np.arange(h)
    cols = offsets[:, 1:] + np.arange(w)
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


class _InMemoryData(Data):
    """digits, cifar10, cifar100: whole splits in numpy, batches as pure functions of the step."""

    def __init__(self, config, builder, process_index: int, process_count: int):
        train_x, train_y = _load_split(builder, "train")
        self._test_x, self._test_y = _load_split(builder, "test")
        _check_image_size(config, train_x.shape[1])
        self.num_train, self.num_test = len(train_y), len(self._test_y)
        self.image_size = self.eval_image_size = train_x.shape[1]
        self.channels = train_x.shape[3]
        self.num_classes = builder.info.features["label"].num_classes
        mean, std = (np.asarray(v, np.float32) for v in augment.MEAN_STD[config.dataset])
        if config.normalization == "pixel_mean":
            mean = train_x.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.norm = (mean, std)
        self._train_x, self._train_y = train_x, train_y
        self.train_arrays = {"image": train_x, "label": train_y} if config.augment_on_device else None
        self._seed = config.seed
        self._batch = config.batch_size
        self._eval_batch = config.eval_batch_size
        self._local = config.batch_size // process_count
        self._eval_local = config.eval_batch_size // process_count
        self._process = process_index
        # Mirroring a digit makes a different symbol (or none), so digits are never augmented.
        self._augment = config.augment and config.dataset != "digits"
        self.device_augment = bool(self._augment and config.augment_on_device)

    def _indices(self, step: int) -> np.ndarray:
        """Train rows of this process's slice of the global batch at `step`."""
        pos = step * self._batch + self._process * self._local + np.arange(self._local, dtype=np.int64)
        epochs, offsets = np.divmod(pos, self.num_train)
        rows = np.empty(self._local, np.int64)
        for epoch in np.unique(epochs):
            here = epochs == epoch
            rows[here] = _epoch_permutation(self._seed, int(epoch), self.num_train)[offsets[here]]
        return rows

    def _index_batch(self, step: int) -> dict:
        rows = self._indices(step)
        # Labels ride along (a few bytes) so the train step reads batch['label'] on both paths.
        return {"index": rows.astype(np.int32), "label": self._train_y[rows]}

    def _normalize(self, images: np.ndarray) -> np.ndarray:
        mean, std = self.norm
        return ((images.astype(np.float32) - mean) / std).astype(np.float32)

    def _train_batch(self, step) -> tuple[np.ndarray, np.ndarray]:
        step = int(step)
        rows = self._indices(step)
        images = self._normalize(self._train_x[rows])  # then pad: the padding is the mean colour
        if self._augment:
            # Drawn for the whole global batch, then sliced: the same whatever the process count.
            rng = np.random.default_rng([self._seed, 1, step])
            offsets = rng.integers(0, 2 * PAD + 1, size=(self._batch, 2))
            flips = rng.random(self._batch) < 0.5
            mine = slice(self._process * self._local, (self._process + 1) * self._local)
            images = crop_flip_np(images, offsets[mine], flips[mine])
        return images, self._train_y[rows]

    def train_batches(self, start_step: int = 0) -> Iterator[dict]:
        if self.train_arrays is not None:
            return map(self._index_batch, itertools.count(start_step))
        shape = (self._local, self.image_size, self.image_size, self.channels)

        def batch(step):
            image, label = tf.numpy_function(self._train_batch, [step], (tf.float32, tf.int32))
            return {"image": tf.ensure_shape(image, shape), "label": tf.ensure_shape(label, shape[:1])}

        # tf.data only runs the pure per-step function in parallel threads and prefetches;
        # `deterministic=True` keeps the batches in step order.
        ds = tf.data.Dataset.counter(start_step).map(
            batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

    def test_batches(self) -> Iterator[dict]:
        local, start = self._eval_local, self._process * self._eval_local
        for i in range(math.ceil(self.num_test / self._eval_batch)):
            rows = i * self._eval_batch + start + np.arange(local)
            real = rows < self.num_test
            rows = np.where(real, rows, 0)
            image = self._normalize(self._test_x[rows])
            image[~real] = 0.0
            label = np.where(real, self._test_y[rows], 0).astype(np.int32)
            yield {"image": image, "label": label, "mask": real.astype(np.float32)}


def _load_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
    return np.asarray(images, np.uint8), np.asarray(labels, np.int32)


# ----------------------------------------------------------------------------- ImageNet


class _ImageNetData(Data):
    """imagenet2012: per-process shards streamed, decoded, cropped and mirrored by tf.data.

    Batches are uint8: the normalisation, and the recipe's colour augmentation (lighting; jitter
    too for inception), run on the accelerator (`step._images`). On the host they cost more than
    the JPEG decode (images per CPU-second ~1070 without them, ~300 with them, BENCHMARKS.md), and
    floats are 4x the bytes to copy and transfer.
    """

    def __init__(self, config, builder, process_index: int, process_count: int):
        if config.normalization == "pixel_mean":
            raise ValueError(
                "normalization='pixel_mean' needs fixed-size images (digits, CIFAR); ImageNet crops "
                "come from random positions and scales, so use normalization='channel'"
            )
        splits = builder.info.splits
        self._builder = builder
        self.num_train = splits["train"].num_examples
        self.num_test = splits["validation"].num_examples
        self.image_size = config.image_size or 224
        self.eval_image_size = config.imagenet_eval_size
        self.channels = 3
        self.num_classes = builder.info.features["label"].num_classes
        self.train_arrays = None
        self.norm = tuple(np.asarray(v, np.float32) for v in augment.MEAN_STD["imagenet2012"])
        self._seed = config.seed
        self._process, self._processes = process_index, process_count
        self._local = config.batch_size // process_count
        self._eval_local = config.eval_batch_size // process_count
        self._shuffle_buffer = config.shuffle_buffer
        self._threads = config.data_threads
        self._augment = config.imagenet_augment if config.augment else None
        self.device_colour = self._augment is not None  # both recipes' colour work runs on device
        # Equal shards (remainder dropped) keep every process's epochs the same length.
        self._train_split = tfds.split_for_jax_process(
            "train", process_index=process_index, process_count=process_count, drop_remainder=True
        )
        self._shard = splits[self._train_split].num_examples
        if self._shard < self._local:
            raise ValueError(
                f"the train shard of {self._shard} examples is smaller than one batch ({self._local})"
            )
        # Evaluation keeps every example: shards differ by at most one, and the shorter ones
        # are padded so every process yields the same number of batches.
        eval_splits = tfds.even_splits("validation", n=process_count)
        sizes = [splits[s].num_examples for s in eval_splits]
        self._eval_split, self._eval_shard = eval_splits[process_index], sizes[process_index]
        self._eval_batches = math.ceil(max(sizes) / self._eval_local)

    def _options(self) -> tf.data.Options:
        """Deterministic order; with `data_threads` a private pool of that many threads, each op
        single-threaded, so the pipeline uses that many cores (how images/s per core is measured)."""
        options = tf.data.Options()
        options.deterministic = True
        if self._threads:
            options.threading.private_threadpool_size = self._threads
            options.threading.max_intra_op_parallelism = 1
        return options

    def _read(self, split, shuffle_seed: int | None) -> tf.data.Dataset:
        options = self._options()
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, options=options, try_autocache=False)
        return self._builder.as_dataset(
            split=split,
            shuffle_files=shuffle_seed is not None,
            read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},  # decoded fused with the crop below
        )

    def _epoch_seed(self, epoch: int) -> int:
        entropy = [self._seed, epoch, self._process, self._processes]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)

    def _epoch(self, epoch: int, skip: int) -> tf.data.Dataset:
        """Epoch `epoch` of this process's shard, decoded and augmented, from example `skip`."""
        seed = self._epoch_seed(epoch)
        ds = self._read(self._train_split, seed).take(self._shard)
        ds = ds.shuffle(self._shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
        # Skipping before the map costs reads but no decoding.
        ds = ds.enumerate().skip(skip)
        size, mode = self.image_size, self._augment

        def example(index, ex):
            seeds = tf.random.experimental.stateless_split(tf.stack([tf.constant(seed, tf.int64), index]), 8)
            image = ex["image"]
            if mode == "scale":
                image = scale_augment(image, size, seeds)
            elif mode == "inception":
                image = inception_crop(image, size, seeds)
            else:
                image = centre_crop(image, size, 224 / 256)
            return {"image": image, "label": tf.cast(ex["label"], tf.int32)}

        return ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    # Batches before an epoch's end at which the next epoch's pipeline is opened in a background
    # thread: opening one means reading `shuffle_buffer` records (16,384 by default, ~1.8 GB of
    # JPEGs) before its first batch, a stall of seconds at every epoch start if done in line.
    # Two shuffle buffers are held for those last batches of each epoch.
    LOOKAHEAD_BATCHES = 64

    def _open_epoch(self, epoch: int, skip: int, fillers: int) -> Iterator[dict]:
        """Epoch `epoch`'s batches from example `skip`, its first batch already fetched (so its
        shuffle buffer is full), after `fillers` placeholder rows where a carried batch goes."""
        ds = self._epoch(epoch, skip)
        if fillers:
            # Placeholders where the carried rows go, so tf.data batches on the global grid of
            # batch boundaries; they are overwritten in train_batches and never decoded.
            filler = {
                "image": tf.zeros((self.image_size, self.image_size, 3), tf.uint8),
                "label": tf.zeros((), tf.int32),
            }
            ds = tf.data.Dataset.from_tensors(filler).repeat(fillers).concatenate(ds)
        it = ds.batch(self._local).prefetch(2).with_options(self._options()).as_numpy_iterator()
        first = next(it, None)
        return it if first is None else itertools.chain([first], it)

    def train_batches(self, start_step: int = 0) -> Iterator[dict]:
        b = self._local
        epoch, skip = divmod(start_step * b, self._shard)
        carry = None  # the first rows of a batch that straddles two epochs
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="next-epoch")
        upcoming = None  # the next epoch's batches, being opened in `pool`
        try:
            while True:
                fillers = 0 if carry is None else len(carry["label"])
                rows = fillers + self._shard - skip
                # The next epoch's fillers are this one's leftover rows: known now, so it can open
                # early. LOOKAHEAD_BATCHES = 0 opens it in line instead, once this one has ended.
                ahead = self.LOOKAHEAD_BATCHES
                open_at, next_fillers = (max(0, rows // b - ahead) if ahead else None), rows % b
                batches = upcoming.result() if upcoming is not None else self._open_epoch(epoch, skip, fillers)
                upcoming = None
                # Exactly this epoch's batches (the last one partial if rows % b), then the iterator
                # is released in `pool`: both asking a tf.data iterator for its end and deleting it
                # could block for seconds while TF winds its threads down (0.9-3 s, 1 run in 2-3
                # under load, measured), a stall of the whole training loop if done here.
                for i, batch in enumerate(itertools.islice(batches, -(-rows // b))):
                    if i == open_at:
                        upcoming = pool.submit(self._open_epoch, epoch + 1, 0, next_fillers)
                    if carry is not None:
                        batch = {k: np.concatenate([carry[k], batch[k][fillers:]]) for k in batch}
                        carry = None
                    if len(batch["label"]) < b:
                        carry = batch  # the epoch's last, partial batch
                        break
                    yield batch
                spent, batches = [batches], None  # handed over whole: the last reference dies in `pool`
                pool.submit(_release, spent)
                epoch, skip = epoch + 1, 0
        finally:  # the consumer stopped (end of training, a rollback): drop what was opened ahead
            pool.shutdown(wait=False, cancel_futures=True)

    def test_batches(self) -> Iterator[dict]:
        local, size = self._eval_local, self.eval_image_size
        fraction = 224 / 256 if size == 224 else 1.0  # 320: the whole 320-resized centre square

        def example(ex):
            return {"image": centre_crop(ex["image"], size, fraction), "label": tf.cast(ex["label"], tf.int32)}

        ds = self._read(self._eval_split, None).take(self._eval_shard)
        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        count = 0
        for batch in ds.batch(local).prefetch(2).with_options(self._options()).as_numpy_iterator():
            yield _pad(batch, local)
            count += 1
        empty = {"image": np.zeros((0, size, size, 3), np.uint8), "label": np.zeros((0,), np.int32)}
        for _ in range(count, self._eval_batches):
            yield _pad(empty, local)


def _release(spent: list) -> None:
    """Runs in a worker thread: empties `spent`, which holds the only reference to a finished
    epoch's batch iterator, so TF's teardown of its threads blocks this thread, not training."""
    spent.clear()


def _pad(batch: dict, size: int) -> dict:
    n = len(batch["label"])
    pad = size - n
    return {
        "image": np.concatenate([batch["image"], np.zeros((pad,) + batch["image"].shape[1:], batch["image"].dtype)]),
        "label": np.concatenate([batch["label"], np.zeros((pad,), np.int32)]),
        "mask": np.concatenate([np.ones((n,), np.float32), np.zeros((pad,), np.float32)]),
    }


def _crop_resize(image_bytes, window, size: int):
    """Decodes only `window` = (row, col, height, width) of the JPEG, resized to size x size
    (bilinear) and rounded back to uint8 pixels."""
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
    image = tf.image.resize(image, (size, size), method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def centre_crop(image_bytes, size: int, fraction: float):
    """Resize so the shorter side is size/fraction and take the centre size x size crop.

    Done as the equivalent crop of the original (the centre square of side fraction * shorter
    side) followed by one resize, so only that window is decoded.
    """
    shape = tf.image.extract_jpeg_shape(image_bytes)
    height, width = shape[0], shape[1]
    side = tf.cast(tf.round(fraction * tf.cast(tf.minimum(height, width), tf.float32)), tf.int32)
    side = tf.maximum(side, 1)
    window = tf.stack([(height - side) // 2, (width - side) // 2, side, side])
    return _crop_resize(image_bytes, window, size)


def scale_augment(image_bytes, size: int, seeds):
    """The paper's ImageNet augmentation: shorter side resized to a random S in [256, 480], a
    random size x size crop, a random mirror. Cropped in original coordinates, then resized."""
    shape = tf.image.extract_jpeg_shape(image_bytes)
    height, width = shape[0], shape[1]
    shorter = tf.minimum(height, width)
    scale = tf.random.stateless_uniform((), seeds[0], 256, 481, tf.int32)
    side = tf.round(size * tf.cast(shorter, tf.float32) / tf.cast(scale, tf.float32))
    side = tf.clip_by_value(tf.cast(side, tf.int32), 1, shorter)
    top = tf.random.stateless_uniform((), seeds[1], 0, height - side + 1, tf.int32)
    left = tf.random.stateless_uniform((), seeds[2], 0, width - side + 1, tf.int32)
    image = _crop_resize(image_bytes, tf.stack([top, left, side, side]), size)
    return tf.image.stateless_random_flip_left_right(image, seeds[3])


def inception_crop(image_bytes, size: int, seeds):
    """The geometric part of fb.resnet.torch's ImageNet recipe (used for the paper's ResNet-200):
    a crop of 8-100% of the area with aspect ratio in [3/4, 4/3] resized to size x size, and a
    random mirror. Its colour jitter 0.4 and PCA lighting 0.1 follow on device
    (`augment.colour_lighting`)."""
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(image_bytes),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seeds[0],
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], extent[0], extent[1]])
    image = _crop_resize(image_bytes, window, size)
    return tf.image.stateless_random_flip_left_right(image, seeds[1])
