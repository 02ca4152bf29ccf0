"""`keras_kd.teachers.Specialists`: Hinton §5.2 combination vs hand-computed and NumPy optima."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.teachers import Specialists
from keras_kd.teachers.specialists import combine_specialists

NUM_FEATURES, NUM_CLASSES = 4, 6
SUBSETS = [[0, 1], [4, 2, 5]]


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_objective(q, p_g, specialist_probs, subsets):
    """KL(p_g || q) + sum_m KL(p_m || q_m), q_m = (q on subset m, mass of q elsewhere)."""
    value = (p_g * (np.log(p_g) - np.log(q))).sum()
    for p_m, subset in zip(specialist_probs, subsets):
        q_m = np.append(q[subset], 1.0 - q[subset].sum())
        value += (p_m * (np.log(p_m) - np.log(q_m))).sum()
    return value


def np_minimise(p_g, specialist_probs, subsets, max_steps=100000, learning_rate=1.0):
    """The optimum by gradient descent on the logits v of q = softmax(v), as Hinton §5.2 does.

    Gradient of `-sum_c a_c log q_c - sum_m d_m log(sum_{c not in m} q_c)` (the objective up to
    constants, `a = p_g + specialists' class probabilities`, `d_m` the dustbin probabilities):
    `(sum a + sum d) q - a - sum_m d_m 1[not in m] q / Q_m`.
    """
    a = np.array(p_g, np.float64)
    outside, dustbins = [], []
    for p_m, subset in zip(specialist_probs, subsets):
        a[subset] += p_m[:-1]
        mask = np.ones_like(a)
        mask[subset] = 0.0
        outside.append(mask)
        dustbins.append(p_m[-1])
    total = a.sum() + sum(dustbins)
    v = np.log(np.asarray(p_g, np.float64))
    for _ in range(max_steps):
        q = np_softmax(v)
        grad = total * q - a
        for mask, d in zip(outside, dustbins):
            grad -= d * mask * q / (mask * q).sum()
        if np.abs(grad).max() < 1e-10:
            return q
        v -= learning_rate / total * grad
    raise AssertionError("the gradient-descent reference did not converge")


def test_one_specialist_matches_the_hand_computed_optimum():
    # p_g = (0.5, 0.3, 0.2); specialist on class {0} says 0.9 for class 0, 0.1 for its dustbin.
    # Optimum: q_0 = (0.5 + 0.9) / 2 = 0.7; the remaining 0.3 splits as p_g does, 0.3 : 0.2.
    q = combine_specialists([[0.5, 0.3, 0.2]], [[[0.9, 0.1]]], [[0]], iterations=5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(q), [[0.7, 0.18, 0.12]], atol=1e-6)


def test_two_overlapping_specialists_reach_the_numerical_optimum():
    rng = np.random.default_rng(0)
    subsets = [[0, 1, 2], [2, 3]]
    p_g = np_softmax(rng.normal(size=5) * 2)
    specialist_probs = [np_softmax(rng.normal(size=len(s) + 1) * 2) for s in subsets]
    reference = np_minimise(p_g, specialist_probs, subsets)
    q = combine_specialists(
        p_g[None].astype("float32"),
        [p[None].astype("float32") for p in specialist_probs],
        subsets,
        iterations=500,
    )
    q = keras.ops.convert_to_numpy(q)[0]
    np.testing.assert_allclose(q.sum(), 1.0, atol=1e-6)
    np.testing.assert_allclose(q, reference, atol=1e-5)
    # The optimum is a real compromise: it differs from the generalist alone.
    assert np.abs(q - p_g).max() > 1e-2


def _models():
    def dense(units, name, seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((NUM_FEATURES,))
        return keras.Model(inputs, keras.layers.Dense(units, name="out")(inputs), name=name)

    generalist = dense(NUM_CLASSES, "generalist", 1)
    generalist.set_weights([w * 2.0 for w in generalist.get_weights()])
    specialists = [dense(len(s) + 1, f"specialist_{m}", 2 + m) for m, s in enumerate(SUBSETS)]
    return generalist, specialists


def _np_logits(model, x):
    w, b = model.get_weights()
    return np.asarray(x, np.float64) @ w + b


@pytest.mark.parametrize("top_k", [None, 1, 2])
def test_model_matches_per_example_numpy_optimum(top_k):
    generalist, specialists = _models()
    x = np.random.default_rng(3).normal(size=(8, NUM_FEATURES)).astype("float32")
    temperature = 2.0
    teacher = Specialists(
        generalist, specialists, SUBSETS, top_k=top_k, temperature=temperature, iterations=400
    )
    out = keras.ops.convert_to_numpy(teacher(x))
    p_g = np_softmax(_np_logits(generalist, x) / temperature)
    p_s = [np_softmax(_np_logits(s, x) / temperature) for s in specialists]
    uses = []
    for i in range(len(x)):
        top = set(np.argsort(-p_g[i])[: top_k or NUM_CLASSES].tolist())
        active = [m for m, s in enumerate(SUBSETS) if top & set(s)]
        uses.append(len(active))
        q = np_minimise(p_g[i], [p_s[m][i] for m in active], [SUBSETS[m] for m in active])
        # softmax(output / T) is the combined distribution q.
        np.testing.assert_allclose(np_softmax(out[i] / temperature), q, atol=1e-5)
        np.testing.assert_allclose(out[i], temperature * np.log(q), atol=1e-4)
    if top_k == 1:
        assert set(uses) <= {0, 1}


def test_dustbin_mass_is_spread_like_the_generalist():
    # Specialist on {0, 1} is sure the class is neither: the mass moves to classes 2 and 3 in the
    # generalist's proportions 0.2 : 0.1 (hand computed: q = (0.35, 0.15, 1/3, 1/6)).
    q = combine_specialists([[0.4, 0.3, 0.2, 0.1]], [[[0.3, 0.0, 0.7]]], [[0, 1]], iterations=200)
    q = keras.ops.convert_to_numpy(q)[0]
    # Hand computation: q_0 = (0.4 + 0.3) / 2, q_1 = (0.3 + 0) / 2; q_2 : q_3 = 0.2 : 0.1.
    np.testing.assert_allclose(q, [0.35, 0.15, 1 / 3, 1 / 6], atol=1e-6)


def test_distiller_trains_from_specialists_live_or_cached():
    generalist, specialists = _models()
    teacher = Specialists(generalist, specialists, SUBSETS, top_k=2, temperature=4.0)
    x = np.random.default_rng(5).normal(size=(32, NUM_FEATURES)).astype("float32")
    y = np.random.default_rng(6).integers(0, NUM_CLASSES, 32)
    inputs = keras.Input((NUM_FEATURES,))
    student = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(inputs))
    losses = []
    for live in (True, False):
        distiller = keras_kd.Distiller(
            teacher if live else None, student, keras_kd.SoftTargetDistillation(4.0)
        )
        distiller.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        if live:
            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        else:
            data = keras_kd.cache_teacher_logits(teacher, x, y).batch(8)
        losses.append(distiller.evaluate(data, verbose=0, return_dict=True)["distillation_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] > 0


def test_keras_round_trip(tmp_path):
    generalist, specialists = _models()
    x = np.random.default_rng(4).normal(size=(5, NUM_FEATURES)).astype("float32")
    teacher = Specialists(generalist, specialists, SUBSETS, top_k=2, temperature=3.0)
    expected = keras.ops.convert_to_numpy(teacher(x))
    config = Specialists.from_config(teacher.get_config()).get_config()
    assert config["class_subsets"] == SUBSETS and config["top_k"] == 2
    path = tmp_path / "specialists.keras"
    teacher.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Specialists)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), expected, atol=1e-5)
    assert all(not m.trainable for m in (generalist, *specialists))


def test_invalid_arguments_name_the_problem():
    generalist, specialists = _models()
    with pytest.raises(ValueError, match="one class list per specialist"):
        Specialists(generalist, specialists, [[0, 1]])
    with pytest.raises(ValueError, match=r"class_subsets\[1\] = \[4, 2, 9\] has ids outside"):
        Specialists(generalist, specialists, [[0, 1], [4, 2, 9]])
    with pytest.raises(ValueError, match="distinct class ids"):
        Specialists(generalist, specialists, [[0, 0], [4, 2, 5]])
    teacher = Specialists(generalist, specialists, [[0, 1, 3], [4, 2, 5]])
    with pytest.raises(ValueError, match=r"specialists\[0\] has 3 outputs"):
        teacher(np.zeros((1, NUM_FEATURES), "float32"))


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0.0, np.float32("inf")])
def test_non_finite_or_non_positive_temperature_is_refused(bad):
    generalist, specialists = _models()
    with pytest.raises(ValueError, match="temperature must be a finite real number > 0"):
        Specialists(generalist, specialists, SUBSETS, temperature=bad)


def test_argument_types_are_checked_not_truncated():
    generalist, specialists = _models()
    with pytest.raises(TypeError, match="temperature must be a finite real number > 0, got '4'"):
        Specialists(generalist, specialists, SUBSETS, temperature="4")
    with pytest.raises(TypeError, match="top_k must be a positive integer, got True"):
        Specialists(generalist, specialists, SUBSETS, top_k=True)
    with pytest.raises(ValueError, match="top_k must be a positive integer, got 0"):
        Specialists(generalist, specialists, SUBSETS, top_k=0)
    with pytest.raises(TypeError, match="iterations must be a positive integer, got 2.0"):
        Specialists(generalist, specialists, SUBSETS, iterations=2.0)
    # A float class id was silently truncated by int() before.
    with pytest.raises(TypeError, match=r"class_subsets\[1\]\[0\] must be a non-negative "
                                        r"integer, got 4.5"):
        Specialists(generalist, specialists, [[0, 1], [4.5, 2, 5]])
    with pytest.raises(ValueError, match=r"class_subsets\[0\]\[1\] must be a non-negative "
                                         r"integer, got -1"):
        Specialists(generalist, specialists, [[0, -1], [4, 2, 5]])
    with pytest.raises(TypeError, match=r"class_subsets\[0\] must be a list of class ids"):
        Specialists(generalist, specialists, [3, [4, 2, 5]])
    teacher = Specialists(generalist, specialists, [np.array([0, 1]), [np.int64(4), 2, 5]],
                          top_k=np.int64(2), temperature=np.float32(2.0))
    assert teacher.class_subsets == SUBSETS and teacher.top_k == 2
    assert teacher.temperature == 2.0 and type(teacher.temperature) is float
