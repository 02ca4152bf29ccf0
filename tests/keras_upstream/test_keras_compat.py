"""keras_kd's `LogitsDistillation` / `FeatureDistillation`: Keras's constructors, keras_kd's math.

Each form is checked against a NumPy reference written here, and against `keras.distillation`
where Keras's own math is right (its `KLDivergence()` instance, its feature losses on equal
shapes) or where we differ on purpose (its default `"kl_divergence"` string).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import distillation as keras_distillation
from keras import ops

import keras_kd
from keras_kd.losses import (
    LOGITS,
    FeatureDistillation,
    LogitsDistillation,
    SoftTargetDistillation,
    Tap,
)

RNG = np.random.default_rng(0)
T_LOGITS = (RNG.normal(size=(6, 5)) * 3).astype("float32")
S_LOGITS = (RNG.normal(size=(6, 5)) * 3).astype("float32")


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_kl(t, s, temperature):
    log_p, log_q = np_log_softmax(t / temperature), np_log_softmax(s / temperature)
    return temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def np_ce(t, s, temperature, smoothing=0.0):
    p = np.exp(np_log_softmax(t / temperature))
    p = p * (1.0 - smoothing) + smoothing / p.shape[-1]
    return -(temperature**2) * (p * np_log_softmax(s / temperature)).sum(axis=-1)


def values(loss, t=T_LOGITS, s=S_LOGITS):
    return ops.convert_to_numpy(loss((ops.convert_to_tensor(t),), (ops.convert_to_tensor(s),)))


def scalar(x):
    return float(ops.convert_to_numpy(x))


# ------------------------------------------------------------------------ LogitsDistillation
KL_FORMS = ["kl_divergence", "kld", keras.losses.kl_divergence, keras.losses.KLDivergence()]
CE_FORMS = [
    "categorical_crossentropy",
    keras.losses.categorical_crossentropy,
    keras.losses.CategoricalCrossentropy(),
    keras.losses.CategoricalCrossentropy(from_logits=True),
]


@pytest.mark.parametrize("loss", KL_FORMS, ids=["str", "alias", "function", "instance"])
@pytest.mark.parametrize("temperature", [1.0, 3.0, 20.0])
def test_every_kl_form_is_the_soft_target_kl(loss, temperature):
    got = values(LogitsDistillation(temperature, loss))
    assert got.shape == (6,) and got.dtype == np.float32
    np.testing.assert_allclose(got, np_kl(T_LOGITS, S_LOGITS, temperature),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got, values(SoftTargetDistillation(temperature)), atol=1e-6)


def test_default_is_kl_at_temperature_3_unlike_keras_string_default():
    ours = LogitsDistillation()
    assert ours.temperature == 3.0 and ours.loss is keras.losses.kl_divergence
    reference = np_kl(T_LOGITS, S_LOGITS, 3.0).mean()
    np.testing.assert_allclose(scalar(ours.compute_loss(T_LOGITS, S_LOGITS)), reference,
                               atol=1e-5)
    # Keras's default applies KL to logits / T without softmax or T^2.
    theirs = scalar(keras_distillation.LogitsDistillation().compute_loss(T_LOGITS, S_LOGITS))
    assert abs(theirs - reference) > 0.1 * reference
    # Keras's KLDivergence() instance is its one form with the same math.
    instance = keras_distillation.LogitsDistillation(loss=keras.losses.KLDivergence())
    np.testing.assert_allclose(scalar(instance.compute_loss(T_LOGITS, S_LOGITS)), reference,
                               rtol=1e-4)


@pytest.mark.parametrize("loss", CE_FORMS, ids=["str", "function", "probs", "from_logits"])
def test_every_categorical_ce_form_is_the_soft_target_cross_entropy(loss):
    got = values(LogitsDistillation(4.0, loss))
    np.testing.assert_allclose(got, np_ce(T_LOGITS, S_LOGITS, 4.0), atol=1e-4)
    # It differs from the KL form by T^2 times the teacher entropy (same gradients).
    p = np.exp(np_log_softmax(T_LOGITS / 4.0))
    entropy = -(p * np.log(p)).sum(axis=-1)
    np.testing.assert_allclose(got - np_kl(T_LOGITS, S_LOGITS, 4.0), 16.0 * entropy, atol=1e-4)


def test_categorical_ce_label_smoothing_is_honoured():
    loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.2)
    got = values(LogitsDistillation(2.0, loss))
    np.testing.assert_allclose(got, np_ce(T_LOGITS, S_LOGITS, 2.0, smoothing=0.2), atol=1e-4)


@pytest.mark.parametrize("loss", ["mse", keras.losses.MeanAbsoluteError()], ids=["mse", "mae"])
def test_other_losses_compare_scaled_logits_as_keras_documents(loss):
    ours = LogitsDistillation(2.0, loss)
    assert ours.output_family() is None
    got = values(ours)
    diff = (S_LOGITS.astype(np.float64) - T_LOGITS) / 2.0
    reference = (diff**2 if loss == "mse" else np.abs(diff)).mean(axis=-1)
    np.testing.assert_allclose(got, reference, atol=1e-5)
    theirs = keras_distillation.LogitsDistillation(2.0, loss).compute_loss(T_LOGITS, S_LOGITS)
    np.testing.assert_allclose(scalar(ours.compute_loss(T_LOGITS, S_LOGITS)), scalar(theirs),
                               atol=1e-5)


def test_a_custom_function_returning_a_scalar_is_given_to_every_example():
    got = values(LogitsDistillation(1.0, lambda t, s: ops.mean(ops.abs(t - s))))
    np.testing.assert_allclose(got, np.full(6, np.abs(S_LOGITS - T_LOGITS).mean()), atol=1e-5)


@pytest.mark.parametrize("loss", ["kl_divergence", "mse"])
def test_sequence_logits_give_per_position_values(loss):
    t, s = RNG.normal(size=(2, 3, 4)).astype("float32"), RNG.normal(size=(2, 3, 4))
    got = values(LogitsDistillation(2.0, loss), t, s.astype("float32"))
    assert got.shape == (2, 3)
    reference = (np_kl(t, s, 2.0) if loss == "kl_divergence"
                 else (((s - t) / 2.0) ** 2).mean(axis=-1))
    np.testing.assert_allclose(got, reference, atol=1e-5)


def test_identical_logits_give_zero_kl_and_shift_invariance():
    np.testing.assert_allclose(values(LogitsDistillation(), T_LOGITS, T_LOGITS), 0.0, atol=1e-6)
    np.testing.assert_allclose(values(LogitsDistillation(), T_LOGITS, S_LOGITS + 7.0),
                               values(LogitsDistillation(), T_LOGITS, S_LOGITS), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(loss=None), ValueError, "None"),
        (dict(loss=["kl_divergence", None]), ValueError, "single-output"),
        (dict(loss="sparse_categorical_crossentropy"), ValueError, "class ids"),
        (dict(loss="not_a_loss"), ValueError, "not_a_loss"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature="3"), TypeError, "temperature"),
    ],
)
def test_logits_distillation_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        LogitsDistillation(**kwargs)


def test_temperature_is_the_schedulable_variable():
    loss = LogitsDistillation(temperature=2.0)
    assert loss.temperature_variable() is loss.temperature
    loss.temperature.assign(5.0)
    np.testing.assert_allclose(values(loss), np_kl(T_LOGITS, S_LOGITS, 5.0), atol=1e-5)


# ------------------------------------------------------------------------ FeatureDistillation
def mlp(hidden, name):
    inputs = keras.Input((4,), name=f"{name}_in")
    h = keras.layers.Dense(hidden, activation="relu", name=f"{name}_hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name=f"{name}_logits")(h), name=name)


def test_feature_distillation_taps_the_named_layers_or_the_logits():
    named = FeatureDistillation("mse", "teacher_hidden", "student_hidden")
    assert named.teacher_taps() == (Tap("teacher_hidden"),)
    assert named.student_taps() == (Tap("student_hidden"),)
    final = FeatureDistillation()
    assert final.teacher_taps() == (LOGITS,) and final.student_taps() == (LOGITS,)


@pytest.mark.parametrize("loss", ["mse", "mae", "cosine_similarity", keras.losses.Huber()])
def test_feature_losses_on_equal_shapes_equal_keras(loss):
    t, s = RNG.normal(size=(5, 7)).astype("float32"), RNG.normal(size=(5, 7)).astype("float32")
    ours = FeatureDistillation(loss)
    got = values(ours, t, s)
    assert got.shape == (5,) and ours.adapter is None
    theirs = keras_distillation.FeatureDistillation(loss).compute_loss(t, s)
    np.testing.assert_allclose(got.mean(), scalar(theirs), atol=1e-5)
    if loss == "mse":
        np.testing.assert_allclose(got, ((s.astype(np.float64) - t) ** 2).mean(axis=-1),
                                   atol=1e-5)


def test_feature_maps_are_averaged_per_example():
    t = RNG.normal(size=(2, 3, 3, 4)).astype("float32")
    s = RNG.normal(size=(2, 3, 3, 4)).astype("float32")
    got = values(FeatureDistillation("mse"), t, s)
    np.testing.assert_allclose(got, ((s.astype(np.float64) - t) ** 2).reshape(2, -1).mean(-1),
                               atol=1e-5)


def test_different_feature_shapes_get_a_trainable_adapter_outside_the_student():
    teacher, student = mlp(16, "teacher"), mlp(6, "student")
    feature = FeatureDistillation("mse", "teacher_hidden", "student_hidden")
    distiller = keras_kd.Distiller(teacher, student, feature, student_loss_weight=0.5)
    distiller.compile(keras.optimizers.SGD(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = RNG.normal(size=(8, 4)).astype("float32")
    y = RNG.integers(0, 3, size=(8,))
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(history["distillation_loss"][0]) and history["distillation_loss"][0] > 0
    kernels = [tuple(v.shape) for v in feature.trainable_variables if len(v.shape) == 2]
    assert kernels == [(6, 16)]
    student_ids = {id(v) for v in student.trainable_variables}
    assert not any(id(v) in student_ids for v in feature.trainable_variables)


def test_validate_model_compatibility_names_the_missing_layer():
    teacher, student = mlp(4, "teacher"), mlp(4, "student")
    FeatureDistillation("mse", "teacher_hidden", "student_hidden").validate_model_compatibility(
        teacher, student)
    with pytest.raises(ValueError, match="In student model"):
        FeatureDistillation("mse", "teacher_hidden", "nope").validate_model_compatibility(
            teacher, student)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="subclassed"):
        FeatureDistillation("mse", "teacher_hidden", None).validate_model_compatibility(
            Subclassed(), student)


@pytest.mark.parametrize("loss", [LogitsDistillation(), FeatureDistillation()])
def test_validate_outputs_refuses_different_structures(loss):
    x = ops.ones((2, 3))
    loss.validate_outputs(x, x)
    with pytest.raises(ValueError):
        loss.validate_outputs(x, [x, x])


def test_feature_distillation_bad_arguments():
    with pytest.raises(ValueError, match="teacher_layer_name"):
        FeatureDistillation("mse", "")
    with pytest.raises(ValueError, match="None"):
        FeatureDistillation(None)
    with pytest.raises(ValueError, match="single-output"):
        FeatureDistillation(["mse", "mae"])


# ------------------------------------------------------------------------ serialization
@pytest.mark.parametrize(
    "loss",
    [
        LogitsDistillation(),
        LogitsDistillation(4.0, keras.losses.KLDivergence()),
        LogitsDistillation(2.0, keras.losses.CategoricalCrossentropy(from_logits=True)),
        LogitsDistillation(2.0, keras.losses.mean_absolute_error, name="logits_mae"),
        FeatureDistillation("cosine_similarity", "a", "b"),
        FeatureDistillation(keras.losses.MeanAbsoluteError()),
    ],
    ids=["default", "kl_instance", "ce_instance", "function", "feature", "feature_instance"],
)
def test_round_trip_through_keras_serialization(loss):
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(clone) is type(loss)
    assert clone.get_config() == loss.get_config()
    assert clone.log_name == loss.log_name
    np.testing.assert_allclose(values(clone), values(loss), atol=1e-6)


def test_distiller_logs_the_same_distillation_loss_as_soft_target_with_sample_weights():
    teacher, student = mlp(8, "teacher"), mlp(5, "student")
    x = RNG.normal(size=(8, 4)).astype("float32") * 3
    y = RNG.integers(0, 3, size=(8,))
    weights = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5, 0.25, 1.0], "float32")
    logged = []
    for loss in (LogitsDistillation(3.0), SoftTargetDistillation(3.0)):
        distiller = keras_kd.Distiller(teacher, student, loss, student_loss_weight=0.0)
        distiller.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        logged.append(distiller.test_on_batch(x, y, sample_weight=weights,
                                              return_dict=True)["distillation_loss"])
    t = ops.convert_to_numpy(teacher(x)).astype(np.float64)
    s = ops.convert_to_numpy(student(x)).astype(np.float64)
    np.testing.assert_allclose(logged[0], (weights * np_kl(t, s, 3.0)).mean(), atol=1e-5)
    np.testing.assert_allclose(logged[0], logged[1], atol=1e-6)
