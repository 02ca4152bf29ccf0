"""Knowledge concentration: vertical KD and self-paced weights vs NumPy; teacher, head, fit."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.teachers.concentration import (
    ConcentrationDistillation,
    SelfPacedScaling,
    SelfPacedSchedule,
    StructurallyConnected,
    VerticalSpecialists,
    self_paced_weights,
    vertical_of_classes,
    vertical_sigmoid_distillation,
    vertical_sigmoid_targets,
    vertical_soft_target_kl,
)

SUBSETS = [[0, 3], [1, 4, 2]]  # a partition of 0..4


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_vertical_kl(t, s, y, subsets, temperature):
    owner = {c: k for k, sub in enumerate(subsets) for c in sub}
    out = []
    for ti, si, yi in zip(t, s, y):
        cls = sorted(subsets[owner[yi]])
        p, q = np_softmax(ti[cls] / temperature), np_softmax(si[cls] / temperature)
        out.append(temperature ** 2 * (p * np.log(p / q)).sum())
    return np.array(out)


def np_self_paced(losses, groups, num_groups, pace):
    pace = np.broadcast_to(np.asarray(pace, float), (num_groups,))
    w = np.zeros_like(losses)
    for k in range(num_groups):
        member = groups == k
        n = member.sum()
        if n == 0:
            continue
        keep = max(int(np.ceil(pace[k] * n)), 1)
        threshold = np.sort(losses[member])[keep - 1]
        w[member & (losses <= threshold)] = 1.0
    return w


def test_vertical_kl_equals_numpy():
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    y = np.array([0, 1, 2, 3, 4, 0])
    owner = vertical_of_classes(SUBSETS, 5)
    np.testing.assert_array_equal(owner, [0, 1, 1, 0, 1])
    got = np.asarray(vertical_soft_target_kl(t, s, y, owner, 2.0))
    np.testing.assert_allclose(got, np_vertical_kl(t, s, y, SUBSETS, 2.0), atol=1e-5)
    onehot = np.eye(5)[y]
    np.testing.assert_allclose(np.asarray(vertical_soft_target_kl(t, s, onehot, owner, 2.0)),
                               got, atol=1e-6)


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_sigmoid_targets(t, y, subsets, top_k):
    """Gao et al.: the selected teacher's sigmoids on its vertical's top K, 0 elsewhere."""
    owner = {c: k for k, sub in enumerate(subsets) for c in sub}
    z = np.zeros_like(t)
    for i, (ti, yi) in enumerate(zip(t, y)):
        cls = np.array(sorted(subsets[owner[yi]]))
        if top_k is not None:
            cls = cls[np.argsort(-ti[cls])[:top_k]]
        z[i, cls] = np_sigmoid(ti[cls])
    return z


def np_sigmoid_distillation(t, s, y, subsets, top_k):
    z = np_sigmoid_targets(t, y, subsets, top_k)
    q = np_sigmoid(s)
    return -(z * np.log(q) + (1 - z) * np.log(1 - q)).sum(axis=1)


@pytest.mark.parametrize("top_k", [None, 1, 2])
def test_vertical_sigmoid_distillation_equals_numpy(top_k):
    rng = np.random.default_rng(7)
    t, s = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    y = np.array([0, 1, 2, 3, 4, 2])
    owner = vertical_of_classes(SUBSETS, 5)
    np.testing.assert_allclose(np.asarray(vertical_sigmoid_targets(t, y, owner, top_k)),
                               np_sigmoid_targets(t, y, SUBSETS, top_k), atol=1e-6)
    expected = np_sigmoid_distillation(t, s, y, SUBSETS, top_k)
    got = np.asarray(vertical_sigmoid_distillation(t, s, y, owner, top_k))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    loss = ConcentrationDistillation(SUBSETS, targets="sigmoid", top_k=top_k, self_paced=False)
    assert loss.output_family() == "bernoulli"
    np.testing.assert_allclose(np.asarray(loss((t,), (s,), labels=y)), expected, atol=1e-5)
    restored = ConcentrationDistillation.from_config(loss.get_config())
    assert (restored.targets, restored.top_k) == ("sigmoid", top_k)


@pytest.mark.parametrize("level", ["vertical", "class"])
def test_self_paced_scaling_equals_numpy(level, tmp_path):
    keras.utils.set_random_seed(0)
    layer = SelfPacedScaling(SUBSETS, level=level)
    x = np.random.default_rng(8).normal(size=(4, 5)).astype("float32")
    out = np.asarray(layer(x))
    gamma = np.asarray(layer.gamma)
    sizes = np.array([2.0, 3.0])  # N_v of each vertical
    owner = vertical_of_classes(SUBSETS, 5)
    centres = np.sqrt(sizes) if level == "vertical" else np.sqrt(sizes)[owner]
    np.testing.assert_allclose(gamma, centres, atol=1e-2)  # (sqrt(N_v), 1e-3)
    per_class = gamma[owner] if level == "vertical" else gamma
    norms = np.stack([np.sqrt((x[:, SUBSETS[k]] ** 2).sum(1)) for k in owner], axis=1)
    np.testing.assert_allclose(out, per_class * x / norms, rtol=1e-5)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, SelfPacedScaling(SUBSETS, level=level, initial=10.0)(inputs))
    model.save(tmp_path / "scaled.keras")
    loaded = keras.models.load_model(tmp_path / "scaled.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    assert len(model.trainable_weights) == 1


@pytest.mark.parametrize("pace", [0.5, 1.0, 0.2, [0.3, 0.8]])
def test_self_paced_weights_equal_numpy(pace):
    rng = np.random.default_rng(1)
    losses = rng.uniform(size=11)
    losses[3] = losses[7]  # a tie
    groups = rng.integers(0, 2, size=11)
    got = np.asarray(self_paced_weights(losses, groups, 2, pace))
    np.testing.assert_array_equal(got, np_self_paced(losses, groups, 2, pace))


def test_loss_applies_the_weights_and_the_schedule_raises_the_pace():
    rng = np.random.default_rng(2)
    t, s = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    y = np.array([0, 1, 2, 3, 4, 0, 1, 3])
    loss = ConcentrationDistillation(SUBSETS, temperature=2.0, pace=0.5)
    kd = np_vertical_kl(t, s, y, SUBSETS, 2.0)
    groups = vertical_of_classes(SUBSETS, 5)[y]
    expected = kd * np_self_paced(kd, groups, 2, 0.5)
    np.testing.assert_allclose(np.asarray(loss((t,), (s,), labels=y)), expected, atol=1e-5)
    schedule = SelfPacedSchedule(loss, epochs=[2, 4], start=0.5)
    schedule.on_epoch_begin(1)
    np.testing.assert_allclose(np.asarray(loss.pace), [0.75, 0.625])
    schedule.on_epoch_begin(4)
    np.testing.assert_allclose(np.asarray(loss.pace), [1.0, 1.0])
    plain = ConcentrationDistillation(SUBSETS, temperature=2.0, self_paced=False)
    np.testing.assert_allclose(np.asarray(plain((t,), (s,), labels=y)), kd, atol=1e-5)
    restored = ConcentrationDistillation.from_config(loss.get_config())
    np.testing.assert_allclose(np.asarray(restored.pace), [1.0, 1.0])


def specialists(seed=0):
    keras.utils.set_random_seed(seed)
    models = []
    for k, subset in enumerate(SUBSETS):
        inputs = keras.Input((3,))
        extra = 1 if k == 1 else 0  # the second specialist has a dustbin
        models.append(keras.Model(inputs, keras.layers.Dense(len(subset) + extra)(inputs)))
    return models


def test_vertical_specialists_put_each_logit_at_its_class(tmp_path):
    specs = specialists()
    teacher = VerticalSpecialists(specs, SUBSETS)
    x = np.random.default_rng(3).normal(size=(4, 3)).astype("float32")
    out = np.asarray(teacher(x))
    a, b = np.asarray(specs[0](x)), np.asarray(specs[1](x))
    np.testing.assert_allclose(out[:, [0, 3]], a, atol=1e-6)
    np.testing.assert_allclose(out[:, [1, 4, 2]], b[:, :3], atol=1e-6)
    teacher.save(tmp_path / "teacher.keras")
    loaded = keras.models.load_model(tmp_path / "teacher.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)), out, atol=1e-6)


def test_bad_verticals_and_paces_are_refused():
    with pytest.raises(ValueError, match="targets must be one of"):
        ConcentrationDistillation(SUBSETS, targets="kl")
    with pytest.raises(ValueError, match="top_k applies to targets='sigmoid'"):
        ConcentrationDistillation(SUBSETS, top_k=3)
    with pytest.raises(ValueError, match="level must be one of"):
        SelfPacedScaling(SUBSETS, level="node")
    with pytest.raises(ValueError, match="expects 5 logits"):
        SelfPacedScaling(SUBSETS)(np.zeros((2, 4), "float32"))
    with pytest.raises(ValueError, match="class 1 is in class_subsets"):
        ConcentrationDistillation([[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="must partition the classes"):
        ConcentrationDistillation([[0, 1], [3]])
    with pytest.raises(ValueError, match=r"pace must be a real number in \[0, 1\]"):
        ConcentrationDistillation(SUBSETS, pace=1.5)
    with pytest.raises(ValueError, match="pace must be > 0"):
        ConcentrationDistillation(SUBSETS, pace=0.0)
    specs = specialists()
    with pytest.raises(ValueError, match=r"specialists\[0\] has 2 outputs"):
        VerticalSpecialists(specs, [[0, 3, 1], [4, 2]])


def test_structurally_connected_head_round_trips(tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, StructurallyConnected(SUBSETS, units=4)(inputs))
    model.save(tmp_path / "head.keras")
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "head.keras")(x), model(x),
                               atol=1e-6)
    assert model.count_params() == (3 * 4 + 4) * 2 + (4 * 2 + 2) + (4 * 3 + 3)


def test_structurally_connected_shared_units():
    # The paper's SC(s_2, x): x hidden units shared by every vertical's classes.
    inputs = keras.Input((3,))
    head = StructurallyConnected(SUBSETS, units=4, shared_units=2)
    model = keras.Model(inputs, head(inputs))
    assert model.count_params() == (3 * 2 + 2) + (3 * 4 + 4) * 2 + (6 * 2 + 2) + (6 * 3 + 3)
    x = np.random.default_rng(9).normal(size=(5, 3)).astype("float32")
    before = np.asarray(model(x))
    head.shared.bias.assign(head.shared.bias + 1.0)  # moves every vertical
    after = np.asarray(model(x))
    assert not np.allclose(after[:, [0, 3]], before[:, [0, 3]])
    assert not np.allclose(after[:, [1, 2, 4]], before[:, [1, 2, 4]])
    restored = StructurallyConnected.from_config(head.get_config())
    assert restored.shared_units == 2


def test_paper_formulation_fits():
    # Sigmoid top-K targets, no hard-label term, SelfPacedScaling on the student's logits.
    inputs = keras.Input((3,))
    scaling = SelfPacedScaling(SUBSETS, name="pace")
    student = keras.Model(inputs, scaling(keras.layers.Dense(5)(inputs)))
    teacher = VerticalSpecialists(specialists(), SUBSETS)
    loss = ConcentrationDistillation(SUBSETS, targets="sigmoid", top_k=2, self_paced=False)
    distiller = keras_kd.Distiller(teacher, student, loss, student_loss_weight=0.0)
    distiller.compile(keras.optimizers.Adam(0.05))
    y = np.random.default_rng(10).integers(0, 5, size=20)
    x = np.random.default_rng(11).normal(size=(20, 3)).astype("float32")
    gamma_before = np.asarray(scaling.gamma).copy()
    history = distiller.fit(x, y, batch_size=10, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.allclose(np.asarray(scaling.gamma), gamma_before)  # the pace is learnt


def test_structurally_connected_head_and_concentration_fit():
    inputs = keras.Input((3,))
    head = StructurallyConnected(SUBSETS, units=[4, 6], name="head")
    student = keras.Model(inputs, head(keras.layers.Dense(8, activation="relu")(inputs)))
    assert student.output_shape == (None, 5)
    # Block-diagonal: vertical 0's logits (classes 0, 3) do not move with branch 1's weights.
    x = np.random.default_rng(4).normal(size=(5, 3)).astype("float32")
    before = np.asarray(student(x))
    head.heads[1].kernel.assign(head.heads[1].kernel + 1.0)
    after = np.asarray(student(x))
    np.testing.assert_allclose(after[:, [0, 3]], before[:, [0, 3]], atol=1e-6)
    assert not np.allclose(after[:, [1, 2, 4]], before[:, [1, 2, 4]])

    teacher = VerticalSpecialists(specialists(), SUBSETS)
    loss = ConcentrationDistillation(SUBSETS, temperature=2.0, pace=0.5)
    distiller = keras_kd.Distiller(teacher, student, loss, student_loss_weight=0.5)
    distiller.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    y = np.random.default_rng(5).integers(0, 5, size=20)
    x = np.random.default_rng(6).normal(size=(20, 3)).astype("float32")
    teacher_before = [w.copy() for w in teacher.get_weights()]
    history = distiller.fit(x, y, batch_size=10, epochs=2, verbose=0,
                            callbacks=[SelfPacedSchedule(loss, epochs=1)])
    assert np.all(np.isfinite(history.history["loss"]))
    np.testing.assert_allclose(np.asarray(loss.pace), [1.0, 1.0])
    for a, b in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
