"""Each model runs forward once per step, whatever the number of feature losses."""

from __future__ import annotations

import keras
import numpy as np

import keras_kd
from keras_kd import losses as kd_losses

_SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class _CountCalls(keras.layers.Layer):
    """Identity layer counting how often it runs (one run = one forward of its model).

    `calls` counts Python executions (every step when run eagerly, every trace otherwise);
    `executions` is a variable incremented inside the graph, so it counts every step run by
    the compiled `tf.function` too.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0
        self.executions = self.add_weight(shape=(), initializer="zeros", dtype="int32",
                                          trainable=False, name="executions")

    def call(self, x):
        self.calls += 1
        self.executions.assign_add(1)
        return x


def _net(prefix: str, width: int, counter: _CountCalls) -> keras.Model:
    x = keras.Input((8, 8, 1))
    h = counter(x)
    h = keras.layers.Conv2D(width, 3, padding="same", name=f"{prefix}conv1")(h)
    h = keras.layers.BatchNormalization(name=f"{prefix}bn1")(h)
    h = keras.layers.ReLU(name=f"{prefix}relu1")(h)
    h = keras.layers.Conv2D(2 * width, 3, padding="same", name=f"{prefix}conv2")(h)
    h = keras.layers.BatchNormalization(name=f"{prefix}bn2")(h)
    h = keras.layers.ReLU(name=f"{prefix}relu2")(h)
    h = keras.layers.GlobalAveragePooling2D(name=f"{prefix}embed")(h)
    return keras.Model(x, keras.layers.Dense(3, name=f"{prefix}logits")(h))


def _setup():
    t_count, s_count = _CountCalls(name="t_count"), _CountCalls(name="s_count")
    teacher, student = _net("t_", 4, t_count), _net("s_", 2, s_count)
    losses = [
        kd_losses.SoftTargetDistillation(),
        kd_losses.HintDistillation("t_relu1", "s_relu1"),
        kd_losses.AttentionTransfer("t_relu2", "s_relu2"),
        kd_losses.OverhaulDistillation("t_relu2", "s_relu2", teacher=teacher),
        kd_losses.RelationalDistillation("t_embed", "s_embed"),
    ]
    distiller = keras_kd.Distiller(teacher, student, losses)
    return distiller, t_count, s_count


def test_one_forward_of_each_model_per_step_with_three_feature_losses():
    distiller, t_count, s_count = _setup()
    distiller.compile("adam", loss=_SCE, run_eagerly=True)
    x = np.random.default_rng(0).random((24, 8, 8, 1)).astype("float32")
    distiller.check_inputs(x[:8], np.arange(8) % 3)  # fit's one-time first-batch check
    t_count.calls = s_count.calls = 0
    history = distiller.fit(x, np.arange(24) % 3, batch_size=8, epochs=1, verbose=0)
    steps = 3
    assert t_count.calls == steps  # teacher: one forward per step
    assert s_count.calls == steps  # student: one forward per step (the gradient pass)
    # every path was computed in those steps
    for loss in distiller.distillation_losses:
        assert np.isfinite(history.history[f"{loss.name}_loss"][0])


def test_compiled_step_runs_each_model_once():
    distiller, t_count, s_count = _setup()
    distiller.compile("adam", loss=_SCE)
    x = np.random.default_rng(1).random((16, 8, 8, 1)).astype("float32")
    distiller.check_inputs(x[:8], np.arange(8) % 3)  # fit's one-time first-batch check
    t_count.executions.assign(0)
    s_count.executions.assign(0)
    distiller.fit(x, np.arange(16) % 3, batch_size=8, epochs=2, verbose=0)
    steps = 2 * 2
    assert int(keras.ops.convert_to_numpy(t_count.executions)) == steps
    assert int(keras.ops.convert_to_numpy(s_count.executions)) == steps
