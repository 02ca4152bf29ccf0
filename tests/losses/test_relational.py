"""RelationalDistillation (Park et al. 2019) against a NumPy reference."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_kd.losses import RelationalDistillation
from keras_kd.losses.functional import rkd_angle, rkd_distance


def _huber(x):
    return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)


def _np_dist(e):
    e = e.reshape(len(e), -1).astype(np.float64)
    d = np.linalg.norm(e[:, None] - e[None, :], axis=-1)
    return d / d[d > 0].mean()


def _np_angle(e):
    """Explicit unit difference vectors in float64; 0 where a pair coincides."""
    e = e.reshape(len(e), -1).astype(np.float64)
    n = len(e)
    out = np.zeros((n, n, n))
    for i in range(n):
        for j in range(n):
            for k in range(n):
                u, v = e[j] - e[i], e[k] - e[i]
                if not (u.any() and v.any()):
                    continue
                out[i, j, k] = u @ v / np.linalg.norm(u) / np.linalg.norm(v)
    return out


def test_distance_and_angle_match_numpy():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(6, 5)).astype("float32")
    s = rng.normal(size=(6, 3)).astype("float32")
    dist = keras.ops.convert_to_numpy(rkd_distance(t, s))
    np.testing.assert_allclose(dist, _huber(_np_dist(s) - _np_dist(t)).mean(axis=1), atol=1e-5)
    angle = keras.ops.convert_to_numpy(rkd_angle(t, s))
    ref = _huber(_np_angle(s) - _np_angle(t)).reshape(6, -1).mean(axis=1)
    np.testing.assert_allclose(angle, ref, atol=1e-5)


def test_angle_far_from_the_origin_and_with_duplicates_matches_numpy():
    # Embeddings 1000 spreads away from the origin (post-ReLU features often are): the Gram
    # form must not lose the angles by cancellation; a repeated example gives 0 cosines.
    rng = np.random.default_rng(3)
    t = (1000.0 + rng.normal(size=(7, 16))).astype("float32")
    s = (-500.0 + 0.01 * rng.normal(size=(7, 9))).astype("float32")
    t[4], s[4] = t[1], s[1]
    ref = _huber(_np_angle(s) - _np_angle(t)).reshape(7, -1).mean(axis=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rkd_angle(t, s)), ref, atol=1e-6)


def test_angle_on_a_wide_embedding_matches_numpy():
    # a batch of 24 with 2048 features (the 4-layer CIFAR student's flatten), float64 reference
    rng = np.random.default_rng(4)
    t = np.maximum(rng.normal(size=(24, 64)), 0).astype("float32")
    s = np.maximum(rng.normal(0.5, 1.0, size=(24, 8, 8, 32)), 0).astype("float32")
    ref = _huber(_np_angle(s) - _np_angle(t)).reshape(24, -1).mean(axis=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rkd_angle(t, s)), ref, atol=1e-6)


def test_invariances():
    rng = np.random.default_rng(1)
    t = rng.normal(size=(5, 4)).astype("float32")
    # distances are scale-normalised, angles are invariant to scale and translation
    moved = 3.0 * t + 1.5
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rkd_distance(t, moved)), 0, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(rkd_angle(t, moved)), 0, atol=1e-6)


def test_class_weights_terms_and_flattens_maps():
    rng = np.random.default_rng(2)
    t = rng.normal(size=(4, 2, 2, 3)).astype("float32")
    s = rng.normal(size=(4, 2, 2, 1)).astype("float32")
    loss = RelationalDistillation("t", "s", distance_weight=2.0, angle_weight=0.5)
    got = keras.ops.convert_to_numpy(loss((t,), (s,)))
    ref = (2.0 * _huber(_np_dist(s) - _np_dist(t)).mean(axis=1)
           + 0.5 * _huber(_np_angle(s) - _np_angle(t)).reshape(4, -1).mean(axis=1))
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_gradients_are_finite_with_duplicate_examples():
    t = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], "float32")
    s = keras.Variable(np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 1.0]], "float32"))
    import tensorflow as tf

    with tf.GradientTape() as tape:
        value = keras.ops.sum(RelationalDistillation()((t,), (s,)))
    grad = tape.gradient(value, s.value)
    assert np.all(np.isfinite(grad.numpy()))


def test_errors_and_config():
    with pytest.raises(ValueError, match="distance_weight"):
        RelationalDistillation(distance_weight=-1)
    with pytest.raises(ValueError, match="both be 0"):
        RelationalDistillation(distance_weight=0, angle_weight=0)
    clone = RelationalDistillation.from_config(
        RelationalDistillation("a", "b", angle_weight=0.0).get_config())
    assert (clone.teacher_layer, clone.angle_weight, clone.distance_weight) == ("a", 0.0, 25.0)
