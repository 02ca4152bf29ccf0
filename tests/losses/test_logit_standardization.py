"""Logit standardization (`standardize_logits`) and KD with it (`SoftTargetDistillation`)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd.losses import SoftTargetDistillation, standardize_logits


def np_standardize(z, eps=1e-7):
    """Official `normalize` (logit-standardization-KD, mdistiller/distillers/KD.py lines 7-10):
    (z - mean) / (1e-7 + std) over the last axis, torch's `std` being the sample std."""
    z = np.asarray(z, np.float64)
    return (z - z.mean(-1, keepdims=True)) / (eps + z.std(-1, ddof=1, keepdims=True))


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_kd_ls(t, s, temperature):
    """Official `kd_loss(..., logit_stand=True)` per example (before `.mean()`), float64."""
    log_p = np_log_softmax(np_standardize(t) / temperature)
    log_q = np_log_softmax(np_standardize(s) / temperature)
    return temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def _logits(seed, shape=(8, 6), scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("shape", [(8, 6), (8, 2), (2, 5, 7)])
def test_standardize_matches_the_official_normalize(shape):
    z = _logits(0, shape, scale=10.0) + 50.0
    got = _np(standardize_logits(z))
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_allclose(got, np_standardize(z), atol=1e-5)
    np.testing.assert_allclose(got.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(got.std(-1, ddof=1), 1.0, atol=1e-5)


def test_standardize_is_invariant_to_shift_and_positive_scale():
    z = _logits(1)
    np.testing.assert_allclose(
        _np(standardize_logits(7.0 * z - 3.0)), _np(standardize_logits(z)), atol=1e-5
    )


def test_equal_logits_give_zeros_with_finite_gradients():
    z = tf.Variable(np.full((3, 4), 2.5, "float32"))
    with tf.GradientTape() as tape:
        out = standardize_logits(z)
        value = tf.reduce_sum(out * tf.constant([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(out.numpy(), np.zeros((3, 4)))
    assert np.all(np.isfinite(tape.gradient(value, z).numpy()))


def test_one_class_is_refused():
    with pytest.raises(ValueError, match="2 classes"):
        standardize_logits(np.zeros((4, 1), "float32"))


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_kd_with_logit_standardization_matches_numpy(temperature):
    # Standardized logits lie in about [-2, 2], so at high T the values are small next to the
    # float32 rounding of soft_target_kl (~T^2 * 6e-8 * |log-sum-exp|, ~5e-5 at T = 20): a
    # student that disagrees with the teacher keeps them large, and the reference is matched to
    # 1e-4 relative (the precedent of test_soft_target).
    t = _logits(2, scale=5.0)
    s = -t + _logits(3, scale=2.0)
    loss = SoftTargetDistillation(temperature=temperature, logit_standardization=True)
    got = _np(loss((t,), (s,)))
    assert got.shape == (8,)
    np.testing.assert_allclose(got, np_kd_ls(t, s, temperature), atol=1e-5, rtol=1e-4)


def test_kd_with_logit_standardization_ignores_the_logit_scale():
    t, s = _logits(4), _logits(5)
    loss = SoftTargetDistillation(temperature=2.0, logit_standardization=True)
    base = _np(loss((t,), (s,)))
    np.testing.assert_allclose(_np(loss((5.0 * t + 1.0,), (0.5 * s,))), base, atol=1e-5)
    # identical up to scale and shift -> 0 (plain KD would not be)
    np.testing.assert_allclose(_np(loss((t,), (3.0 * t - 2.0,))), 0.0, atol=1e-5)
    plain = SoftTargetDistillation(temperature=2.0)
    assert np.all(_np(plain((t,), (3.0 * t - 2.0,))) > 1e-3)


def test_default_is_off_and_unchanged():
    loss = SoftTargetDistillation()
    assert loss.logit_standardization is False
    t, s = _logits(6), _logits(7)
    p = np.exp(np_log_softmax(t.astype(np.float64) / 4.0))
    expected = 16.0 * (
        p * (np_log_softmax(t.astype(np.float64) / 4.0) - np_log_softmax(s / 4.0))
    ).sum(-1)
    np.testing.assert_allclose(_np(loss((t,), (s,))), expected, atol=1e-5, rtol=1e-5)


def test_bad_flag_is_refused():
    with pytest.raises(TypeError, match="logit_standardization"):
        SoftTargetDistillation(logit_standardization="yes")
    with pytest.raises(TypeError, match="logit_standardization"):
        SoftTargetDistillation(logit_standardization=1)


def test_config_round_trip_keeps_the_flag():
    loss = SoftTargetDistillation(temperature=2.0, logit_standardization=True, name="kd_ls")
    config = loss.get_config()
    assert config["logit_standardization"] is True and config["temperature"] == 2.0
    restored = SoftTargetDistillation.from_config(config)
    assert restored.logit_standardization is True and restored.name == "kd_ls"
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    t, s = _logits(8), _logits(9)
    np.testing.assert_allclose(_np(again((t,), (s,))), np_kd_ls(t, s, 2.0), atol=1e-5, rtol=1e-5)
    # a config saved before the flag existed still loads (flag off)
    old = {k: v for k, v in config.items() if k != "logit_standardization"}
    assert SoftTargetDistillation.from_config(old).logit_standardization is False
