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
    # keras_kd.validation's wording, naming the schedule and the epoch.
    with pytest.raises(ValueError, match=r"schedule .*<lambda>\(0\) must be a finite real "
                                         r"number > 0, got 0\.0"):
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


def _temperature(distiller):
    return float(to_np(distiller.distillation_losses[0].temperature))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -2.0, np.float32("nan")])
def test_temperature_schedule_giving_nan_inf_or_non_positive_is_refused(bad):
    distiller, x, y, _, _ = setup(SoftTargetDistillation(4.0))
    before = [w.copy() for w in distiller.student.get_weights()]

    def cooling(epoch):
        return 3.0 if epoch == 0 else bad

    with pytest.raises(ValueError) as info:
        distiller.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
                      callbacks=[TemperatureScheduler(cooling)])
    message = str(info.value)
    assert message.startswith(
        "TemperatureScheduler: schedule test_temperature_schedule_giving_nan_inf_or_non_positive"
        "_is_refused.<locals>.cooling(1) must be a finite real number > 0, got "
    ), message
    assert _temperature(distiller) == 3.0  # epoch 0's value; the bad one was never assigned
    for got, want in zip(distiller.student.get_weights(), before):  # learning rate is 0
        np.testing.assert_array_equal(got, want)


def test_temperature_schedule_may_return_numpy_scalars_and_tensors():
    distiller, x, y, _, _ = setup(SoftTargetDistillation(4.0), student_loss_weight=0.0)
    values = [np.float32(2.5), keras.ops.convert_to_tensor(1.5)]
    history = distiller.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
                            callbacks=[TemperatureScheduler(lambda e: values[e])]).history
    assert history["temperature"] == [2.5, 1.5]


def test_schedule_with_a_defaulted_second_parameter_gets_only_the_epoch():
    """D9: `lambda epoch, base=8.0: ...` keeps its own default; the current value is not passed."""
    distiller, x, y, _, _ = setup(SoftTargetDistillation(4.0), student_loss_weight=0.0)
    seen = []

    def halving(epoch, base=8.0):
        seen.append(base)
        return base / 2**epoch

    history = distiller.fit(x, y, batch_size=BATCH, epochs=3, verbose=0,
                            callbacks=[TemperatureScheduler(halving)]).history
    assert seen == [8.0, 8.0, 8.0]
    assert history["temperature"] == [8.0, 4.0, 2.0]
    # The same with a lambda, and a required second parameter still receives the current value.
    distiller, x, y, _, _ = setup(SoftTargetDistillation(4.0), student_loss_weight=0.0)
    history = distiller.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[
        TemperatureScheduler(lambda epoch, base=8.0: base + epoch)]).history
    assert history["temperature"] == [8.0, 9.0]
    distiller, x, y, _, _ = setup(SoftTargetDistillation(4.0), student_loss_weight=0.0)
    history = distiller.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[
        TemperatureScheduler(lambda epoch, current: current + 1.0)]).history
    assert history["temperature"] == [5.0, 6.0, 7.0]


def test_temperature_schedule_signature_is_checked_at_construction():
    for bad in (lambda: 1.0, lambda epoch, current, extra: 1.0, lambda epoch, *, k: 1.0):
        with pytest.raises(TypeError, match=r"schedule must be callable as schedule\(epoch\) "
                                            r"or schedule\(epoch, current\)"):
            TemperatureScheduler(bad)
    TemperatureScheduler(lambda *args: 1.0)  # called as schedule(epoch)
    TemperatureScheduler(max)  # no introspectable signature: called as schedule(epoch)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_loss_weight_schedules_giving_nan_or_inf_are_refused_before_any_assignment(bad):
    distiller, x, y, _, _ = setup(
        [SoftTargetDistillation(2.0), LogitMatchingDistillation()], student_loss_weight=0.2
    )
    callback = LossWeightScheduler(student_loss_weight=lambda e: bad)
    with pytest.raises(ValueError, match=r"LossWeightScheduler: student_loss_weight schedule "
                                         r".*<lambda>\(0\) must be a real number in \[0, 1\]"):
        distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])

    def paths(epoch):
        return [1.0, bad]

    # A valid alpha is not assigned either when the path weights of the same epoch are refused.
    callback = LossWeightScheduler(student_loss_weight=lambda e: 0.9,
                                   distillation_loss_weights=paths)
    with pytest.raises(ValueError, match=r"distillation_loss_weights schedule .*paths\(0\)\[1\] "
                                         r"must be a non-negative finite real number"):
        distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    assert float(to_np(distiller.student_loss_weight)) == pytest.approx(0.2)
    np.testing.assert_array_equal(to_np(distiller.path_weighting.weights_variable), [1.0, 1.0])
