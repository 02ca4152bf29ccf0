"""Every output kind through the Distiller: softmax, binary / multi-label, sequence, regression.

Each test checks one step's logged losses against NumPy with non-uniform sample weights, and the
refusals that replace today's silent failures (a 1-unit model distilled as softmax classes gets a
loss of exactly 0; a multi-label model distilled as softmax classes; a (B, T) mask crashing).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import losses as kd_losses

RNG = np.random.default_rng(0)


def to_np(value):
    return np.asarray(keras.ops.convert_to_numpy(value), np.float64)


def dense_net(units, name, activation=None, hidden=5, n_in=4, seq=None):
    shape = (seq, n_in) if seq else (n_in,)
    inputs = keras.Input(shape, name=f"{name}_in")
    h = keras.layers.Dense(hidden, activation="tanh", name=f"{name}_hidden")(inputs)
    out = keras.layers.Dense(units, activation=activation, name=f"{name}_out")(h)
    return keras.Model(inputs, out, name=name)


def np_logits(model, x):
    """Pre-activation output of a dense_net, in float64, independent of Keras."""
    k1, b1, k2, b2 = (np.asarray(w, np.float64) for w in model.get_weights())
    return np.tanh(np.asarray(x, np.float64) @ k1 + b1) @ k2 + b2


def np_log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def np_bernoulli_kl(t, s, temperature):
    lp, lq = np_log_sigmoid(t / temperature), np_log_sigmoid(s / temperature)
    lp0, lq0 = np_log_sigmoid(-t / temperature), np_log_sigmoid(-s / temperature)
    kl = np.exp(lp) * (lp - lq) + np.exp(lp0) * (lp0 - lq0)
    return temperature**2 * kl.sum(-1)


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(t, s, temperature):
    lp, lq = np_log_softmax(t / temperature), np_log_softmax(s / temperature)
    return temperature**2 * (np.exp(lp) * (lp - lq)).sum(-1)


def np_bce_logits(y, s):
    return (np.logaddexp(0.0, s) - y * s).mean(-1)


@pytest.mark.parametrize("units", [1, 4])
@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_binary_and_multilabel_step_matches_numpy(units, temperature):
    teacher = dense_net(units, "teacher", activation="sigmoid", hidden=8)
    student = dense_net(units, "student", activation="sigmoid")
    x = RNG.normal(size=(6, 4)).astype("float32") * 2
    y = (RNG.random((6, units)) > 0.5).astype("float32")
    w = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5], "float32")
    distiller = keras_kd.Distiller(
        teacher, student, kd_losses.BinarySoftTargetDistillation(temperature),
        student_loss_weight=0.3)
    distiller.compile(keras.optimizers.SGD(0.1), loss=keras.losses.BinaryCrossentropy())
    t, s = np_logits(teacher, x), np_logits(student, x)
    logs = distiller.train_on_batch(x, y, sample_weight=w, return_dict=True)
    soft = np_bernoulli_kl(t, s, temperature)
    hard = np_bce_logits(y, s)
    assert soft.min() > 0  # a 1-unit model is no longer distilled with a loss of 0
    np.testing.assert_allclose(logs["distillation_loss"], (w * soft).mean(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(logs["student_loss"], (w * hard).mean(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logs["loss"], (w * (0.3 * hard + 0.7 * soft)).mean(),
                               rtol=1e-4, atol=1e-5)


def test_default_loss_follows_a_sigmoid_student():
    distiller = keras_kd.Distiller(dense_net(4, "t", "sigmoid"), dense_net(4, "s", "sigmoid"))
    assert isinstance(distiller.distillation_losses[0], kd_losses.BinarySoftTargetDistillation)


def test_softmax_loss_on_one_unit_is_refused():
    with pytest.raises(ValueError, match="(?s)one output unit.*identically 0"):
        keras_kd.Distiller(dense_net(1, "t"), dense_net(1, "s"), "soft_target")
    with pytest.raises(ValueError, match="(?s)ambiguous.*BinarySoftTargetDistillation.*"
                                         "OutputMatchingDistillation"):
        keras_kd.Distiller(dense_net(1, "t"), dense_net(1, "s"))


def test_softmax_loss_on_multilabel_sigmoid_is_refused():
    with pytest.raises(ValueError, match="(?s)sigmoid.*BinarySoftTargetDistillation"):
        keras_kd.Distiller(dense_net(4, "t", "sigmoid"), dense_net(4, "s", "sigmoid"),
                           "soft_target")


def test_label_loss_of_another_kind_is_refused_at_compile():
    distiller = keras_kd.Distiller(dense_net(4, "t"), dense_net(4, "s"), "soft_target")
    with pytest.raises(ValueError, match="(?s)bernoulli.*BinarySoftTargetDistillation"):
        distiller.compile("sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    with pytest.raises(ValueError, match="(?s)regression.*OutputMatchingDistillation"):
        distiller.compile("sgd", loss="mse")


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_sequence_outputs_with_a_padding_mask_match_numpy(temperature):
    steps, classes = 5, 3
    teacher = dense_net(classes, "teacher", hidden=8, seq=steps)
    student = dense_net(classes, "student", seq=steps)
    x = RNG.normal(size=(4, steps, 4)).astype("float32")
    y = RNG.integers(0, classes, size=(4, steps)).astype("int32")
    mask = np.ones((4, steps), "float32")
    mask[0, 3:] = 0.0
    mask[2, 1:] = 0.0
    mask[3] *= 2.0  # non-uniform weights, not only a 0/1 mask
    distiller = keras_kd.Distiller(teacher, student, kd_losses.SoftTargetDistillation(temperature),
                                   student_loss_weight=0.25)
    distiller.compile(keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t, s = np_logits(teacher, x), np_logits(student, x)
    logs = distiller.train_on_batch(x, y, sample_weight=mask, return_dict=True)
    soft = np_kl(t, s, temperature)  # (B, T)
    hard = -np.take_along_axis(np_log_softmax(s), y[..., None], -1)[..., 0]
    # Keras's temporal convention: sum(w * l) / (B * T).
    np.testing.assert_allclose(logs["distillation_loss"], (mask * soft).mean(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(logs["student_loss"], (mask * hard).mean(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logs["loss"], (mask * (0.25 * hard + 0.75 * soft)).mean(),
                               rtol=1e-5, atol=1e-5)


def test_regression_uses_output_matching_chosen_explicitly():
    teacher, student = dense_net(2, "teacher", hidden=8), dense_net(2, "student")
    x = RNG.normal(size=(6, 4)).astype("float32")
    y = RNG.normal(size=(6, 2)).astype("float32")
    w = np.array([1.0, 0.0, 2.0, 0.5, 1.0, 3.0], "float32")
    distiller = keras_kd.Distiller(teacher, student, kd_losses.OutputMatchingDistillation(),
                                   student_loss_weight=0.5)
    distiller.compile(keras.optimizers.SGD(0.01), loss="mse")
    t, s = np_logits(teacher, x), np_logits(student, x)
    logs = distiller.train_on_batch(x, y, sample_weight=w, return_dict=True)
    np.testing.assert_allclose(logs["distillation_loss"], (w * ((s - t) ** 2).mean(-1)).mean(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["student_loss"], (w * ((s - y) ** 2).mean(-1)).mean(),
                               rtol=1e-5, atol=1e-6)
