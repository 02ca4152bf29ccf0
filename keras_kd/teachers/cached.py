"""Cached teacher outputs: run the teacher once, then distil without calling it again."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_kd import validation
from keras_kd.features import FeatureExtractor
from keras_kd.losses.base import LOGITS, Tap

# A cached batch is a dict with exactly these two keys (names no model input may take): the
# student's inputs, and the teacher's tensors keyed by `Tap.key`.
CACHE_INPUTS_KEY = "keras_kd_inputs"
CACHE_OUTPUTS_KEY = "keras_kd_teacher_outputs"


def is_cached_batch(x) -> bool:
    """Whether `x` is a batch made by `cache_teacher_outputs` (exactly its two reserved keys)."""
    return (
        isinstance(x, dict)
        and set(x) == {CACHE_INPUTS_KEY, CACHE_OUTPUTS_KEY}
        and isinstance(x[CACHE_OUTPUTS_KEY], dict)
    )


def _is_batched(dataset: tf.data.Dataset, teacher: keras.Model | None) -> bool:
    """Whether the dataset's elements already carry a batch axis.

    For a single-input graph teacher the input rank decides (a `batch(..., drop_remainder=True)`
    dataset has a static batch size); otherwise an unknown leading dimension means batched.
    """
    spec = dataset.element_spec
    first = tf.nest.flatten(spec[0] if isinstance(spec, tuple) else spec)[0]
    rank = first.shape.rank
    try:
        inputs = teacher.inputs if teacher is not None else None
    except (AttributeError, ValueError):
        inputs = None
    if rank is not None and inputs and len(inputs) == 1:
        return rank == len(inputs[0].shape)
    return bool(rank) and first.shape[0] is None


def _as_dataset(
    data, y, sample_weight, batch_size: int, teacher: keras.Model | None = None
) -> tf.data.Dataset:
    if isinstance(data, tf.data.Dataset):
        if y is not None or sample_weight is not None:
            raise ValueError(
                "Pass y / sample_weight only with array inputs, not a tf.data.Dataset."
            )
        return data if _is_batched(data, teacher) else data.batch(batch_size)
    arrays = (data,) if y is None else (data, y)
    if sample_weight is not None:
        if y is None:
            raise ValueError("sample_weight needs y.")
        arrays = (data, y, sample_weight)
    return tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)


def cache_teacher_outputs(
    teacher: keras.Model,
    data,
    y=None,
    sample_weight=None,
    taps: Sequence[Tap] = (LOGITS,),
    batch_size: int = 256,
    teacher_input_fn=None,
) -> tf.data.Dataset:
    """Runs `teacher` once over `data` and returns a dataset the `Distiller` trains on directly.

    Each element of the result is `({CACHE_INPUTS_KEY: x, CACHE_OUTPUTS_KEY: {tap.key: t}},
    y[, w])` (the keys are `"keras_kd_inputs"` and `"keras_kd_teacher_outputs"`, names the
    `Distiller` reserves, so a cached batch is never confused with a model's own input dict),
    unbatched, in the order of `data`: shuffle and batch it yourself. The `Distiller` then
    skips its teacher call, the one irreducible extra cost of distillation.

    Invalid when the teacher would see something different each epoch: random data
    augmentation applied before the teacher (cache the augmented copies instead, or do not
    cache), or a teacher meant to run with dropout/noise active. It is exact for a frozen teacher
    called with `training=False` on fixed inputs, which is what the `Distiller` does.

    Args:
        teacher: the teacher model.
        data: an array, or a finite `tf.data.Dataset` of `x`, `(x, y)` or `(x, y, w)` with a
            deterministic order (no `reshuffle_each_iteration` before this call).
        y: labels when `data` is an array.
        sample_weight: per-example weights when `data` is an array.
        taps: which teacher tensors to store (`distiller.teacher_taps`), keyed by `tap.key`.
            The default stores the logits.
        batch_size: batch size of the teacher pass (and of array inputs).
        teacher_input_fn: the `Distiller`'s `teacher_input_fn` (student inputs -> teacher
            inputs), applied before the teacher; the cache keeps the student's inputs.

    Returns:
        An unbatched `tf.data.Dataset`.

    Raises:
        ValueError: for an empty dataset or inconsistent arguments.
    """
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"teacher must be a keras.Model, got {type(teacher)!r}.")
    batch_size = validation.positive_int("batch_size", batch_size)
    if teacher_input_fn is not None and not callable(teacher_input_fn):
        raise TypeError(
            f"teacher_input_fn must be callable or None, got {teacher_input_fn!r}.")
    taps = tuple(taps)
    extractor = FeatureExtractor(teacher, taps, "teacher")
    dataset = _as_dataset(data, y, sample_weight, batch_size, teacher)

    @tf.function(reduce_retracing=True)
    def forward(x):
        teacher_x = teacher_input_fn(x) if teacher_input_fn is not None else x
        tensors = extractor(teacher_x, training=False)[1]
        return tuple(tf.cast(tensors[tap], tf.float32) for tap in taps)

    inputs, outputs, rest = [], None, None
    for element in dataset:
        element = element if isinstance(element, tuple) else (element,)
        x = element[0]
        result = forward(x)
        outputs = [[] for _ in result] if outputs is None else outputs
        for store, value in zip(outputs, result):
            store.append(value.numpy())
        inputs.append(tf.nest.map_structure(lambda t: t.numpy(), x))
        rest = [[] for _ in element[1:]] if rest is None else rest
        for store, value in zip(rest, element[1:]):
            store.append(value.numpy())
    if outputs is None:
        raise ValueError("cache_teacher_outputs got an empty dataset.")
    x_all = tf.nest.map_structure(lambda *parts: np.concatenate(parts), *inputs)
    features = {
        CACHE_INPUTS_KEY: x_all,
        CACHE_OUTPUTS_KEY: {
            tap.key: np.concatenate(store) for tap, store in zip(taps, outputs)
        },
    }
    tail = tuple(np.concatenate(store) for store in rest)
    return tf.data.Dataset.from_tensor_slices((features, *tail))


def cache_teacher_logits(
    teacher: keras.Model, data, y=None, sample_weight=None, batch_size: int = 256
) -> tf.data.Dataset:
    """`cache_teacher_outputs` for logit losses (soft targets, logit matching).

    Example:
        >>> cached = keras_kd.cache_teacher_logits(teacher, x_train, y_train)
        >>> distiller.fit(cached.shuffle(60000).batch(128), epochs=5)

    A final softmax of the teacher is undone exactly, as in the `Distiller`.
    """
    return cache_teacher_outputs(teacher, data, y, sample_weight, (LOGITS,), batch_size)
