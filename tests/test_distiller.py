"""The core `Distiller`: one step against NumPy, the frozen teacher, logging, saving, errors."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.losses import LogitMatchingDistillation, SoftTargetDistillation


def to_np(value, dtype=None):
    array = keras.ops.convert_to_numpy(value)
    return array if dtype is None else array.astype(dtype)


N_IN, N_CLASSES, BATCH = 4, 3, 8
LR = 0.5
SAMPLE_WEIGHT = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5, 0.25, 1.0], "float32")


# ---------------------------------------------------------------------------- models and data
def mlp(hidden=6, name="mlp", final_activation=None, n_out=N_CLASSES):
    inputs = keras.Input((N_IN,), name=f"{name}_in")
    h = keras.layers.Dense(hidden, activation="relu", name=f"{name}_hidden")(inputs)
    out = keras.layers.Dense(n_out, activation=final_activation, name=f"{name}_logits")(h)
    return keras.Model(inputs, out, name=name)


def teacher_and_student():
    return mlp(16, "teacher"), mlp(6, "student")


def batch(seed=0, n=BATCH):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_IN)).astype("float32") * 2.0
    y = rng.integers(0, N_CLASSES, size=(n,)).astype("int32")
    return x, y


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


class CallCounter(keras.layers.Layer):
    """Identity layer that counts its calls with training=True and with training=False."""

    def build(self, input_shape):
        self.training_calls = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="training_calls"
        )
        self.inference_calls = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="inference_calls"
        )

    def call(self, x, training=False):
        if training:
            self.training_calls.assign_add(1.0)
        else:
            self.inference_calls.assign_add(1.0)
        return x

    def counts(self):
        return float(to_np(self.training_calls)), float(to_np(self.inference_calls))


def counted_mlp(hidden, name):
    inputs = keras.Input((N_IN,), name=f"{name}_in")
    counter = CallCounter(name=f"{name}_counter")
    h = keras.layers.Dense(hidden, activation="relu", name=f"{name}_hidden")(counter(inputs))
    out = keras.layers.Dense(N_CLASSES, name=f"{name}_logits")(h)
    return keras.Model(inputs, out, name=name), counter


# ---------------------------------------------------------------------------- NumPy reference
def np_mlp(model, x):
    """Forward pass of a Dense-only model in float64, written independently of Keras."""
    h = np.asarray(x, np.float64)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            h = h @ to_np(layer.kernel, np.float64) + to_np(layer.bias, np.float64)
            name = layer.activation.__name__
            if name == "relu":
                h = np.maximum(h, 0.0)
            elif name == "softmax":
                h = np.exp(np_log_softmax(h))
            else:
                assert name == "linear", name
    return h


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_kl(t, s, temperature):
    log_p, log_q = np_log_softmax(t / temperature), np_log_softmax(s / temperature)
    return temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def np_terms(t, s, y, w, alpha, paths):
    """Reference of one step's logged values.

    paths: list of (kind, weight, temperature); kind is "kl" or "mse".
    Reduction is Keras's: sum(w * l) / batch_size.
    """
    hard = -np_log_softmax(s)[np.arange(len(y)), y]
    soft = np.zeros(len(y))
    for kind, weight, temperature in paths:
        d = np_kl(t, s, temperature) if kind == "kl" else 0.5 * ((s - t) ** 2).sum(axis=-1)
        soft += weight * d
    w = np.ones(len(y)) if w is None else np.asarray(w, np.float64)

    def reduce(v):
        return float((w * v).sum() / len(v))

    return {
        "loss": reduce(alpha * hard + (1 - alpha) * soft),
        "student_loss": reduce(hard),
        "distillation_loss": reduce(soft),
    }


def tf_sgd_reference(student, t_logits, x, y, w, alpha, paths, lr):
    """The student's weights after one SGD step on the reference loss, via tf autodiff."""
    variables = [tf.Variable(np.array(v)) for v in student.get_weights()]
    kernel1, bias1, kernel2, bias2 = variables
    t = tf.constant(t_logits, tf.float32)
    with tf.GradientTape() as tape:
        s = tf.nn.relu(x @ kernel1 + bias1) @ kernel2 + bias2
        hard = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=s)
        soft = tf.zeros_like(hard)
        for kind, weight, temperature in paths:
            if kind == "kl":
                log_p = tf.nn.log_softmax(t / temperature)
                log_q = tf.nn.log_softmax(s / temperature)
                d = temperature**2 * tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), -1)
            else:
                d = 0.5 * tf.reduce_sum(tf.square(s - t), -1)
            soft += weight * d
        per_example = alpha * hard + (1 - alpha) * soft
        ww = tf.ones_like(per_example) if w is None else tf.constant(w, tf.float32)
        loss = tf.reduce_sum(ww * per_example) / len(y)
    grads = tape.gradient(loss, variables)
    return [v.numpy() - lr * g.numpy() for v, g in zip(variables, grads)]


def hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


# ---------------------------------------------------------------------------- 2. one step
ONE_STEP_CONFIGS = {
    "default_soft_target": dict(kwargs={}, alpha=0.1, paths=[("kl", 1.0, 4.0)], weights="sw"),
    "soft_target_plus_logit_matching": dict(
        kwargs=dict(
            distillation_losses=[SoftTargetDistillation(2.0), LogitMatchingDistillation()],
            distillation_loss_weights=[0.7, 0.3],
            student_loss_weight=0.25,
        ),
        alpha=0.25,
        paths=[("kl", 0.7, 2.0), ("mse", 0.3, None)],
        weights="sw",
    ),
    "alpha_zero": dict(
        kwargs=dict(distillation_losses="soft_target", student_loss_weight=0.0),
        alpha=0.0,
        paths=[("kl", 1.0, 4.0)],
        weights="sw",
    ),
    "class_weight": dict(
        kwargs=dict(distillation_losses=SoftTargetDistillation(3.0), student_loss_weight=0.5),
        alpha=0.5,
        paths=[("kl", 1.0, 3.0)],
        weights="cw",
    ),
}
CLASS_WEIGHT = {0: 0.5, 1: 3.0, 2: 1.25}


@pytest.mark.parametrize("config", list(ONE_STEP_CONFIGS), ids=list(ONE_STEP_CONFIGS))
def test_one_step_losses_and_sgd_update_match_reference(config):
    spec = ONE_STEP_CONFIGS[config]
    teacher, student = teacher_and_student()
    x, y = batch(1)
    distiller = keras_kd.Distiller(teacher, student, **spec["kwargs"])
    distiller.compile(keras.optimizers.SGD(LR), loss=hard_loss())

    teacher_before, student_before = weights_of(teacher), weights_of(student)
    t_logits, s_logits = np_mlp(teacher, x), np_mlp(student, x)
    if spec["weights"] == "sw":
        w, fit_kwargs = SAMPLE_WEIGHT, dict(sample_weight=SAMPLE_WEIGHT)
    else:
        w = np.array([CLASS_WEIGHT[int(c)] for c in y], "float32")
        fit_kwargs = dict(class_weight=CLASS_WEIGHT)
    expected = np_terms(t_logits, s_logits, y, w, spec["alpha"], spec["paths"])
    expected_weights = tf_sgd_reference(student, t_logits, x, y, w, spec["alpha"],
                                        spec["paths"], LR)

    logs = distiller.train_on_batch(x, y, return_dict=True, **fit_kwargs)

    for key, value in expected.items():
        np.testing.assert_allclose(logs[key], value, atol=1e-5, rtol=1e-6, err_msg=key)
    # The weights really moved, by exactly one SGD step on the weighted loss.
    assert max(np.abs(a - b).max() for a, b in zip(weights_of(student), student_before)) > 1e-3
    for got, want in zip(weights_of(student), expected_weights):
        np.testing.assert_allclose(got, want, atol=1e-5)
    for got, want in zip(weights_of(teacher), teacher_before):
        np.testing.assert_array_equal(got, want)
    # Only the student (no teacher variable) is trained.
    trainable = {id(v) for v in distiller.trainable_variables}
    assert trainable == {id(v) for v in student.trainable_variables}


def test_sample_weights_change_the_loss():
    """Same batch, uniform vs non-uniform weights: different logged losses (weights honoured)."""
    teacher, student = teacher_and_student()
    x, y = batch(2)
    distiller = keras_kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.0), loss=hard_loss())
    plain = distiller.test_on_batch(x, y, return_dict=True)
    weighted = distiller.test_on_batch(x, y, sample_weight=SAMPLE_WEIGHT, return_dict=True)
    ref = np_terms(np_mlp(teacher, x), np_mlp(student, x), y, SAMPLE_WEIGHT, 0.1,
                   [("kl", 1.0, 4.0)])
    np.testing.assert_allclose(weighted["loss"], ref["loss"], atol=1e-5)
    assert abs(plain["distillation_loss"] - weighted["distillation_loss"]) > 1e-3


# ---------------------------------------------------------------------------- 3. frozen teacher
def bn_dropout_teacher():
    inputs = keras.Input((N_IN,))
    h = keras.layers.Dense(16, name="t_dense")(inputs)
    h = keras.layers.BatchNormalization(name="t_bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Dropout(0.9, name="t_dropout")(h)
    out = keras.layers.Dense(N_CLASSES, name="t_out")(h)
    model = keras.Model(inputs, out, name="teacher")
    bn = model.get_layer("t_bn")
    rng = np.random.default_rng(5)
    bn.moving_mean.assign(rng.normal(size=16).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 3.0, size=16).astype("float32"))
    return model


def test_teacher_weights_bit_identical_and_called_in_inference_mode():
    teacher = bn_dropout_teacher()
    student = mlp(6, "student")
    x, y = batch(3, n=16)
    before = weights_of(teacher)
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.0)
    distiller.compile(keras.optimizers.SGD(0.1), loss=hard_loss())

    # Dropout(0.9) and BatchNorm batch statistics would change the teacher's logits under
    # training=True; the logged loss equals the reference built from inference-mode logits.
    t_infer = to_np(teacher(x[:BATCH], training=False)).astype(np.float64)
    expected = np_terms(t_infer, np_mlp(student, x[:BATCH]), y[:BATCH], None, 0.0,
                        [("kl", 1.0, 4.0)])
    logs = distiller.train_on_batch(x[:BATCH], y[:BATCH], return_dict=True)
    np.testing.assert_allclose(logs["distillation_loss"], expected["distillation_loss"],
                               atol=1e-5)

    distiller.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    for got, want in zip(weights_of(teacher), before):
        np.testing.assert_array_equal(got, want)
    # Frozen for the Distiller's training only: the user's teacher object is left as it was.
    assert teacher.trainable


# ---------------------------------------------------------------------------- 4. forward once
def test_each_model_runs_forward_once_per_step():
    teacher, t_counter = counted_mlp(16, "teacher")
    student, s_counter = counted_mlp(6, "student")
    x, y = batch(4, n=3 * BATCH)
    distiller = keras_kd.Distiller(
        teacher, student, [SoftTargetDistillation(), LogitMatchingDistillation()]
    )
    distiller.compile(keras.optimizers.SGD(0.1), loss=hard_loss())
    distiller.check_inputs(x[:BATCH], y[:BATCH])  # fit's one-time first-batch check, done now
    t0, s0 = t_counter.counts(), s_counter.counts()
    distiller.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    t1, s1 = t_counter.counts(), s_counter.counts()
    # 3 train steps: teacher 3 inference calls, student 3 training calls, nothing else.
    assert (t1[0] - t0[0], t1[1] - t0[1]) == (0.0, 3.0)
    assert (s1[0] - s0[0], s1[1] - s0[1]) == (3.0, 0.0)

    distiller.evaluate(x, y, batch_size=BATCH, verbose=0)
    t2, s2 = t_counter.counts(), s_counter.counts()
    assert (t2[0] - t1[0], t2[1] - t1[1]) == (0.0, 3.0)
    assert (s2[0] - s1[0], s2[1] - s1[1]) == (0.0, 3.0)


# ---------------------------------------------------------------------------- 5. logging
def test_fit_logs_and_validation_loss_is_real(tmp_path):
    teacher, student = teacher_and_student()
    x, y = batch(5, n=32)
    xv, yv = batch(6, n=16)
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.3)
    distiller.compile(keras.optimizers.SGD(0.05), loss=hard_loss(), metrics=["accuracy"])
    history = distiller.fit(x, y, batch_size=BATCH, epochs=2, validation_data=(xv, yv),
                            verbose=0).history
    for key in ("loss", "student_loss", "distillation_loss", "accuracy", "val_loss",
                "val_student_loss", "val_distillation_loss", "val_accuracy"):
        assert key in history and len(history[key]) == 2, key

    ref = np_terms(np_mlp(teacher, xv), np_mlp(student, xv), yv, None, 0.3, [("kl", 1.0, 4.0)])
    assert history["val_loss"][-1] > 0.01
    np.testing.assert_allclose(history["val_loss"][-1], ref["loss"], atol=1e-5)
    np.testing.assert_allclose(history["val_distillation_loss"][-1], ref["distillation_loss"],
                               atol=1e-5)
    evaluated = distiller.evaluate(xv, yv, batch_size=BATCH, verbose=0, return_dict=True)
    np.testing.assert_allclose(evaluated["loss"], history["val_loss"][-1], atol=1e-6)
    accuracy = np.mean(np.argmax(np_mlp(student, xv), -1) == yv)
    np.testing.assert_allclose(evaluated["accuracy"], accuracy, atol=1e-6)


def test_early_stopping_and_model_checkpoint_use_val_loss(tmp_path):
    teacher, student = teacher_and_student()
    x, y = batch(7, n=32)
    xv, yv = batch(8, n=16)
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.3)
    distiller.compile(keras.optimizers.SGD(0.05), loss=hard_loss())
    path = tmp_path / "best.weights.h5"
    callbacks = [
        # No epoch improves val_loss by 1e9, so training stops after patience=1 more epoch;
        # without a val_loss in the logs it would run all 10 epochs.
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=1e9),
        keras.callbacks.ModelCheckpoint(str(path), monitor="val_loss", save_best_only=True,
                                        save_weights_only=True),
    ]
    history = distiller.fit(x, y, batch_size=BATCH, epochs=10, validation_data=(xv, yv),
                            callbacks=callbacks, verbose=0).history
    assert len(history["val_loss"]) == 2
    assert path.exists()

    best = int(np.argmin(history["val_loss"]))
    fresh = keras_kd.Distiller(*teacher_and_student(), student_loss_weight=0.3)
    fresh.compile(keras.optimizers.SGD(0.05), loss=hard_loss())
    fresh.load_weights(str(path))
    reloaded = fresh.evaluate(xv, yv, batch_size=BATCH, verbose=0, return_dict=True)
    np.testing.assert_allclose(reloaded["loss"], history["val_loss"][best], atol=1e-5)


# ---------------------------------------------------------------------------- 6. student export
def _archive_weight_count(path):
    import h5py

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        extracted = path.parent / f"{path.stem}_weights.h5"
        extracted.write_bytes(archive.read("model.weights.h5"))
    sizes = []
    with h5py.File(extracted, "r") as h5:
        h5.visititems(lambda _, obj: sizes.append(obj.size) if isinstance(obj, h5py.Dataset)
                      else None)
    return config, sum(sizes)


def test_predict_is_the_student_and_student_saves_alone(tmp_path):
    teacher, student = mlp(64, "big_teacher"), mlp(6, "student")
    x, y = batch(9, n=16)
    distiller = keras_kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.1), loss=hard_loss())
    distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)

    want = to_np(student(x, training=False))
    np.testing.assert_allclose(distiller.predict(x, verbose=0), want, atol=1e-6)
    np.testing.assert_allclose(to_np(distiller(x)), want, atol=1e-6)
    np.testing.assert_allclose(np_mlp(student, x), want, atol=1e-5)

    path = tmp_path / "student.keras"
    distiller.student.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), want, atol=1e-6)

    config, n_values = _archive_weight_count(path)
    assert "big_teacher" not in json.dumps(config)
    assert n_values == student.count_params()
    assert n_values < teacher.count_params()


# ---------------------------------------------------------------------------- 7. serialization
def test_distiller_keras_round_trip(tmp_path):
    teacher, student = teacher_and_student()
    x, y = batch(10, n=16)
    distiller = keras_kd.Distiller(
        teacher, student,
        distillation_losses=[SoftTargetDistillation(3.0), LogitMatchingDistillation()],
        distillation_loss_weights=[0.6, 0.4],
        student_loss_weight=0.3,
    )
    distiller.compile(keras.optimizers.SGD(0.1), loss=hard_loss(), metrics=["accuracy"])
    distiller.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    # Values set by schedulers are part of the saved state.
    distiller.distillation_losses[0].temperature.assign(2.5)
    distiller.student_loss_weight.assign(0.4)

    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.saving.load_model(path)

    assert isinstance(loaded, keras_kd.Distiller)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0),
                               atol=1e-6)
    np.testing.assert_allclose(loaded.teacher.predict(x, verbose=0),
                               teacher.predict(x, verbose=0), atol=1e-6)
    assert [type(loss) for loss in loaded.distillation_losses] == [
        SoftTargetDistillation, LogitMatchingDistillation]
    assert float(to_np(loaded.distillation_losses[0].temperature)) == 2.5
    np.testing.assert_allclose(to_np(loaded.path_weighting.weights_variable), [0.6, 0.4])
    assert float(to_np(loaded.student_loss_weight)) == pytest.approx(0.4)
    config, loaded_config = distiller.get_config(), loaded.get_config()
    for key in ("distillation_losses", "distillation_loss_weights", "student_loss_weight"):
        assert loaded_config[key] == config[key], key
    # Restored compile state: the same evaluation.
    a = distiller.evaluate(x, y, verbose=0, return_dict=True)
    b = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert set(b) == set(a)  # same log keys after reloading
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-6, err_msg=key)


def test_log_keys_do_not_depend_on_losses_built_earlier():
    SoftTargetDistillation(), LogitMatchingDistillation()  # take the automatic layer names
    teacher, student = teacher_and_student()
    x, y = batch(17)
    distiller = keras_kd.Distiller(teacher, student, [
        SoftTargetDistillation(2.0), SoftTargetDistillation(8.0), LogitMatchingDistillation(),
        LogitMatchingDistillation(name="lm")])
    distiller.compile(keras.optimizers.SGD(0.0), loss=hard_loss())
    logs = distiller.test_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss", "total_loss", "student_loss", "distillation_loss",
                         "soft_target_distillation_loss", "soft_target_distillation_1_loss",
                         "logit_matching_distillation_loss", "lm_loss"}
    t, s = np_mlp(teacher, x), np_mlp(student, x)
    np.testing.assert_allclose(logs["soft_target_distillation_loss"], np_kl(t, s, 2.0).mean(),
                               atol=1e-5)
    np.testing.assert_allclose(logs["soft_target_distillation_1_loss"],
                               np_kl(t, s, 8.0).mean(), atol=1e-5)


def test_fixed_weighting_config_round_trip():
    weighting = keras_kd.FixedWeighting([0.25, 2.0], name="w")
    weighting.weights_variable.assign([0.5, 1.5])  # scheduled values are saved
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(weighting))
    assert isinstance(again, keras_kd.FixedWeighting) and again.num_paths == 2
    np.testing.assert_allclose(to_np(again.weights_variable), [0.5, 1.5])
    paths = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
    np.testing.assert_allclose(to_np(again(paths)), [3.5, 7.5], atol=1e-6)


def test_get_config_from_config_round_trip():
    teacher, student = teacher_and_student()
    distiller = keras_kd.Distiller(teacher, student, ["soft_target", "logit_matching"],
                                   [2.0, 0.5], student_loss_weight=0.7)
    clone = keras_kd.Distiller.from_config(distiller.get_config())
    assert clone.get_config()["distillation_loss_weights"] == [2.0, 0.5]
    assert clone.get_config()["student_loss_weight"] == pytest.approx(0.7)
    assert clone.teacher.count_params() == teacher.count_params()


# ---------------------------------------------------------------------------- 11. softmax teachers
def _softmax_layer_teacher(logits_teacher):
    out = keras.layers.Softmax()(logits_teacher.outputs[0])
    return keras.Model(logits_teacher.input, out, name="softmax_layer_teacher")


def _dense_softmax_teacher(logits_teacher):
    inputs = keras.Input((N_IN,))
    h = keras.layers.Dense(16, activation="relu")(inputs)
    out = keras.layers.Dense(N_CLASSES, activation="softmax")(h)
    model = keras.Model(inputs, out, name="dense_softmax_teacher")
    model.set_weights(logits_teacher.get_weights())
    return model


@pytest.mark.parametrize("make", [_softmax_layer_teacher, _dense_softmax_teacher],
                         ids=["Softmax_layer", "Dense_softmax"])
def test_softmax_teacher_gives_the_logits_teacher_loss(make):
    logits_teacher = mlp(16, "teacher")
    prob_teacher = make(logits_teacher)
    x, y = batch(11)
    p = to_np(prob_teacher(x))
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)  # it really outputs probabilities

    values = []
    for teacher in (logits_teacher, prob_teacher):
        student = mlp(6, "student")
        keras.utils.set_random_seed(0)
        student.set_weights([np.full_like(w, 0.1 * (i + 1)) for i, w in
                             enumerate(student.get_weights())])
        distiller = keras_kd.Distiller(teacher, student, [SoftTargetDistillation(2.0),
                                                          LogitMatchingDistillation()])
        distiller.compile(keras.optimizers.SGD(0.0), loss=hard_loss())
        values.append(distiller.test_on_batch(x, y, return_dict=True))
    keys = {"loss", "total_loss", "student_loss", "distillation_loss",
            "soft_target_distillation_loss",
            "logit_matching_distillation_loss"}  # log keys do not depend on the session
    assert set(values[0]) == set(values[1]) == keys
    for key in keys:
        np.testing.assert_allclose(values[1][key], values[0][key], rtol=1e-6, atol=1e-6,
                                   err_msg=key)


def test_softmax_student_distils_its_logits():
    """A student ending in Softmax: soft loss on its logits, hard loss on its probabilities."""
    teacher, logits_student = teacher_and_student()
    student = keras.Model(logits_student.input,
                          keras.layers.Softmax()(logits_student.outputs[0]))
    x, y = batch(12)
    distiller = keras_kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
    logs = distiller.test_on_batch(x, y, return_dict=True)
    ref = np_terms(np_mlp(teacher, x), np_mlp(logits_student, x), y, None, 0.1,
                   [("kl", 1.0, 4.0)])
    for key, value in ref.items():
        np.testing.assert_allclose(logs[key], value, atol=1e-5, err_msg=key)


def _conv_softmax_pair():
    inputs = keras.Input((5, N_IN))
    out = keras.layers.Conv1D(N_CLASSES, 5, activation="softmax", name="fused_softmax")(inputs)
    student = keras.Model(inputs, keras.layers.Conv1D(N_CLASSES, 5)(inputs), name="student")
    return keras.Model(inputs, out, name="teacher"), student


def _einsum_softmax_pair():
    inputs = keras.Input((N_IN,))
    out = keras.layers.EinsumDense("ab,bc->ac", output_shape=N_CLASSES, activation="softmax",
                                   name="fused_softmax")(inputs)
    return keras.Model(inputs, out, name="teacher"), mlp(6, "student")


@pytest.mark.parametrize("make", [_conv_softmax_pair, _einsum_softmax_pair],
                         ids=["Conv1D", "EinsumDense"])
def test_fused_softmax_in_another_layer_raises(make):
    teacher, student = make()
    with pytest.raises(ValueError, match="fused_softmax") as info:
        keras_kd.Distiller(teacher, student)
    assert "teacher" in str(info.value) and "Softmax" in str(info.value)


# ---------------------------------------------------------------------------- 12. bad inputs
@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(distillation_losses=lambda: SoftTargetDistillation(0.0)), ValueError,
         "temperature"),
        (dict(distillation_losses=lambda: SoftTargetDistillation(-2.0)), ValueError,
         "temperature"),
        (dict(student_loss_weight=1.5), ValueError, "student_loss_weight"),
        (dict(student_loss_weight=-0.1), ValueError, "student_loss_weight"),
        (dict(distillation_loss_weights=[-1.0]), ValueError,
         r"distillation_loss_weights\[0\]"),
        (dict(distillation_loss_weights=[float("nan")]), ValueError,
         r"distillation_loss_weights\[0\]"),
        (dict(distillation_losses=["soft_target", "logit_matching"],
              distillation_loss_weights=[1.0]), ValueError, "distillation_loss_weights"),
        (dict(distillation_losses=[]), ValueError, "distillation_losses"),
    ],
    ids=["T=0", "T<0", "alpha>1", "alpha<0", "negative_weight", "nan_weight",
         "weights_vs_losses", "no_losses"],
)
def test_bad_constructor_arguments_raise_naming_the_argument(kwargs, error, pattern):
    teacher, student = teacher_and_student()
    with pytest.raises(error, match=pattern):
        kwargs = {k: v() if callable(v) else v for k, v in kwargs.items()}
        keras_kd.Distiller(teacher, student, **kwargs)


def test_output_shapes_that_differ_raise():
    with pytest.raises(ValueError, match="(?i)teacher output shape .* student output shape"):
        keras_kd.Distiller(mlp(16, "teacher", n_out=4), mlp(6, "student"))


def test_compile_without_loss_raises_when_alpha_positive():
    distiller = keras_kd.Distiller(*teacher_and_student(), student_loss_weight=0.2)
    with pytest.raises(ValueError, match=r"compile\(loss=...\).*student_loss_weight"):
        distiller.compile("sgd")
    # alpha = 0 needs no hard loss: trains on the teacher alone.
    teacher, student = teacher_and_student()
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.0)
    distiller.compile(keras.optimizers.SGD(LR))
    x, _ = batch(13)
    logs = distiller.train_on_batch(x, return_dict=True)
    assert logs["student_loss"] == 0.0 and logs["distillation_loss"] > 0.0


def _fit_must_fail_without_changing_weights(distiller, student, *fit_args, pattern):
    before = weights_of(student)
    with pytest.raises(ValueError, match=pattern):
        distiller.fit(*fit_args, batch_size=BATCH, epochs=1, verbose=0)
    for got, want in zip(weights_of(student), before):
        np.testing.assert_array_equal(got, want)


def test_one_hot_labels_with_sparse_loss_raise_before_training():
    teacher, student = teacher_and_student()
    x, y = batch(14)
    distiller = keras_kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(LR), loss=hard_loss())
    one_hot = np.eye(N_CLASSES, dtype="float32")[y]
    _fit_must_fail_without_changing_weights(
        distiller, student, x, one_hot, pattern="(?s)Labels of shape.*categorical_crossentropy"
    )


def test_integer_labels_with_dense_loss_raise_before_training():
    teacher, student = teacher_and_student()
    x, y = batch(15)
    distiller = keras_kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(LR),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    _fit_must_fail_without_changing_weights(
        distiller, student, x, y, pattern="(?s)Labels of shape.*sparse_categorical_crossentropy"
    )


def test_dataset_without_labels_raises_when_alpha_positive():
    teacher, student = teacher_and_student()
    x, _ = batch(16)
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.5)
    distiller.compile(keras.optimizers.SGD(LR), loss=hard_loss())
    _fit_must_fail_without_changing_weights(
        distiller, student, x, pattern="no labels.*student_loss_weight"
    )


def test_probability_loss_on_a_logits_student_warns():
    teacher, student = teacher_and_student()
    distiller = keras_kd.Distiller(teacher, student)
    with pytest.warns(UserWarning, match="(?s)from_logits=False.*student_logits"):
        distiller.compile("sgd", loss="sparse_categorical_crossentropy")
    with pytest.warns(UserWarning, match="from_logits"):
        distiller.compile("sgd", loss=keras.losses.CategoricalCrossentropy())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distiller.compile("sgd", loss=hard_loss())  # from_logits=True: fine
        softmax_student = keras.Model(student.input, keras.layers.Softmax()(student.output))
        keras_kd.Distiller(teacher, softmax_student).compile(
            "sgd", loss="sparse_categorical_crossentropy")  # probabilities: fine
