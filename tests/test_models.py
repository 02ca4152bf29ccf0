"""keras_kd.models: logits outputs, Hinton et al.'s parameter counts, constraints, names."""

import keras
import numpy as np
import pytest

from keras_kd import models


def test_mlp_hinton_architectures_have_the_paper_sizes():
    teacher = models.mlp((1200, 1200), dropout=0.5, input_dropout=0.2, max_norm=4.0)
    student = models.mlp((800, 800))
    # 784-1200-1200-10 and 784-800-800-10 with biases.
    assert teacher.count_params() == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10
    assert student.count_params() == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    assert [type(layer).__name__ for layer in teacher.layers].count("Dropout") == 3
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in student.layers)


def test_outputs_are_logits():
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype("float32")
    for model in (models.mlp((16,)), models.cnn((4, 8), dense_units=8)):
        out = model.predict(x, verbose=0)
        assert out.shape == (4, 10)
        assert model.layers[-1].activation is keras.activations.linear
        assert not np.allclose(out.sum(axis=-1), 1.0)


def test_max_norm_is_enforced_after_an_update():
    model = models.mlp((32,), max_norm=0.5, input_shape=(8,))
    model.compile(keras.optimizers.SGD(10.0), "mse")
    model.fit(np.ones((16, 8)), np.full((16, 10), 50.0), epochs=1, verbose=0)
    norms = np.linalg.norm(model.get_layer("dense_0").kernel.numpy(), axis=0)
    assert norms.max() <= 0.5 + 1e-5


def test_cnn_layer_names_let_feature_losses_tap_them():
    model = models.cnn((4, 8), dense_units=0, input_shape=(32, 32, 3), num_classes=5)
    names = [layer.name for layer in model.layers]
    for i in range(2):
        assert f"conv_{i}" in names and f"relu_{i}" in names
    assert model.get_layer("relu_1").output.shape == (None, 16, 16, 8)
    assert model.output.shape == (None, 5)


def test_saved_model_round_trips(tmp_path):
    model = models.cnn((4,), dense_units=8, dropout=0.1)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(1).random((2, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: models.mlp((0,)), "hidden_units"),
        (lambda: models.mlp((8,), dropout=1.0), "dropout"),
        (lambda: models.mlp((8,), input_dropout=-0.1), "input_dropout"),
        (lambda: models.cnn((8, "a")), "filters"),
        (lambda: models.cnn((8,), dense_units=-1), "dense_units"),
    ],
)
def test_invalid_arguments_name_the_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()
