"""Regression tests for the silent failures found by outside probes (issue #8, D1-D8).

Each input either gives the exact value (NumPy reference) or is refused before any weight
changes, with the argument named and what to do.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import losses as kd_losses
from keras_kd.teachers.cached import CACHE_INPUTS_KEY, CACHE_OUTPUTS_KEY

N_IN, C, B = 4, 3, 8
RNG = np.random.default_rng(0)
X = RNG.normal(size=(B, N_IN)).astype("float32") * 2
Y = RNG.integers(0, C, size=(B,)).astype("int32")
W = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5, 0.25, 1.0], "float32")
SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def weights(model):
    return [np.array(w) for w in model.get_weights()]


def trunk(name, hidden=6):
    inputs = keras.Input((N_IN,), name=f"{name}_in")
    h = keras.layers.Dense(hidden, activation="relu", name=f"{name}_hidden")(inputs)
    return inputs, h


def logits_model(name, hidden=6):
    inputs, h = trunk(name, hidden)
    return keras.Model(inputs, keras.layers.Dense(C, name=f"{name}_logits")(h), name=name)


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kd(t, s, temperature=4.0):
    lp, lq = np_log_softmax(t / temperature), np_log_softmax(s / temperature)
    return temperature**2 * (np.exp(lp) * (lp - lq)).sum(-1)


def logits_of(model, x):
    """Pre-softmax outputs: the input of the "_logits" Dense layer times its kernel + bias."""
    layer = next(la for la in model.layers if la.name.endswith("_logits"))
    features = np.asarray(keras.Model(model.inputs, layer.input)(x), np.float64)
    return features @ np.asarray(layer.kernel, np.float64) + np.asarray(layer.bias, np.float64)


# ---------------------------------------------------------------- D1: probability outputs
class _ProbabilityTeacher(keras.Model):
    """A subclassed teacher returning softmax probabilities (its graph cannot be read)."""

    def __init__(self):
        super().__init__(name="subclassed")
        self.hidden = keras.layers.Dense(6, activation="relu")
        self.out = keras.layers.Dense(C)

    def call(self, x, training=False):
        return keras.ops.softmax(self.out(self.hidden(x)))


def _ops_softmax():
    inputs, h = trunk("t", 16)
    return keras.Model(inputs, keras.ops.softmax(keras.layers.Dense(C, name="t_logits")(h)))


def _activation_softmax():
    inputs, h = trunk("t", 16)
    z = keras.layers.Dense(C, name="t_logits")(h)
    return keras.Model(inputs, keras.layers.Activation("softmax")(z))


def _softmax_then_dropout():
    inputs, h = trunk("t", 16)
    p = keras.layers.Softmax()(keras.layers.Dense(C, name="t_logits")(h))
    return keras.Model(inputs, keras.layers.Dropout(0.5)(keras.layers.Identity()(p)))


def _dense_tf_nn_softmax():
    inputs, h = trunk("t", 16)
    return keras.Model(inputs, keras.layers.Dense(C, activation=tf.nn.softmax,
                                                  name="t_logits")(h))


@pytest.mark.parametrize("make", [_ops_softmax, _activation_softmax, _softmax_then_dropout,
                                  _dense_tf_nn_softmax],
                         ids=["keras.ops.softmax", "Activation", "Softmax+passthrough",
                              "Dense(tf.nn.softmax)"])
def test_probability_teachers_are_undone_exactly(make):
    teacher, student = make(), logits_model("s")
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.0)
    distiller.compile(keras.optimizers.SGD(0.1), loss=SCE)
    t = logits_of(teacher, X)
    s = np.asarray(student(X), np.float64)
    logs = distiller.train_on_batch(X, Y, sample_weight=W, return_dict=True)
    np.testing.assert_allclose(logs["distillation_loss"], (W * np_kd(t, s)).mean(), rtol=1e-5)


def _lambda_softmax():
    inputs, h = trunk("t", 16)
    z = keras.layers.Dense(C, name="t_logits")(h)
    return keras.Model(inputs, keras.layers.Lambda(lambda v: keras.ops.softmax(v))(z))


@pytest.mark.parametrize("make", [_lambda_softmax, _ProbabilityTeacher],
                         ids=["Lambda(softmax)", "subclassed"])
def test_unreadable_probability_teacher_is_refused_before_training(make):
    teacher, student = make(), logits_model("s")
    if isinstance(teacher, _ProbabilityTeacher):
        teacher(X)
    distiller = keras_kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.1), loss=SCE)
    before = weights(student)
    with pytest.raises(ValueError, match="(?s)teacher's outputs.*sum to 1.*"
                                         "teacher_output='probabilities'"):
        distiller.fit(X, Y, batch_size=4, epochs=1, verbose=0)
    for a, b in zip(weights(student), before):
        np.testing.assert_array_equal(a, b)


def test_declared_probability_teacher_gives_the_logits_loss():
    teacher, student = _ProbabilityTeacher(), logits_model("s")
    teacher(X)
    distiller = keras_kd.Distiller(teacher, student, teacher_output="probabilities",
                                   student_loss_weight=0.0)
    distiller.compile(keras.optimizers.SGD(0.1), loss=SCE)
    t = np.asarray(teacher.out(teacher.hidden(X)), np.float64)
    s = np.asarray(student(X), np.float64)
    history = distiller.fit(X, Y, sample_weight=W, batch_size=B, epochs=1, verbose=0,
                            shuffle=False)
    np.testing.assert_allclose(history.history["distillation_loss"][0], (W * np_kd(t, s)).mean(),
                               rtol=1e-5)


def test_unreadable_probability_student_is_refused():
    teacher = logits_model("t", 16)
    inputs, h = trunk("s")
    z = keras.layers.Dense(C, name="s_logits")(h)
    student = keras.Model(inputs, keras.layers.Lambda(lambda v: keras.ops.softmax(v))(z))
    distiller = keras_kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="(?s)student's outputs.*student_output"):
        distiller.fit(X, Y, batch_size=4, epochs=1, verbose=0)


def test_bad_output_kind_argument():
    with pytest.raises(ValueError, match="teacher_output must be one of"):
        keras_kd.Distiller(logits_model("t"), logits_model("s"), teacher_output="softmax")


# ---------------------------------------------------------------- D3: the user's teacher
def test_teacher_object_left_as_it_was_and_never_trained():
    teacher, student = logits_model("t", 16), logits_model("s")
    assert teacher.trainable
    with pytest.raises(ValueError):
        keras_kd.Distiller(teacher, student, student_loss_weight=2.0)
    assert teacher.trainable  # also when construction raises
    before = weights(teacher)
    distiller = keras_kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.SGD(0.5), loss=SCE)
    distiller.fit(X, Y, batch_size=4, epochs=2, verbose=0)
    assert teacher.trainable and all(layer.trainable for layer in teacher.layers)
    for a, b in zip(weights(teacher), before):
        np.testing.assert_array_equal(a, b)
    teacher_ids = {id(v) for v in teacher.weights}
    assert not teacher_ids & {id(v) for v in distiller.trainable_variables}


# ---------------------------------------------------------------- D4: shared layers
def test_student_sharing_layers_with_the_teacher_is_refused():
    inputs = keras.Input((N_IN,))
    shared = keras.layers.Dense(8, activation="relu", name="shared")
    teacher = keras.Model(inputs, keras.layers.Dense(C)(keras.layers.Dense(8)(shared(inputs))))
    student = keras.Model(inputs, keras.layers.Dense(C)(shared(inputs)))
    with pytest.raises(ValueError, match="(?s)shares 2 variable.*keras_kd.online.RocketLaunching"):
        keras_kd.Distiller(teacher, student)


# ---------------------------------------------------------------- D5: checkpoints mid-stage
def _hint_nets():
    def net(prefix, width):
        x = keras.Input((6, 6, 1))
        h = keras.layers.Conv2D(width, 3, padding="same", name=f"{prefix}conv1")(x)
        h = keras.layers.ReLU(name=f"{prefix}relu1")(h)
        h = keras.layers.Conv2D(width, 3, padding="same", name=f"{prefix}conv2")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(x, keras.layers.Dense(C, name=f"{prefix}logits")(h),
                           name=f"{prefix}net")

    keras.utils.set_random_seed(3)
    return net("t_", 4), net("s_", 2)


class _SaveAt(keras.callbacks.Callback):
    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.model.save(self.path)


def test_keras_checkpoint_taken_in_hint_stage_resumes_exactly(tmp_path):
    teacher, student = _hint_nets()
    hint = kd_losses.HintDistillation("t_relu1", "s_relu1", name="hint")
    distiller = keras_kd.Distiller(teacher, student, [kd_losses.SoftTargetDistillation(), hint],
                                   distillation_loss_weights=[1.0, 0.5], student_loss_weight=0.3)
    distiller.compile(keras.optimizers.Adam(1e-2), loss=SCE)
    x = RNG.random((16, 6, 6, 1)).astype("float32")
    y = np.arange(16) % C
    path = str(tmp_path / "stage1.keras")
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[keras_kd.callbacks.HintStage(hint, epochs=2), _SaveAt(path)])
    optimizer_state = [np.array(v) for v in distiller.optimizer.variables]
    reloaded = keras.models.load_model(path)
    # The configured objective and trainability, not the stage's, are in the file ...
    assert np.isclose(float(reloaded.student_loss_weight.numpy()), 0.3)
    np.testing.assert_allclose(reloaded.path_weighting.weights_variable.numpy(), [1.0, 0.5])
    assert all(layer.trainable for layer in reloaded.student.layers)
    # ... the stage is carried by the focus variable, and the optimizer state is kept.
    np.testing.assert_array_equal(reloaded.path_focus.numpy(), [0.0, 1.0])
    assert len(reloaded.optimizer.variables) == len(optimizer_state)
    for a, b in zip(reloaded.optimizer.variables, optimizer_state):
        np.testing.assert_array_equal(np.array(a), b)
    # Continuing with the callback: stage 1 for epoch 1, then the full objective.
    history = reloaded.fit(x, y, batch_size=8, epochs=3, initial_epoch=1, verbose=0,
                           callbacks=[keras_kd.callbacks.HintStage(reloaded.distillation_losses[1],
                                                                   epochs=2)])
    assert history.history["hint_stage"] == [1, 2]
    np.testing.assert_allclose(history.history["loss"][0], history.history["hint_loss"][0],
                               rtol=1e-5)
    np.testing.assert_array_equal(reloaded.path_focus.numpy(), [0.0, 0.0])


# ---------------------------------------------------------------- D8: cached batches
def test_input_dict_with_a_teacher_outputs_key_is_not_a_cached_batch():
    def net(name, hidden):
        a = keras.Input((N_IN,), name="teacher_outputs")
        b = keras.Input((N_IN,), name="inputs")
        h = keras.layers.Dense(hidden, activation="relu")(keras.layers.Concatenate()([a, b]))
        return keras.Model({"teacher_outputs": a, "inputs": b}, keras.layers.Dense(C)(h),
                           name=name)

    teacher, student = net("t", 16), net("s", 6)
    data = {"teacher_outputs": X, "inputs": X[::-1].copy()}
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.0)
    distiller.compile(keras.optimizers.SGD(0.1), loss=SCE)
    t = np.asarray(teacher(data), np.float64)
    s = np.asarray(student(data), np.float64)
    logs = distiller.train_on_batch(data, Y, return_dict=True)
    np.testing.assert_allclose(logs["distillation_loss"], np_kd(t, s).mean(), rtol=1e-5)


def test_models_with_the_reserved_input_names_are_refused():
    a = keras.Input((N_IN,), name=CACHE_INPUTS_KEY)
    student = keras.Model(a, keras.layers.Dense(C)(a))
    with pytest.raises(ValueError, match="reserves for cached teacher batches"):
        keras_kd.Distiller(None, student)
    assert CACHE_OUTPUTS_KEY != CACHE_INPUTS_KEY


# ---------------------------------------------------------------- different inputs
def _image_teacher():
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="t_conv")(inputs))
    return keras.Model(inputs, keras.layers.Dense(C, name="t_logits")(h), name="teacher")


def _image_student():
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(C)(h), name="student")


def _to_teacher(x):
    return keras.ops.image.resize(keras.ops.repeat(x, 3, axis=-1), (32, 32))


def test_teacher_with_other_inputs_needs_and_uses_teacher_input_fn():
    teacher, student = _image_teacher(), _image_student()
    with pytest.raises(ValueError, match=r"(?s)\(32, 32, 3\).*\(28, 28, 1\).*teacher_input_fn"):
        keras_kd.Distiller(teacher, student)
    with pytest.raises(ValueError, match=r"(?s)teacher_input_fn maps.*\(28, 28, 3\)"):
        keras_kd.Distiller(teacher, student,
                           teacher_input_fn=lambda x: keras.ops.repeat(x, 3, axis=-1))
    distiller = keras_kd.Distiller(teacher, student, teacher_input_fn=_to_teacher,
                                   student_loss_weight=0.0)
    distiller.compile(keras.optimizers.SGD(0.1), loss=SCE)
    x = RNG.random((4, 28, 28, 1)).astype("float32")
    y = np.arange(4) % C
    t = np.asarray(teacher(_to_teacher(x)), np.float64)
    s = np.asarray(student(x), np.float64)
    logs = distiller.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["distillation_loss"], np_kd(t, s).mean(), rtol=1e-5)
    # The cache applies the same map and keeps the student's inputs.
    cached = keras_kd.cache_teacher_outputs(teacher, x, y, teacher_input_fn=_to_teacher)
    features, _ = next(iter(cached.batch(4)))
    np.testing.assert_array_equal(features[CACHE_INPUTS_KEY].numpy(), x)
    np.testing.assert_allclose(features[CACHE_OUTPUTS_KEY]["logits"].numpy(), t, atol=1e-5)


# ---------------------------------------------------------------- identically zero losses
class _ConstantStudent(keras.Model):
    """Subclassed student whose output does not depend on the class axis (one unit)."""

    def __init__(self):
        super().__init__(name="constant")
        self.dense = keras.layers.Dense(1)

    def call(self, x, training=False):
        return self.dense(x)


def test_identically_zero_loss_on_the_first_batch_is_refused():
    inputs = keras.Input((N_IN,))
    teacher = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    student = _ConstantStudent()
    student(X)
    distiller = keras_kd.Distiller(teacher, student, "soft_target", student_loss_weight=0.0)
    distiller.compile(keras.optimizers.SGD(0.1))
    before = weights(student)
    with pytest.raises(ValueError, match="(?s)'soft_target_distillation'.*identically 0"):
        distiller.fit(X, Y, batch_size=4, epochs=1, verbose=0)
    for a, b in zip(weights(student), before):
        np.testing.assert_array_equal(a, b)
