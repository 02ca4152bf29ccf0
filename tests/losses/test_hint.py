"""HintDistillation (FitNets): NumPy reference, adapter handling, Distiller integration."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.losses import HintDistillation
from keras_kd.losses.functional import hint_mse

_SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _np_hint(t, s):
    t = t.reshape(len(t), -1).astype(np.float64)
    s = s.reshape(len(s), -1).astype(np.float64)
    return np.mean((s - t) ** 2, axis=-1)


def _nets():
    def net(prefix, width):
        x = keras.Input((8, 8, 1))
        h = keras.layers.Conv2D(width, 3, padding="same", name=f"{prefix}conv1")(x)
        h = keras.layers.ReLU(name=f"{prefix}relu1")(h)
        h = keras.layers.GlobalAveragePooling2D(name=f"{prefix}gap")(h)
        return keras.Model(x, keras.layers.Dense(3, name=f"{prefix}logits")(h))

    return net("t_", 6), net("s_", 2)


def test_hint_mse_matches_numpy():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(4, 5, 5, 3)).astype("float32")
    s = rng.normal(size=(4, 5, 5, 3)).astype("float32")
    got = keras.ops.convert_to_numpy(hint_mse(t, s))
    np.testing.assert_allclose(got, _np_hint(t, s), atol=1e-5)
    assert got.shape == (4,)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(hint_mse(t, t)), 0.0, atol=1e-7)


def test_class_applies_the_adapter_then_mse():
    rng = np.random.default_rng(1)
    t = rng.normal(size=(3, 6, 6, 8)).astype("float32")
    s = rng.normal(size=(3, 12, 12, 4)).astype("float32")
    loss = HintDistillation("t", "s")
    loss.build([t.shape], [s.shape])
    assert isinstance(loss.adapter, keras_kd.adapters.FeatureAdapter)
    got = keras.ops.convert_to_numpy(loss((t,), (s,)))
    mapped = keras.ops.convert_to_numpy(loss.adapter(s))
    assert mapped.shape == t.shape
    np.testing.assert_allclose(got, _np_hint(t, mapped), atol=1e-5)


def test_auto_adapter_is_a_plain_conv_unless_batch_norm_is_asked():
    # FitNets' adapter is a convolution without BatchNormalization (Romero et al. 2015).
    plain = HintDistillation("t", "s")
    plain.build([(None, 6, 6, 8)], [(None, 6, 6, 4)])
    assert plain.adapter.norm is None and plain.adapter.conv.use_bias
    with_bn = HintDistillation("t", "s", batch_norm=True)
    with_bn.build([(None, 6, 6, 8)], [(None, 6, 6, 4)])
    assert isinstance(with_bn.adapter.norm, keras.layers.BatchNormalization)
    assert HintDistillation.from_config(with_bn.get_config()).batch_norm is True


def test_identity_when_shapes_match_and_user_adapter():
    loss = HintDistillation("t", "s")
    loss.build([(None, 4)], [(None, 4)])
    assert loss.adapter is None
    dense = keras.layers.Dense(5, use_bias=False)
    loss = HintDistillation("t", "s", adapter=dense)
    loss.build([(None, 5)], [(None, 3)])
    s = np.ones((2, 3), "float32")
    t = np.zeros((2, 5), "float32")
    mapped = s @ keras.ops.convert_to_numpy(dense.kernel)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss((t,), (s,))),
                               _np_hint(t, mapped), atol=1e-5)
    assert len(loss.trainable_variables) == 1  # the user layer is tracked once


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="teacher_layer"):
        HintDistillation("", "s")
    with pytest.raises(ValueError, match="adapter"):
        HintDistillation("t", "s", adapter="conv")
    loss = HintDistillation("t", "s", adapter=None)
    with pytest.raises(ValueError, match="adapter=None"):
        loss.build([(None, 4, 4, 8)], [(None, 4, 4, 2)])
    bad = HintDistillation("t", "s", adapter=keras.layers.Dense(7))
    with pytest.raises(ValueError, match="teacher feature has shape"):
        bad.build([(None, 5)], [(None, 3)])


def test_adapter_trains_with_student_and_is_not_exported(tmp_path):
    teacher, student = _nets()
    hint = HintDistillation("t_relu1", "s_relu1")
    distiller = keras_kd.Distiller(teacher, student, ["soft_target", hint])
    adapter_vars = {id(v) for v in hint.adapter.trainable_variables}
    assert adapter_vars and adapter_vars <= {id(v) for v in distiller.trainable_variables}
    assert not adapter_vars & {id(v) for v in student.weights}
    before = [keras.ops.convert_to_numpy(v).copy() for v in hint.adapter.weights]
    distiller.compile("adam", loss=_SCE)
    x = np.random.default_rng(0).random((16, 8, 8, 1)).astype("float32")
    distiller.fit(x, np.arange(16) % 3, batch_size=8, epochs=1, verbose=0)
    after = [keras.ops.convert_to_numpy(v) for v in hint.adapter.weights]
    # kernel, BN gamma/beta and (training mode) BN moving statistics all changed
    assert all(not np.allclose(a, b) for a, b in zip(before, after))
    student.save(tmp_path / "student.keras")
    reloaded = keras.models.load_model(tmp_path / "student.keras")
    assert len(reloaded.weights) == len(student.weights)


def test_config_round_trip():
    loss = HintDistillation("t", "s", adapter=keras.layers.Dense(3), student_pre_activation=True)
    clone = HintDistillation.from_config(loss.get_config())
    assert clone.teacher_layer == "t" and clone.student_layer == "s"
    assert clone.student_pre_activation and isinstance(clone.adapter_arg, keras.layers.Dense)
    assert keras.saving.get_registered_object("keras_kd>HintDistillation") is HintDistillation
    auto = HintDistillation.from_config(HintDistillation("a", "b").get_config())
    assert auto.adapter_arg == "auto"
