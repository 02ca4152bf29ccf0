"""`keras_kd.recipes.born_again`: generation k learns from generation k-1 (or their ensemble)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.recipes import born_again
from keras_kd.teachers import Ensemble

NUM_FEATURES, NUM_CLASSES = 8, 3


def make_student():
    inputs = keras.Input((NUM_FEATURES,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(h))


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, NUM_FEATURES)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5).astype("int64")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(16)


class RecordTeacher(keras.callbacks.Callback):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def on_train_begin(self, logs=None):
        self.log.append((self.model.teacher, [w.copy() for w in self.model.teacher.get_weights()]))


def _gen0():
    model = make_student()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(_data(), epochs=1, verbose=0)
    return model


def test_generation_k_learns_from_generation_k_minus_1():
    gen0 = _gen0()
    log = []
    result = born_again(
        make_student,
        gen0,
        generations=3,
        dataset=_data(),
        epochs=[1, 1, 2],
        callbacks=[[RecordTeacher(log)] for _ in range(3)],
        verbose=0,
    )
    assert len(result.models) == 4 and result.models[0] is gen0
    assert len({id(m) for m in result.models}) == 4
    for k in (1, 2, 3):
        teacher, weights = log[k - 1]
        assert teacher is result.models[k - 1]
        for a, b in zip(weights, result.models[k - 1].get_weights()):
            np.testing.assert_array_equal(a, b)
    assert [len(h["loss"]) for h in result.histories] == [1, 1, 2]
    # Every generation was trained: no two generations share their weights.
    kernels = [m.get_weights()[0] for m in result.models]
    assert all(not np.allclose(kernels[i], kernels[j]) for i in range(4) for j in range(i))


def test_ensemble_of_previous_generations_shares_the_loss_temperature():
    gen0 = _gen0()
    log = []
    result = born_again(
        make_student,
        gen0,
        generations=2,
        dataset=_data(),
        ensemble_previous=True,
        distiller_kwargs={"distillation_losses": keras_kd.SoftTargetDistillation(3.0)},
        callbacks=[[RecordTeacher(log)] for _ in range(2)],
        verbose=0,
    )
    assert log[0][0] is gen0  # one previous generation: no ensemble needed
    ensemble = log[1][0]
    assert isinstance(ensemble, Ensemble)
    assert ensemble.teachers[0] is result.models[0] and ensemble.teachers[1] is result.models[1]
    assert ensemble.temperature == pytest.approx(3.0)
    x = next(iter(_data()))[0].numpy()
    z = np.stack([keras.ops.convert_to_numpy(m(x)) for m in result.models[:2]]) / 3.0
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = keras.ops.convert_to_numpy(ensemble(x)) / 3.0
    q = np.exp(out - out.max(-1, keepdims=True))
    np.testing.assert_allclose(q / q.sum(-1, keepdims=True), p.mean(0), atol=1e-6)


def test_born_again_resumes(tmp_path):
    gen0 = _gen0()
    first = born_again(make_student, gen0, 2, _data(), work_dir=tmp_path, verbose=0)
    log = []
    second = born_again(
        make_student,
        gen0,
        2,
        _data(),
        work_dir=tmp_path,
        callbacks=[[RecordTeacher(log)], [RecordTeacher(log)]],
        verbose=0,
    )
    assert second.resumed_steps == 2 and log == []
    for a, b in zip(first.models[1:], second.models[1:]):
        for x, y in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(x, y)


def test_arguments_are_checked():
    gen0 = make_student()
    with pytest.raises(ValueError, match="generations must be a positive integer"):
        born_again(make_student, gen0, 0, _data())
    with pytest.raises(TypeError, match="generations must be a positive integer"):
        born_again(make_student, gen0, 2.0, _data())
    with pytest.raises(ValueError, match="must build a new model on every call"):
        born_again(lambda: gen0, gen0, 1, _data())


def test_every_generation_s_settings_are_checked_before_the_first_trains(tmp_path):
    gen0 = make_student()
    log = []
    callbacks = [[RecordTeacher(log)], [RecordTeacher(log)]]
    with pytest.raises(ValueError, match=r"distiller_kwargs\[1\]\['student_loss_weight'\]"):
        born_again(make_student, gen0, 2, _data(), callbacks=callbacks,
                   distiller_kwargs=[{}, {"student_loss_weight": -0.1}],
                   work_dir=tmp_path / "work")
    with pytest.raises(ValueError, match="fit_kwargs has an unknown key 'epoch'"):
        born_again(make_student, gen0, 2, _data(), callbacks=callbacks, epoch=3)
    with pytest.raises(TypeError, match="ensemble_previous must be True or False"):
        born_again(make_student, gen0, 2, _data(), ensemble_previous="yes")
    with pytest.raises(TypeError, match="dataset must be"):
        born_again(make_student, gen0, 2, None)
    assert log == [] and not (tmp_path / "work").exists()
