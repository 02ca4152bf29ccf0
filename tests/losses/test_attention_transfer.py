"""AttentionTransfer (Zagoruyko & Komodakis 2017) against a NumPy reference."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_kd.losses import AttentionTransfer
from keras_kd.losses.functional import attention_map, attention_transfer


def _np_map(x, p=2.0):
    q = np.mean(np.abs(x.astype(np.float64)) ** p, axis=-1).reshape(len(x), -1)
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _np_at(t, s, p=2.0):
    return np.mean((_np_map(s, p) - _np_map(t, p)) ** 2, axis=-1)


def test_matches_numpy_with_different_channels():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(4, 6, 6, 8)).astype("float32")
    s = rng.normal(size=(4, 6, 6, 3)).astype("float32")
    got = keras.ops.convert_to_numpy(attention_transfer(t, s))
    np.testing.assert_allclose(got, _np_at(t, s), atol=1e-5)
    got3 = keras.ops.convert_to_numpy(attention_transfer(t, s, p=3))
    np.testing.assert_allclose(got3, _np_at(t, s, 3.0), atol=1e-5)


def test_map_is_unit_norm_and_scale_invariant():
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 5)).astype("float32")
    q = keras.ops.convert_to_numpy(attention_map(x))
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-6)
    # the loss ignores a global rescaling of the student's activations
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(attention_transfer(x, 7.0 * x)), 0.0, atol=1e-7)


def test_class_resizes_the_student_map():
    rng = np.random.default_rng(2)
    t = rng.normal(size=(3, 4, 4, 8)).astype("float32")
    s = rng.normal(size=(3, 8, 8, 2)).astype("float32")
    loss = AttentionTransfer("t", "s")
    loss.build([t.shape], [s.shape])
    pooled = s.reshape(3, 4, 2, 4, 2, 2).mean(axis=(2, 4))  # 2x2 average pooling
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss((t,), (s,))),
                               _np_at(t, pooled), atol=1e-5)


def test_errors_and_config():
    with pytest.raises(ValueError, match="p must be"):
        AttentionTransfer("t", "s", p=0)
    with pytest.raises(ValueError, match="4-D"):
        AttentionTransfer("t", "s").build([(None, 8)], [(None, 8)])
    loss = AttentionTransfer("t", "s", p=3)
    clone = AttentionTransfer.from_config(loss.get_config())
    assert (clone.teacher_layer, clone.student_layer, clone.p) == ("t", "s", 3.0)
