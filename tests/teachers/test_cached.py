"""Cached teacher logits: same step as the live teacher, and the teacher is never called."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.teachers.cached import CACHE_INPUTS_KEY, CACHE_OUTPUTS_KEY


def to_np(value, dtype=None):
    array = keras.ops.convert_to_numpy(value)
    return array if dtype is None else array.astype(dtype)


N_IN, N_CLASSES, BATCH = 4, 3, 8
SAMPLE_WEIGHT = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5, 0.25, 1.0], "float32")


class CallCounter(keras.layers.Layer):
    """Identity layer counting its calls (a variable, so calls inside tf.function count)."""

    def build(self, input_shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x):
        self.calls.assign_add(1.0)
        return x


def mlp(hidden, name, softmax=False):
    inputs = keras.Input((N_IN,))
    counter = CallCounter(name=f"{name}_counter")
    h = keras.layers.Dense(hidden, activation="relu")(counter(inputs))
    out = keras.layers.Dense(N_CLASSES)(h)
    if softmax:
        out = keras.layers.Softmax()(out)
    return keras.Model(inputs, out, name=name), counter


def data(seed=0, n=BATCH):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, N_IN)).astype("float32") * 2.0,
        rng.integers(0, N_CLASSES, size=(n,)).astype("int32"),
    )


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _step(teacher, student, dataset):
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.3)
    distiller.compile(keras.optimizers.SGD(0.5), loss=hard_loss())
    history = distiller.fit(dataset, epochs=1, verbose=0).history
    return {k: v[0] for k, v in history.items()}, [np.array(w) for w in student.get_weights()]


@pytest.mark.parametrize("softmax_teacher", [False, True], ids=["logits", "softmax"])
def test_cached_step_equals_live_teacher_step_and_skips_the_teacher(softmax_teacher):
    teacher, t_counter = mlp(16, "teacher", softmax=softmax_teacher)
    student, _ = mlp(6, "student")
    initial = student.get_weights()
    x, y = data(1)

    live_ds = tf.data.Dataset.from_tensor_slices((x, y, SAMPLE_WEIGHT)).batch(BATCH)
    live_logs, live_weights = _step(teacher, student, live_ds)

    cached = keras_kd.cache_teacher_logits(teacher, x, y, SAMPLE_WEIGHT, batch_size=3)
    features, labels, weights = next(iter(cached.batch(BATCH)))
    np.testing.assert_array_equal(features[CACHE_INPUTS_KEY].numpy(), x)
    np.testing.assert_array_equal(labels.numpy(), y)
    np.testing.assert_array_equal(weights.numpy(), SAMPLE_WEIGHT)
    want_logits = np.asarray(teacher(x))
    if softmax_teacher:  # the cache holds logits, not probabilities
        want_logits = np.log(want_logits.astype(np.float64))
        got = features[CACHE_OUTPUTS_KEY]["logits"].numpy()
        got = got - got.max(-1, keepdims=True)
        want_logits = want_logits - want_logits.max(-1, keepdims=True)
        np.testing.assert_allclose(got, want_logits, atol=1e-5)
    else:
        np.testing.assert_allclose(features[CACHE_OUTPUTS_KEY]["logits"].numpy(), want_logits,
                                   atol=1e-6)

    student.set_weights(initial)
    calls_before = float(to_np(t_counter.calls))
    cached_logs, cached_weights = _step(teacher, student, cached.batch(BATCH))
    assert float(to_np(t_counter.calls)) == calls_before  # teacher not called by fit

    for key in ("loss", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(cached_logs[key], live_logs[key], atol=1e-6, err_msg=key)
    for got, want in zip(cached_weights, live_weights):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(cached_weights, initial)) > 1e-3


def test_teacher_none_trains_on_cached_data():
    teacher, _ = mlp(16, "teacher")
    student, s_counter = mlp(6, "student")
    x, y = data(2, n=2 * BATCH)
    cached = keras_kd.cache_teacher_logits(teacher, x, y)
    distiller = keras_kd.Distiller(None, student, student_loss_weight=0.0)
    distiller.compile(keras.optimizers.SGD(0.5), loss=hard_loss())
    before = [np.array(w) for w in student.get_weights()]
    t = np.asarray(teacher(x), np.float64)
    s = np.asarray(student(x), np.float64)
    log_p, log_q = np_log_softmax(t / 4.0), np_log_softmax(s / 4.0)
    expected = 16.0 * (np.exp(log_p) * (log_p - log_q)).sum(-1).mean()

    logs = distiller.evaluate(cached.batch(2 * BATCH), verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["distillation_loss"], expected, atol=1e-5)
    distiller.fit(cached.batch(BATCH), epochs=1, verbose=0)
    assert max(np.abs(np.array(a) - b).max() for a, b in zip(student.get_weights(), before)) > 0
    # predict accepts both plain inputs and cached batches.
    np.testing.assert_allclose(distiller.predict(x, verbose=0), np.asarray(student(x)), atol=1e-6)


def test_teacher_none_without_cache_raises_clearly():
    student, _ = mlp(6, "student")
    x, y = data(3)
    distiller = keras_kd.Distiller(None, student, student_loss_weight=0.5)
    distiller.compile(keras.optimizers.SGD(0.5), loss=hard_loss())
    before = [np.array(w) for w in student.get_weights()]
    with pytest.raises(ValueError, match="no teacher.*cached teacher outputs"):
        distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    for got, want in zip(student.get_weights(), before):
        np.testing.assert_array_equal(np.array(got), want)


def test_cache_with_wrong_number_of_tensors_raises():
    teacher, _ = mlp(16, "teacher")
    student, _ = mlp(6, "student")
    x, y = data(4)
    logits = np.asarray(teacher(x))
    bad = tf.data.Dataset.from_tensor_slices(
        ({CACHE_INPUTS_KEY: x, CACHE_OUTPUTS_KEY: {"t_hidden": logits}}, y)
    ).batch(BATCH)
    distiller = keras_kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.5), loss=hard_loss())
    with pytest.raises(ValueError, match=r"(?s)cached teacher outputs \['t_hidden'\].*'logits'"):
        distiller.fit(bad, epochs=1, verbose=0)


def test_cache_argument_errors():
    teacher, _ = mlp(16, "teacher")
    x, y = data(5)
    with pytest.raises(ValueError, match="batch_size"):
        keras_kd.cache_teacher_logits(teacher, x, y, batch_size=0)
    with pytest.raises(ValueError, match="sample_weight needs y"):
        keras_kd.cache_teacher_logits(teacher, x, None, SAMPLE_WEIGHT)
    with pytest.raises(ValueError, match="empty"):
        keras_kd.cache_teacher_logits(teacher, x[:0])


@pytest.mark.parametrize("form", ["unbatched", "batched", "batched_drop_remainder"])
def test_cache_gives_batched_data_back_batched_and_unbatched_unbatched(form):
    # Batched in -> the same batches out (before issue #10 a batched dataset came back
    # unbatched, so `cached.batch(128)` silently trained on batches of batches' rows).
    teacher, _ = mlp(16, "teacher")
    x, y = data(6)
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    sizes = [1] * BATCH
    if form == "batched":
        dataset, sizes = dataset.batch(3), [3, 3, 2]
    elif form == "batched_drop_remainder":  # static batch size in the element spec
        dataset, sizes = dataset.batch(4, drop_remainder=True), [4, 4]
    cached = keras_kd.cache_teacher_logits(teacher, dataset)
    spec = cached.element_spec[0][CACHE_INPUTS_KEY]
    assert tuple(spec.shape) == tuple(dataset.element_spec[0].shape)
    got = list(cached)
    assert [np.size(labels) for _, labels in got] == sizes

    def stacked(part, width):
        return np.concatenate([np.reshape(part(e).numpy(), (-1, *width)) for e in got])

    np.testing.assert_array_equal(stacked(lambda e: e[0][CACHE_INPUTS_KEY], (N_IN,)), x)
    np.testing.assert_array_equal(stacked(lambda e: e[1], ()), y)
    logits = stacked(lambda e: e[0][CACHE_OUTPUTS_KEY]["logits"], (N_CLASSES,))
    np.testing.assert_allclose(logits, to_np(teacher(x)), atol=1e-6)


def test_cache_refuses_batches_of_several_sizes():
    teacher, _ = mlp(16, "teacher")
    x, y = data(6)
    uneven = tf.data.Dataset.from_tensor_slices((x, y)).batch(3).concatenate(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(5))  # 3, 3, 2, 5, 3
    with pytest.raises(ValueError, match=r"batches of sizes \[3, 3, 2, 5, 3\].*stream_teacher"):
        keras_kd.cache_teacher_logits(teacher, uneven)


def test_teacher_none_with_feature_losses_raises_before_training():
    student, _ = mlp(6, "student")
    hint = keras_kd.losses.HintDistillation("teacher_hidden", student.layers[1].name)
    with pytest.raises(ValueError, match="teacher=None works only with losses on logits"):
        keras_kd.Distiller(None, student, [hint])
