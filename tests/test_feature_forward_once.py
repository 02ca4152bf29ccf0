"""Each model runs forward once per step, whatever the number of feature losses."""

from __future__ import annotations

import keras
import numpy as np

import keras_kd
from keras_kd import losses as kd_losses


class _CountCalls(keras.layers.Layer):
    """Identity layer counting how often it runs (one run = one forward of its model)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def call(self, x):
        self.calls += 1
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
    distiller.compile("adam", loss="sparse_categorical_crossentropy", run_eagerly=True)
    x = np.random.default_rng(0).random((24, 8, 8, 1)).astype("float32")
    t_count.calls = s_count.calls = 0
    history = distiller.fit(x, np.arange(24) % 3, batch_size=8, epochs=1, verbose=0)
    steps = 3
    assert t_count.calls == steps  # teacher: one forward per step
    assert s_count.calls == steps  # student: one forward per step (the gradient pass)
    # every path was computed in those steps
    for loss in distiller.distillation_losses:
        assert np.isfinite(history.history[f"{loss.name}_loss"][0])


def test_traced_step_contains_one_forward_of_each_model():
    distiller, t_count, s_count = _setup()
    distiller.compile("adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(1).random((16, 8, 8, 1)).astype("float32")
    t_count.calls = s_count.calls = 0
    distiller.fit(x, np.arange(16) % 3, batch_size=8, epochs=2, verbose=0)
    # graph mode: Python runs only while tracing, so each count is forwards per traced step
    traces = len(distiller.train_function.function._list_all_concrete_functions())
    assert traces >= 1
    assert t_count.calls == traces and s_count.calls == traces
