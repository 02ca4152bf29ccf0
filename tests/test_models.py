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
        (lambda: models.resnet_cifar(21), "depth"),
        (lambda: models.resnet_cifar(20, (16, 32)), "widths"),
        (lambda: models.plain_cnn(3), "layers"),
    ],
)
def test_invalid_arguments_name_the_argument(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def _resnet_params(depth, widths, num_classes=10):
    """Parameter count of He et al.'s CIFAR ResNet, counted by hand (BN: 4 per channel)."""
    n, total, previous = (depth - 2) // 6, 0, widths[0]
    total += 3 * 9 * widths[0] + 4 * widths[0]  # stem conv + BN
    for s, c in enumerate(widths):
        for b in range(n):
            total += previous * 9 * c + 4 * c + c * 9 * c + 4 * c
            if previous != c or (s > 0 and b == 0):
                total += previous * c + 4 * c  # 1x1 projection + BN
            previous = c
    return total + previous * num_classes + num_classes


def test_resnet_cifar_sizes_and_tap_names():
    model = models.resnet_cifar(20)
    assert model.count_params() == _resnet_params(20, (16, 32, 64)) == 274_042  # "0.27M"
    assert models.resnet_cifar(8, (8, 16, 32)).count_params() == _resnet_params(8, (8, 16, 32))
    shapes = {name: model.get_layer(name).output.shape for name in ("stage1", "stage2", "stage3")}
    assert shapes == {"stage1": (None, 32, 32, 16), "stage2": (None, 16, 16, 32),
                      "stage3": (None, 8, 8, 64)}
    assert model.get_layer("pool").output.shape == (None, 64)
    assert isinstance(model.get_layer("stage2_block2_add"), keras.layers.Add)
    out = model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0)
    assert out.shape == (2, 10)


def test_plain_cnn_matches_the_takd_specs():
    # plane2 = Conv16-Pool-Conv16-Pool-FC10 (conv 3x3 + BN + ReLU), on 32x32x3 inputs.
    two = models.plain_cnn(2)
    expected = (3 * 9 * 16 + 16 + 4 * 16) + (16 * 9 * 16 + 16 + 4 * 16) + (8 * 8 * 16 * 10 + 10)
    assert two.count_params() == expected
    assert two.get_layer("relu_0").output.shape == (None, 32, 32, 16)
    assert two.get_layer("relu_1").output.shape == (None, 16, 16, 16)
    assert two.get_layer("flatten").output.shape == (None, 1024)
    four = models.plain_cnn(4)
    assert [four.get_layer(f"conv_{i}").filters for i in range(4)] == [16, 16, 32, 32]
    ten = models.plain_cnn(10)
    convs = [layer.filters for layer in ten.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs == [32, 32, 64, 64, 128, 128, 256, 256, 256, 256]
    assert ten.get_layer("dense").units == 128
