"""`teacher_precision`: the teacher runs in bfloat16 / float16, the user's model is unchanged."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.precision import compute_precision

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 6)).astype("float32")
Y = np.arange(16) % 3
SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def net(name, hidden):
    inputs = keras.Input((6,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    return keras.Model(inputs, keras.layers.Dense(3)(h), name=name)


def np_kd(t, s, temperature=4.0):
    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lq = log_softmax(t / temperature), log_softmax(s / temperature)
    return temperature**2 * (np.exp(lp) * (lp - lq)).sum(-1)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_teacher_runs_in_reduced_precision_and_the_model_is_unchanged(precision):
    teacher, student = net("teacher", 32), net("student", 4)
    policies = [layer.dtype_policy.name for layer in teacher.layers]
    distiller = keras_kd.Distiller(teacher, student, teacher_precision=precision,
                                   student_loss_weight=0.0)
    distiller.compile(keras.optimizers.SGD(0.0), loss=SCE)
    _, signals = distiller.signals(tf.constant(X))
    t_low = np.asarray(signals[keras_kd.losses.LOGITS], np.float64)
    with compute_precision([teacher], precision):
        reference = np.asarray(keras.ops.cast(teacher(X, training=False), "float32"))
    np.testing.assert_array_equal(t_low, reference)  # exactly the reduced-precision forward
    t32 = np.asarray(teacher(X, training=False), np.float64)
    assert 0 < np.abs(t_low - t32).max() < 0.1  # reduced precision, close to float32
    logs = distiller.test_on_batch(X, Y, return_dict=True)
    s = np.asarray(student(X, training=False), np.float64)
    np.testing.assert_allclose(logs["distillation_loss"], np_kd(t_low, s).mean(), rtol=1e-5)
    assert [layer.dtype_policy.name for layer in teacher.layers] == policies
    assert all(w.dtype == "float32" for w in teacher.weights)
    assert keras_kd.Distiller.from_config(distiller.get_config()).teacher_precision == precision


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match="teacher_precision must be one of"):
        keras_kd.Distiller(net("t", 8), net("s", 4), teacher_precision="int8")
