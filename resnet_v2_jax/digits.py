"""TFDS builder for scikit-learn's 8x8 handwritten digits.

The digits give the whole training stack (builder, splits, features, in-memory pipeline) a
dataset that prepares offline in about a second, so the CIFAR code path can be exercised end to
end on a laptop or in CI with no download. The split is fixed once here, not by the caller, so
every run and every test sees the same 1437 training and 360 test images.

Import this module only from the data pipeline: it pulls in TensorFlow Datasets.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from etils import epath

from resnet_v2_jax.tf_import import tfds

NUM_TRAIN = 1437
NUM_TEST = 360
SPLIT_SEED = 0  # np.random.default_rng(SPLIT_SEED).permutation(1797): first 1437 train, rest test


def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """Row indices into `sklearn.datasets.load_digits()` of the train and test splits."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(NUM_TRAIN + NUM_TEST)
    return perm[:NUM_TRAIN], perm[NUM_TRAIN:]


class Digits(tfds.core.GeneratorBasedBuilder):
    """1,797 8x8 grey digits from scikit-learn, values 0..16 rescaled to 0..255."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Initial release: fixed 1437/360 split of sklearn's load_digits."
    }

    # TFDS locates a builder's source (for its checksums file) through `importlib_resources`,
    # which TFDS does not itself require and some environments lack; this module's own path is
    # the same answer without that import, so preparing stays offline and dependency-free.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Optical recognition of handwritten digits (UCI), as shipped with scikit-learn. "
                "Pixel v in 0..16 is stored as round(v * 255 / 16)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # scikit-learn ships the data: nothing to download.
        train, test = split_indices()
        return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

    def _generate_examples(self, indices):
        # Imported here so that merely registering the builder does not import scikit-learn.
        from sklearn.datasets import load_digits

        data = load_digits()
        images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        for i in indices:
            # The sklearn row index is a stable, unique key across versions of this builder.
            yield int(i), {"image": images[i], "label": int(data.target[i])}
