"""Top-k soft targets: NumPy reference, properties, and the Distiller on a top-k cache."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.losses import TopKSoftTargetDistillation, get
from keras_kd.losses.functional import (
    soft_target_kl,
    top_k_soft_target_kl,
    top_k_teacher_targets,
)
from keras_kd.losses.top_k_soft_target import TopKTap
from keras_kd.teachers.cached import CACHE_OUTPUTS_KEY


def np_softmax(z, t):
    z = np.asarray(z, np.float64) / t
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_targets(t_logits, k, temperature):
    """Reference top-k values, ids and rest mass (float64, ids by a stable descending sort)."""
    order = np.argsort(-t_logits, axis=-1, kind="stable")[..., :k]
    p = np_softmax(t_logits, temperature)
    rest = 1.0 - np.take_along_axis(p, order, -1).sum(-1)
    return np.take_along_axis(t_logits, order, -1), order, rest


def np_top_k_kl(values, indices, rest, s_logits, temperature):
    """The docstring's formula in float64, straight from its definitions."""
    q = np_softmax(s_logits, temperature)
    p_k = (1.0 - rest)[..., None] * np_softmax(values, temperature)
    q_k = np.take_along_axis(q, indices, -1)
    q_rest = 1.0 - q_k.sum(-1)
    top = (p_k * (np.log(p_k) - np.log(q_k))).sum(-1)
    bucket = np.where(rest > 0, rest * (np.log(np.maximum(rest, 1e-300)) - np.log(q_rest)), 0.0)
    return temperature**2 * (top + bucket)


def to_np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("shape", [(6, 10), (3, 4, 10)], ids=["per_example", "per_position"])
@pytest.mark.parametrize("k, temperature", [(1, 1.0), (3, 4.0), (9, 2.0)])
def test_top_k_loss_equals_numpy_reference(shape, k, temperature):
    rng = np.random.default_rng(k)
    t = (rng.normal(size=shape) * 3.0).astype("float32")
    s = (rng.normal(size=shape) * 3.0).astype("float32")
    values, indices, rest = top_k_teacher_targets(t, k, temperature)
    ref_values, ref_indices, ref_rest = np_targets(t, k, temperature)
    np.testing.assert_array_equal(to_np(values), ref_values)
    np.testing.assert_array_equal(to_np(indices), ref_indices)
    assert to_np(indices).dtype == np.int32
    np.testing.assert_allclose(to_np(rest), ref_rest, rtol=1e-5, atol=1e-7)

    got = to_np(top_k_soft_target_kl(values, indices, rest, s, temperature))
    assert got.shape == shape[:-1] and got.dtype == np.float32
    want = np_top_k_kl(ref_values, ref_indices, ref_rest, s, temperature)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The class, called with the cached tensors as the Distiller passes them (ids as float32).
    loss = TopKSoftTargetDistillation(top_k=k, temperature=temperature)
    via_class = loss((values, keras.ops.cast(indices, "float32"), rest), (s,))
    np.testing.assert_allclose(to_np(via_class), got, rtol=1e-6, atol=1e-7)


def test_top_k_loss_is_the_full_kl_minus_the_kl_inside_the_rest_bucket():
    rng = np.random.default_rng(0)
    t = (rng.normal(size=(5, 12)) * 2.0).astype("float32")
    s = (rng.normal(size=(5, 12)) * 2.0).astype("float32")
    k, temperature = 4, 3.0
    got = to_np(top_k_soft_target_kl(*top_k_teacher_targets(t, k, temperature), s, temperature))
    full = to_np(soft_target_kl(t, s, temperature))
    _, order, rest = np_targets(t, k, temperature)
    outside = np.ones_like(t, bool)
    np.put_along_axis(outside, order, False, -1)
    p, q = np_softmax(t, temperature), np_softmax(s, temperature)
    inner = []
    for row in range(len(t)):
        pr, qr = p[row, outside[row]], q[row, outside[row]]
        pr, qr = pr / pr.sum(), qr / qr.sum()
        inner.append((pr * np.log(pr / qr)).sum())
    np.testing.assert_allclose(full - got, temperature**2 * rest * np.array(inner), atol=2e-5)
    assert np.all(got <= full + 1e-6)


def test_top_k_loss_properties():
    rng = np.random.default_rng(1)
    t = (rng.normal(size=(4, 8)) * 3.0).astype("float32")
    targets = top_k_teacher_targets(t, 3, 2.0)
    # The student equal to the teacher: 0 (also for a student equal to it up to a shift).
    np.testing.assert_allclose(to_np(top_k_soft_target_kl(*targets, t, 2.0)), 0.0, atol=1e-6)
    np.testing.assert_allclose(to_np(top_k_soft_target_kl(*targets, t + 5.0, 2.0)), 0.0,
                               atol=1e-5)
    # A rest mass far below float32's 1 - sum resolution keeps its relative precision.
    peaked = np.array([[40.0, 0.0, 0.0, 0.0, 0.0]], "float32")
    _, _, rest = top_k_teacher_targets(peaked, 1, 1.0)
    np.testing.assert_allclose(to_np(rest), 4.0 * np.exp(-40.0), rtol=1e-5)
    # A rest mass that underflows to 0 gives a finite loss and finite gradients.
    huge = np.array([[400.0, 0.0, 0.0]], "float32")
    s = tf.Variable(np.array([[1.0, 2.0, 0.0]], "float32"))
    with tf.GradientTape() as tape:
        value = top_k_soft_target_kl(*top_k_teacher_targets(huge, 1, 1.0), s, 1.0)
    assert np.isfinite(to_np(value)).all()
    assert np.isfinite(to_np(tape.gradient(value, s))).all()


def test_top_k_refusals():
    t = np.zeros((2, 5), "float32")
    with pytest.raises(ValueError, match="top_k < the number of classes.*top_k=5 for 5"):
        top_k_teacher_targets(t, 5, 1.0)
    with pytest.raises(ValueError, match="top_k=5 for 4 classes"):
        top_k_soft_target_kl(t, t.astype("int32"), t[:, 0], t[:, :4], 1.0)
    with pytest.raises(ValueError, match="top_k must be a positive integer, got 0"):
        TopKSoftTargetDistillation(top_k=0)
    with pytest.raises(TypeError, match="top_k must be a positive integer, got 2.5"):
        TopKSoftTargetDistillation(top_k=2.5)
    with pytest.raises(ValueError, match="temperature must be a finite real number > 0"):
        TopKSoftTargetDistillation(top_k=2, temperature=0.0)
    with pytest.raises(ValueError, match=r"'top_k_soft_target' needs top_k: pass "
                                         r"keras_kd.losses.TopKSoftTargetDistillation\(top_k"):
        get("top_k_soft_target")
    with pytest.raises(ValueError, match="part must be one of"):
        TopKTap(part="probabilities", top_k=2)
    with pytest.raises(ValueError, match="temperature only for part='rest_mass'"):
        TopKTap(part="values", top_k=2, temperature=2.0)


def test_top_k_taps_keys_and_config_round_trip():
    loss = TopKSoftTargetDistillation(top_k=20, temperature=4.0, name="top20")
    assert [t.key for t in loss.teacher_taps()] == [
        "logits/top_20_values", "logits/top_20_indices", "logits/top_20_rest_mass_T4.0"]
    assert loss.temperature_variable() is None  # fixed: the cache holds the rest mass at T
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is TopKSoftTargetDistillation
    assert restored.get_config() == loss.get_config()
    assert restored.teacher_taps() == loss.teacher_taps()


N_IN, N_CLASSES, BATCH = 4, 9, 8


def mlp(hidden, name):
    inputs = keras.Input((N_IN,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES)(h), name=name)


def test_distiller_on_a_top_k_cache_equals_the_live_teacher_and_the_reference():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(2 * BATCH, N_IN)) * 2.0).astype("float32")
    y = rng.integers(0, N_CLASSES, size=(2 * BATCH,)).astype("int32")
    w = rng.uniform(0.0, 2.0, size=(2 * BATCH,)).astype("float32")
    teacher, initial = mlp(16, "teacher"), mlp(6, "student").get_weights()

    def run(teacher_model, train):
        student = mlp(6, "student")
        student.set_weights(initial)
        distiller = keras_kd.Distiller(
            teacher_model, student, TopKSoftTargetDistillation(top_k=3, temperature=2.0),
            student_loss_weight=0.25)
        distiller.compile(keras.optimizers.SGD(0.3),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        logs = distiller.evaluate(train, verbose=0, return_dict=True)
        distiller.fit(train, epochs=1, verbose=0)
        return logs, [np.asarray(v) for v in student.get_weights()], distiller

    live_data = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(BATCH)
    live_logs, live_weights, distiller = run(teacher, live_data)
    cached = keras_kd.cache_teacher_outputs(teacher, x, y, w, taps=distiller.teacher_taps)
    assert sorted(next(iter(cached))[0][CACHE_OUTPUTS_KEY]) == [
        "logits/top_3_indices", "logits/top_3_rest_mass_T2.0", "logits/top_3_values"]
    cached_logs, cached_weights, _ = run(None, cached.batch(BATCH))

    values, indices, rest = np_targets(to_np(teacher(x)), 3, 2.0)
    student = mlp(6, "student")
    student.set_weights(initial)
    s = to_np(student(x))
    want = (w * np_top_k_kl(values, indices, rest, s, 2.0)).mean()
    np.testing.assert_allclose(cached_logs["distillation_loss"], want, rtol=1e-5)
    np.testing.assert_allclose(live_logs["distillation_loss"], want, rtol=1e-5)
    for a, b in zip(cached_weights, live_weights):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(cached_weights, initial)) > 1e-3

    other_k = keras_kd.Distiller(None, mlp(6, "student"),
                                 TopKSoftTargetDistillation(top_k=4, temperature=2.0),
                                 student_loss_weight=0.0)
    other_k.compile(keras.optimizers.SGD(0.3))
    with pytest.raises(ValueError, match=r"also need \['logits/top_4_values'"):
        other_k.fit(cached.batch(BATCH), epochs=1, verbose=0)


def test_top_k_cache_refuses_a_teacher_that_outputs_probabilities():
    class ProbabilityTeacher(keras.Model):  # subclassed: the graph shows no softmax to undo
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(N_CLASSES)

        def call(self, x):
            return keras.ops.softmax(self.dense(x))

    teacher = ProbabilityTeacher()
    x = np.ones((4, N_IN), "float32")
    teacher(x)
    taps = TopKSoftTargetDistillation(top_k=2).teacher_taps()
    with pytest.raises(ValueError, match="look like softmax probabilities.*top-k cache needs"):
        keras_kd.cache_teacher_outputs(teacher, x, taps=taps)
