"""CIFAR-10 (the lossy JPEG copy in `../shared/data`) for the CIFAR benchmark scripts.

`arrays()` builds the TFDS dataset once through `keras_kd.datasets` (the npz is rewritten in the
official binary layout by `prepare_cifar10_manual_dir`) and returns uint8 arrays held in memory;
`train_dataset()` adds the standard augmentation (4-pixel zero padding, random 32x32 crop,
horizontal flip) of He et al. 2016.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_kd import datasets

DEFAULT_NPZ = str(
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_jpeg"
    / "cifar10_jpeg_yoongikim.npz"
)
TEACHER_PATH = str(Path(__file__).resolve().parent / "weights" / "cifar10_resnet20.keras")


def arrays(npz: str = DEFAULT_NPZ, data_dir: str | None = None):
    """Returns `(x_train, y_train), (x_test, y_test)`: uint8 `(n, 32, 32, 3)` and int64 labels."""
    if not datasets.is_prepared("cifar10", data_dir):
        if not os.path.exists(npz):
            raise FileNotFoundError(
                f"CIFAR-10 is not built in the TFDS data_dir and the JPEG npz {npz!r} is missing: "
                "pass --cifar_npz=<path of cifar10_jpeg_yoongikim.npz>."
            )
        manual = os.path.join(datasets.default_data_dir(), "cifar10_manual")
        datasets.prepare_cifar10_manual_dir(npz, manual)
        datasets.prepare("cifar10", data_dir, manual)
    train = datasets.load_arrays("cifar10", "train", data_dir, normalize=False)
    test = datasets.load_arrays("cifar10", "test", data_dir, normalize=False)
    return train, test


def _augment(image, label):
    image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
    image = tf.image.random_crop(image, (32, 32, 3))
    image = tf.image.random_flip_left_right(image)
    return image, label


def _scale(image, label):
    return tf.cast(image, tf.float32) / 255.0, label


def train_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, augment: bool = True):
    """Shuffled, augmented (if `augment`) batches of `(float32 [0, 1] image, label)`."""
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    if augment:
        ds = ds.map(_augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).map(_scale).prefetch(tf.data.AUTOTUNE)


def test_dataset(x: np.ndarray, y: np.ndarray, batch_size: int = 500):
    """Batches of `(float32 [0, 1] image, label)` in order."""
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).map(_scale)
