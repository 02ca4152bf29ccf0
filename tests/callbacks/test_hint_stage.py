"""HintStage: which variables train in each stage, optimizer reset, BackupAndRestore resume."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import losses as kd_losses
from keras_kd.callbacks import HintStage

_SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _net(prefix: str, width: int) -> keras.Model:
    x = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(width, 3, padding="same", name=f"{prefix}conv1")(x)
    h = keras.layers.BatchNormalization(name=f"{prefix}bn1")(h)
    h = keras.layers.ReLU(name=f"{prefix}relu1")(h)
    h = keras.layers.Conv2D(2 * width, 3, padding="same", name=f"{prefix}conv2")(h)
    h = keras.layers.BatchNormalization(name=f"{prefix}bn2")(h)
    h = keras.layers.ReLU(name=f"{prefix}relu2")(h)
    h = keras.layers.GlobalAveragePooling2D(name=f"{prefix}gap")(h)
    return keras.Model(x, keras.layers.Dense(3, name=f"{prefix}logits")(h), name=f"{prefix}net")


UPSTREAM = ("s_conv1", "s_bn1")  # layers feeding the guided layer s_relu1
DOWNSTREAM = ("s_conv2", "s_bn2", "s_logits")

_X = np.random.default_rng(0).random((32, 6, 6, 1)).astype("float32")
_Y = np.arange(32) % 3


def _build(teacher_weights=None):
    keras.utils.set_random_seed(7)
    teacher, student = _net("t_", 4), _net("s_", 2)
    if teacher_weights is not None:
        teacher.set_weights(teacher_weights)
    hint = kd_losses.HintDistillation("t_relu1", "s_relu1", name="hint")
    other = kd_losses.HintDistillation("t_relu2", "s_relu2", name="other_hint")
    distiller = keras_kd.Distiller(
        teacher, student, [kd_losses.SoftTargetDistillation(), hint, other],
        distillation_loss_weights=[1.0, 0.5, 0.5], student_loss_weight=0.3)
    distiller.compile(keras.optimizers.Adam(1e-2), loss=_SCE)
    return distiller, hint, other


def _values(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def _changed(before, after):
    return [not np.array_equal(b, a) for b, a in zip(before, after)]


class _Snapshots(keras.callbacks.Callback):
    """Values of the watched variables at each epoch's start and end."""

    def __init__(self, groups):
        super().__init__()
        self.groups = groups
        self.begin, self.end = {}, {}
        self.optimizer_zero_at_begin = {}

    def _take(self):
        return {name: _values(vs) for name, vs in self.groups.items()}

    def on_epoch_begin(self, epoch, logs=None):
        self.begin[epoch] = self._take()
        opt = self.model.optimizer
        lr = opt.learning_rate
        self.optimizer_zero_at_begin[epoch] = all(
            not np.any(keras.ops.convert_to_numpy(v)) for v in opt.variables if v is not lr)

    def on_epoch_end(self, epoch, logs=None):
        self.end[epoch] = self._take()

    def changed(self, epoch, group):
        return _changed(self.begin[epoch][group], self.end[epoch][group])


def _groups(distiller, hint, other):
    student = distiller.student
    return {
        "upstream": [v for n in UPSTREAM for v in student.get_layer(n).trainable_variables],
        "upstream_stats": [
            v for n in UPSTREAM for v in student.get_layer(n).non_trainable_variables
        ],
        "downstream": [v for n in DOWNSTREAM for v in student.get_layer(n).weights],
        "adapter": list(hint.adapter.trainable_variables),
        "other_adapter": list(other.adapter.weights),
        "student_trainable": list(student.trainable_variables),
        "student_all": list(student.weights),
    }


def test_stage_one_trains_only_up_to_the_guided_layer_then_everything():
    distiller, hint, other = _build()
    snaps = _Snapshots(_groups(distiller, hint, other))
    stage = HintStage(hint, epochs=2)
    history = distiller.fit(_X, _Y, batch_size=8, epochs=3, verbose=0, callbacks=[stage, snaps])
    assert history.history["hint_stage"] == [1, 1, 2]
    for epoch in (0, 1):  # stage 1
        assert all(snaps.changed(epoch, "upstream"))
        assert all(snaps.changed(epoch, "upstream_stats"))  # bn1 runs in training mode
        assert all(snaps.changed(epoch, "adapter"))
        assert not any(snaps.changed(epoch, "downstream"))  # weights and BN statistics
        assert not any(snaps.changed(epoch, "other_adapter"))
    assert all(snaps.changed(2, "student_trainable"))  # stage 2: the whole student
    assert all(snaps.changed(2, "other_adapter"))
    # optimizer state was zeroed at the switch (and only there)
    assert snaps.optimizer_zero_at_begin[2] and not snaps.optimizer_zero_at_begin[1]
    # the configured objective and trainability are back after fit
    assert np.isclose(float(keras.ops.convert_to_numpy(distiller.student_loss_weight)), 0.3)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(distiller.path_weighting.weights_variable), [1.0, 0.5, 0.5])
    assert all(layer.trainable for layer in distiller.student.layers)


def test_stage_one_objective_is_the_hint_alone():
    distiller, hint, _ = _build()
    stage = HintStage(hint, epochs=1)
    history = distiller.fit(_X, _Y, batch_size=8, epochs=1, verbose=0, callbacks=[stage])
    np.testing.assert_allclose(history.history["loss"], history.history["hint_loss"], rtol=1e-5)


class _Interrupt(Exception):
    pass


class _InterruptAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Interrupt(f"simulated preemption before epoch {epoch}")


@pytest.mark.parametrize(
    "interrupt_epoch, stages, new_process",
    [(1, [1, 2, 2], True), (3, [2], True), (1, [1, 2, 2], False)],
)
def test_resume_with_backup_and_restore_continues_in_the_right_stage(
    tmp_path, interrupt_epoch, stages, new_process
):
    distiller, hint, _ = _build()
    teacher_weights = distiller.teacher.get_weights()
    backup = str(tmp_path / "backup")
    with pytest.raises(_Interrupt):
        distiller.fit(_X, _Y, batch_size=8, epochs=4, verbose=0, callbacks=[
            HintStage(hint, epochs=2), keras.callbacks.BackupAndRestore(backup),
            _InterruptAt(interrupt_epoch)])
    saved_student = _values(distiller.student.weights)

    if new_process:  # new objects, same architecture; BackupAndRestore restores the state
        distiller, hint, other = _build(teacher_weights)
    else:  # retried in the same process, with the objects the interrupted fit left behind
        other = distiller.distillation_losses[2]
    snaps = _Snapshots(_groups(distiller, hint, other))
    history = distiller.fit(_X, _Y, batch_size=8, epochs=4, verbose=0, callbacks=[
        HintStage(hint, epochs=2), keras.callbacks.BackupAndRestore(backup), snaps])
    assert history.history["hint_stage"] == stages
    first = interrupt_epoch
    # the run restarts from the weights saved before the interruption
    for saved, restored in zip(saved_student, snaps.begin[first]["student_all"]):
        np.testing.assert_array_equal(saved, restored)
    if stages[0] == 1:  # resumed inside stage 1: the tail stays frozen, then the switch resets
        assert not any(snaps.changed(first, "downstream"))
        assert all(snaps.changed(first, "upstream"))
        assert snaps.optimizer_zero_at_begin[2]
    else:  # resumed inside stage 2: everything trains, the restored optimizer state is kept
        assert all(snaps.changed(first, "student_trainable"))
        assert not snaps.optimizer_zero_at_begin[first]
    assert all(snaps.changed(3, "student_trainable"))  # stage 2 trains the whole student
    assert np.isclose(float(keras.ops.convert_to_numpy(distiller.student_loss_weight)), 0.3)


def test_errors():
    distiller, hint, _ = _build()
    with pytest.raises(ValueError, match="epochs"):
        HintStage(hint, epochs=0)
    with pytest.raises(TypeError, match="hint"):
        HintStage("hint", epochs=1)
    stranger = kd_losses.HintDistillation("t_relu1", "s_relu1", name="stranger")
    with pytest.raises(ValueError, match="not one of the Distiller"):
        distiller.fit(_X, _Y, batch_size=8, epochs=1, verbose=0,
                      callbacks=[HintStage(stranger, epochs=1)])
