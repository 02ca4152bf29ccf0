"""Where `keras.distillation` (Keras 3.15) and `keras_kd` differ, shown on numbers.

Each test runs the same teacher/student through both libraries and asserts the difference:
(a) Keras's default `LogitsDistillation()` is not `T^2 * KL(softmax(t/T) || softmax(s/T))`;
(b) Keras ignores sample weights; (c) Keras runs the student forward twice per step with a
`FeatureDistillation`; (d) Keras fails when feature shapes differ; (e) Keras's saved model
file carries the teacher's weights.
"""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest
from keras import distillation as keras_distillation
from keras import ops

import keras_kd
from keras_kd.losses import DistillationLoss, SoftTargetDistillation, Tap

N_IN, N_CLASSES, BATCH = 4, 3, 8
SAMPLE_WEIGHT = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5, 0.25, 1.0], "float32")


class CallCounter(keras.layers.Layer):
    """Identity layer counting calls with training=True (a variable, so it counts in graphs)."""

    def build(self, input_shape):
        self.training_calls = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                              name="training_calls")

    def call(self, x, training=False):
        if training:
            self.training_calls.assign_add(1.0)
        return x

    def count(self):
        return float(keras.ops.convert_to_numpy(self.training_calls))


def mlp(hidden, name, counted=False):
    inputs = keras.Input((N_IN,), name=f"{name}_in")
    h = inputs
    counter = None
    if counted:
        counter = CallCounter(name=f"{name}_counter")
        h = counter(h)
    h = keras.layers.Dense(hidden, activation="relu", name=f"{name}_hidden")(h)
    out = keras.layers.Dense(N_CLASSES, name=f"{name}_logits")(h)
    model = keras.Model(inputs, out, name=name)
    return (model, counter) if counted else model


def data(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(BATCH, N_IN)).astype("float32") * 3.0,
            rng.integers(0, N_CLASSES, size=(BATCH,)).astype("int32"))


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_soft_target(t, s, temperature):
    """Per-example T^2 * KL(softmax(t/T) || softmax(s/T)) in float64 (Hinton et al. 2015)."""
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    log_p, log_q = np_log_softmax(t / temperature), np_log_softmax(s / temperature)
    return temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def logits(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float64)


# ---------------------------------------------------------------------------- (a)
def test_a_default_logits_distillation_is_not_the_soft_target_kl():
    teacher, student = mlp(16, "teacher"), mlp(6, "student")
    x, y = data(1)
    t, s = logits(teacher, x), logits(student, x)
    temperature = 3.0  # LogitsDistillation's default
    reference = float(np_soft_target(t, s, temperature).mean())

    theirs = keras_distillation.LogitsDistillation()
    assert theirs.temperature == temperature
    their_value = float(ops.convert_to_numpy(theirs.compute_loss(t.astype("float32"),
                                                                 s.astype("float32"))))
    # The string "kl_divergence" resolves to a function, not a `KLDivergence` instance, so
    # Keras applies KL to clipped *logits/T* (no softmax) and drops the T^2 factor.
    assert abs(their_value - reference) > 0.5 * reference, (their_value, reference)

    k_distiller = keras_distillation.Distiller(teacher, student, theirs,
                                               student_loss_weight=0.0)
    k_distiller.compile("sgd", loss="sparse_categorical_crossentropy")
    k_logged = k_distiller.test_on_batch(x, y, return_dict=True)["distillation_loss"]
    np.testing.assert_allclose(k_logged, their_value, rtol=1e-5)  # what Keras trains on

    ours = keras_kd.Distiller(teacher, student, SoftTargetDistillation(temperature),
                              student_loss_weight=0.0)
    ours.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    our_logged = ours.test_on_batch(x, y, return_dict=True)["distillation_loss"]
    np.testing.assert_allclose(our_logged, reference, atol=1e-5)
    print(f"\n(a) T=3: reference T^2*KL={reference:.5f} keras_kd={our_logged:.5f} "
          f"keras default LogitsDistillation={their_value:.5f}")

    # Only with an explicit `keras.losses.KLDivergence()` instance does Keras match.
    explicit = keras_distillation.LogitsDistillation(loss=keras.losses.KLDivergence())
    explicit_value = float(ops.convert_to_numpy(explicit.compute_loss(t.astype("float32"),
                                                                      s.astype("float32"))))
    np.testing.assert_allclose(explicit_value, reference, rtol=1e-4)


# ---------------------------------------------------------------------------- (b)
def test_b_keras_ignores_sample_weights_keras_kd_honours_them():
    teacher, student = mlp(16, "teacher"), mlp(6, "student")
    x, y = data(2)
    hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    k_distiller = keras_distillation.Distiller(
        teacher, student, keras_distillation.LogitsDistillation(loss=keras.losses.KLDivergence()),
        student_loss_weight=0.5)
    k_distiller.compile("sgd", loss=hard)
    k_plain = k_distiller.test_on_batch(x, y, return_dict=True)
    k_weighted = k_distiller.test_on_batch(x, y, sample_weight=SAMPLE_WEIGHT, return_dict=True)
    for key in ("loss", "student_loss", "distillation_loss"):
        assert k_weighted[key] == k_plain[key], key  # the weights change nothing

    ours = keras_kd.Distiller(teacher, student, SoftTargetDistillation(3.0),
                              student_loss_weight=0.5)
    ours.compile("sgd", loss=hard)
    o_plain = ours.test_on_batch(x, y, return_dict=True)
    o_weighted = ours.test_on_batch(x, y, sample_weight=SAMPLE_WEIGHT, return_dict=True)
    t, s = logits(teacher, x), logits(student, x)
    per_example = 0.5 * -np_log_softmax(s)[np.arange(BATCH), y] + 0.5 * np_soft_target(t, s, 3)
    np.testing.assert_allclose(o_plain["loss"], per_example.mean(), atol=1e-5)
    np.testing.assert_allclose(o_weighted["loss"], (SAMPLE_WEIGHT * per_example).mean(),
                               atol=1e-5)
    assert abs(o_weighted["loss"] - o_plain["loss"]) > 1e-2
    # Keras's unweighted total equals ours: the only difference is the weights.
    np.testing.assert_allclose(k_plain["loss"], o_plain["loss"], atol=1e-5)
    print(f"\n(b) loss without/with weights: keras {k_plain['loss']:.5f}/{k_weighted['loss']:.5f}"
          f"  keras_kd {o_plain['loss']:.5f}/{o_weighted['loss']:.5f}")


# ---------------------------------------------------------------------------- (c)
class HiddenMSE(DistillationLoss):
    """Test-local feature loss on same-width hidden layers (no adapter needed)."""

    def teacher_taps(self):
        return (Tap("teacher_hidden"),)

    def student_taps(self):
        return (Tap("student_hidden"),)

    def call(self, teacher_features, student_features):
        return ops.mean(ops.square(student_features[0] - teacher_features[0]), axis=-1)


def _student_calls_per_step(make_distiller, steps=2):
    teacher = mlp(8, "teacher")
    student, counter = mlp(8, "student", counted=True)
    distiller = make_distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(steps * BATCH, N_IN)).astype("float32")
    y = rng.integers(0, N_CLASSES, size=(steps * BATCH,))
    before = counter.count()
    distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    return (counter.count() - before) / steps


def test_c_keras_runs_the_student_twice_per_step_keras_kd_once():
    def keras_make(teacher, student):
        feature = keras_distillation.FeatureDistillation(
            loss="mse", teacher_layer_name="teacher_hidden", student_layer_name="student_hidden")
        return keras_distillation.Distiller(
            teacher, student,
            [keras_distillation.LogitsDistillation(loss=keras.losses.KLDivergence()), feature],
            student_loss_weight=0.5)

    def ours_make(teacher, student):
        return keras_kd.Distiller(teacher, student, [SoftTargetDistillation(3.0), HiddenMSE()],
                                  student_loss_weight=0.5)

    keras_calls = _student_calls_per_step(keras_make)
    our_calls = _student_calls_per_step(ours_make)
    print(f"\n(c) student forward passes per step: keras {keras_calls}, keras_kd {our_calls}")
    assert keras_calls == 2.0
    assert our_calls == 1.0


# ---------------------------------------------------------------------------- (d)
def _mismatched_pair():
    return mlp(16, "teacher"), mlp(6, "student")  # hidden widths 16 vs 6


def test_d_keras_fails_on_different_feature_shapes():
    teacher, student = _mismatched_pair()
    x, y = data(4)
    feature = keras_distillation.FeatureDistillation(
        loss="mse", teacher_layer_name="teacher_hidden", student_layer_name="student_hidden")
    k_distiller = keras_distillation.Distiller(teacher, student, feature, student_loss_weight=0.5)
    k_distiller.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(Exception, match="(?i)incompatible|shape|broadcast"):
        k_distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)


@pytest.mark.skipif(not hasattr(keras_kd.losses, "HintDistillation"),
                    reason="keras_kd.losses.HintDistillation (adapters) not added yet")
def test_d_keras_kd_handles_different_feature_shapes_with_an_adapter():
    teacher, student = _mismatched_pair()
    x, y = data(4)
    hint = keras_kd.losses.HintDistillation("teacher_hidden", "student_hidden")
    ours = keras_kd.Distiller(teacher, student, hint, student_loss_weight=0.5)
    ours.compile(keras.optimizers.SGD(0.01),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = ours.fit(x, y, batch_size=BATCH, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["distillation_loss"]))
    assert history["distillation_loss"][0] > 0.0
    # The adapter maps the student's 6 features to the teacher's 16 and trains with it.
    adapter_kernels = [tuple(v.shape) for v in hint.trainable_variables if len(v.shape) == 2]
    assert (6, 16) in adapter_kernels
    student_ids = {id(v) for v in student.trainable_variables}
    assert not any(id(v) in student_ids for v in hint.trainable_variables)


# ---------------------------------------------------------------------------- (e)
def _saved_weight_values(path):
    import h5py

    with zipfile.ZipFile(path) as archive:
        config = json.dumps(json.loads(archive.read("config.json")))
        h5_path = path.with_suffix(".h5")
        h5_path.write_bytes(archive.read("model.weights.h5"))
    sizes = []
    with h5py.File(h5_path, "r") as h5:
        h5.visititems(
            lambda _, obj: sizes.append(obj.size) if isinstance(obj, h5py.Dataset) else None)
    return config, sum(sizes)


def test_e_keras_saved_model_carries_the_teacher_keras_kd_student_does_not(tmp_path):
    teacher, student = mlp(64, "big_teacher"), mlp(6, "student")
    n_teacher, n_student = teacher.count_params(), student.count_params()
    k_distiller = keras_distillation.Distiller(
        teacher, student, keras_distillation.LogitsDistillation(), student_loss_weight=0.5)
    k_distiller.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    k_path = tmp_path / "keras_distiller.keras"
    k_distiller.save(k_path)
    k_config, k_values = _saved_weight_values(k_path)
    assert "big_teacher" in k_config
    assert k_values >= n_teacher + n_student

    ours = keras_kd.Distiller(mlp(64, "big_teacher"), mlp(6, "student"))
    o_path = tmp_path / "student.keras"
    ours.student.save(o_path)
    o_config, o_values = _saved_weight_values(o_path)
    assert "big_teacher" not in o_config
    assert o_values == n_student
    print(f"\n(e) saved weight values: keras Distiller file {k_values} "
          f"(teacher {n_teacher} + student {n_student}), keras_kd student file {o_values}")
