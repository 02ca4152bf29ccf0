"""`TemperatureScheduler` and `LossWeightScheduler` change the loss of the next epoch."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.callbacks import LossWeightScheduler, TemperatureScheduler
from keras_kd.losses import LogitMatchingDistillation, SoftTargetDistillation


def to_np(value, dtype=None):
    array = keras.ops.convert_to_numpy(value)
    return array if dtype is None else array.astype(dtype)


N_IN, N_CLASSES, BATCH = 4, 3, 8


def mlp(hidden, name):
    inputs = keras.Input((N_IN,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES)(h), name=name)


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def setup(losses, **kwargs):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, N_IN)).astype("float32") * 2.0
    y = rng.integers(0, N_CLASSES, size=(BATCH,)).astype("int32")
    teacher, student = mlp(16, "teacher"), mlp(6, "student")
    distiller = keras_kd.Distiller(teacher, student, losses, **kwargs)
    # Learning rate 0: the models are fixed, so every epoch's loss has a closed-form reference.
    distiller.compile(keras.optimizers.SGD(0.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t = np.asarray(teacher(x), np.float64)
    s = np.asarray(student(x), np.float64)
    return distiller, x, y, t, s


def np_kl(t, s, temperature):
    log_p, log_q = np_log_softmax(t / temperature), np_log_softmax(s / temperature)
    return float(temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(-1).mean())


@pytest.mark.parametrize("two_args", [False, True])
def test_temperature_scheduler_changes_the_next_epochs_loss(two_args):
    temperatures = [4.0, 1.0, 10.0]
    distiller, x, y, t, s = setup(SoftTargetDistillation(4.0), student_loss_weight=0.0)
    seen = []
    if two_args:
        def schedule(epoch, current):
            seen.append(current)
            return temperatures[epoch]
    else:
        def schedule(epoch):
            return temperatures[epoch]
    history = distiller.fit(x, y, batch_size=BATCH, epochs=3, verbose=0,
                            callbacks=[TemperatureScheduler(schedule)]).history
    assert history["temperature"] == temperatures
    expected = [np_kl(t, s, temp) for temp in temperatures]
    assert len({round(v, 4) for v in expected}) == 3  # the three epochs really differ
    np.testing.assert_allclose(history["distillation_loss"], expected, atol=1e-5)
    np.testing.assert_allclose(history["loss"], expected, atol=1e-5)
    if two_args:
        assert seen == [4.0, 4.0, 1.0]


def test_temperature_scheduler_sets_every_loss_with_a_temperature():
    distiller, x, y, t, s = setup([SoftTargetDistillation(4.0), SoftTargetDistillation(2.0),
                                   LogitMatchingDistillation()], student_loss_weight=0.0)
    distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
                  callbacks=[TemperatureScheduler(lambda epoch: 7.0)])
    temps = [float(to_np(loss.temperature)) for loss in distiller.distillation_losses[:2]]
    assert temps == [7.0, 7.0]


def test_temperature_scheduler_errors():
    distiller, x, y, _, _ = setup(LogitMatchingDistillation(), student_loss_weight=0.0)
    with pytest.raises(ValueError, match="temperature"):
        distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
                      callbacks=[TemperatureScheduler(lambda epoch: 2.0)])
    distiller, x, y, _, _ = setup(SoftTargetDistillation(4.0))
    with pytest.raises(ValueError, match="need > 0"):
        distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
                      callbacks=[TemperatureScheduler(lambda epoch: 0.0)])
    with pytest.raises(TypeError, match="schedule"):
        TemperatureScheduler(3.0)

    def broken(epoch, current):  # its own TypeError must surface, not be retried as f(epoch)
        raise TypeError("boom inside the schedule")

    with pytest.raises(TypeError, match="boom inside the schedule"):
        distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
                      callbacks=[TemperatureScheduler(broken)])


def test_loss_weight_scheduler_changes_alpha_and_path_weights():
    alphas = [0.0, 1.0, 0.5]
    path_weights = [[1.0, 0.0], [0.0, 1.0], [2.0, 0.5]]
    distiller, x, y, t, s = setup(
        [SoftTargetDistillation(2.0), LogitMatchingDistillation()], student_loss_weight=0.2
    )
    callback = LossWeightScheduler(student_loss_weight=lambda e: alphas[e],
                                   distillation_loss_weights=lambda e: path_weights[e])
    history = distiller.fit(x, y, batch_size=BATCH, epochs=3, verbose=0,
                            callbacks=[callback]).history

    hard = float(-np_log_softmax(s)[np.arange(BATCH), y].mean())
    kl = np_kl(t, s, 2.0)
    mse = float((0.5 * ((s - t) ** 2).sum(-1)).mean())
    soft = [w0 * kl + w1 * mse for w0, w1 in path_weights]
    expected = [a * hard + (1 - a) * d for a, d in zip(alphas, soft)]
    np.testing.assert_allclose(history["distillation_loss"], soft, atol=1e-5)
    np.testing.assert_allclose(history["loss"], expected, atol=1e-5)
    np.testing.assert_allclose(history["student_loss"], [hard] * 3, atol=1e-5)
    assert history["student_loss_weight"] == alphas
    assert history["distillation_loss_weight_1"] == [w[1] for w in path_weights]


def test_loss_weight_scheduler_errors():
    distiller, x, y, _, _ = setup(SoftTargetDistillation(4.0))
    for callback, pattern in (
        (LossWeightScheduler(student_loss_weight=lambda e: 1.5), r"\[0, 1\]"),
        (LossWeightScheduler(distillation_loss_weights=lambda e: [1.0, 1.0]), "1 non-negative"),
        (LossWeightScheduler(distillation_loss_weights=lambda e: [-1.0]), "non-negative"),
    ):
        with pytest.raises(ValueError, match=pattern):
            distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    with pytest.raises(ValueError, match="at least one schedule"):
        LossWeightScheduler()
    with pytest.raises(TypeError, match="student_loss_weight"):
        LossWeightScheduler(student_loss_weight=0.5)
