"""OverhaulDistillation (Heo et al. 2019): margin, margin-ReLU, partial L2 region, adapter."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd.losses import OverhaulDistillation
from keras_kd.losses.functional import overhaul_partial_l2
from keras_kd.losses.overhaul import batch_norm_margin, find_batch_norm


def _np_conditional_mean(mu, sigma):
    """E[x | x < 0] for x ~ N(mu, sigma^2), by numerical integration (independent of erf)."""
    x = np.linspace(min(mu, 0.0) - 12 * sigma, 0.0, 400_001)
    density = np.exp(-0.5 * ((x - mu) / sigma) ** 2)
    return np.trapezoid(x * density, x) / np.trapezoid(density, x)


def _np_partial_l2(t, s, m):
    target = np.maximum(t.astype(np.float64), m)
    s = s.astype(np.float64)
    d = np.where((s <= target) & (target <= 0), 0.0, (s - target) ** 2)
    return d.reshape(len(d), -1).sum(axis=-1)


def test_margin_is_the_conditional_mean_of_the_bn_gaussian():
    gamma = np.array([1.0, 0.5, -2.0, 0.3])
    beta = np.array([0.0, -0.7, 1.0, 0.2])
    got = batch_norm_margin(gamma, beta)
    ref = [_np_conditional_mean(b, abs(g)) for g, b in zip(gamma, beta)]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.all(got < 0)
    # Phi(-beta/gamma) <= 0.001: the paper's fallback -3 * |gamma|
    np.testing.assert_allclose(batch_norm_margin([0.5], [2.0]), [-1.5], atol=1e-7)


def test_partial_l2_matches_numpy():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(3, 4, 4, 5)).astype("float32")
    s = rng.normal(size=(3, 4, 4, 5)).astype("float32")
    m = -np.abs(rng.normal(size=5)).astype("float32")
    got = keras.ops.convert_to_numpy(overhaul_partial_l2(t, s, m))
    np.testing.assert_allclose(got, _np_partial_l2(t, s, m), atol=1e-5)


def test_zero_exactly_where_student_below_nonpositive_target():
    m = np.array([-1.0], "float32")
    # (teacher pre-ReLU, student) pairs, one per example, single element each
    cases = [
        (-0.5, -0.7, True),   # s <= target = -0.5 <= 0          -> no loss
        (-0.5, -0.5, True),   # s == target                       -> no loss
        (-3.0, -2.0, True),   # target = max(-3, m) = -1, s < -1  -> no loss
        (0.0, -4.0, True),    # target = 0 <= 0, s below          -> no loss
        (-0.5, -0.2, False),  # s above a negative target         -> loss
        (-3.0, -0.5, False),  # s above the margin                -> loss (0.25)
        (0.8, 0.1, False),    # positive target, s below          -> loss
        (0.8, 1.5, False),    # positive target, s above          -> loss
    ]
    t = np.array([c[0] for c in cases], "float32").reshape(-1, 1)
    s_value = np.array([c[1] for c in cases], "float32").reshape(-1, 1)
    s = keras.Variable(s_value)
    with tf.GradientTape() as tape:
        values = overhaul_partial_l2(t, s, m)
        total = tf.reduce_sum(values)
    grad = tape.gradient(total, s.value).numpy().ravel()
    values = keras.ops.convert_to_numpy(values)
    for (t_i, s_i, zero), value, g in zip(cases, values, grad):
        target = max(t_i, -1.0)
        if zero:
            assert value == 0.0 and g == 0.0, (t_i, s_i)
        else:
            assert value == pytest.approx((s_i - target) ** 2, abs=1e-6), (t_i, s_i)
            assert value > 0 and g != 0.0


def _teacher():
    x = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(3, 3, padding="same", name="conv")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.Dense(2)(h))


def test_margin_read_from_the_teacher_bn_and_adapter_built():
    teacher = _teacher()
    bn = teacher.get_layer("bn")
    bn.gamma.assign([1.0, 2.0, 0.5])
    bn.beta.assign([0.3, -1.0, 0.0])
    assert find_batch_norm(teacher, "relu") is bn
    loss = OverhaulDistillation("relu", "s_relu", teacher=teacher)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss.margin),
                               batch_norm_margin([1.0, 2.0, 0.5], [0.3, -1.0, 0.0]), atol=1e-7)
    loss.build([(None, 6, 6, 3)], [(None, 6, 6, 3)])
    assert loss.adapter is not None  # built even for equal shapes
    rng = np.random.default_rng(1)
    t = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    s = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    mapped = keras.ops.convert_to_numpy(loss.adapter(s))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss((t,), (s,))),
                               _np_partial_l2(t, mapped, keras.ops.convert_to_numpy(loss.margin)),
                               rtol=1e-5, atol=1e-4)
    assert loss.teacher_taps()[0].pre_activation
    assert loss.student_taps()[0].pre_activation


def test_errors_and_config():
    teacher = _teacher()
    with pytest.raises(ValueError, match="teacher="):
        OverhaulDistillation("relu", "s")
    with pytest.raises(ValueError, match="teacher_batch_norm"):
        find_batch_norm(teacher, "bn")  # fed by a Conv2D
    loss = OverhaulDistillation("relu", "s", margin=[-1.0, -0.5])
    with pytest.raises(ValueError, match="margin has 2 channels"):
        loss.build([(None, 4, 4, 3)], [(None, 4, 4, 3)])
    clone = OverhaulDistillation.from_config(loss.get_config())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone.margin), [-1.0, -0.5])
    assert clone.teacher_layer == "relu" and clone.student_pre_activation
