"""The ImageNet input path on real JPEGs: the sample builder (TFDS's own imagenet2012 builder over
archives made from scikit-learn's photographs), the crops against an independent decode, the
colour jitter and lighting that now run on device, the uint8 batches the step normalises, and the
`input_benchmark` CLI."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from resnet_v2_jax import augment, input_pipeline, sample_imagenet, step
from resnet_v2_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, VAL, CLASSES = 24, 6, 3


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("imagenet_sample"))
    sample_imagenet.prepare(data_dir, train=TRAIN, val=VAL, classes=CLASSES)
    return data_dir


def imagenet_config(data_dir, **overrides):
    c = config_lib.imagenet(50, 0.0, "inception", 224)
    c.data_dir = data_dir
    c.batch_size, c.eval_batch_size, c.shuffle_buffer = 8, 4, 32
    for key, value in overrides.items():
        c[key] = value
    return c


def test_sample_is_prepared_by_the_tfds_builder_with_imagenet_sized_jpegs(sample_dir):
    builder = tfds.builder("imagenet2012", data_dir=sample_dir)
    assert builder.is_prepared()
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": TRAIN, "validation": VAL}
    ds = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    labels, shorter = set(), []
    for ex in tfds.as_numpy(ds):
        h, w, _ = tf.image.extract_jpeg_shape(ex["image"]).numpy()
        shorter.append(min(h, w))
        assert 3 / 4 - 0.01 <= w / h <= 4 / 3 + 0.01
        labels.add(int(ex["label"]))
    assert labels == set(range(CLASSES))  # the first synsets of labels.txt, every one used
    assert 333 <= min(shorter) and max(shorter) <= 500
    # Preparing again reuses it: neither the archives nor the records are written again.
    written = sorted(p.stat().st_mtime_ns for p in Path(sample_dir).rglob("*") if p.is_file())
    assert sample_imagenet.prepare(sample_dir, train=TRAIN, val=VAL, classes=CLASSES).is_prepared()
    assert sorted(p.stat().st_mtime_ns for p in Path(sample_dir).rglob("*") if p.is_file()) == written


def test_sample_rejects_fewer_images_than_classes(tmp_path):
    with pytest.raises(ValueError, match="one image per class"):
        sample_imagenet.prepare(str(tmp_path), train=2, val=1, classes=3)


def test_a_data_dir_it_cannot_write_is_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert sample_imagenet.main(["--data_dir", str(blocker / "sample")]) == 2
    assert capsys.readouterr().err == f"error: cannot write the sample in --data_dir '{blocker / 'sample'}': Not a directory\n"


def test_centre_crop_equals_decoding_the_whole_image_then_cropping(sample_dir):
    """Decoding only the window (decode_and_crop_jpeg) gives the pixels of the whole decode, cropped;
    libjpeg's chroma upsampling at the window's edge may differ by a few levels."""
    ds = tfds.builder("imagenet2012", data_dir=sample_dir).as_dataset(
        split="validation", decoders={"image": tfds.decode.SkipDecoding()})
    for ex in ds:
        ours = input_pipeline.centre_crop(ex["image"], 224, 224 / 256).numpy()
        assert ours.dtype == np.uint8 and ours.shape == (224, 224, 3)
        full = tf.io.decode_jpeg(ex["image"], channels=3)
        h, w = full.shape[:2]
        side = round(224 / 256 * min(h, w))
        top, left = (h - side) // 2, (w - side) // 2
        ref = tf.image.resize(full[top:top + side, left:left + side], (224, 224), method="bilinear")
        ref = tf.cast(tf.clip_by_value(tf.round(ref), 0, 255), tf.uint8).numpy()
        diff = np.abs(ours.astype(int) - ref.astype(int))
        assert diff.max() <= 8 and diff.mean() < 0.01, (diff.max(), diff.mean())


@pytest.mark.parametrize("mode", ["scale", "inception"])
def test_sample_batches_are_uint8_and_resume_exactly(sample_dir, mode):
    config = imagenet_config(sample_dir, imagenet_augment=mode)
    data = input_pipeline.create(config)
    assert data.num_classes == 1000 and data.device_colour  # scale: PCA lighting; inception: jitter too
    batches = [b for _, b in zip(range(4), data.train_batches(0))]  # 32 images: past the 24-image epoch
    for b in batches:
        assert b["image"].dtype == np.uint8 and b["image"].shape == (8, 224, 224, 3)
        assert set(b["label"].tolist()) <= set(range(CLASSES))
        assert b["image"].std() > 10  # photographs, not blank padding
    resumed = [b for _, b in zip(range(2), input_pipeline.create(config).train_batches(2))]
    for a, b in zip(batches[2:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    tests = list(data.test_batches())
    assert len(tests) == 2 and sum(t["mask"].sum() for t in tests) == VAL
    assert all(t["image"].dtype == np.uint8 for t in tests)


def test_opening_the_next_epoch_early_changes_no_batch(sample_dir, monkeypatch):
    """The next epoch's pipeline is opened in a background thread LOOKAHEAD_BATCHES before the end
    (so its shuffle buffer fills while this epoch trains), with the carried-row count computed
    ahead. Opened at each epoch's first batch or in line once it has ended (LOOKAHEAD_BATCHES = 0),
    the batches are the same: 24 images in batches of 5 carry 4, 3, 2 rows into the next epochs."""
    config = imagenet_config(sample_dir, imagenet_augment="scale", batch_size=5)
    runs = {}
    for lookahead in (0, 1000):
        monkeypatch.setattr(input_pipeline._ImageNetData, "LOOKAHEAD_BATCHES", lookahead)
        gen = input_pipeline.create(config).train_batches(0)
        runs[lookahead] = [b for _, b in zip(range(15), gen)]  # 75 rows: into the fourth epoch
        gen.close()  # stops the generator and its thread, as train.py's rollback does
    for a, b in zip(runs[0], runs[1000], strict=True):
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["image"], b["image"])
    assert all(len(b["label"]) == 5 for b in runs[0])


def test_data_threads_is_validated_and_gives_the_same_batches(sample_dir):
    with pytest.raises(ValueError, match="data_threads"):
        config_lib.validate(imagenet_config(sample_dir, data_threads=-1))
    one = next(input_pipeline.create(imagenet_config(sample_dir, data_threads=1)).train_batches(1))
    auto = next(input_pipeline.create(imagenet_config(sample_dir)).train_batches(1))
    np.testing.assert_array_equal(one["image"], auto["image"])


# ----------------------------------------------------------------------------- colour on device


ORDERS = list(itertools.permutations(range(3)))  # fb.resnet.torch's RandomOrder over the three blends


def reference_colour(image, order, alphas, light):
    """fb.resnet.torch's ColorJitter (blends in `order`) + Lighting for one image (H, W, 3), numpy."""
    grey = lambda x: (x * np.array([0.299, 0.587, 0.114])).sum(-1, keepdims=True)  # noqa: E731
    ops = (lambda x: x * alphas[0],
           lambda x: (x - grey(x).mean()) * alphas[1] + grey(x).mean(),
           lambda x: (x - grey(x)) * alphas[2] + grey(x))
    x = image.astype(np.float64)
    for i in order:
        x = ops[i](x)
    return x + 255.0 * np.asarray(augment.EIGVEC) @ (light * np.asarray(augment.EIGVAL))


def test_colour_apply_matches_the_reference_in_every_order():
    """The three blends commute, so one fixed order equals fb.resnet.torch's in each of its six."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 7, 3)).astype(np.uint8)
    alphas = rng.uniform(0.6, 1.4, (6, 3)).astype(np.float32)
    light = rng.normal(0, 0.1, (6, 3)).astype(np.float32)
    out = np.asarray(augment.colour_apply(jnp.asarray(images), alphas, light))
    for n in range(6):
        for order in ORDERS:
            np.testing.assert_allclose(out[n], reference_colour(images[n], order, alphas[n], light[n]),
                                       rtol=1e-5, atol=1e-3)
    # And each factor does act: other factors give other images.
    assert not np.allclose(out[0], reference_colour(images[0], ORDERS[0], alphas[1], light[0]), atol=1e-2)


def test_colour_lighting_draws_within_the_recipe_ranges():
    alphas, light = augment.colour_params(jax.random.PRNGKey(1), 4000)
    assert 0.6 <= float(alphas.min()) and float(alphas.max()) <= 1.4
    assert abs(float(jnp.std(light)) - 0.1) < 0.005
    x = jnp.full((2, 4, 4, 3), 100, jnp.uint8)
    np.testing.assert_allclose(augment.colour_lighting(jax.random.PRNGKey(0), x, 0.0, 0.0), 100.0)


def test_the_scale_recipe_colour_is_pca_lighting_alone():
    """The paper's scale augmentation takes AlexNet's "standard color augmentation": each image
    shifted by one RGB offset, 255 * EIGVEC @ (light * EIGVAL), light ~ N(0, 0.1); no blends."""
    rng = jax.random.PRNGKey(2)
    x = np.random.default_rng(0).integers(0, 256, (16, 5, 7, 3)).astype(np.uint8)
    out = np.asarray(augment.colour_lighting(rng, jnp.asarray(x), augment.COLOUR_JITTER["scale"]))
    _, light = augment.colour_params(rng, 16, 0.0)
    offsets = 255.0 * np.asarray(light) * np.asarray(augment.EIGVAL) @ np.asarray(augment.EIGVEC).T
    np.testing.assert_allclose(out, x + offsets[:, None, None, :], rtol=1e-6, atol=1e-3)
    assert np.abs(offsets).max() > 1  # the lighting does move the pixels
    assert augment.COLOUR_JITTER == {"inception": 0.4, "scale": 0.0}


def test_the_step_normalises_uint8_batches_on_device_like_the_host_would():
    """A uint8 batch trained on (colour off) gives the same step as its host-normalised float twin;
    with device colour on, the step sees different images."""
    c = config_lib.default()
    c.dataset, c.image_size = "synthetic", 8
    c.model.depth, c.model.block, c.model.width = 8, "basic", 0.25
    c.batch_size = 4
    mean, std = (np.asarray(v, np.float32) for v in augment.MEAN_STD["imagenet2012"])
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8)
    labels = rng.integers(0, 10, 4).astype(np.int32)
    mesh = step.make_mesh(jax.devices()[:1])

    def one_step(images, colour=False):
        task = step.make_task(c, (8, 8, 3), (mean, std), device_colour=colour)
        train_fn, eval_fn = step.compile_steps(task, mesh)
        batch = {"image": images, "label": labels}
        state, metrics = train_fn(step.init_state(task, 0, mesh), batch, None)
        ev = eval_fn(state, dict(batch, mask=np.ones(4, np.float32)))
        return float(metrics["loss"]), float(ev["loss"])

    host = (pixels.astype(np.float32) - mean) / std
    on_device = one_step(pixels)
    np.testing.assert_allclose(on_device, one_step(host), rtol=1e-5)
    assert one_step(pixels, colour=True)[0] != pytest.approx(on_device[0], rel=1e-6)


# ----------------------------------------------------------------------------- the CLI


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "resnet_v2_jax.input_benchmark", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_input_benchmark_reports_images_per_cpu_second(sample_dir):
    p = run_cli("--config=experiments/imagenet_resnet50.py", f"--sample_dir={sample_dir}", "--threads=1,2",
                "--batches=2", "--warmup=1", "--config.batch_size=8", "--target=9000", "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    runs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert [r["threads"] for r in runs] == [1, 2]
    for r in runs:
        assert r["dataset"] == "imagenet2012" and r["augment"] == "inception" and r["sample"] is True
        assert r["batch"] == 8 and r["image_size"] == 224 and r["batches"] == 2
        assert r["images_per_second"] == pytest.approx(16 / r["seconds"], rel=1e-3)
        assert r["images_per_cpu_second"] == pytest.approx(16 / r["cpu_seconds"], rel=1e-3)
        assert r["cores_for_target"] == math.ceil(9000 / r["images_per_cpu_second"])
        assert r["epoch_starts"] == 0  # 3 batches of 8 within the 24-image epoch


@pytest.mark.parametrize("args, message", [
    (["--threads=0"], "--threads"),
    (["--threads=two"], "--threads"),
    (["--config=experiments/cifar10_resnet110.py", "--sample_dir=/tmp/x"], "imagenet2012 sample"),
])
def test_input_benchmark_usage_errors(args, message):
    if not any(a.startswith("--config=") for a in args):
        args = ["--config=experiments/imagenet_resnet50.py", *args]
    p = run_cli(*args)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error:")
    assert message in p.stderr and "Traceback" not in p.stderr
