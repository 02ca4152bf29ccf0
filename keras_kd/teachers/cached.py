"""Cached teacher outputs: run the teacher once, then distil without calling it again."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_kd import validation
from keras_kd.features import FeatureExtractor
from keras_kd.losses.base import LOGITS, Tap
from keras_kd.losses.top_k_soft_target import TopKTap, add_top_k_tensors, model_taps

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


def batched_input(data, teacher: keras.Model | None) -> bool:
    """Whether `data` is a `tf.data.Dataset` whose elements are batches (for `teacher`)."""
    return isinstance(data, tf.data.Dataset) and _is_batched(data, teacher)


def _as_dataset(
    data, y, sample_weight, batch_size: int, teacher: keras.Model | None = None
) -> tf.data.Dataset:
    if isinstance(data, tf.data.Dataset):
        if y is not None or sample_weight is not None:
            raise ValueError(
                "Pass y / sample_weight only with array inputs, not a tf.data.Dataset."
            )
        return data if _is_batched(data, teacher) else data.batch(batch_size)
    return tf.data.Dataset.from_tensor_slices(_arrays(data, y, sample_weight)).batch(batch_size)


def _arrays(data, y, sample_weight) -> tuple:
    if sample_weight is not None and y is None:
        raise ValueError("sample_weight needs y.")
    arrays = (data,) if y is None else (data, y)
    return arrays if sample_weight is None else (data, y, sample_weight)


def check_taps(taps) -> tuple[Tap, ...]:
    """`taps` as a non-empty tuple of `Tap`s with distinct keys, or a clear error."""
    if isinstance(taps, Tap) or isinstance(taps, (str, bytes)):
        raise TypeError(f"taps must be a sequence of keras_kd.losses.Tap, got {taps!r}. Pass "
                        "e.g. distiller.teacher_taps, or (keras_kd.losses.LOGITS,).")
    taps = tuple(taps)
    if not taps or not all(isinstance(t, Tap) for t in taps):
        raise TypeError(f"taps must be a non-empty sequence of keras_kd.losses.Tap, got "
                        f"{taps!r}. Pass e.g. distiller.teacher_taps.")
    keys = [t.key for t in taps]
    if len(set(keys)) != len(keys):
        raise ValueError(f"taps name the same cached key twice: {keys}.")
    return taps


def check_teacher_arguments(teacher, batch_size, teacher_input_fn) -> int:
    """Checks the arguments every cache shares; returns `batch_size` as an `int`."""
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"teacher must be a keras.Model, got {type(teacher)!r}.")
    batch_size = validation.positive_int(
        "batch_size", batch_size, hint="It is the batch size of the teacher pass.")
    if teacher_input_fn is not None and not callable(teacher_input_fn):
        raise TypeError(
            f"teacher_input_fn must be callable or None, got {teacher_input_fn!r}.")
    return batch_size


def _split(element) -> tuple:
    """`(x, (y[, w]))` of one dataset element."""
    element = element if isinstance(element, tuple) else (element,)
    return element[0], element[1:]


def _refuse_probabilities(logits: np.ndarray) -> None:
    rows = logits.reshape(-1, logits.shape[-1]).astype(np.float64)
    if rows.shape[-1] >= 2 and np.all(rows >= 0) and np.allclose(rows.sum(-1), 1.0, atol=1e-3):
        raise ValueError(
            "The teacher's outputs on the first batch are non-negative and sum to 1 in every "
            "row: they look like softmax probabilities, and a top-k cache needs logits (its "
            "rest mass is a softmax of them). Return logits from the teacher (end it in a "
            "keras.layers.Softmax layer, which the cache undoes, or drop the softmax)."
        )


def teacher_pass(
    teacher: keras.Model, dataset: tf.data.Dataset, taps: Sequence[Tap], teacher_input_fn=None
) -> Iterator[tuple]:
    """Runs `teacher` once per batch of `dataset`; yields `(element, {tap.key: tensor})`.

    The tensors are float32 (the top-k class ids of a `TopKTap`: int32), computed by one
    `tf.function` called with `training=False`: every cache calls this, so all caches hold the
    same bits for the same batches.
    """
    extractor = FeatureExtractor(teacher, model_taps(taps), "teacher")
    top_k = any(isinstance(t, TopKTap) for t in taps)

    @tf.function(reduce_retracing=True)
    def forward(x):
        teacher_x = teacher_input_fn(x) if teacher_input_fn is not None else x
        tensors = extractor(teacher_x, training=False)[1]
        tensors = {tap: tf.cast(t, tf.float32) for tap, t in tensors.items()}
        logits = tensors[LOGITS] if top_k else tf.zeros(())
        tensors = add_top_k_tensors(tensors, taps)
        return {tap.key: tensors[tap] for tap in taps}, logits

    first = True
    for element in dataset:
        outputs, logits = forward(_split(element)[0])
        if first and top_k and extractor.info.activation is None:
            _refuse_probabilities(logits.numpy())
        first = False
        yield element, outputs


def batch_sizes_to_dataset(dataset: tf.data.Dataset, sizes: Sequence[int],
                           static: bool) -> tf.data.Dataset:
    """Batches the unbatched `dataset` back into batches of `sizes` (one size, the last <=)."""
    size = sizes[0]
    if any(s != size for s in sizes[:-1]) or sizes[-1] > size:
        shown = sizes if len(sizes) <= 12 else [*sizes[:6], "...", *sizes[-6:]]
        raise ValueError(
            f"data yields batches of sizes {shown}; cache_teacher_outputs gives a batched "
            "dataset back in batches of one size (all but the last). Pass batches of one "
            "size, unbatched data, or use keras_kd.teachers.stream_teacher_outputs, which "
            "reads your own pipeline back whatever its batches."
        )
    return dataset.batch(size, drop_remainder=static)


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
    in the order of `data` and batched as `data` is: arrays and unbatched datasets give an
    unbatched dataset (shuffle and batch it yourself); a batched dataset gives the same
    batches back (`.unbatch()` it to shuffle). The `Distiller` then skips its teacher call, the
    one irreducible extra cost of distillation.

    Everything is held in memory (inputs and outputs: about 4x the input size at the peak).
    For data larger than memory use `keras_kd.teachers.stream_teacher_outputs`, which writes
    the outputs to disk and reads them back beside your own input pipeline.

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
            The default stores the logits. The `TopKTap`s of
            `keras_kd.losses.TopKSoftTargetDistillation` store `2k + 1` numbers per example
            instead of the logits (the top-k logits, their class ids, the rest mass).
        batch_size: batch size of the teacher pass (and of array inputs).
        teacher_input_fn: the `Distiller`'s `teacher_input_fn` (student inputs -> teacher
            inputs), applied before the teacher; the cache keeps the student's inputs.

    Returns:
        A `tf.data.Dataset`, batched like `data`.

    Raises:
        TypeError: for a teacher that is not a `keras.Model`, taps that are not `Tap`s, or a
            `teacher_input_fn` that is not callable.
        ValueError: for an empty dataset, inconsistent arguments, batches of several sizes,
            or (top-k taps) a teacher whose outputs are probabilities.

    Example:
        >>> cached = keras_kd.cache_teacher_outputs(teacher, x, y, taps=distiller.teacher_taps)
        >>> distiller.fit(cached.shuffle(60_000).batch(128), epochs=5)
    """
    batch_size = check_teacher_arguments(teacher, batch_size, teacher_input_fn)
    taps = check_taps(taps)
    batched = batched_input(data, teacher)
    dataset = _as_dataset(data, y, sample_weight, batch_size, teacher)

    inputs, outputs, rest, sizes = [], {tap.key: [] for tap in taps}, None, []
    for element, result in teacher_pass(teacher, dataset, taps, teacher_input_fn):
        x, tail = _split(element)
        for key, value in result.items():
            outputs[key].append(value.numpy())
        inputs.append(tf.nest.map_structure(lambda t: t.numpy(), x))
        sizes.append(len(tf.nest.flatten(inputs[-1])[0]))
        rest = [[] for _ in tail] if rest is None else rest
        for store, value in zip(rest, tail):
            store.append(value.numpy())
    if not inputs:
        raise ValueError("cache_teacher_outputs got an empty dataset.")
    x_all = tf.nest.map_structure(lambda *parts: np.concatenate(parts), *inputs)
    features = {
        CACHE_INPUTS_KEY: x_all,
        CACHE_OUTPUTS_KEY: {key: np.concatenate(store) for key, store in outputs.items()},
    }
    tail = tuple(np.concatenate(store) for store in rest)
    cached = tf.data.Dataset.from_tensor_slices((features, *tail))
    if not batched:
        return cached
    spec = tf.nest.flatten(_split(data.element_spec)[0])[0]
    return batch_sizes_to_dataset(cached, sizes, static=spec.shape[0] is not None)


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
