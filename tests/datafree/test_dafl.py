"""DAFL: the three generator losses vs NumPy; one step updates both models as specified."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd.datafree import (
    DAFL,
    activation_loss,
    dafl_generator,
    information_entropy_loss,
    one_hot_loss,
)

ATOL = 1e-5
LATENT = 4


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def models(seed: int = 0):
    keras.utils.set_random_seed(seed)
    t_in = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(3, 3, padding="same", name="t_conv")(t_in)
    h = keras.layers.BatchNormalization(name="t_bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Flatten(name="features")(h)
    h = keras.layers.Dense(6, activation="relu", name="t_hidden")(h)
    teacher = keras.Model(t_in, keras.layers.Dense(3, name="t_logits")(h), name="teacher")
    s_in = keras.Input((8, 8, 1))
    student = keras.Model(s_in, keras.layers.Dense(3, name="s_logits")(
        keras.layers.Flatten()(s_in)), name="student")
    generator = dafl_generator(LATENT, (8, 8, 1))
    return teacher, student, generator


def test_one_hot_loss_equals_numpy():
    t = np.random.default_rng(0).normal(size=(5, 4))
    expected = -np_log_softmax(t)[np.arange(5), t.argmax(1)]
    np.testing.assert_allclose(np.asarray(one_hot_loss(t)), expected, atol=ATOL)


def test_activation_loss_equals_numpy():
    f = np.random.default_rng(1).normal(size=(3, 2, 2, 4))
    np.testing.assert_allclose(np.asarray(activation_loss(f)),
                               -np.abs(f).reshape(3, -1).mean(1), atol=ATOL)


def test_information_entropy_loss_equals_numpy():
    t = np.random.default_rng(2).normal(size=(6, 5))
    p = np.exp(np_log_softmax(t)).mean(0)
    np.testing.assert_allclose(float(information_entropy_loss(t)), (p * np.log10(p)).sum(),
                               atol=ATOL)
    # Minimal, -log10(classes), when the batch's mean prediction is uniform.
    np.testing.assert_allclose(float(information_entropy_loss(np.eye(5))), -np.log10(5),
                               atol=ATOL)


def test_one_step_updates_generator_and_student_as_specified():
    teacher, student, generator = models()
    dafl = DAFL(teacher, student, generator, feature_layer="features",
                one_hot_weight=1.0, activation_weight=0.1, information_entropy_weight=5.0)
    dafl.compile(optimizer=keras.optimizers.SGD(0.1),
                 generator_optimizer=keras.optimizers.SGD(0.01))
    z = tf.constant(np.random.default_rng(3).normal(size=(6, LATENT)).astype("float32"))

    # The reference: gradients of each model's own loss, computed by hand from the parts.
    features_model = keras.Model(teacher.inputs, [teacher.outputs[0],
                                                  teacher.get_layer("features").output])
    g_vars, s_vars = generator.trainable_variables, student.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        images = generator(z, training=True)
        t_logits, feats = features_model(images, training=False)
        l_g = (tf.reduce_mean(one_hot_loss(t_logits)) + 0.1 * tf.reduce_mean(
            activation_loss(feats)) + 5.0 * information_entropy_loss(t_logits))
        p = tf.nn.softmax(t_logits)
        log_q = tf.nn.log_softmax(student(tf.stop_gradient(images), training=True))
        l_s = tf.reduce_mean(tf.reduce_sum(
            tf.stop_gradient(p) * (tf.math.log(tf.stop_gradient(p)) - log_q), -1))
    g_expected = [v.numpy() - 0.01 * g.numpy() for v, g in zip(g_vars, tape.gradient(l_g,
                                                                                     g_vars))]
    s_expected = [v.numpy() - 0.1 * g.numpy() for v, g in zip(s_vars, tape.gradient(l_s,
                                                                                    s_vars))]
    teacher_before = [w.copy() for w in teacher.get_weights()]
    # The generator's BN layers normalise with the batch's statistics in training mode, so
    # the reference's forward pass (which moved their running statistics) changes nothing.
    logs = dafl.train_on_batch(z, return_dict=True)
    for v, expected in zip(g_vars, g_expected):
        np.testing.assert_allclose(v.numpy(), expected, atol=1e-5)
    for v, expected in zip(s_vars, s_expected):
        np.testing.assert_allclose(v.numpy(), expected, atol=1e-5)
    for a, b in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)  # bit-identical, BN statistics included
    np.testing.assert_allclose(logs["generator_loss"], float(l_g), rtol=1e-5)
    np.testing.assert_allclose(logs["kd_loss"], float(l_s), rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], float(l_g) + float(l_s), rtol=1e-5)


def test_fit_on_noise_with_real_validation_and_models_save_alone(tmp_path):
    teacher, student, generator = models()
    teacher_before = [w.copy() for w in teacher.get_weights()]
    dafl = DAFL(teacher, student, generator, feature_layer="features")
    dafl.compile("adam", generator_optimizer="adam",
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                 metrics=["accuracy"])
    rng = np.random.default_rng(4)
    x_val, y_val = rng.normal(size=(8, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 8)
    history = dafl.fit(dafl.latent_dataset(4, seed=1), steps_per_epoch=2, epochs=1,
                       validation_data=(x_val, y_val), verbose=0)
    assert {"loss", "generator_loss", "one_hot_loss", "activation_loss",
            "information_entropy_loss", "kd_loss", "accuracy", "val_student_loss",
            "val_accuracy"} <= set(history.history)
    assert history.history["val_student_loss"][0] > 0
    for a, b in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not {id(v) for v in teacher.weights} & {id(v) for v in dafl.trainable_variables}
    dafl.student.save(tmp_path / "student.keras")
    dafl.generator.save(tmp_path / "generator.keras")
    z = np.zeros((2, LATENT), "float32")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "generator.keras")(z),
                               generator(z), atol=1e-6)
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "student.keras")(x_val),
                               student(x_val), atol=1e-6)


def test_latent_dataset_is_seeded():
    teacher, student, generator = models()
    dafl = DAFL(teacher, student, generator, feature_layer="features")
    a = [b.numpy() for b in dafl.latent_dataset(3, seed=7).take(2)]
    b = [b.numpy() for b in dafl.latent_dataset(3, seed=7).take(2)]
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (3, LATENT) and not np.array_equal(a[0], a[1])


def test_bad_models_and_weights_are_refused():
    teacher, student, generator = models()
    with pytest.raises(ValueError, match="generator makes inputs of shape"):
        DAFL(teacher, student, dafl_generator(LATENT, (12, 12, 1)))
    other_in = keras.Input((8, 8, 1))
    five = keras.Model(other_in, keras.layers.Dense(5)(keras.layers.Flatten()(other_in)))
    with pytest.raises(ValueError, match="teacher predicts 3 classes but the student 5"):
        DAFL(teacher, five, generator)
    with pytest.raises(ValueError, match="activation_weight must be a non-negative"):
        DAFL(teacher, student, generator, activation_weight=-0.1)
    with pytest.raises(TypeError, match="generator must be a keras.Model"):
        DAFL(teacher, student, lambda z: z)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        DAFL(teacher, student, generator, feature_layer="nope")
    dafl = DAFL(teacher, student, generator)
    assert dafl.feature_tap.layer == "t_hidden"  # the layer feeding the logits
    with pytest.raises(ValueError, match="Call compile"):
        dafl.train_step(tf.zeros((2, LATENT)))


def test_config_round_trips():
    teacher, student, generator = models()
    dafl = DAFL(teacher, student, generator, feature_layer="features", activation_weight=0.2,
                temperature=2.0, seed=3)
    clone = DAFL.from_config(dafl.get_config())
    assert clone.feature_tap.layer == "features" and clone.seed == 3
    assert float(clone.activation_weight.numpy()) == pytest.approx(0.2)
    assert float(clone.temperature.numpy()) == pytest.approx(2.0)
    x = np.zeros((2, 8, 8, 1), "float32")
    np.testing.assert_allclose(clone(x), dafl(x), atol=1e-6)
