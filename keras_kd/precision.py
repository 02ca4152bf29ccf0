"""Running a frozen model in reduced precision without changing the user's model object."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import keras

from keras_kd import validation

PRECISIONS = ("float32", "bfloat16", "float16")


def check_precision(name: str, value: str | None) -> str:
    """Validates a compute precision ("float32", "bfloat16", "float16"; `None` -> "float32")."""
    if value is None:
        return "float32"
    return validation.one_of(
        name, value, PRECISIONS,
        hint="bfloat16 is the fast choice on CPUs and TPUs, float16 on NVIDIA GPUs.")


@contextlib.contextmanager
def compute_precision(models: Iterable[keras.Layer | None], precision: str):
    """Runs the layers of `models` under a `mixed_<precision>` policy inside the block only.

    The variables stay float32 (a mixed policy keeps them; they are cast on use), the outputs
    come out in `precision`, and every layer's own policy is restored on exit, so the user's
    model is unchanged. A `tf.function` traced inside the block keeps the reduced precision.

    Args:
        models: the models (or layers) to run in reduced precision; `None` entries are skipped.
        precision: "float32" (no change), "bfloat16" or "float16".

    Example:
        >>> with compute_precision([teacher], "bfloat16"):
        ...     logits = keras.ops.cast(teacher(x, training=False), "float32")
    """
    if precision == "float32":
        yield
        return
    policy = keras.DTypePolicy(f"mixed_{precision}")
    layers = {}
    for model in models:
        if model is None:
            continue
        for layer in model._flatten_layers(include_self=True):
            if layer.dtype_policy.compute_dtype == "float32":
                layers[id(layer)] = layer
    saved = [(layer, layer.dtype_policy) for layer in layers.values()]
    try:
        for layer, _ in saved:
            layer.dtype_policy = policy
        yield
    finally:
        for layer, original in saved:
            layer.dtype_policy = original
