"""Every feature / multi-teacher path through the Distiller: one train step's logged losses equal a
reference built independently of `FeatureExtractor`, with non-uniform sample weights; the teacher
stays bit-identical; sample weights change the result."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import losses as kd_losses

BATCH, CLASSES, ALPHA = 8, 3, 0.3
SAMPLE_WEIGHT = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5, 0.25, 1.0], "float32")
_SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def conv_net(prefix: str, width: int) -> keras.Model:
    """Three conv-BN-ReLU blocks (8x8, 4x4, 4x4), an embedding and logits."""
    inputs = keras.Input((8, 8, 1))
    x = inputs
    for i, (channels, stride) in enumerate([(width, 1), (2 * width, 2), (2 * width, 1)], 1):
        x = keras.layers.Conv2D(
            channels, 3, strides=stride, padding="same", name=f"{prefix}_c{i}"
        )(x)
        x = keras.layers.BatchNormalization(name=f"{prefix}_bn{i}")(x)
        x = keras.layers.ReLU(name=f"{prefix}_relu{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(2 * width, activation="relu", name=f"{prefix}_embed")(x)
    return keras.Model(inputs, keras.layers.Dense(CLASSES, name=f"{prefix}_logits")(x),
                       name=f"{prefix}_net")


def taps_model(model: keras.Model, taps) -> keras.Model:
    """Plain functional model of the requested taps (logits = model output: no softmax here)."""
    outputs = []
    for tap in taps:
        if tap.layer is None:
            outputs.append(model.outputs[0])
        else:
            layer = model.get_layer(tap.layer)
            outputs.append(layer.input if tap.pre_activation else layer.output)
    return keras.Model(model.inputs, outputs)


def make_losses(name: str, teacher: keras.Model):
    if name == "hint":
        return [kd_losses.HintDistillation("t_relu2", "s_relu2")]
    if name == "attention":
        return [kd_losses.AttentionTransfer("t_relu2", "s_relu2")]
    if name == "fsp":
        return [kd_losses.FSPDistillation(("t_relu2", "t_relu3"), ("s_relu2", "s_relu3"))]
    if name == "relational":
        return [kd_losses.RelationalDistillation("t_embed", "s_embed")]
    if name == "overhaul":
        return [kd_losses.OverhaulDistillation("t_relu3", "s_relu3", teacher=teacher)]
    if name == "kd_plus_three":
        return [kd_losses.SoftTargetDistillation(4.0),
                kd_losses.HintDistillation("t_relu3", "s_relu3", batch_norm=True),
                kd_losses.AttentionTransfer("t_relu2", "s_relu2"),
                kd_losses.LogitMatchingDistillation()]
    raise ValueError(name)


def np_sparse_ce(logits, y):
    z = logits - logits.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -log_p[np.arange(len(y)), y]


def reference_logs(distiller, teacher_model, student, x, y, weights):
    """Logged terms of one train step, from plain tap models and the loss layers themselves."""
    n = len(x)
    student_out = keras.ops.convert_to_numpy(student(x, training=True)).astype(np.float64)
    hard = np_sparse_ce(student_out, y)
    paths = []
    for loss in distiller.distillation_losses:
        t = taps_model(teacher_model, loss.teacher_taps())(x, training=False)
        s = taps_model(student, loss.student_taps())(x, training=True)
        t = t if isinstance(t, (list, tuple)) else [t]
        s = s if isinstance(s, (list, tuple)) else [s]
        value = loss(tuple(t), tuple(s), training=True)
        paths.append(keras.ops.convert_to_numpy(value).astype(np.float64))
    path_weights = keras.ops.convert_to_numpy(distiller.path_weighting.current_weights())
    soft = sum(w * p for w, p in zip(path_weights, paths))
    total = ALPHA * hard + (1 - ALPHA) * soft
    return {
        "loss": (weights * total).sum() / n,
        "student_loss": (weights * hard).sum() / n,
        "distillation_loss": (weights * soft).sum() / n,
    }


PATHS = ["hint", "attention", "fsp", "relational", "overhaul", "kd_plus_three"]


@pytest.mark.parametrize("name", PATHS)
def test_feature_path_one_step_matches_reference(name):
    keras.utils.set_random_seed(1)
    teacher, student = conv_net("t", 8), conv_net("s", 4)
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, 8, 8, 1)).astype("float32")
    y = rng.integers(0, CLASSES, BATCH)
    losses = make_losses(name, teacher)
    weights = [1.0, 0.5, 0.25, 2.0][: len(losses)]
    distiller = keras_kd.Distiller(teacher, student, losses, distillation_loss_weights=weights,
                                   student_loss_weight=ALPHA)
    distiller.compile(keras.optimizers.SGD(0.1), loss=_SCE)
    teacher_before = [np.array(w) for w in teacher.get_weights()]
    student_before = [np.array(w) for w in student.weights]

    expected = reference_logs(distiller, teacher, student, x, y, SAMPLE_WEIGHT)
    unweighted = reference_logs(distiller, teacher, student, x, y, np.ones(BATCH))
    # The reference call above ran the student in training mode: restore its BN statistics.
    for variable, value in zip(student.weights, student_before):
        variable.assign(value)

    logs = distiller.train_on_batch(x, y, sample_weight=SAMPLE_WEIGHT, return_dict=True)
    for key, value in expected.items():
        np.testing.assert_allclose(logs[key], value, rtol=1e-5, atol=1e-5, err_msg=key)
    assert abs(expected["loss"] - unweighted["loss"]) > 1e-4  # the weights matter here
    for got, want in zip(teacher.get_weights(), teacher_before):
        np.testing.assert_array_equal(got, want)
    assert any(not np.allclose(np.array(v), w) for v, w in zip(student.weights, student_before))


def test_ensemble_teacher_path_one_step_matches_reference():
    keras.utils.set_random_seed(2)
    members = [conv_net("a", 4), conv_net("b", 6)]
    ensemble = keras_kd.teachers.Ensemble(members, combine="probabilities", temperature=4.0)
    student = conv_net("s", 4)
    rng = np.random.default_rng(1)
    x = rng.random((BATCH, 8, 8, 1)).astype("float32")
    y = rng.integers(0, CLASSES, BATCH)
    distiller = keras_kd.Distiller(ensemble, student, kd_losses.SoftTargetDistillation(4.0),
                                   student_loss_weight=ALPHA)
    distiller.compile(keras.optimizers.SGD(0.1), loss=_SCE)
    before = [[np.array(w) for w in m.get_weights()] for m in members]

    # Reference: average of the members' softened distributions, by hand.
    probs = []
    for member in members:
        z = keras.ops.convert_to_numpy(member(x, training=False)).astype(np.float64) / 4.0
        z = np.exp(z - z.max(-1, keepdims=True))
        probs.append(z / z.sum(-1, keepdims=True))
    p = np.mean(probs, axis=0)
    s = keras.ops.convert_to_numpy(student(x, training=True)).astype(np.float64)
    zs = s / 4.0 - (s / 4.0).max(-1, keepdims=True)
    log_q = zs - np.log(np.exp(zs).sum(-1, keepdims=True))
    soft = 16.0 * (p * (np.log(p) - log_q)).sum(-1)
    hard = np_sparse_ce(s, y)

    logs = distiller.train_on_batch(x, y, sample_weight=SAMPLE_WEIGHT, return_dict=True)
    np.testing.assert_allclose(logs["distillation_loss"], (SAMPLE_WEIGHT * soft).sum() / BATCH,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logs["student_loss"], (SAMPLE_WEIGHT * hard).sum() / BATCH,
                               rtol=1e-5, atol=1e-5)
    for member, weights in zip(members, before):
        for got, want in zip(member.get_weights(), weights):
            np.testing.assert_array_equal(got, want)
