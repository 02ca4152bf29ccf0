"""Shared pytest setup.

The CPU is split into two logical devices here, at import time and before any TensorFlow op
runs, so `tests/test_distiller_distributed.py` can run `tf.distribute.MirroredStrategy` on two
replicas. Everything else keeps running on the default device `/CPU:0`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

NUM_LOGICAL_CPUS = 2


def _split_cpu() -> None:
    # Only physical devices may be listed here: listing logical ones initialises TensorFlow.
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS
        )
    except RuntimeError:
        # TensorFlow was initialised earlier (e.g. by a plugin); the distributed test then
        # fails with a message saying so rather than silently running on one device.
        pass


_split_cpu()


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from the same seed and a clean Keras name scope."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(1234)
    yield
