"""On-device augmentation and normalisation, in pure JAX.

The trainer imports this module on accelerator hosts, so it must not import TensorFlow. For CIFAR
the host pipeline (`input_pipeline.py`) does the same arithmetic in numpy; the two paths use
different random streams but the same definitions, so a config can switch `augment_on_device`
freely. For ImageNet the host crops and mirrors (JPEG decoding is fused with the crop there) and
the colour part of both ImageNet recipes runs here, on every training batch.

CIFAR: normalise first, then pad-crop-flip, as the paper's official code (fb.resnet.torch
datasets/cifar10.lua: ColorNormalize, HorizontalFlip, RandomCrop(32, 4)): the zero padding is
zero after normalising, the mean colour, not black. The ImageNet colour work is on the 0..255 scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Per-channel (mean, std) on the 0..255 scale.
MEAN_STD = {
    # fb.resnet.torch datasets/cifar10.lua, used by the paper's official code.
    "cifar10": ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7)),
    # fb.resnet.torch datasets/cifar100.lua: "Computed from entire CIFAR-100 training set".
    "cifar100": ((129.3, 124.1, 112.4), (68.2, 65.4, 70.4)),
    # The usual ImageNet statistics (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) times 255.
    "imagenet2012": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    # Mean and population std over every pixel of the 1437-image digits train split (pixels
    # stored as round(v * 255 / 16)), computed once with the `digits` TFDS builder:
    #   x = tfds.as_numpy(builder.as_dataset('train', batch_size=-1))['image'].astype(float)
    #   x.mean(), x.std()  ->  77.901, 95.848
    "digits": ((77.90,), (95.85,)),
    # Synthetic data is drawn already normalised on device.
    "synthetic": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def normalize(images, mean, std, dtype=jnp.float32):
    """(images - mean) / std, computed in float32 and then cast to the model's dtype.

    `mean` is per channel, shape (C,), or a per-pixel mean image, shape (H, W, C), for
    `normalization='pixel_mean'`; `std` is per channel. Both broadcast over a batch.
    """
    x = jnp.asarray(images).astype(jnp.float32)
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return ((x - mean) / std).astype(dtype)


def crop_flip(images, offsets, flips, pad: int = 4):
    """Zero-pads by `pad`, takes each image's window at `offsets` (row, col), then mirrors it
    left-right where `flips` is true. (Flip and crop commute, so this is the official code's
    flip-then-crop.)

    Split from `pad_crop_flip` so the geometry can be checked against exact offsets; the window
    is read with `lax.dynamic_slice`, so shapes stay static under jit.
    """
    _, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(image, offset, flip):
        window = lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flip, window[:, ::-1], window)

    return jax.vmap(one)(padded, offsets, flips)


def pad_crop_flip_params(rng, n: int, pad: int = 4):
    """The random part of `pad_crop_flip`: per-example (row, col) offsets and flip bits."""
    offset_rng, flip_rng = jax.random.split(rng)
    offsets = jax.random.randint(offset_rng, (n, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(flip_rng, 0.5, (n,))
    return offsets, flips


def _part(params, part):
    """This device's rows of per-example draws made for the whole batch: `part` = (device index,
    devices), under config.explicit_data_parallel; the draws then equal those of the sharded step."""
    if part is None:
        return params
    index, count = part
    n = params[0].shape[0] // count
    return tuple(jax.lax.dynamic_slice_in_dim(p, index * n, n) for p in params)


def pad_crop_flip(rng, images, pad: int = 4, part=None):
    """The paper's CIFAR augmentation: pad 4 with zeros, random crop back, random mirror.

    Every example draws its own offsets and flip from `rng`; pass normalised images, so that the
    padding is the mean colour as in the paper's code. To keep resumed runs identical, derive
    `rng` from the step, e.g. `jax.random.fold_in(key, step)`. `part`: see `_part`.
    """
    offsets, flips = _part(pad_crop_flip_params(rng, images.shape[0] * (part[1] if part else 1), pad), part)
    return crop_flip(images, offsets, flips, pad)


# ----------------------------------------------------------------------------- ImageNet colour

# The colour jitter strength of each `imagenet_augment` recipe. fb.resnet.torch's inception recipe
# blends brightness, contrast and saturation by 1 + U(-0.4, 0.4), then adds PCA lighting; the
# paper's scale augmentation uses "the standard color augmentation" of AlexNet, PCA lighting alone.
COLOUR_JITTER = {"inception": 0.4, "scale": 0.0}

# AlexNet's PCA lighting noise (fb.resnet.torch), eigenvalues on the 0..1 pixel scale.
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def _grey(images):
    return jnp.sum(images * jnp.asarray([0.299, 0.587, 0.114], images.dtype), axis=-1, keepdims=True)


def colour_params(rng, n: int, strength: float = 0.4, lighting_std: float = 0.1):
    """The random part of `colour_lighting`: per image, the three blend factors
    1 + U(-strength, strength) (brightness, contrast, saturation) and the lighting coefficients
    N(0, lighting_std)."""
    alpha_rng, light_rng = jax.random.split(rng)
    alphas = 1.0 + jax.random.uniform(alpha_rng, (n, 3), jnp.float32, -strength, strength)
    light = jax.random.normal(light_rng, (n, 3), jnp.float32) * lighting_std
    return alphas, light


def colour_apply(images, alphas, light):
    """fb.resnet.torch's ColorJitter (brightness, contrast, saturation) then AlexNet PCA Lighting,
    on float images in 0..255 (no clipping, as in that code).

    Each blend is x -> a*x + (1-a)*P(x): P = 0 (brightness), the image's mean grey (contrast),
    the pixel's grey (saturation). P is linear and grey weights sum to 1, so each blend keeps the
    others' P up to its own factor, and the three maps commute: fb.resnet.torch's random order
    changes nothing (tests/test_imagenet_input.py checks all six orders), so none is drawn.
    Lighting then adds 255 * EIGVEC @ (light * EIGVAL).
    """
    x = images.astype(jnp.float32)
    a = alphas[:, None, None, :]  # (n, 1, 1, 3)
    x = x * a[..., 0:1]  # brightness: blend with black
    mean_grey = jnp.mean(_grey(x), axis=(1, 2, 3), keepdims=True)
    x = (x - mean_grey) * a[..., 1:2] + mean_grey  # contrast: blend with the mean grey
    grey = _grey(x)
    x = (x - grey) * a[..., 2:3] + grey  # saturation: blend with the pixel's grey
    return _lighting(x, light)


def _lighting(x, light):
    """x + 255 * EIGVEC @ (light * EIGVAL), per image: AlexNet's PCA lighting."""
    rgb = (light * jnp.asarray(EIGVAL, jnp.float32)) @ jnp.asarray(EIGVEC, jnp.float32).T  # (n, 3)
    return x + 255.0 * rgb[:, None, None, :]


def colour_lighting(rng, images, strength: float = 0.4, lighting_std: float = 0.1, part=None):
    """The colour part of the ImageNet recipes (`COLOUR_JITTER`), done on device: the host sends
    cropped, mirrored uint8 pixels (4x fewer bytes than floats) and skips float work that costs it
    more than the JPEG decode (BENCHMARKS.md). `strength` 0 is lighting alone, without the blends.
    `part`: see `_part`."""
    alphas, light = _part(colour_params(rng, images.shape[0] * (part[1] if part else 1), strength, lighting_std),
                          part)
    if strength == 0:
        return _lighting(images.astype(jnp.float32), light)
    return colour_apply(images, alphas, light)
