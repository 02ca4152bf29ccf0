"""Shared fixtures for the export tests: real MNIST, one small trained student, converted files.

Converting is the slow part (a few seconds per file), so each file is converted once per session.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_kd.datasets import SHIPPED_MNIST_DIR, read_idx
from keras_kd.export import to_tflite

MNIST_DIR = SHIPPED_MNIST_DIR  # the four MNIST files the package ships: no ../shared needed
NUM_TRAIN = 12000
NUM_TEST = 2000


def _images(name: str, count: int) -> np.ndarray:
    x = read_idx(MNIST_DIR / name)[:count]
    return (x[..., None].astype(np.float32) / np.float32(255.0))


@pytest.fixture(scope="session")
def mnist():
    """`(x_train, y_train, x_test, y_test)`: the first 12000 / 2000 real MNIST images."""
    x_train = _images("train-images-idx3-ubyte.gz", NUM_TRAIN)
    y_train = read_idx(MNIST_DIR / "train-labels-idx1-ubyte.gz")[:NUM_TRAIN].astype(np.int64)
    x_test = _images("t10k-images-idx3-ubyte.gz", NUM_TEST)
    y_test = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")[:NUM_TEST].astype(np.int64)
    return x_train, y_train, x_test, y_test


def small_cnn(name: str = "student") -> keras.Model:
    """Conv-BN-ReLU, strided conv, dense head: the layer pattern tfmot can quantize."""
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(8, 3, strides=2, use_bias=False),
            layers.BatchNormalization(momentum=0.9),
            layers.ReLU(),
            layers.Conv2D(16, 3, strides=2, activation="relu"),
            layers.Flatten(),
            layers.Dense(32, activation="relu"),
            layers.Dense(10),
        ],
        name=name,
    )


@pytest.fixture(scope="session")
def student(mnist):
    """A small CNN trained for 2 epochs on 12000 real MNIST images (logits output)."""
    x_train, y_train, _, _ = mnist
    keras.utils.set_random_seed(7)
    model = small_cnn()
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, batch_size=128, epochs=2, verbose=0)
    return model


@pytest.fixture(scope="session")
def tflite_files(student, mnist, tmp_path_factory):
    """`{variant: path}` for "none", "float16", "dynamic", "int8" (int8 I/O), "int8_float_io"."""
    x_train = mnist[0]
    out = tmp_path_factory.mktemp("tflite")
    files = {}
    for mode in ("none", "float16", "dynamic"):
        files[mode] = to_tflite(student, out / f"{mode}.tflite", mode)
    files["int8"] = to_tflite(
        student, out / "int8.tflite", "int8", representative_data=x_train[:300], int8_io=True
    )
    files["int8_float_io"] = to_tflite(
        student, out / "int8_float_io.tflite", "int8", representative_data=x_train[:300]
    )
    return files
