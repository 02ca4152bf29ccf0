"""Soft-target losses (`soft_target_kl`, `soft_target_cross_entropy`, `SoftTargetDistillation`)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd.losses import SoftTargetDistillation, soft_target_cross_entropy, soft_target_kl


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_soft_target_kl(t, s, temperature):
    """T^2 * sum_k p_k (log p_k - log q_k), p = softmax(t/T), q = softmax(s/T), in float64."""
    log_p = np_log_softmax(np.asarray(t, np.float64) / temperature)
    log_q = np_log_softmax(np.asarray(s, np.float64) / temperature)
    return temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def np_teacher_entropy(t, temperature):
    log_p = np_log_softmax(np.asarray(t, np.float64) / temperature)
    return -(np.exp(log_p) * log_p).sum(axis=-1)


def _logits(seed, shape=(6, 5), scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


def _rtol(temperature, scale=3.0):
    # float32 rounding of log p - log q (~1e-7 relative) is multiplied by T^2, and large logits
    # give large values: there the reference is matched to 1e-4 relative, elsewhere to 1e-5.
    return 1e-5 if temperature <= 4.0 and scale <= 3.0 else 1e-4


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
@pytest.mark.parametrize("scale", [3.0, 60.0])  # 60: logits of magnitude ~100, softmax saturates
def test_soft_target_kl_matches_numpy(temperature, scale):
    t, s = _logits(0, scale=scale), _logits(1, scale=scale)
    got = keras.ops.convert_to_numpy(soft_target_kl(t, s, temperature))
    assert got.shape == (6,)
    assert got.dtype == np.float32
    expected = np_soft_target_kl(t, s, temperature)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=_rtol(temperature, scale))
    assert np.all(np.isfinite(got))


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_soft_target_distillation_layer_matches_numpy(temperature):
    t, s = _logits(2), _logits(3)
    loss = SoftTargetDistillation(temperature=temperature)
    got = keras.ops.convert_to_numpy(loss((t,), (s,)))
    np.testing.assert_allclose(
        got, np_soft_target_kl(t, s, temperature), atol=1e-5, rtol=_rtol(temperature)
    )


def test_soft_target_kl_accepts_half_precision_and_returns_float32():
    t, s = _logits(4), _logits(5)
    got = soft_target_kl(t.astype("float16"), s.astype("float16"), 4.0)
    assert keras.ops.convert_to_numpy(got).dtype == np.float32
    expected = np_soft_target_kl(t.astype("float16"), s.astype("float16"), 4.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_identical_logits_give_zero(temperature):
    t = _logits(6, scale=30.0)
    got = keras.ops.convert_to_numpy(soft_target_kl(t, t, temperature))
    np.testing.assert_allclose(got, np.zeros(6), atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_invariant_to_adding_a_constant_to_logits(temperature):
    t, s = _logits(7), _logits(8)
    base = keras.ops.convert_to_numpy(soft_target_kl(t, s, temperature))
    shifted = keras.ops.convert_to_numpy(
        soft_target_kl(t + 17.0, s - np.float32([[3.0]] * 6), temperature)
    )
    np.testing.assert_allclose(shifted, base, atol=1e-5, rtol=1e-5)


def _grad_wrt_student(t, s, temperature):
    s = tf.Variable(s)
    with tf.GradientTape() as tape:
        value = tf.reduce_sum(soft_target_kl(t, s, temperature))
    return tape.gradient(value, s).numpy()


def test_t_squared_scaling_gradient_formula_and_magnitude():
    t, s = _logits(9, scale=1.0), _logits(10, scale=1.0)
    for temperature in (1.0, 4.0, 20.0):
        # d/ds [T^2 KL] = T * (softmax(s/T) - softmax(t/T)) exactly.
        grad = _grad_wrt_student(t, s, temperature)
        p = np.exp(np_log_softmax(t / temperature))
        q = np.exp(np_log_softmax(s / temperature))
        np.testing.assert_allclose(grad, temperature * (q - p), atol=1e-5)
    # For large T the gradient tends to (s - t - mean(s - t)) / C: independent of T.
    g20 = _grad_wrt_student(t, s, 20.0)
    g1000 = _grad_wrt_student(t, s, 1000.0)
    d = s - t
    limit = (d - d.mean(axis=-1, keepdims=True)) / t.shape[-1]
    np.testing.assert_allclose(g1000, limit, atol=1e-3)
    ratio = np.linalg.norm(g1000) / np.linalg.norm(g20)
    assert 0.9 < ratio < 1.1, ratio
    # Without the T^2 factor the magnitude would shrink by (1000/20)^2 = 2500x.


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_cross_entropy_is_kl_plus_teacher_entropy(temperature):
    t, s = _logits(11), _logits(12)
    ce = keras.ops.convert_to_numpy(soft_target_cross_entropy(t, s, temperature))
    expected = np_soft_target_kl(t, s, temperature) + temperature**2 * np_teacher_entropy(
        t, temperature
    )
    np.testing.assert_allclose(ce, expected, atol=1e-5, rtol=_rtol(temperature))
    kl = keras.ops.convert_to_numpy(soft_target_kl(t, s, temperature))
    np.testing.assert_allclose(
        ce - kl, temperature**2 * np_teacher_entropy(t, temperature), atol=1e-5,
        rtol=_rtol(temperature),
    )


def test_temperature_is_a_non_trainable_variable_read_at_call_time():
    t, s = _logits(13), _logits(14)
    loss = SoftTargetDistillation(temperature=4.0)
    assert loss.temperature_variable() is loss.temperature
    assert not loss.temperature.trainable

    fn = tf.function(lambda a, b: loss((a,), (b,)))
    first = fn(t, s).numpy()
    loss.temperature.assign(1.0)
    second = fn(t, s).numpy()  # same trace: value must come from the variable
    np.testing.assert_allclose(first, np_soft_target_kl(t, s, 4.0), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(second, np_soft_target_kl(t, s, 1.0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_non_positive_temperature_raises(bad):
    with pytest.raises(ValueError, match="temperature"):
        SoftTargetDistillation(temperature=bad)


def test_non_numeric_temperature_raises():
    with pytest.raises(TypeError, match="temperature"):
        SoftTargetDistillation(temperature="4")


def test_config_round_trip():
    loss = SoftTargetDistillation(temperature=2.5, name="kd")
    loss.temperature.assign(3.5)  # the current (scheduled) value is what is saved
    config = loss.get_config()
    assert config["temperature"] == 3.5
    restored = SoftTargetDistillation.from_config(config)
    assert isinstance(restored, SoftTargetDistillation)
    assert restored.name == "kd"
    assert float(keras.ops.convert_to_numpy(restored.temperature)) == 3.5

    serialized = keras.saving.serialize_keras_object(loss)
    again = keras.saving.deserialize_keras_object(serialized)
    assert isinstance(again, SoftTargetDistillation)
    t, s = _logits(15), _logits(16)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(again((t,), (s,))), np_soft_target_kl(t, s, 3.5), atol=1e-5
    )
