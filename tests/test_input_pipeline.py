"""Facts about the data layer: the digits split, determinism across resumes and process counts,
exact evaluation coverage, the augmentation geometry, and the CIFAR/ImageNet code paths on TFDS
mock data (no download, no ImageNet files)."""

from __future__ import annotations

import collections
import itertools
import math
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import fake_prepared, mock_data

from resnet_v2_jax import augment, digits, input_pipeline
from resnet_v2_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir for the session, so digits is prepared once."""
    return str(tmp_path_factory.mktemp("tfds"))


def make_config(data_dir, **overrides):
    config = config_lib.default()
    config.dataset = "digits"
    config.data_dir = data_dir
    config.batch_size = 100
    config.eval_batch_size = 64
    config.augment_on_device = False  # the host path; tests of the device path say so
    for key, value in overrides.items():
        config[key] = value
    return config


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def split_arrays(data_dir, split):
    builder = digits.Digits(data_dir=data_dir)
    images, labels = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, as_supervised=True))
    return images, labels


# ----------------------------------------------------------------------------- digits builder


def test_digits_builder_prepares_offline_with_fixed_split(data_dir):
    input_pipeline.create(make_config(data_dir))  # prepares on first use
    builder = digits.Digits(data_dir=data_dir)
    assert builder.is_prepared() and builder.name == "digits" and str(builder.version) == "1.0.0"
    assert builder.info.splits["train"].num_examples == 1437
    assert builder.info.splits["test"].num_examples == 360
    from sklearn.datasets import load_digits

    raw = load_digits()
    expected = np.round(raw.images * 255 / 16).astype(np.uint8)[..., None]
    for split, rows in zip(("train", "test"), digits.split_indices()):
        images, labels = split_arrays(data_dir, split)
        assert images.shape == (len(rows), 8, 8, 1) and images.dtype == np.uint8
        assert sorted(set(labels.tolist())) == list(range(10))
        # The split holds exactly the sklearn rows chosen by the fixed permutation.
        got = collections.Counter((im.tobytes(), int(y)) for im, y in zip(images, labels))
        want = collections.Counter((expected[i].tobytes(), int(raw.target[i])) for i in rows)
        assert got == want


# ----------------------------------------------------------------------------- determinism


def test_train_batches_are_a_function_of_seed_and_step(data_dir):
    config = make_config(data_dir)
    first = take(input_pipeline.create(config).train_batches(0), 20)
    again = take(input_pipeline.create(config).train_batches(0), 20)
    assert_batches_equal(first, again)
    # Step 14 covers rows 1400..1499 and so straddles the end of the first epoch (1437 rows).
    assert_batches_equal(first[13:17], take(input_pipeline.create(config).train_batches(13), 4))
    assert first[0]["image"].shape == (100, 8, 8, 1) and first[0]["image"].dtype == np.float32
    assert first[0]["label"].dtype == np.int32
    other_seed = take(input_pipeline.create(make_config(data_dir, seed=1)).train_batches(0), 1)
    assert not np.array_equal(other_seed[0]["label"], first[0]["label"])


def test_each_epoch_visits_every_train_row_once(data_dir):
    data = input_pipeline.create(make_config(data_dir, augment_on_device=True, batch_size=479))
    assert data.train_arrays["image"].shape == (1437, 8, 8, 1)
    assert data.train_arrays["label"].dtype == np.int32 and not data.device_augment
    rows = np.concatenate([b["index"] for b in take(data.train_batches(0), 6)])  # two epochs
    assert rows.dtype == np.int32
    for epoch in (rows[:1437], rows[1437:]):
        assert sorted(epoch.tolist()) == list(range(1437))
    assert not np.array_equal(rows[:1437], rows[1437:])


def test_host_batches_are_normalised_rows_of_the_on_device_arrays(data_dir):
    host = take(input_pipeline.create(make_config(data_dir)).train_batches(5), 2)
    device = input_pipeline.create(make_config(data_dir, augment_on_device=True))
    mean, std = device.norm
    for h, d in zip(host, take(device.train_batches(5), 2)):
        images = device.train_arrays["image"][d["index"]].astype(np.float32)
        np.testing.assert_allclose(h["image"], (images - mean) / std, rtol=1e-6)
        np.testing.assert_array_equal(h["label"], device.train_arrays["label"][d["index"]])
        np.testing.assert_array_equal(h["label"], d["label"])


def test_process_slices_concatenate_to_the_single_process_batch(data_dir):
    config = make_config(data_dir, batch_size=10)
    whole = take(input_pipeline.create(config, 0, 1).train_batches(140), 5)
    halves = [take(input_pipeline.create(config, p, 2).train_batches(140), 5) for p in (0, 1)]
    for step, batch in enumerate(whole):
        for key in ("image", "label"):
            np.testing.assert_array_equal(
                np.concatenate([halves[0][step][key], halves[1][step][key]]), batch[key]
            )


@pytest.mark.parametrize("eval_batch_size", [60, 64])  # divides 360, does not
@pytest.mark.parametrize("process_count", [1, 2])
def test_test_batches_cover_every_example_once(data_dir, eval_batch_size, process_count):
    config = make_config(data_dir, eval_batch_size=eval_batch_size)
    per_process = [
        list(input_pipeline.create(config, p, process_count).test_batches()) for p in range(process_count)
    ]
    num_batches = math.ceil(360 / eval_batch_size)
    assert all(len(batches) == num_batches for batches in per_process)
    images, labels = split_arrays(data_dir, "test")
    mean, std = input_pipeline.create(config).norm
    # Reassemble the global batches: process slices side by side, then batches in order.
    glob = {
        key: np.concatenate([np.concatenate([b[i][key] for b in per_process]) for i in range(num_batches)])
        for key in ("image", "label", "mask")
    }
    assert len(glob["mask"]) == num_batches * eval_batch_size
    assert glob["mask"].sum() == 360 and glob["mask"].dtype == np.float32
    real = glob["mask"] == 1
    assert collections.Counter(glob["label"][real].tolist()) == collections.Counter(labels.tolist())
    np.testing.assert_allclose(glob["image"][real], (images.astype(np.float32) - mean) / std, rtol=1e-6)
    assert not glob["image"][~real].any() and not glob["label"][~real].any()


def test_pixel_mean_normalisation_subtracts_the_train_mean_image(data_dir):
    data = input_pipeline.create(make_config(data_dir, normalization="pixel_mean", augment_on_device=True))
    mean, std = data.norm
    assert mean.shape == (8, 8, 1) and mean.dtype == np.float32 and std.shape == (1,)
    np.testing.assert_allclose(mean, data.train_arrays["image"].astype(np.float64).mean(0), rtol=1e-5)
    host = input_pipeline.create(make_config(data_dir, normalization="pixel_mean"))
    batch = take(host.train_batches(0), 1)[0]
    index = take(data.train_batches(0), 1)[0]["index"]
    expected = (data.train_arrays["image"][index].astype(np.float32) - mean) / std
    np.testing.assert_allclose(batch["image"], expected, rtol=1e-5, atol=1e-6)


def test_create_rejects_synthetic_and_uneven_batches(data_dir):
    with pytest.raises(ValueError, match="synthetic"):
        input_pipeline.create(make_config(data_dir, dataset="synthetic"))
    with pytest.raises(ValueError, match="divisible"):
        input_pipeline.create(make_config(data_dir, batch_size=101), 0, 2)


# ----------------------------------------------------------------------------- augment.py


def test_crop_flip_is_a_shifted_window_or_its_mirror():
    image = (np.arange(1, 4 * 5 * 2 + 1, dtype=np.uint8)).reshape(1, 4, 5, 2)
    padded = np.pad(image[0], ((2, 2), (2, 2), (0, 0)))
    offsets, flips = np.array([[3, 1]]), np.array([True])
    out = np.asarray(augment.crop_flip(jnp.asarray(image), jnp.asarray(offsets), jnp.asarray(flips), pad=2))
    np.testing.assert_array_equal(out[0], padded[3:7, 1:6][:, ::-1])
    out = np.asarray(augment.crop_flip(jnp.asarray(image), jnp.asarray(offsets), jnp.asarray([False]), pad=2))
    np.testing.assert_array_equal(out[0], padded[3:7, 1:6])
    # Row 3 of the padded image is image row 1; column 1 is the pad column, so it is zero.
    np.testing.assert_array_equal(out[0, 0, 1:], image[0, 1, :4])
    assert not out[0, :, 0].any()
    np.testing.assert_array_equal(input_pipeline.crop_flip_np(image, offsets, flips, pad=2), out[:, :, ::-1])


def test_pad_crop_flip_draws_per_example_windows():
    images = jnp.broadcast_to(jnp.arange(1, 8 * 8 + 1, dtype=jnp.uint8).reshape(1, 8, 8, 1), (64, 8, 8, 1))
    rng = jax.random.key(3)
    out = np.asarray(jax.jit(augment.pad_crop_flip)(rng, images))
    assert out.shape == images.shape and out.dtype == np.uint8
    offsets, flips = augment.pad_crop_flip_params(rng, 64)
    padded = np.pad(np.asarray(images[0]), ((4, 4), (4, 4), (0, 0)))
    for i in range(64):
        dy, dx = (int(v) for v in offsets[i])
        window = padded[dy : dy + 8, dx : dx + 8]
        np.testing.assert_array_equal(out[i], window[:, ::-1] if flips[i] else window)
    assert 0 < int(flips.sum()) < 64 and len({tuple(o) for o in np.asarray(offsets).tolist()}) > 10
    np.testing.assert_array_equal(out, np.asarray(augment.pad_crop_flip(rng, images)))


def test_normalize_is_x_minus_mean_over_std():
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)
    mean, std = augment.MEAN_STD["cifar10"]
    out = augment.normalize(images, mean, std)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, (images - np.array(mean)) / np.array(std), rtol=1e-6, atol=1e-6)
    assert augment.normalize(images, mean, std, jnp.bfloat16).dtype == jnp.bfloat16
    mean_image = images.mean(0)
    np.testing.assert_allclose(
        augment.normalize(images, mean_image, std), (images - mean_image) / std, rtol=1e-5
    )


def test_cifar_statistics_are_the_official_codes():
    """fb.resnet.torch's datasets/cifar10.lua and cifar100.lua, each computed on its own train set."""
    assert augment.MEAN_STD["cifar10"] == ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))
    assert augment.MEAN_STD["cifar100"] == ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4))


def test_augment_imports_without_tensorflow():
    code = "import sys; sys.modules['tensorflow'] = None; import resnet_v2_jax.augment"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ----------------------------------------------------------------------------- CIFAR, ImageNet


def test_cifar10_pipeline_on_mock_data(tmp_path):
    fake_prepared("cifar10", str(tmp_path), {"train": 40, "test": 40})
    config = make_config(str(tmp_path), dataset="cifar10", batch_size=8, eval_batch_size=16)
    with mock_data(str(tmp_path), 40):
        data = input_pipeline.create(config)
        assert (data.num_train, data.image_size, data.channels, data.num_classes) == (40, 32, 3, 10)
        batch = take(data.train_batches(0), 1)[0]
        assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
        plain_config = make_config(str(tmp_path), dataset="cifar10", batch_size=8, augment=False)
        plain = take(input_pipeline.create(plain_config).train_batches(0), 1)[0]
        np.testing.assert_array_equal(batch["label"], plain["label"])
        assert not np.array_equal(batch["image"], plain["image"])  # pad-crop-flip applied
        mean, std = augment.MEAN_STD["cifar10"]
        assert plain["image"].min() >= -max(mean) / min(std) and plain["image"].max() <= 255 / min(std)
        halves = [take(input_pipeline.create(config, p, 2).train_batches(3), 2) for p in (0, 1)]
        whole = take(data.train_batches(3), 2)
        for step in range(2):
            np.testing.assert_array_equal(
                np.concatenate([h[step]["image"] for h in halves]), whole[step]["image"]
            )
        masks = [b["mask"] for b in data.test_batches()]
        assert len(masks) == 3 and sum(m.sum() for m in masks) == 40


def test_cifar_padding_is_the_mean_colour_on_the_host_and_on_the_device(tmp_path):
    """The official code normalises, then flips and zero-pads (fb.resnet.torch cifar10.lua:
    ColorNormalize, HorizontalFlip, RandomCrop(32, 4)): a padded pixel is 0 after normalising,
    the mean colour, never black (-mean/std)."""
    from resnet_v2_jax import step as step_lib

    mean, std = (np.asarray(v, np.float32) for v in augment.MEAN_STD["cifar10"])
    black = -mean / std
    fake_prepared("cifar10", str(tmp_path), {"train": 40, "test": 40})
    with mock_data(str(tmp_path), 40):
        host = take(input_pipeline.create(make_config(str(tmp_path), dataset="cifar10", batch_size=40))
                    .train_batches(0), 1)[0]["image"]
    task = step_lib.Task(None, None, (32, 32, 3), 10, (mean, std), augment=True)
    white = jnp.full((40, 32, 32, 3), 255, jnp.uint8)
    device = np.asarray(step_lib._images(task, {"index": jnp.arange(40)}, jax.random.key(0), white))
    for images in (host, device):
        padded = (images == 0).all(-1)
        assert padded.any() and not np.isclose(images, black, atol=1e-4).all(-1).any()
        assert padded[:, :4].any() and padded[:, -4:].any()  # offsets reach both borders
    np.testing.assert_allclose(device[~(device == 0).all(-1)], np.broadcast_to((255 - mean) / std, (
        int((~(device == 0).all(-1)).sum()), 3)), rtol=1e-6)


@pytest.mark.parametrize("imagenet_augment, imagenet_eval_size", [("scale", 224), ("inception", 320)])
def test_imagenet_pipeline_on_mock_data(tmp_path, imagenet_augment, imagenet_eval_size):
    fake_prepared("imagenet2012", str(tmp_path), {"train": 12, "validation": 7})
    config = make_config(
        str(tmp_path),
        dataset="imagenet2012",
        batch_size=5,
        eval_batch_size=4,
        shuffle_buffer=16,
        imagenet_augment=imagenet_augment,
        imagenet_eval_size=imagenet_eval_size,
    )
    with mock_data(str(tmp_path), 12):
        data = input_pipeline.create(config)
        assert (data.num_train, data.num_test, data.num_classes) == (12, 7, 1000)
        assert (data.image_size, data.eval_image_size) == (224, imagenet_eval_size)
        batches = take(data.train_batches(0), 5)  # 25 examples: both epoch ends fall mid-batch
        for batch in batches:
            # uint8 pixels: the step colour-augments and normalises them on device.
            assert batch["image"].shape == (5, 224, 224, 3) and batch["image"].dtype == np.uint8
        assert data.device_colour  # both recipes: PCA lighting (and, for inception, the jitter)
        # Each epoch of the 12-example shard holds every example once.
        labels = np.concatenate([b["label"] for b in batches])
        assert collections.Counter(labels[:12].tolist()) == collections.Counter(labels[12:24].tolist())
        assert_batches_equal(batches[2:5], take(input_pipeline.create(config).train_batches(2), 3))
        tests = list(data.test_batches())
        assert len(tests) == 2 and sum(b["mask"].sum() for b in tests) == 7
        assert tests[0]["image"].shape == (4, imagenet_eval_size, imagenet_eval_size, 3)
        assert tests[1]["image"].dtype == np.uint8 and not tests[1]["image"][3:].any()  # padding
        config.batch_size = 6  # divisible by two processes
        two = [list(input_pipeline.create(config, p, 2).test_batches()) for p in (0, 1)]
        assert len(two[0]) == len(two[1]) and sum(b["mask"].sum() for t in two for b in t) == 7


def test_missing_imagenet_says_how_to_prepare_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="manual") as error:
        input_pipeline.create(make_config(str(tmp_path), dataset="imagenet2012"))
    assert "ILSVRC2012_img_train.tar" in str(error.value) and str(tmp_path) in str(error.value)


def test_missing_cifar_offline_says_how_to_prepare_it(tmp_path, monkeypatch):
    monkeypatch.setattr(input_pipeline, "_cannot_download", lambda process_count: "offline in this test")
    with pytest.raises(FileNotFoundError, match="tfds build cifar10 --data_dir"):
        input_pipeline.create(make_config(str(tmp_path), dataset="cifar10"))


def test_quiet_import_drops_tensorflows_start_up_notices_and_keeps_other_output(tmp_path, monkeypatch, capfd):
    """tf_import.quiet_import filters file descriptor 2 (where TensorFlow's C++ logs go) during an
    import: the known notices vanish, anything else the import writes is written back."""
    from resnet_v2_jax import tf_import

    (tmp_path / "noisy_module_for_test.py").write_text(
        "import os, sys\n"
        "os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on. You may see ...\\n')\n"
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "os.write(2, b'a real warning from C++\\n')\n"
        "print('and one from Python', file=sys.stderr)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tf_import.quiet_import("noisy_module_for_test")
    assert module.__name__ == "noisy_module_for_test"
    err = capfd.readouterr().err
    assert "a real warning from C++" in err and "and one from Python" in err
    assert "oneDNN" not in err and "InitializeLog" not in err


def test_data_pipeline_import_prints_no_tensorflow_notice():
    """The real thing, in a fresh process: importing the pipeline writes no start-up notice."""
    result = subprocess.run([sys.executable, "-c", "import resnet_v2_jax.input_pipeline"],
                            capture_output=True, text=True, timeout=300, check=True)
    assert "oneDNN" not in result.stderr and "InitializeLog" not in result.stderr, result.stderr
