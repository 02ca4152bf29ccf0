"""Every online model: MirroredStrategy on 2 logical CPUs equals one device (sample weights on),
and a run interrupted and resumed by BackupAndRestore equals an uninterrupted one."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from online_helpers import N_CLASSES, N_IN, batch, hard_loss, mlp

from keras_kd.online import MutualLearning, NativeEnsemble, RocketLaunching

L = keras.layers
GLOBAL_BATCH, STEPS = 8, 3
KINDS = ("mutual_learning", "native_ensemble", "rocket_launching")


def make(kind: str, rampup_epochs: int = 0) -> keras.Model:
    """A tiny model of each kind, every layer named (weights files address layers by name)."""
    if kind == "mutual_learning":
        return MutualLearning([mlp(5, "peer_a"), mlp(7, "peer_b")], temperature=2.0)
    if kind == "native_ensemble":
        inputs = keras.Input((N_IN,), name="x")
        trunk = keras.Model(inputs, L.Dense(6, activation="relu", name="trunk_dense")(inputs),
                            name="trunk")
        branches = [mlp(5, f"branch_{i}", n_in=6) for i in range(3)]
        return NativeEnsemble(trunk, branches, temperature=2.0, rampup_epochs=rampup_epochs)
    inputs = keras.Input((N_IN,), name="x")
    shared = L.Dense(6, activation="relu", name="shared")(inputs)
    light = keras.Model(inputs, L.Dense(N_CLASSES, name="light_logits")(shared), name="light")
    h = L.Dense(12, activation="relu", name="booster_hidden")(shared)
    booster = keras.Model(inputs, L.Dense(N_CLASSES, name="booster_logits")(h), name="booster")
    return RocketLaunching(light, booster, hint_weight=0.3)


def data(seed=0, n=GLOBAL_BATCH * STEPS):
    x, y = batch(seed, n)
    w = np.random.default_rng(seed + 100).uniform(0.0, 3.0, size=(n,)).astype("float32")
    return x, y, w


def _train(kind, strategy, initial, arrays):
    with strategy.scope():
        model = make(kind)
        model.set_weights(initial)
        model.compile(keras.optimizers.SGD(0.2), loss=hard_loss(), metrics=["accuracy"])
    dataset = tf.data.Dataset.from_tensor_slices(arrays).batch(GLOBAL_BATCH)
    history = model.fit(dataset, epochs=1, verbose=0).history
    assert model.distribute_strategy is strategy
    return [np.array(w) for w in model.get_weights()], history


@pytest.mark.parametrize("kind", KINDS)
def test_mirrored_two_cpus_equals_one_device(kind):
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, (
        "tests/conftest.py must split the CPU into 2 logical devices before TensorFlow "
        f"initialises; found {[d.name for d in cpus]}."
    )
    arrays = data(0)
    initial = make(kind).get_weights()
    single, single_logs = _train(kind, tf.distribute.get_strategy(), initial, arrays)
    # Reduction to one device, not collective ops: collective instance keys are process-wide,
    # so a second collective MirroredStrategy in the same pytest process (another test's)
    # would clash with this one's ("Shape mismatch in the collective instance 100").
    mirrored_strategy = tf.distribute.MirroredStrategy(
        [d.name for d in cpus[:2]], cross_device_ops=tf.distribute.ReductionToOneDevice())
    assert mirrored_strategy.num_replicas_in_sync == 2
    mirrored, mirrored_logs = _train(kind, mirrored_strategy, initial, arrays)

    assert max(np.abs(a - b).max() for a, b in zip(single, initial)) > 1e-2
    for a, b in zip(mirrored, single):
        np.testing.assert_allclose(a, b, atol=2e-5)
    assert set(mirrored_logs) == set(single_logs)
    for key, value in single_logs.items():
        np.testing.assert_allclose(mirrored_logs[key], value, atol=2e-5, err_msg=key)


class _Interrupt(Exception):
    pass


class _InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Interrupt(f"simulated preemption before epoch {epoch}")


def _fresh(kind, initial):
    model = make(kind, rampup_epochs=3)
    if initial is not None:
        model.set_weights(initial)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss=hard_loss(),
                  metrics=["accuracy"])
    return model


@pytest.mark.parametrize("kind", KINDS)
def test_backup_and_restore_resume_equals_an_uninterrupted_run(kind, tmp_path):
    x, y, w = data(1, n=2 * GLOBAL_BATCH)
    fit = dict(sample_weight=w, batch_size=GLOBAL_BATCH, epochs=3, shuffle=False, verbose=0)
    initial = make(kind, rampup_epochs=3).get_weights()
    whole = _fresh(kind, initial)
    whole_history = whole.fit(x, y, **fit).history

    backup = str(tmp_path / "backup")
    with pytest.raises(_Interrupt):
        _fresh(kind, initial).fit(x, y, **fit, callbacks=[
            keras.callbacks.BackupAndRestore(backup), _InterruptAt(2)])
    resumed = _fresh(kind, None)  # new objects, other initial weights: all comes from the backup
    history = resumed.fit(x, y, **fit, callbacks=[keras.callbacks.BackupAndRestore(backup)])

    assert len(history.history["loss"]) == 1  # only the third epoch ran
    for a, b in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(history.history["loss"][0], whole_history["loss"][-1], atol=1e-6)
    if kind == "native_ensemble":
        np.testing.assert_allclose(history.history["rampup_weight"],
                                   whole_history["rampup_weight"][-1:], rtol=1e-6)
