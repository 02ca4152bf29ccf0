"""DIST (`dist_kd`, `DISTDistillation`): Pearson-correlation matching across classes and batch."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd.losses import REGISTRY, DISTDistillation, dist_kd, get


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_pearson_rows(a, b, eps=1e-8):
    """Official `pearson_correlation` (rows of a with rows of b, eps added to the norm product)."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)


def np_dist_official(z_s, z_t, beta=1.0, gamma=1.0, tau=1.0):
    """Float64 port of `DIST.forward` (hunto/image_classification_sota@6f7a70a,
    lib/models/losses/dist_kd.py lines 4-34): the batch-level scalar loss."""
    y_s, y_t = np_softmax(z_s / tau), np_softmax(z_t / tau)
    inter = tau**2 * (1 - np_pearson_rows(y_s, y_t).mean())
    intra = tau**2 * (1 - np_pearson_rows(y_s.T, y_t.T).mean())
    return beta * inter + gamma * intra


def np_dist_per_example(z_t, z_s, beta=1.0, gamma=1.0, tau=1.0, eps=1e-8):
    """The per-example split documented in `dist_kd`, in float64."""
    y_s, y_t = np_softmax(z_s / tau), np_softmax(z_t / tau)
    inter = 1 - np_pearson_rows(y_s, y_t)
    a, b = y_s - y_s.mean(0), y_t - y_t.mean(0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    n = a.shape[0]
    squares = 0.5 * (a**2 / na**2 + b**2 / nb**2)
    intra = n * (squares - a * b / (na * nb + eps)).mean(axis=1)
    return tau**2 * (beta * inter + gamma * intra)


def _logits(seed, shape=(16, 10), scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


def _np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
@pytest.mark.parametrize("beta,gamma", [(1.0, 1.0), (2.0, 0.5), (1.0, 0.0), (0.0, 1.0)])
def test_batch_mean_equals_the_official_loss(temperature, beta, gamma):
    t, s = _logits(0), _logits(1)
    got = _np(dist_kd(t, s, beta, gamma, temperature))
    assert got.shape == (16,) and got.dtype == np.float32
    expected = np_dist_official(s, t, beta, gamma, temperature)
    np.testing.assert_allclose(got.mean(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_per_example_values_match_numpy(temperature):
    t, s = _logits(2), _logits(3)
    got = _np(DISTDistillation(temperature=temperature)((t,), (s,)))
    expected = np_dist_per_example(t, s, tau=temperature)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_inter_term_is_exactly_per_example():
    t, s = _logits(4), _logits(5)
    got = _np(dist_kd(t, s, beta=1.0, gamma=0.0))
    np.testing.assert_allclose(got, 1 - np_pearson_rows(np_softmax(s), np_softmax(t)), atol=1e-5)


def test_intra_shares_are_non_negative_and_average_to_the_batch_correlation():
    t, s = _logits(6), _logits(7)
    intra = _np(dist_kd(t, s, beta=0.0, gamma=1.0))
    assert np.all(intra >= -1e-6)
    expected = 1 - np_pearson_rows(np_softmax(s).T, np_softmax(t).T).mean()
    np.testing.assert_allclose(intra.mean(), expected, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_identical_logits_give_zero_up_to_the_official_eps(temperature):
    t = _logits(8, scale=10.0)
    # eps = 0: exactly the correlations of identical vectors, 1 -> loss 0
    np.testing.assert_allclose(_np(dist_kd(t, t, 1.0, 1.0, temperature, eps=0.0)), 0.0, atol=1e-5)
    # the official eps = 1e-8 in the denominators leaves eps / ||a||^2 (large for a class that is
    # nearly constant over the batch): the values are those of the reference, not 0
    got = _np(dist_kd(t, t, 1.0, 1.0, temperature))
    expected = np_dist_per_example(t, t, tau=temperature)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(got.mean(), np_dist_official(t, t, tau=temperature), atol=1e-5)


def test_invariant_to_shift_of_each_examples_logits():
    t, s = _logits(9), _logits(10)
    shift = np.random.default_rng(11).normal(size=(16, 1)).astype("float32") * 5
    np.testing.assert_allclose(
        _np(dist_kd(t + shift, s - shift)), _np(dist_kd(t, s)), atol=1e-5, rtol=1e-5
    )


def test_batch_of_one_and_uniform_outputs_have_finite_values_and_gradients():
    t = _logits(12, (1, 10))
    s = tf.Variable(np.zeros((1, 10), "float32"))  # uniform student: a row of equal logits
    with tf.GradientTape() as tape:
        value = dist_kd(t, s)
        total = tf.reduce_sum(value)
    grad = tape.gradient(total, s).numpy()
    assert np.all(np.isfinite(value.numpy())) and np.all(np.isfinite(grad))
    # official: a zero correlation (0 / (0 + eps)) for both terms -> 1 + 1
    np.testing.assert_allclose(value.numpy(), [np_dist_official(s.numpy(), t)], atol=1e-5)
    np.testing.assert_allclose(value.numpy(), [2.0], atol=1e-5)


def test_dense_outputs_treat_positions_as_rows():
    t, s = _logits(13, (2, 3, 4, 5)), _logits(14, (2, 3, 4, 5))
    got = _np(dist_kd(t, s, 1.0, 1.0, 4.0))
    assert got.shape == (2, 3, 4)
    rows_t, rows_s = t.reshape(-1, 5), s.reshape(-1, 5)
    np.testing.assert_allclose(
        got.reshape(-1), np_dist_per_example(rows_t, rows_s, tau=4.0), atol=1e-5, rtol=1e-5
    )
    np.testing.assert_allclose(got.mean(), np_dist_official(rows_s, rows_t, tau=4.0), atol=1e-5)


def test_gradient_of_the_batch_mean_equals_the_official_gradient():
    t, s = _logits(15), _logits(16)
    var = tf.Variable(s)
    with tf.GradientTape() as tape:
        mine = tf.reduce_mean(dist_kd(t, var, 1.0, 1.0, 4.0))
    g_mine = tape.gradient(mine, var).numpy()

    def official(z_s):
        y_s, y_t = tf.nn.softmax(z_s / 4.0), tf.nn.softmax(t / 4.0)

        def pearson(a, b):
            a = a - tf.reduce_mean(a, 1, keepdims=True)
            b = b - tf.reduce_mean(b, 1, keepdims=True)
            return tf.reduce_sum(a * b, 1) / (tf.norm(a, axis=1) * tf.norm(b, axis=1) + 1e-8)

        inter = 1 - tf.reduce_mean(pearson(y_s, y_t))
        intra = 1 - tf.reduce_mean(pearson(tf.transpose(y_s), tf.transpose(y_t)))
        return 16.0 * (inter + intra)

    with tf.GradientTape() as tape:
        ref = official(var)
    np.testing.assert_allclose(g_mine, tape.gradient(ref, var).numpy(), atol=1e-5)
    np.testing.assert_allclose(mine.numpy(), ref.numpy(), atol=1e-5)


def test_temperature_variable_is_read_at_call_time():
    t, s = _logits(17), _logits(18)
    loss = DISTDistillation(temperature=4.0)
    assert loss.temperature_variable() is loss.temperature and not loss.temperature.trainable
    fn = tf.function(lambda a, b: loss((a,), (b,)))
    first = fn(t, s).numpy()
    loss.temperature.assign(1.0)
    second = fn(t, s).numpy()
    np.testing.assert_allclose(first, np_dist_per_example(t, s, tau=4.0), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(second, np_dist_per_example(t, s, tau=1.0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_raises_value_error(bad):
    with pytest.raises(ValueError, match="temperature"):
        DISTDistillation(temperature=bad)


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"beta": -1.0}, ValueError),
        ({"gamma": float("nan")}, ValueError),
        ({"gamma": float("inf")}, ValueError),
        ({"beta": None}, TypeError),
        ({"beta": 0.0, "gamma": 0.0}, ValueError),
        ({"temperature": "1"}, TypeError),
    ],
)
def test_bad_arguments_are_refused(kwargs, error):
    with pytest.raises(error):
        DISTDistillation(**kwargs)


def test_rank_one_input_is_refused():
    with pytest.raises(ValueError, match="classes"):
        dist_kd(np.zeros(4, "float32"), np.zeros(4, "float32"))


def test_registry_and_config_round_trip():
    assert REGISTRY["dist"] is DISTDistillation
    default = get("dist")
    assert isinstance(default, DISTDistillation)
    assert float(_np(default.temperature)) == 1.0 and default.output_family() == "categorical"
    assert not default.needs_labels()
    loss = DISTDistillation(beta=2.0, gamma=0.5, temperature=4.0, name="dist")
    config = loss.get_config()
    assert (config["beta"], config["gamma"], config["temperature"]) == (2.0, 0.5, 4.0)
    restored = DISTDistillation.from_config(config)
    assert restored.name == "dist" and (restored.beta, restored.gamma) == (2.0, 0.5)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    t, s = _logits(19), _logits(20)
    np.testing.assert_allclose(
        _np(again((t,), (s,))), np_dist_per_example(t, s, 2.0, 0.5, 4.0), atol=1e-5, rtol=1e-5
    )
