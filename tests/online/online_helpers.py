"""Tiny models and an independent float64 TensorFlow reference for the online-model tests.

The reference re-implements each forward pass with raw TF ops on float64 copies of the
variables (never Keras layers or keras_kd functions), so its losses and autodiff gradients
check the library's step from outside.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

N_IN, N_CLASSES, BATCH = 4, 3, 8
LR = 0.5
SAMPLE_WEIGHT = np.array([0.5, 2.0, 1.0, 0.0, 3.0, 1.5, 0.25, 1.0], "float32")
L = keras.layers


def hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def batch(seed=0, n=BATCH):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_IN)).astype("float32") * 2.0
    y = rng.integers(0, N_CLASSES, size=(n,)).astype("int32")
    return x, y


def to_np(value):
    return np.asarray(keras.ops.convert_to_numpy(value))


def values_of(variables):
    return [to_np(v).copy() for v in variables]


class CallCounter(keras.layers.Layer):
    """Identity layer counting its calls with training=True and with training=False."""

    def build(self, input_shape):
        self.training_calls = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                              name="training_calls")
        self.inference_calls = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                               name="inference_calls")

    def call(self, x, training=False):
        if training:
            self.training_calls.assign_add(1.0)
        else:
            self.inference_calls.assign_add(1.0)
        return x

    def counts(self):
        return float(to_np(self.training_calls)), float(to_np(self.inference_calls))


def mlp(hidden, name, n_in=N_IN, n_out=N_CLASSES, counter=False, activation=None):
    """Dense(hidden, relu) -> Dense(n_out); optionally a CallCounter after the input."""
    inputs = keras.Input((n_in,), name=f"{name}_in")
    h = inputs
    count = None
    if counter:
        count = CallCounter(name=f"{name}_counter")
        h = count(h)
    h = L.Dense(hidden, activation="relu", name=f"{name}_hidden")(h)
    out = L.Dense(n_out, activation=activation, name=f"{name}_logits")(h)
    model = keras.Model(inputs, out, name=name)
    return (model, count) if counter else model


# ---------------------------------------------------------------------------- reference
class Mirror:
    """float64 tf.Variables mirroring Keras variables, looked up by the Keras variable."""

    def __init__(self, variables):
        self.variables = {id(v): tf.Variable(to_np(v).astype(np.float64)) for v in variables}
        self._keras = {id(v): v for v in variables}

    def __getitem__(self, variable):
        return self.variables[id(variable)]

    def tf_variables(self):
        return list(self.variables.values())

    def sgd(self, grads_by_id, lr):
        """`{id(keras variable): value after one SGD step}` (a missing gradient is zero)."""
        out = {}
        for key, variable in self.variables.items():
            grad = grads_by_id.get(key)
            value = variable.numpy()
            out[key] = value if grad is None else value - lr * grad
        return out


def dense_forward(layers, h, mirror):
    """Dense / CallCounter / InputLayer stack in float64, with the mirrored weights."""
    for layer in layers:
        if isinstance(layer, L.Dense):
            h = tf.matmul(h, mirror[layer.kernel]) + mirror[layer.bias]
            name = layer.activation.__name__
            if name == "relu":
                h = tf.nn.relu(h)
            else:
                assert name == "linear", name
        elif isinstance(layer, (L.InputLayer, CallCounter)):
            continue
        else:
            raise AssertionError(f"unexpected layer {layer!r}")
    return h


def model_forward(model, x, mirror):
    return dense_forward(model.layers, tf.constant(np.asarray(x, np.float64)), mirror)


def ref_ce(z, y):
    return -tf.gather(tf.nn.log_softmax(z), y, axis=-1, batch_dims=1)


def ref_kl(t, s, temperature):
    log_p = tf.nn.log_softmax(t / temperature)
    log_q = tf.nn.log_softmax(s / temperature)
    return temperature**2 * tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), -1)


def ref_mean(values, w):
    w = tf.ones_like(values) if w is None else tf.constant(np.asarray(w, np.float64))
    return tf.reduce_sum(w * values) / tf.cast(tf.shape(values)[0], tf.float64)


def gradients(tape, loss, mirror, keras_variables):
    """`{id(keras variable): gradient}` of `loss` for the given Keras variables."""
    tf_vars = [mirror[v] for v in keras_variables]
    grads = tape.gradient(loss, tf_vars)
    return {id(v): (None if g is None else g.numpy()) for v, g in zip(keras_variables, grads)}


def assert_sgd_update(variables, before, expected_by_id, atol=1e-5):
    """Each variable moved from `before` to the reference value (and something moved)."""
    moved = 0.0
    for variable, old in zip(variables, before):
        got = to_np(variable)
        np.testing.assert_allclose(got, expected_by_id[id(variable)], atol=atol,
                                   err_msg=variable.path)
        moved = max(moved, float(np.abs(got - old).max()))
    assert moved > 1e-3, "the step did not move the weights"
