"""DeepInversion: BN-statistics matching, priors and competition vs NumPy; refusals; a run."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_kd.datafree import (
    batch_norm_statistics_distance,
    competition_loss,
    deep_inversion,
    image_l2,
    total_variation_l1,
    total_variation_l2,
)

ATOL = 1e-5


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def bn_teacher(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(3, 3, padding="same", name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(5, name="dense")(h)
    h = keras.layers.BatchNormalization(name="bn_dense")(h)
    h = keras.layers.ReLU()(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h), name="bn_teacher")
    rng = np.random.default_rng(seed)
    for layer in (model.get_layer("bn"), model.get_layer("bn_dense")):
        n = layer.moving_mean.shape[0]
        layer.moving_mean.assign(rng.normal(size=n).astype("float32"))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=n).astype("float32"))
    return model


def test_bn_statistics_distance_equals_numpy():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4, 3, 3, 5))
    rm, rv = rng.normal(size=5), rng.uniform(0.5, 2, size=5)
    mean, var = f.mean(axis=(0, 1, 2)), f.var(axis=(0, 1, 2))
    expected = np.linalg.norm(rv - var) + np.linalg.norm(rm - mean)
    got = float(batch_norm_statistics_distance(f, rm, rv))
    np.testing.assert_allclose(got, expected, atol=ATOL)
    # Channels first: the channel axis is an argument.
    g = np.transpose(f, (0, 3, 1, 2))
    np.testing.assert_allclose(float(batch_norm_statistics_distance(g, rm, rv, axis=1)),
                               expected, atol=ATOL)


def test_image_priors_equal_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 4, 3))
    diffs = [x[:, :, :-1] - x[:, :, 1:], x[:, :-1] - x[:, 1:],
             x[:, 1:, :-1] - x[:, :-1, 1:], x[:, :-1, :-1] - x[:, 1:, 1:]]
    np.testing.assert_allclose(float(total_variation_l2(x)),
                               sum(np.sqrt((d ** 2).sum()) for d in diffs), atol=1e-4)
    np.testing.assert_allclose(float(total_variation_l1(x)),
                               sum(np.abs(d).mean() for d in diffs), atol=ATOL)
    np.testing.assert_allclose(float(image_l2(x)),
                               np.linalg.norm(x.reshape(2, -1), axis=1).mean(), atol=ATOL)


def test_competition_equals_one_minus_jensen_shannon():
    rng = np.random.default_rng(2)
    t, s = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    p, q = np_softmax(t / 3.0), np_softmax(s / 3.0)
    m = (p + q) / 2
    js = 0.5 * (p * np.log(p / m)).sum(1) + 0.5 * (q * np.log(q / m)).sum(1)
    np.testing.assert_allclose(float(competition_loss(t, s, 3.0)), 1 - js.mean(), atol=ATOL)
    assert abs(float(competition_loss(t, t)) - 1.0) < 1e-6


def test_teacher_without_batch_norm_is_refused():
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Flatten()(keras.layers.Conv2D(2, 3)(inputs))
    plain = keras.Model(inputs, keras.layers.Dense(3)(h), name="plain")
    with pytest.raises(ValueError, match="teacher 'plain' has none.*DAFL"):
        deep_inversion(plain, 4, batch_size=2, steps=1, verbose=0)


def test_bad_arguments_are_refused():
    teacher = bn_teacher()
    with pytest.raises(ValueError, match="needs the student"):
        deep_inversion(teacher, 4, competition_weight=0.2, verbose=0)
    with pytest.raises(ValueError, match="bn_weight must be a non-negative"):
        deep_inversion(teacher, 4, bn_weight=-1.0, verbose=0)
    with pytest.raises(TypeError, match="steps must be a positive integer"):
        deep_inversion(teacher, 4, steps=1.5, verbose=0)
    dense_in = keras.Input((4,))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(3)(dense_in))
    flat = keras.Model(dense_in, keras.layers.Dense(2)(h))
    with pytest.raises(ValueError, match="optimises images"):
        deep_inversion(flat, 4, verbose=0)


def test_inversion_moves_batch_statistics_towards_the_running_ones():
    teacher = bn_teacher()
    kwargs = dict(batch_size=8, learning_rate=0.1, jitter=1, seed=0, verbose=0)
    start = deep_inversion(teacher, 8, steps=1, **kwargs)
    done = deep_inversion(teacher, 8, steps=80, **kwargs)
    bn = teacher.get_layer("bn")
    features = keras.Model(teacher.input, bn.input)

    def distance(x):
        return float(batch_norm_statistics_distance(features(x), bn.moving_mean,
                                                    bn.moving_variance))

    assert distance(done.x) < 0.5 * distance(start.x)
    np.testing.assert_array_equal(done.y, start.y)
    again = deep_inversion(teacher, 8, steps=80, **kwargs)
    np.testing.assert_array_equal(done.x, again.x)


def test_adaptive_inversion_runs_with_a_student():
    teacher = bn_teacher()
    inputs = keras.Input((6, 6, 1))
    student = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    before = [w.copy() for w in student.get_weights()]
    out = deep_inversion(teacher, 6, batch_size=3, steps=3, student=student,
                         competition_weight=0.2, flip=True, verbose=0)
    assert out.x.shape == (6, 6, 6, 1) and out.complete
    for a, b in zip(before, student.get_weights()):
        np.testing.assert_array_equal(a, b)
