"""`TransformEnsemble`: transform-averaged targets vs NumPy, the transforms, refusals, saving."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.teachers.transform_ensemble import (
    Flip,
    Scale,
    Shift,
    TransformEnsemble,
    transform_averaged_probabilities,
)


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def image_teacher(seed=0, softmax=False):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5, 5, 1))
    h = keras.layers.Flatten()(keras.layers.Conv2D(2, 3, padding="same")(inputs))
    out = keras.layers.Dense(3, name="logits")(h)
    if softmax:
        out = keras.layers.Softmax()(out)
    return keras.Model(inputs, out, name="teacher")


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(size=(4, 5, 5, 1)).astype("float32")


def test_transforms_equal_numpy(images):
    np.testing.assert_array_equal(np.asarray(Flip("horizontal")(images)), images[:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(Flip("vertical")(images)), images[:, ::-1])
    shifted = np.zeros_like(images)
    shifted[:, 1:, :3] = images[:, :4, 2:]  # one row down, two columns left
    np.testing.assert_array_equal(np.asarray(Shift(dy=1, dx=-2)(images)), shifted)
    np.testing.assert_allclose(np.asarray(Scale(1.0)(images)), images, atol=1e-6)
    assert Scale(1.4)(images).shape == images.shape and Scale(0.6)(images).shape == images.shape


def test_averaged_probabilities_equal_numpy():
    z = np.random.default_rng(1).normal(size=(3, 4, 5))
    np.testing.assert_allclose(np.asarray(transform_averaged_probabilities(z, 2.0)),
                               np_softmax(z / 2.0).mean(0), atol=1e-6)


@pytest.mark.parametrize("softmax", [False, True])
def test_ensemble_output_is_the_averaged_distribution(images, softmax):
    teacher = image_teacher(softmax=softmax)
    logits_model = keras.Model(teacher.input, teacher.get_layer("logits").output)
    transforms = [keras.layers.Identity(), Flip("horizontal"), Shift(0, 1)]
    ensemble = TransformEnsemble(teacher, transforms, temperature=3.0)
    per = np.stack([np.asarray(logits_model(np.asarray(t(images)))) for t in transforms])
    expected = np_softmax(per / 3.0).mean(0)
    np.testing.assert_allclose(np_softmax(np.asarray(ensemble(images)) / 3.0), expected,
                               atol=1e-5)
    by_logits = TransformEnsemble(teacher, transforms, combine="logits")
    np.testing.assert_allclose(np.asarray(by_logits(images)), per.mean(0), atol=1e-5)


def test_bad_transforms_are_refused():
    teacher = image_teacher()
    with pytest.raises(ValueError, match="at least one transform, got an empty list"):
        TransformEnsemble(teacher, [])
    with pytest.raises(TypeError, match=r"transforms\[1\] must be callable"):
        TransformEnsemble(teacher, [Flip(), "flip"])
    with pytest.raises(ValueError, match="must keep the shape"):
        TransformEnsemble(teacher, [lambda x: x[:, 1:]])
    with pytest.raises(ValueError, match="combine must be one of"):
        TransformEnsemble(teacher, [Flip()], combine="median")
    with pytest.raises(ValueError, match="mode must be one of"):
        Flip("diagonal")
    with pytest.raises(TypeError, match="dx must be an integer"):
        Shift(0, 1.5)
    with pytest.raises(ValueError, match="factor must be a finite real number > 0"):
        Scale(0.0)


def test_saved_ensemble_round_trips(tmp_path, images):
    ensemble = TransformEnsemble(image_teacher(), [keras.layers.Identity(), Flip(), Shift(1, 0),
                                                   Scale(1.2)], temperature=2.0)
    path = tmp_path / "ensemble.keras"
    ensemble.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(ensemble(images)),
                               atol=1e-5)


def test_ensemble_is_a_distiller_teacher(images):
    ensemble = TransformEnsemble(image_teacher(), [keras.layers.Identity(), Flip()])
    s_in = keras.Input((5, 5, 1))
    student = keras.Model(s_in, keras.layers.Dense(3)(keras.layers.Flatten()(s_in)))
    teacher_before = [w.copy() for w in ensemble.teacher.get_weights()]
    distiller = keras_kd.Distiller(ensemble, student, student_loss_weight=0.0)
    distiller.compile("adam")
    distiller.fit(images, epochs=1, batch_size=2, verbose=0)
    for a, b in zip(teacher_before, ensemble.teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
