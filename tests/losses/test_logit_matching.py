"""Logit matching (`logit_mse`, `LogitMatchingDistillation`)."""

from __future__ import annotations

import keras
import numpy as np

from keras_kd.losses import LogitMatchingDistillation, logit_mse


def np_logit_mse(t, s):
    """0.5 * sum_k (s_k - t_k)^2 per example, in float64."""
    d = np.asarray(s, np.float64) - np.asarray(t, np.float64)
    return 0.5 * (d**2).sum(axis=-1)


def _logits(seed, scale=3.0):
    return (np.random.default_rng(seed).normal(size=(7, 4)) * scale).astype("float32")


def test_logit_mse_matches_numpy():
    t, s = _logits(0), _logits(1)
    got = keras.ops.convert_to_numpy(logit_mse(t, s))
    assert got.shape == (7,) and got.dtype == np.float32
    np.testing.assert_allclose(got, np_logit_mse(t, s), atol=1e-5, rtol=1e-6)


def test_logit_mse_large_magnitudes():
    t, s = _logits(2, scale=0.5), _logits(3, scale=0.5)
    t, s = t + 1000.0, s + 1000.0  # only the difference matters
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(logit_mse(t, s)), np_logit_mse(t, s), atol=2e-3, rtol=1e-4
    )


def test_layer_matches_numpy_and_zero_for_identical():
    t, s = _logits(4), _logits(5)
    loss = LogitMatchingDistillation()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loss((t,), (s,))), np_logit_mse(t, s), atol=1e-5, rtol=1e-6
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss((t,), (t,))), 0.0, atol=0)


def test_gradient_is_student_minus_teacher():
    import tensorflow as tf

    t, s = _logits(6), _logits(7)
    var = tf.Variable(s)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(logit_mse(t, var))
    np.testing.assert_allclose(tape.gradient(value, var).numpy(), s - t, atol=1e-5)


def test_config_round_trip():
    loss = LogitMatchingDistillation(name="lm")
    config = loss.get_config()
    restored = LogitMatchingDistillation.from_config(config)
    assert isinstance(restored, LogitMatchingDistillation) and restored.name == "lm"
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, LogitMatchingDistillation)
    t, s = _logits(8), _logits(9)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(again((t,), (s,))), np_logit_mse(t, s), atol=1e-5, rtol=1e-6
    )
