"""Keras 3 -> tf_keras translator: same logits (1e-5) for every supported layer, clear errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_kd.export import TRANSLATABLE_LAYERS, UntranslatableLayerError, to_tf_keras

L = keras.layers


def every_layer_cnn() -> keras.Model:
    """A Functional CNN that uses every layer in TRANSLATABLE_LAYERS, with branches."""
    inputs = keras.Input((12, 12, 3), name="image")
    a = L.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    a = L.BatchNormalization()(a)
    a = L.ReLU(max_value=6.0)(a)
    b = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1)(a)
    b = L.Activation("tanh")(b)
    c = L.SeparableConv2D(8, 3, padding="same", activation="relu")(a)
    merged = L.Add()([a, b, c])
    pooled = L.Concatenate()([L.MaxPooling2D()(merged), L.AveragePooling2D(2)(merged)])
    flat = L.Dropout(0.3)(L.Flatten()(pooled))
    reshaped = L.Flatten()(L.Reshape((6, 6, 16))(flat))
    features = L.Concatenate()(
        [reshaped, L.GlobalAveragePooling2D()(pooled), L.GlobalMaxPooling2D()(pooled)]
    )
    logits = L.Dense(10, name="logits")(features)
    probs = L.Softmax(name="probs")(logits)
    return keras.Model(inputs, [logits, probs], name="every_layer")


def _randomize_batchnorm(model: keras.Model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                               for w in layer.get_weights()])


def test_every_supported_layer_is_used():
    used = {type(layer).__name__ for layer in every_layer_cnn().layers}
    assert used == set(TRANSLATABLE_LAYERS)


def test_functional_cnn_logits_match_to_1e5():
    import tf_keras

    model = every_layer_cnn()
    rng = np.random.default_rng(0)
    _randomize_batchnorm(model, rng)
    x = rng.uniform(0, 1, (16, 12, 12, 3)).astype("float32")
    translated = to_tf_keras(model)
    assert isinstance(translated, tf_keras.Model)
    assert [type(layer).__name__ for layer in translated.layers] == [
        type(layer).__name__ for layer in model.layers
    ]
    expected = [np.asarray(t) for t in model(x, training=False)]
    got = [np.asarray(t) for t in translated(x, training=False)]
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-5, rtol=0)
    assert np.abs(expected[0]).max() > 0.1  # not a trivially-zero network


def test_sequential_stays_sequential_and_matches():
    import tf_keras

    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            L.Conv2D(4, 3, use_bias=False),
            L.BatchNormalization(),
            L.ReLU(),
            L.MaxPooling2D(),
            L.Flatten(),
            L.Dense(10),
        ]
    )
    rng = np.random.default_rng(1)
    _randomize_batchnorm(model, rng)
    x = rng.uniform(0, 1, (8, 28, 28, 1)).astype("float32")
    translated = to_tf_keras(model)
    assert isinstance(translated, tf_keras.Sequential)
    np.testing.assert_allclose(
        np.asarray(translated(x, training=False)), np.asarray(model(x, training=False)),
        atol=1e-5, rtol=0,
    )
    # Weights are copies: training the translation leaves the Keras 3 model untouched.
    before = model.layers[-1].get_weights()[0].copy()
    translated.layers[-1].kernel.assign(translated.layers[-1].kernel * 0)
    np.testing.assert_array_equal(model.layers[-1].get_weights()[0], before)


def test_shared_layer_is_called_twice():
    shared = L.Dense(4, name="shared")
    a, b = keras.Input((3,), name="a"), keras.Input((3,), name="b")
    model = keras.Model([a, b], L.Add()([shared(a), shared(b)]))
    translated = to_tf_keras(model)
    xa, xb = np.ones((2, 3), "float32"), np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_allclose(
        np.asarray(translated([xa, xb])), np.asarray(model([xa, xb])), atol=1e-5
    )
    assert len(translated.get_layer("shared").weights) == 2


class Scale(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


class MyDense(keras.layers.Dense):
    pass


def test_custom_layer_raises_naming_it():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, L.Dense(2)(Scale(name="my_scale")(inputs)))
    with pytest.raises(UntranslatableLayerError, match=r"'my_scale' \(Scale\)"):
        to_tf_keras(model)


def test_subclass_of_supported_layer_raises():
    model = keras.Sequential([keras.Input((4,)), MyDense(2, name="sub")])
    with pytest.raises(UntranslatableLayerError, match=r"'sub' \(MyDense\)"):
        to_tf_keras(model)


def test_nested_model_raises():
    inner = keras.Sequential([keras.Input((4,)), L.Dense(2)], name="inner")
    model = keras.Sequential([keras.Input((4,)), inner])
    with pytest.raises(UntranslatableLayerError, match="'inner'"):
        to_tf_keras(model)


def test_keras3_only_setting_raises_naming_it():
    model = keras.Sequential([keras.Input((4,)), L.Dense(2, lora_rank=2, name="lora")])
    with pytest.raises(UntranslatableLayerError, match="lora_rank=2"):
        to_tf_keras(model)


def test_unbuilt_and_non_models_raise():
    with pytest.raises(ValueError, match="no defined inputs"):
        to_tf_keras(keras.Sequential([L.Dense(2)]))
    with pytest.raises(TypeError, match="keras.Model"):
        to_tf_keras(L.Dense(2))
