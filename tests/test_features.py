"""`FeatureExtractor`: every requested tensor from one forward pass, with clear errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_kd.features import FeatureExtractor, output_info
from keras_kd.losses import LOGITS, Tap


def model(final="linear"):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, name="dense_pre")(inputs)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Dense(6, activation="relu", name="dense_relu")(h)
    if final == "softmax_layer":
        out = keras.layers.Softmax(name="probs")(keras.layers.Dense(3, name="logits")(h))
    elif final == "activation_softmax":
        out = keras.layers.Activation("softmax")(keras.layers.Dense(3, name="logits")(h))
    elif final == "dense_softmax":
        out = keras.layers.Dense(3, activation="softmax", name="logits")(h)
    else:
        out = keras.layers.Dense(3, name="logits")(h)
    return keras.Model(inputs, out, name="net")


def np_forward(net, x):
    """Returns dict of intermediate float64 values, written without Keras."""
    k1, b1, k2, b2, k3, b3 = (np.array(w, np.float64) for w in net.get_weights())
    pre = x @ k1 + b1
    relu = np.maximum(pre, 0.0)
    hidden = np.maximum(relu @ k2 + b2, 0.0)
    logits = hidden @ k3 + b3
    return {"pre": pre, "relu": relu, "hidden": hidden, "logits": logits}


X = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")


def test_taps_match_an_independent_forward_pass():
    net = model()
    taps = (Tap("relu", pre_activation=True), Tap("relu"), Tap("dense_relu"), LOGITS)
    extractor = FeatureExtractor(net, taps, "student")
    output, tensors = extractor(X, training=False)
    outputs = [np.asarray(output)] + [np.asarray(tensors[tap]) for tap in taps]
    ref = np_forward(net, X)
    assert len(outputs) == 1 + len(taps)
    for got, key in zip(outputs, ["logits", "pre", "relu", "hidden", "logits"]):
        np.testing.assert_allclose(got, ref[key], atol=1e-5, err_msg=key)
    assert [extractor.shapes()[tap][1:] for tap in taps] == [(5,), (5,), (6,), (3,)]


@pytest.mark.parametrize("final", ["softmax_layer", "activation_softmax", "dense_softmax"])
def test_logits_tap_undoes_a_final_softmax(final):
    net = model(final)
    out, tensors = FeatureExtractor(net, (LOGITS,), "teacher")(X, training=False)
    logits = tensors[LOGITS]
    ref = np_forward(net, X)["logits"]
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-5)
    probs = np.exp(ref - ref.max(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(out), probs / probs.sum(-1, keepdims=True),
                               atol=1e-6)


def test_final_softmax_kind():
    assert output_info(model()).activation is None
    assert output_info(model("softmax_layer")).activation == "softmax"
    assert output_info(model("activation_softmax")).activation == "softmax"
    assert output_info(model("dense_softmax")).activation == "softmax"


def test_logits_only_graph_model_is_called_directly():
    net = model()
    extractor = FeatureExtractor(net, (LOGITS,), "student")
    out, tensors = extractor(X, training=False)
    assert tensors[LOGITS] is out
    np.testing.assert_allclose(np.asarray(out), np_forward(net, X)["logits"], atol=1e-5)


def test_unknown_layer_lists_the_layers():
    with pytest.raises(ValueError, match="(?s)no layer named 'nope'.*dense_relu"):
        FeatureExtractor(model(), (Tap("nope"),), "teacher")


def test_pre_activation_of_fused_activation_raises():
    with pytest.raises(ValueError, match="(?s)dense_relu.*'relu'"):
        FeatureExtractor(model(), (Tap("dense_relu", pre_activation=True),), "student")


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


def test_subclassed_models_work_for_logits_but_not_for_intermediate_taps():
    net = _Subclassed()
    out, tensors = FeatureExtractor(net, (LOGITS,), "student")(X, training=False)
    logits = tensors[LOGITS]
    np.testing.assert_allclose(np.asarray(logits), np.asarray(net(X)), atol=1e-6)
    with pytest.raises(ValueError, match="(?s)student model .*not a Functional"):
        FeatureExtractor(_Subclassed(), (Tap("dense"),), "student")


def test_multi_output_models_raise():
    inputs = keras.Input((4,))
    two = keras.Model(inputs, [keras.layers.Dense(3)(inputs), keras.layers.Dense(2)(inputs)])
    with pytest.raises(ValueError, match="2 outputs"):
        FeatureExtractor(two, (LOGITS,), "teacher")
