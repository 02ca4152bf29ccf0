"""`keras_kd.teachers.Ensemble`: combined targets vs NumPy, confidence weights, caching, saving."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.teachers import Ensemble, cache_ensemble_logits
from keras_kd.teachers.cached import CACHE_INPUTS_KEY, CACHE_OUTPUTS_KEY
from keras_kd.teachers.ensemble import combine_teacher_logits, confidence_weights

NUM_FEATURES, NUM_CLASSES = 6, 5


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_logsumexp(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _teachers():
    """Three frozen-to-be teachers of different architectures and output conventions."""
    inputs = keras.Input((NUM_FEATURES,))
    linear = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name="out")(inputs), name="t0")
    inputs = keras.Input((NUM_FEATURES,))
    h = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    z = keras.layers.Dense(NUM_CLASSES, name="out")(h)
    mlp_softmax = keras.Model(inputs, keras.layers.Softmax()(z), name="t1")
    inputs = keras.Input((NUM_FEATURES,))
    dense_softmax = keras.Model(
        inputs,
        keras.layers.Dense(NUM_CLASSES, activation="softmax", name="out")(inputs),
        name="t2",
    )
    for model, scale in zip((linear, mlp_softmax, dense_softmax), (2.0, 1.5, 3.0)):
        model.set_weights([w * scale for w in model.get_weights()])
    return [linear, mlp_softmax, dense_softmax]


def np_teacher_logits(teachers, x):
    """Each teacher's pre-softmax logits, computed by hand from its weights."""
    (w0, b0), (w1, b1, w2, b2), (w3, b3) = (t.get_weights() for t in teachers)
    x = np.asarray(x, np.float64)
    return np.stack([x @ w0 + b0, np.maximum(x @ w1 + b1, 0) @ w2 + b2, x @ w3 + b3])


def _x(n=16, seed=0):
    return np.random.default_rng(seed).normal(size=(n, NUM_FEATURES)).astype("float32")


def np_probability_average(z, c, temperature):
    """T * log(sum_k c_k softmax(z_k / T)); c is (teachers,) or (teachers, batch)."""
    c = np.asarray(c, np.float64)
    c = c[:, None, None] if c.ndim == 1 else c[..., None]
    return temperature * np_logsumexp(np.log(c) + np_log_softmax(z / temperature), axis=0)


def np_confidence(z, w, temperature, labels=None):
    log_p = np_log_softmax(z / temperature)
    if labels is None:
        score = (np.exp(log_p) * log_p).sum(-1)
    else:
        score = np.take_along_axis(log_p, labels[None, :, None], axis=-1)[..., 0]
    a = np.log(np.asarray(w, np.float64))[:, None] + score
    a = np.exp(a - a.max(axis=0, keepdims=True))
    return a / a.sum(axis=0, keepdims=True)


WEIGHTS = [1.0, 2.0, 3.0]
W = np.array(WEIGHTS) / 6.0


def test_probabilities_mode_matches_numpy_and_softens_exactly():
    teachers, x = _teachers(), _x()
    ens = Ensemble(teachers, weights=WEIGHTS, temperature=3.0)
    out = keras.ops.convert_to_numpy(ens(x))
    z = np_teacher_logits(teachers, x)
    np.testing.assert_allclose(out, np_probability_average(z, W, 3.0), atol=1e-5)
    # softmax(output / T) is exactly the weighted mean of the softened distributions.
    mean_p = (W[:, None, None] * np.exp(np_log_softmax(z / 3.0))).sum(0)
    np.testing.assert_allclose(np.exp(np_log_softmax(out / 3.0)), mean_p, atol=1e-6)


def test_logits_mode_matches_numpy():
    teachers, x = _teachers(), _x()
    out = keras.ops.convert_to_numpy(Ensemble(teachers, WEIGHTS, combine="logits")(x))
    z = np_teacher_logits(teachers, x)
    np.testing.assert_allclose(out, (W[:, None, None] * z).sum(0), atol=1e-5)


def test_confidence_mode_matches_numpy_and_weights_sum_to_one():
    teachers, x = _teachers(), _x(32)
    ens = Ensemble(teachers, WEIGHTS, combine="confidence", temperature=2.0)
    z = np_teacher_logits(teachers, x)
    c_ref = np_confidence(z, W, 2.0)
    c = keras.ops.convert_to_numpy(ens.weights_per_example(x))
    np.testing.assert_allclose(c, c_ref, atol=1e-6)
    np.testing.assert_allclose(c.sum(axis=0), np.ones(32), atol=1e-6)
    assert (c > 0).all() and c.std(axis=1).min() > 1e-3  # really per example
    out = keras.ops.convert_to_numpy(ens(x))
    np.testing.assert_allclose(out, np_probability_average(z, c_ref, 2.0), atol=1e-5)


def test_confidence_favours_the_sharper_teacher():
    z = np.array([[[8.0, 0.0, 0.0]], [[0.1, 0.0, 0.2]]], np.float32)  # confident vs flat
    c = keras.ops.convert_to_numpy(confidence_weights(z, [0.5, 0.5], 1.0))
    assert c[0, 0] > c[1, 0]


def test_label_confidence_through_cache_matches_numpy():
    teachers, x = _teachers(), _x(20)
    y = np.random.default_rng(1).integers(0, NUM_CLASSES, 20)
    ens = Ensemble(teachers, WEIGHTS, combine="confidence", confidence="label", temperature=2.0)
    with pytest.raises(ValueError, match="cache_ensemble_logits"):
        ens(x)
    cached = list(cache_ensemble_logits(ens, x, y, batch_size=8).batch(20))[0]
    features, labels = cached
    z = np_teacher_logits(teachers, x)
    c_ref = np_confidence(z, W, 2.0, y)
    np.testing.assert_allclose(c_ref.sum(0), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        features[CACHE_OUTPUTS_KEY]["logits"].numpy(), np_probability_average(z, c_ref, 2.0),
        atol=1e-5,
    )
    np.testing.assert_array_equal(labels.numpy(), y)
    np.testing.assert_allclose(features[CACHE_INPUTS_KEY].numpy(), x)
    c = keras.ops.convert_to_numpy(ens.weights_per_example(x, labels=y))
    np.testing.assert_allclose(c, c_ref, atol=1e-6)


def test_functional_combine_is_the_model():
    teachers, x = _teachers(), _x()
    z = np_teacher_logits(teachers, x).astype("float32")
    for mode in ("probabilities", "logits", "confidence"):
        got = keras.ops.convert_to_numpy(combine_teacher_logits(z, W, mode, 2.5))
        ref = keras.ops.convert_to_numpy(Ensemble(teachers, WEIGHTS, mode, 2.5)(x))
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_temperature_variable_is_shared_with_the_loss():
    teachers, x = _teachers(), _x()
    loss = keras_kd.SoftTargetDistillation(temperature=4.0)
    ens = Ensemble(teachers, temperature=loss.temperature)
    loss.temperature.assign(2.0)
    z = np_teacher_logits(teachers, x)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ens(x)),
        np_probability_average(z, np.ones(3) / 3, 2.0),
        atol=1e-5,
    )
    assert ens.get_config()["temperature"] == 2.0
    # The loss owns the variable; the ensemble only reads it (it is not saved twice).
    assert len(ens.weights) == sum(len(t.weights) for t in teachers)


def test_distiller_with_ensemble_teacher_live_and_cached_agree_and_teachers_stay_frozen():
    teachers, x = _teachers(), _x(64)
    y = np.random.default_rng(2).integers(0, NUM_CLASSES, 64)
    before = [[w.copy() for w in t.get_weights()] for t in teachers]
    ens = Ensemble(teachers, temperature=4.0)
    assert all(not t.trainable for t in teachers) and not ens.trainable_weights

    def student():
        keras.utils.set_random_seed(7)
        inputs = keras.Input((NUM_FEATURES,))
        return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(inputs))

    results = []
    for cached in (False, True):
        distiller = keras_kd.Distiller(
            ens if not cached else None,
            student(),
            keras_kd.SoftTargetDistillation(4.0),
            student_loss_weight=0.5,
        )
        distiller.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        if cached:
            data = keras_kd.cache_teacher_logits(ens, x, y).batch(16)
        else:
            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        history = distiller.fit(data, epochs=1, verbose=0, shuffle=False)
        results.append(history.history["distillation_loss"][0])
    assert results[0] == pytest.approx(results[1], rel=1e-5)
    for t, ws in zip(teachers, before):
        for a, b in zip(t.get_weights(), ws):
            np.testing.assert_array_equal(a, b)


def test_keras_round_trip(tmp_path):
    teachers, x = _teachers(), _x()
    ens = Ensemble(teachers, WEIGHTS, combine="confidence", temperature=2.0, name="ens")
    expected = keras.ops.convert_to_numpy(ens(x))
    clone = Ensemble.from_config(ens.get_config())
    assert clone.get_config()["weights"] == pytest.approx(list(W))
    assert clone.combine == "confidence" and clone.temperature == 2.0
    path = tmp_path / "ensemble.keras"
    ens.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Ensemble)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, atol=1e-6)


def test_invalid_arguments_name_the_problem():
    teachers = _teachers()
    # Wording of keras_kd.validation (one form for every argument check in the library).
    with pytest.raises(ValueError, match=r"weights must be a sequence of 3 non-negative finite "
                                         r"real numbers, got \[1.0, 2.0\]\. Give one positive"):
        Ensemble(teachers, weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"weights\[1\] must be a finite real number > 0, got 0.0"):
        Ensemble(teachers, weights=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="combine must be one of"):
        Ensemble(teachers, combine="median")
    with pytest.raises(ValueError, match="non-empty list"):
        Ensemble([])
    with pytest.raises(TypeError, match=r"teachers\[1\] must be a keras.Model"):
        Ensemble([teachers[0], "model"])
    with pytest.raises(ValueError, match="temperature must be a finite real number > 0, got 0.0"):
        Ensemble(teachers, temperature=0.0)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), np.float32("inf")])
def test_non_finite_temperature_and_weights_are_refused(bad):
    teachers = _teachers()
    with pytest.raises(ValueError, match="temperature must be a finite real number > 0"):
        Ensemble(teachers, temperature=bad)
    with pytest.raises(ValueError, match="temperature must be a finite real number > 0"):
        Ensemble(teachers, temperature=keras.Variable(bad, trainable=False))
    with pytest.raises(ValueError, match=r"weights\[2\] must be a non-negative finite real"):
        Ensemble(teachers, weights=[1.0, 1.0, bad])
    with pytest.raises(ValueError, match="combine must be one of"):
        combine_teacher_logits(np.zeros((3, 2, NUM_CLASSES), "float32"), W, "median")


def test_numpy_scalars_are_accepted_and_types_refused():
    teachers, x = _teachers(), _x()
    ens = Ensemble(teachers, [np.float32(w) for w in WEIGHTS], temperature=np.float64(2.0))
    ref = Ensemble(teachers, WEIGHTS, temperature=2.0)
    assert ens.temperature == 2.0 and ens.teacher_weights == pytest.approx(list(W))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ens(x)),
                               keras.ops.convert_to_numpy(ref(x)), atol=1e-6)
    for bad in ("4", True, None):
        with pytest.raises(TypeError, match="temperature must be a finite real number > 0"):
            Ensemble(teachers, temperature=bad)
    with pytest.raises(TypeError, match=r"weights\[0\] must be a non-negative finite"):
        Ensemble(teachers, weights=[True, 1.0, 1.0])
    with pytest.raises(TypeError, match="combine must be one of"):
        Ensemble(teachers, combine=None)
    with pytest.raises(TypeError, match="batch_size must be a positive integer"):
        cache_ensemble_logits(ens, x, np.zeros(len(x), "int64"), batch_size=8.0)
