"""UncertaintyWeighting (Kendall et al. 2018): formula, gradients, logging, serialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.losses import HintDistillation, SoftTargetDistillation
from keras_kd.weighting import FixedWeighting, UncertaintyWeighting

_SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_formula_and_gradient_match_numpy():
    weighting = UncertaintyWeighting(3, initial_log_variance=0.0)
    s = np.array([0.5, -1.0, 2.0], "float32")
    weighting.log_variances.assign(s)
    d = np.random.default_rng(0).random((4, 3)).astype("float32")
    with tf.GradientTape() as tape:
        value = weighting(d)
        total = tf.reduce_sum(value)
    ref = (d * np.exp(-s) + s).sum(axis=-1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(value), ref, atol=1e-5)
    grad = tape.gradient(total, weighting.log_variances.value).numpy()
    np.testing.assert_allclose(grad, (-d * np.exp(-s) + 1).sum(axis=0), atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(weighting.current_weights()),
                               np.exp(-s), atol=1e-6)


def test_errors_and_config():
    with pytest.raises(ValueError, match="num_paths"):
        UncertaintyWeighting(0)
    # A wrong type is a TypeError (keras_kd.validation's rule); it was a ValueError before.
    with pytest.raises(TypeError, match="initial_log_variance must be a finite real number"):
        UncertaintyWeighting(2, initial_log_variance="x")
    with pytest.raises(ValueError, match="initial_log_variance must be a finite real number"):
        UncertaintyWeighting(2, initial_log_variance=float("nan"))
    with pytest.raises(TypeError, match="num_paths must be a positive integer, got True"):
        UncertaintyWeighting(True)
    assert UncertaintyWeighting(np.int64(2)).num_paths == 2
    with pytest.raises(ValueError, match=r"weights\[1\] must be a non-negative finite real"):
        FixedWeighting([1.0, float("inf")])
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(UncertaintyWeighting(2, initial_log_variance=0.3)))
    assert clone.num_paths == 2
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone.log_variances), [0.3, 0.3])


def _nets():
    def net(prefix, width):
        x = keras.Input((6, 6, 1))
        h = keras.layers.Conv2D(width, 3, padding="same", activation="relu",
                                name=f"{prefix}conv")(x)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(x, keras.layers.Dense(3)(h))

    return net("t_", 4), net("s_", 2)


def test_learned_weights_train_and_are_logged_each_epoch(tmp_path):
    teacher, student = _nets()
    weighting = UncertaintyWeighting(2)
    distiller = keras_kd.Distiller(
        teacher, student, [SoftTargetDistillation(), HintDistillation("t_conv", "s_conv")],
        distillation_loss_weights=weighting)
    assert any(v is weighting.log_variances for v in distiller.trainable_variables)
    distiller.compile(keras.optimizers.SGD(0.1), loss=_SCE)
    x = np.random.default_rng(0).random((32, 6, 6, 1)).astype("float32")
    history = distiller.fit(x, np.arange(32) % 3, batch_size=16, epochs=2, verbose=0)
    names = [loss.name for loss in distiller.distillation_losses]
    for name in names:
        assert len(history.history[f"{name}_weight"]) == 2
    final = keras.ops.convert_to_numpy(weighting.current_weights())
    assert not np.allclose(final, 1.0)  # the log-variances moved
    # last epoch's logged value is the epoch mean of the weight; it is close to the final one
    np.testing.assert_allclose([history.history[f"{n}_weight"][-1] for n in names], final,
                               rtol=0.2)
    distiller.save(tmp_path / "d.keras")
    reloaded = keras.models.load_model(tmp_path / "d.keras")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded.path_weighting.current_weights()), final, atol=1e-6)
