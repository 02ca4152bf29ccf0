"""Sigmoid-output soft targets (`bernoulli_soft_target_kl`, `BinarySoftTargetDistillation`)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd.losses import (
    REGISTRY,
    BinarySoftTargetDistillation,
    bernoulli_soft_target_kl,
    get,
    soft_target_kl,
)


def np_bernoulli_kl(t, s, temperature):
    """T^2 * sum_c [p log(p/q) + (1-p) log((1-p)/(1-q))], p = sigmoid(t/T), q = sigmoid(s/T).

    float64, with log sigmoid(x) = -log(1 + exp(-x)) (np.logaddexp) so that saturated units
    stay exact.
    """
    a = np.asarray(t, np.float64) / temperature
    b = np.asarray(s, np.float64) / temperature
    log_p, log_1p = -np.logaddexp(0.0, -a), -np.logaddexp(0.0, a)
    log_q, log_1q = -np.logaddexp(0.0, -b), -np.logaddexp(0.0, b)
    kl = np.exp(log_p) * (log_p - log_q) + np.exp(log_1p) * (log_1p - log_1q)
    return temperature**2 * kl.sum(axis=-1)


def _logits(seed, shape=(6, 3), scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
@pytest.mark.parametrize("units", [1, 3])
def test_matches_numpy(temperature, units):
    t, s = _logits(0, (6, units)), _logits(1, (6, units))
    got = _np(bernoulli_soft_target_kl(t, s, temperature))
    assert got.shape == (6,) and got.dtype == np.float32
    np.testing.assert_allclose(got, np_bernoulli_kl(t, s, temperature), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_saturated_units_are_finite_and_match_numpy(temperature):
    t, s = _logits(2, scale=60.0), _logits(3, scale=60.0)  # |logits| ~ 100: sigmoid saturates
    got = _np(bernoulli_soft_target_kl(t, s, temperature))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, np_bernoulli_kl(t, s, temperature), atol=1e-5, rtol=1e-5)


def test_one_unit_gives_a_non_zero_loss_where_softmax_kd_gives_zero():
    t, s = np.float32([[3.0], [-2.0]]), np.float32([[-1.0], [0.5]])
    assert np.all(_np(soft_target_kl(t, s, 4.0)) == 0.0)  # softmax of one unit is always 1
    got = _np(BinarySoftTargetDistillation(temperature=4.0)((t,), (s,)))
    assert np.all(got > 0.01)
    np.testing.assert_allclose(got, np_bernoulli_kl(t, s, 4.0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_identical_logits_give_zero(temperature):
    t = _logits(4, scale=30.0)
    np.testing.assert_array_equal(_np(bernoulli_soft_target_kl(t, t, temperature)), np.zeros(6))


def test_gradient_is_t_times_sigmoid_difference():
    # d/ds [T^2 KL] = T * (sigmoid(s/T) - sigmoid(t/T)) per unit.
    t, s = _logits(5, scale=1.0), _logits(6, scale=1.0)
    for temperature in (1.0, 4.0, 20.0):
        var = tf.Variable(s)
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(bernoulli_soft_target_kl(t, var, temperature))
        grad = tape.gradient(value, var).numpy()
        p = 1.0 / (1.0 + np.exp(-np.float64(t) / temperature))
        q = 1.0 / (1.0 + np.exp(-np.float64(s) / temperature))
        np.testing.assert_allclose(grad, temperature * (q - p), atol=1e-5)


def test_rank_one_input_is_refused():
    with pytest.raises(ValueError, match=r"\(batch, 1\)|units"):
        bernoulli_soft_target_kl(np.zeros(4, "float32"), np.zeros(4, "float32"), 2.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_temperature_raises_value_error(bad):
    with pytest.raises(ValueError, match="temperature"):
        BinarySoftTargetDistillation(temperature=bad)


def test_infinite_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature"):
        BinarySoftTargetDistillation(temperature=float("inf"))


def test_non_numeric_temperature_raises_type_error():
    with pytest.raises(TypeError, match="temperature"):
        BinarySoftTargetDistillation(temperature="4")


def test_temperature_is_a_non_trainable_variable_read_at_call_time():
    t, s = _logits(7), _logits(8)
    loss = BinarySoftTargetDistillation(temperature=4.0)
    assert loss.temperature_variable() is loss.temperature
    assert not loss.temperature.trainable
    fn = tf.function(lambda a, b: loss((a,), (b,)))
    first = fn(t, s).numpy()
    loss.temperature.assign(1.0)
    second = fn(t, s).numpy()
    np.testing.assert_allclose(first, np_bernoulli_kl(t, s, 4.0), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(second, np_bernoulli_kl(t, s, 1.0), atol=1e-5, rtol=1e-5)


def test_registry_name_and_declared_capabilities():
    assert REGISTRY["binary_soft_target"] is BinarySoftTargetDistillation
    loss = get("binary_soft_target")
    assert isinstance(loss, BinarySoftTargetDistillation)
    assert loss.output_family() == "bernoulli"
    assert not loss.needs_labels()


def test_config_round_trip():
    loss = BinarySoftTargetDistillation(temperature=2.5, name="bkd")
    loss.temperature.assign(3.5)
    config = loss.get_config()
    assert config["temperature"] == 3.5
    restored = BinarySoftTargetDistillation.from_config(config)
    assert restored.name == "bkd"
    assert float(_np(restored.temperature)) == 3.5
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, BinarySoftTargetDistillation)
    t, s = _logits(9), _logits(10)
    np.testing.assert_allclose(_np(again((t,), (s,))), np_bernoulli_kl(t, s, 3.5), atol=1e-5)
