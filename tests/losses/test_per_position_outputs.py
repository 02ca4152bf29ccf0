"""Sequence / dense outputs: soft-target losses reduce only the last (class / unit) axis."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_kd.losses import (
    BinarySoftTargetDistillation,
    SoftTargetDistillation,
    bernoulli_soft_target_kl,
    soft_target_kl,
)


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_soft_target_kl(t, s, temperature):
    """Per position: T^2 * sum_k p_k (log p_k - log q_k) over the last axis only."""
    log_p = np_log_softmax(np.asarray(t, np.float64) / temperature)
    log_q = np_log_softmax(np.asarray(s, np.float64) / temperature)
    return temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def np_bernoulli_kl(t, s, temperature):
    """Per position: T^2 * sum over the last (unit) axis of the Bernoulli KL, float64."""
    a = np.asarray(t, np.float64) / temperature
    b = np.asarray(s, np.float64) / temperature
    log_p, log_1p = -np.logaddexp(0.0, -a), -np.logaddexp(0.0, a)
    log_q, log_1q = -np.logaddexp(0.0, -b), -np.logaddexp(0.0, b)
    kl = np.exp(log_p) * (log_p - log_q) + np.exp(log_1p) * (log_1p - log_1q)
    return temperature**2 * kl.sum(axis=-1)


def _logits(seed, shape):
    return (np.random.default_rng(seed).normal(size=shape) * 3.0).astype("float32")


def _rtol(temperature):
    return 1e-5 if temperature <= 4.0 else 1e-4  # as in test_soft_target: T^2 amplifies rounding


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_soft_target_kl_sequence_values_are_per_position(temperature):
    t, s = _logits(0, (2, 5, 7)), _logits(1, (2, 5, 7))
    got = keras.ops.convert_to_numpy(soft_target_kl(t, s, temperature))
    assert got.shape == (2, 5) and got.dtype == np.float32
    expected = np_soft_target_kl(t, s, temperature)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=_rtol(temperature))
    # each position is the 2-D loss of that position's (batch, classes) slice
    for step in range(5):
        np.testing.assert_allclose(
            got[:, step],
            keras.ops.convert_to_numpy(soft_target_kl(t[:, step], s[:, step], temperature)),
            atol=1e-5,
            rtol=_rtol(temperature),
        )
    layer = SoftTargetDistillation(temperature=temperature)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer((t,), (s,))), expected, atol=1e-5, rtol=_rtol(temperature)
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_bernoulli_sequence_values_sum_only_the_unit_axis(temperature):
    t, s = _logits(2, (2, 5, 7)), _logits(3, (2, 5, 7))
    got = keras.ops.convert_to_numpy(bernoulli_soft_target_kl(t, s, temperature))
    assert got.shape == (2, 5) and got.dtype == np.float32
    expected = np_bernoulli_kl(t, s, temperature)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    layer = BinarySoftTargetDistillation(temperature=temperature)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer((t,), (s,))), expected, atol=1e-5, rtol=1e-5
    )


def test_dense_maps_give_batch_h_w_values():
    t, s = _logits(4, (2, 3, 4, 6)), _logits(5, (2, 3, 4, 6))
    kd = keras.ops.convert_to_numpy(soft_target_kl(t, s, 4.0))
    bern = keras.ops.convert_to_numpy(bernoulli_soft_target_kl(t, s, 4.0))
    assert kd.shape == (2, 3, 4) and bern.shape == (2, 3, 4)
    np.testing.assert_allclose(kd, np_soft_target_kl(t, s, 4.0), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(bern, np_bernoulli_kl(t, s, 4.0), atol=1e-5, rtol=1e-5)


def test_keras_temporal_sample_weight_convention_on_per_position_values():
    """What the Distiller does with them: mean over all positions of w * l, w per position."""
    t, s = _logits(6, (2, 5, 7)), _logits(7, (2, 5, 7))
    w = np.random.default_rng(8).uniform(size=(2, 5)).astype("float32")
    values = keras.ops.convert_to_numpy(soft_target_kl(t, s, 4.0))
    reference = (w * np_soft_target_kl(t, s, 4.0)).sum() / (2 * 5)
    np.testing.assert_allclose((w * values).sum() / values.size, reference, rtol=1e-5)
    # the same convention as a Keras loss with reduction="sum_over_batch_size"
    class PerPosition(keras.losses.Loss):
        def call(self, y_true, y_pred):
            return soft_target_kl(y_true, y_pred, 4.0)

    keras_value = PerPosition()(t, s, sample_weight=w)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras_value), reference, rtol=1e-5)
