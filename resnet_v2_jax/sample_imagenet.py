"""A small imagenet2012 prepared by TFDS's own builder from real photographs, offline.

ImageNet needs a manual download we cannot make in CI or on a GPU box without the archives.
To test and time the real ImageNet path (TFDS records -> JPEG decode fused with the crop ->
augmentation -> batches) we write the two archives the builder expects,
ILSVRC2012_img_train.tar (one tar per synset) and ILSVRC2012_img_val.tar, from the two
photographs scikit-learn ships (china.jpg, flower.jpg: 640x427 colour JPEGs), cut into crops of
ImageNet's typical sizes (shorter side 333-500, aspect 3:4 to 4:3, JPEG quality 90, so the decode
cost per image is ImageNet's), and let `tfds.builder('imagenet2012').download_and_prepare` turn
them into its records. Only the image content differs from ImageNet; every line of our pipeline
runs as it would on the real data.

    python -m resnet_v2_jax.sample_imagenet --data_dir=DIR [--train=6400] [--val=1600] [--classes=10]

Then `--config.data_dir=DIR` points any ImageNet experiment or `resnet_v2_jax.input_benchmark` at it.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np

from resnet_v2_jax.tf_import import tf, tfds

PHOTOS = ("china.jpg", "flower.jpg")


def photos() -> list[np.ndarray]:
    """The bundled photographs as uint8 HxWx3 arrays (decoded with TF, so no Pillow needed)."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return [tf.io.decode_jpeg(tf.io.read_file(str(folder / name)), channels=3).numpy() for name in PHOTOS]


def make_jpegs(count: int, seed: int) -> list[bytes]:
    """`count` JPEGs, each a random crop of a bundled photo resized to an ImageNet-like size."""
    rng = np.random.default_rng(seed)
    sources = photos()
    jpegs = []
    for i in range(count):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = rng.integers(h // 3, h + 1), rng.integers(w // 3, w + 1)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        shorter = int(rng.integers(333, 501))
        aspect = float(rng.uniform(3 / 4, 4 / 3))
        size = (shorter, round(shorter * aspect)) if aspect >= 1 else (round(shorter / aspect), shorter)
        crop = src[top : top + ch, left : left + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        image = tf.cast(tf.round(tf.image.resize(crop, size, antialias=True)), tf.uint8)
        jpegs.append(tf.io.encode_jpeg(image, quality=90, chroma_downsampling=True).numpy())
    return jpegs


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_archives(manual_dir: str, train: int, val: int, classes: int, seed: int = 0) -> None:
    """ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in the layout the TFDS builder reads."""
    from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

    synsets = Path(imagenet_common.label_names_file()).read_text().split()[:classes]
    os.makedirs(manual_dir, exist_ok=True)
    images = make_jpegs(train + val, seed)
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as outer:
        for c, synset in enumerate(synsets):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(c, train, classes):
                    _add(tar, f"{synset}_{i}.JPEG", images[i])
            _add(outer, f"{synset}.tar", inner.getvalue())
    # Validation labels come from TFDS's list, in the order of the sorted file names.
    with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as tar:
        for i in range(val):
            _add(tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", images[train + i])


def prepare(data_dir: str, train: int = 6400, val: int = 1600, classes: int = 10, seed: int = 0):
    """Writes the archives under DATA_DIR/downloads/manual and prepares imagenet2012 there.

    Returns the prepared builder; an already prepared dataset is reused as it is.
    """
    if train < classes or val < 1:
        raise ValueError(f"need at least one image per class ({classes}) and one validation image")
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    if builder.is_prepared():
        return builder
    manual_dir = os.path.join(data_dir, "downloads", "manual")
    write_archives(manual_dir, train, val, classes, seed)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
    return builder


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m resnet_v2_jax.sample_imagenet", description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", required=True, help="TFDS data dir to prepare imagenet2012 in")
    p.add_argument("--train", type=int, default=6400,
                   help="training images (25 batches of 256: input_benchmark's timing stays in one epoch)")
    p.add_argument("--val", type=int, default=1600, help="validation images")
    p.add_argument("--classes", type=int, default=10, help="synsets used (the first N of ImageNet's 1000)")
    args = p.parse_args(argv)
    try:
        builder = prepare(os.path.abspath(args.data_dir), args.train, args.val, args.classes)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a --data_dir under a file, read-only, or a full disk
        print(f"error: cannot write the sample in --data_dir {args.data_dir!r}: {e.strerror or e}", file=sys.stderr)
        return 2
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(f"imagenet2012 sample prepared in {builder.data_dir}: {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
