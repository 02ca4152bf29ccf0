"""MirroredStrategy on two logical CPUs gives the single-device result (sample weights on)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import keras_kd
from keras_kd.losses import LogitMatchingDistillation, SoftTargetDistillation

N_IN, N_CLASSES, GLOBAL_BATCH, STEPS = 4, 3, 8, 3


def mlp(hidden, name):
    inputs = keras.Input((N_IN,))
    h = keras.layers.Dense(hidden, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES)(h), name=name)


def _train(strategy, teacher_weights, student_weights, data):
    with strategy.scope():
        teacher, student = mlp(16, "teacher"), mlp(6, "student")
        teacher.set_weights(teacher_weights)
        student.set_weights(student_weights)
        distiller = keras_kd.Distiller(
            teacher, student, [SoftTargetDistillation(2.0), LogitMatchingDistillation()],
            distillation_loss_weights=[0.7, 0.3], student_loss_weight=0.3,
        )
        distiller.compile(keras.optimizers.SGD(0.2),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(GLOBAL_BATCH)
    history = distiller.fit(dataset, epochs=1, verbose=0).history
    assert distiller.distribute_strategy is strategy
    return [np.array(w) for w in student.get_weights()], history


def test_mirrored_two_cpus_equals_one_device():
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, (
        "tests/conftest.py must split the CPU into 2 logical devices before TensorFlow "
        f"initialises; found {[d.name for d in cpus]}."
    )
    rng = np.random.default_rng(0)
    n = GLOBAL_BATCH * STEPS
    x = rng.normal(size=(n, N_IN)).astype("float32") * 2.0
    y = rng.integers(0, N_CLASSES, size=(n,)).astype("int32")
    w = rng.uniform(0.0, 3.0, size=(n,)).astype("float32")
    teacher_weights = mlp(16, "teacher").get_weights()
    student_weights = mlp(6, "student").get_weights()

    single, single_logs = _train(tf.distribute.get_strategy(), teacher_weights,
                                 student_weights, (x, y, w))
    mirrored_strategy = tf.distribute.MirroredStrategy([d.name for d in cpus[:2]])
    assert mirrored_strategy.num_replicas_in_sync == 2
    mirrored, mirrored_logs = _train(mirrored_strategy, teacher_weights, student_weights,
                                     (x, y, w))

    moved = max(np.abs(a - b).max() for a, b in zip(single, student_weights))
    assert moved > 1e-2  # the steps did something
    for a, b in zip(mirrored, single):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for key in ("loss", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(mirrored_logs[key], single_logs[key], atol=1e-5,
                                   err_msg=key)
