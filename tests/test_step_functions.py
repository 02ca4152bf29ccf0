"""The step functions `TrainingModel` gives `fit` / `evaluate` (one traced call per batch).

They read the batch inside the traced function instead of going through Keras's per-step
`tf.experimental.Optional`; these tests pin that they train exactly as Keras's own functions
(the fallback, taken e.g. with `steps_per_execution > 1`): same weights, same logs, the same
number of steps, also on data of unknown length, under `MirroredStrategy`, and through
`train_on_batch`.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd

N_IN, N_CLASSES, N, BATCH = 5, 3, 70, 16  # 70 = 4 full batches + one of 6


def mlp(hidden, name):
    inputs = keras.Input((N_IN,), name=f"{name}_in")
    h = keras.layers.Dense(hidden, activation="relu", name=f"{name}_hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(N_CLASSES, name=f"{name}_out")(h), name=name)


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, N_IN)).astype("float32")
    y = rng.integers(0, N_CLASSES, size=(N,)).astype("int32")
    w = rng.uniform(0.2, 2.0, size=(N,)).astype("float32")
    return x, y, w


def distiller(steps_per_execution=1, strategy=None):
    keras.utils.set_random_seed(3)
    scope = strategy.scope() if strategy is not None else _null()
    with scope:
        teacher, student = mlp(12, "teacher"), mlp(6, "student")
        model = keras_kd.Distiller(teacher, student,
                                   keras_kd.losses.SoftTargetDistillation(2.0),
                                   student_loss_weight=0.3)
        model.compile(keras.optimizers.SGD(0.2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], steps_per_execution=steps_per_execution)
    return model


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def unknown_length(x, y, w):
    """A dataset whose length Keras cannot know in advance (the end is found by running)."""
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).filter(lambda *_: True)
    assert ds.cardinality() == tf.data.UNKNOWN_CARDINALITY
    return ds.batch(BATCH)


@pytest.mark.parametrize("length", ["known", "unknown"])
def test_fit_and_evaluate_equal_keras_functions(length):
    x, y, w = data()
    make = (lambda: unknown_length(x, y, w)) if length == "unknown" else (
        lambda: tf.data.Dataset.from_tensor_slices((x, y, w)).batch(BATCH))
    direct, keras_path = distiller(1), distiller(2)  # 2 steps per call: Keras's function
    h_direct = direct.fit(make(), epochs=3, verbose=0).history
    h_keras = keras_path.fit(make(), epochs=3, verbose=0).history
    assert int(direct.optimizer.iterations) == int(keras_path.optimizer.iterations) == 3 * 5
    for a, b in zip(direct.student.get_weights(), keras_path.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert list(h_direct) == list(h_keras)
    for key in h_direct:
        np.testing.assert_allclose(h_direct[key], h_keras[key], rtol=1e-5, atol=1e-6)
    e_direct = direct.evaluate(make(), verbose=0, return_dict=True)
    e_keras = keras_path.evaluate(make(), verbose=0, return_dict=True)
    assert list(e_direct) == list(e_keras)
    for key in e_direct:
        np.testing.assert_allclose(e_direct[key], e_keras[key], rtol=1e-5, atol=1e-6)


def test_per_batch_logs_reach_callbacks():
    x, y, w = data()
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((batch, dict(logs)))

    model = distiller(1)
    model.fit(unknown_length(x, y, w), epochs=2, verbose=0, callbacks=[Record()])
    assert [b for b, _ in seen] == list(range(5)) * 2
    for _, logs in seen:
        assert set(logs) == {"loss", "total_loss", "student_loss", "distillation_loss",
                             "accuracy"}
        assert all(isinstance(v, float) and np.isfinite(v) for v in logs.values())


def test_train_on_batch_keeps_working():
    x, y, w = data()
    direct, keras_path = distiller(1), distiller(2)
    for model in (direct, keras_path):
        logs = model.train_on_batch(x[:BATCH], y[:BATCH], sample_weight=w[:BATCH],
                                    return_dict=True)
        assert np.isfinite(logs["loss"])
    for a, b in zip(direct.student.get_weights(), keras_path.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_mirrored_strategy_equals_keras_functions():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < 2:
        pytest.fail("conftest.py should have split the CPU into two logical devices.")
    x, y, w = data()
    # Reduction to one device, not collective ops: collective instance keys are process-wide,
    # so the collective MirroredStrategy of another test in the same pytest process would clash
    # with this one's ("Shape mismatch in the collective instance 100").
    strategy = tf.distribute.MirroredStrategy(
        devices[:2], cross_device_ops=tf.distribute.ReductionToOneDevice())
    ds = tf.data.Dataset.from_tensor_slices((x[:64], y[:64], w[:64])).batch(BATCH)
    direct = distiller(1, strategy)
    keras_path = distiller(1, strategy)
    # Keras's own function (its steps_per_execution > 1 loop fails under MirroredStrategy on
    # these CPUs): the instance is told to keep it.
    keras_path._direct_function = lambda keras_function, step: keras_function
    h_direct = direct.fit(ds, epochs=2, verbose=0).history
    h_keras = keras_path.fit(ds, epochs=2, verbose=0).history
    assert "_direct_function" in direct.train_function.__qualname__
    assert "_make_function" in keras_path.train_function.__qualname__
    for a, b in zip(direct.student.get_weights(), keras_path.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    for key in h_direct:
        np.testing.assert_allclose(h_direct[key], h_keras[key], rtol=1e-5, atol=1e-6)
