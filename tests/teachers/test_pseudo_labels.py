"""Pseudo-label selection vs NumPy, matched thresholds, and the labelled + unlabelled fit."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.objective import term_weights
from keras_kd.teachers.pseudo_labels import (
    data_distillation_set,
    matched_thresholds,
    pseudo_labels,
)


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_pseudo_labels_equal_numpy():
    p = np_softmax(np.random.default_rng(0).normal(size=(50, 4)) * 2)
    labels, keep = pseudo_labels(p, 0.6)
    np.testing.assert_array_equal(labels, p.argmax(1))
    np.testing.assert_array_equal(keep, p.max(1) >= 0.6)
    tau = np.array([0.3, 0.9, 0.5, np.inf])
    labels, keep = pseudo_labels(p, tau)
    np.testing.assert_array_equal(keep, p.max(1) >= tau[p.argmax(1)])
    assert not keep[labels == 3].any()


def np_matched(p, y, classes, floor=0.0):
    share = np.bincount(y, minlength=classes) / len(y)
    conf, lab = p.max(1), p.argmax(1)
    cands = [np.sort(conf[(lab == c) & (conf >= floor)])[::-1] for c in range(classes)]
    n = sum(len(c) for c in cands)
    tau = np.full(classes, np.inf)
    for c in range(classes):
        k = min(len(cands[c]), int(np.floor(share[c] * n + 1e-9)))
        if k:
            tau[c] = cands[c][k - 1]
    return tau


def test_matched_thresholds_equal_numpy_and_match_the_class_shares():
    rng = np.random.default_rng(1)
    p = np_softmax(rng.normal(size=(400, 3)) * 3)
    y = np.array([0] * 10 + [1] * 20 + [2] * 10)
    tau = matched_thresholds(p, y)
    np.testing.assert_array_equal(tau, np_matched(p, y, 3))
    labels, keep = pseudo_labels(p, tau)
    kept = np.bincount(labels[keep], minlength=3)
    predicted = np.bincount(labels, minlength=3)
    # Each class keeps min(its candidates, its labelled share of all 400 candidates).
    np.testing.assert_array_equal(kept, np.minimum(predicted, [100, 200, 100]))
    floor = matched_thresholds(p, y, min_threshold=0.8)
    np.testing.assert_array_equal(floor, np_matched(p, y, 3, 0.8))
    assert np.all(floor >= 0.8)
    absent = matched_thresholds(p, np.array([0, 1, 0, 1]))
    assert np.isinf(absent[2])


def test_thresholds_outside_the_unit_interval_are_refused():
    p = np_softmax(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"threshold must be a real number in \[0, 1\]"):
        pseudo_labels(p, 1.5)
    with pytest.raises(ValueError, match=r"threshold\[1\] must be in \[0, 1\]"):
        pseudo_labels(p, [0.5, -0.1])
    with pytest.raises(ValueError, match="one per class"):
        pseudo_labels(p, [0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"min_threshold must be a real number in \[0, 1\]"):
        matched_thresholds(p, [0, 1], min_threshold=2.0)
    with pytest.raises(TypeError, match="threshold must be a real number"):
        pseudo_labels(p, "high")


def small_models(seed=0):
    keras.utils.set_random_seed(seed)
    t_in = keras.Input((4,))
    teacher = keras.Model(t_in, keras.layers.Dense(3)(t_in), name="teacher")
    s_in = keras.Input((4,))
    student = keras.Model(s_in, keras.layers.Dense(3)(s_in), name="student")
    return teacher, student


def test_data_distillation_set_and_one_step_of_its_losses():
    teacher, student = small_models()
    rng = np.random.default_rng(2)
    x_l, y_l = rng.normal(size=(6, 4)).astype("float32"), np.array([0, 1, 2, 0, 1, 2])
    x_u = rng.normal(size=(30, 4)).astype("float32")
    with pytest.raises(ValueError, match=r"threshold must be a real number in \[0, 1\]"):
        data_distillation_set(teacher, x_l, y_l, x_u, threshold=-0.5)
    dd = data_distillation_set(teacher, x_l, y_l, x_u, threshold=0.4)
    probs = np_softmax(np.asarray(teacher(x_u)))
    np.testing.assert_array_equal(dd.selected, probs.max(1) >= 0.4)
    assert dd.num_labelled == 6 and dd.num_selected == int((probs.max(1) >= 0.4).sum())

    batch = next(iter(dd.dataset.batch(64)))
    x, y, w = batch
    n = 6 + dd.num_selected
    np.testing.assert_array_equal(w["label"].numpy(), [1.0] * 6 + [0.0] * dd.num_selected)
    np.testing.assert_array_equal(y.numpy()[6:], probs.argmax(1)[dd.selected])

    distiller = keras_kd.Distiller(None, student, keras_kd.SoftTargetDistillation(2.0),
                                   student_loss_weight=0.5)
    distiller.compile(keras.optimizers.SGD(0.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"], weighted_metrics=["accuracy"])
    logs = distiller.train_on_batch(x, y, w, return_dict=True)
    s = np.asarray(student(x["keras_kd_inputs"]), np.float64)
    t = x["keras_kd_teacher_outputs"]["logits"].numpy().astype(np.float64)
    ce = -np.log(np_softmax(s))[np.arange(n), y.numpy()]
    label = (ce * w["label"].numpy()).sum() / n  # Keras: sum(w * l) / batch
    p, q = np_softmax(t / 2), np_softmax(s / 2)
    kd = 4 * (p * (np.log(p) - np.log(q))).sum(1).mean()
    np.testing.assert_allclose(logs["student_loss"], label, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], kd, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.5 * label + 0.5 * kd, rtol=1e-5)
    # Keras's weighted metrics use the label weights (the labelled examples); plain metrics
    # count every example (the pseudo-labelled ones against their pseudo-labels).
    np.testing.assert_allclose(logs["weighted_accuracy"],
                               (s.argmax(1)[:6] == y.numpy()[:6]).mean(), atol=1e-6)
    np.testing.assert_allclose(logs["accuracy"], (s.argmax(1) == y.numpy()).mean(), atol=1e-6)


def test_term_weights_refuse_unknown_keys():
    assert term_weights(None) == (None, None)
    w = tf.ones(3)
    assert term_weights({"label": w})[1] is None
    with pytest.raises(ValueError, match="sample_weight keys must be among"):
        term_weights({"labels": w})
