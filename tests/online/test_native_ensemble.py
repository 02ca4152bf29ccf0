"""NativeEnsemble (ONE): one step against a reference, forward once, ramp-up, deployment models."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from online_helpers import (
    BATCH,
    LR,
    N_IN,
    SAMPLE_WEIGHT,
    CallCounter,
    Mirror,
    assert_sgd_update,
    batch,
    dense_forward,
    gradients,
    hard_loss,
    mlp,
    ref_ce,
    ref_kl,
    ref_mean,
    to_np,
    values_of,
)

from keras_kd.online import NativeEnsemble, RampUp, sigmoid_rampup

FEATURE = 6
L = keras.layers


def trunk_model(counter=False):
    inputs = keras.Input((N_IN,), name="trunk_in")
    h = inputs
    count = None
    if counter:
        count = CallCounter(name="trunk_counter")
        h = count(h)
    model = keras.Model(inputs, L.Dense(FEATURE, activation="relu", name="trunk_dense")(h),
                        name="trunk")
    return (model, count) if counter else model


def branch_models(m=3, counter=False):
    return [mlp(5, f"branch_{i}", n_in=FEATURE, counter=counter) for i in range(m)]


def np_bn_gate(gate, h, mirror):
    """The default gate (FC -> BN(batch statistics) -> ReLU -> softmax) in float64."""
    fc, bn = gate.get_layer(f"{gate.name}_fc"), gate.get_layer(f"{gate.name}_bn")
    g = tf.matmul(h, mirror[fc.kernel]) + mirror[fc.bias]
    mean = tf.reduce_mean(g, 0)
    var = tf.reduce_mean(tf.square(g - mean), 0)
    g = mirror[bn.gamma] * (g - mean) / tf.sqrt(var + bn.epsilon) + mirror[bn.beta]
    return tf.nn.softmax(tf.nn.relu(g))


def reference(model, x, y, w, temperature, weight):
    """ONE's loss with the ensemble target as a constant from its own forward pass."""
    variables = model.trainable_variables
    mirror = Mirror(variables)
    x64 = tf.constant(x.astype(np.float64))

    def forward():
        h = dense_forward(model.trunk.layers, x64, mirror)
        zs = [dense_forward(b.layers, h, mirror) for b in model.branches]
        g = np_bn_gate(model.gate, h, mirror)
        return zs, sum(g[:, i : i + 1] * z for i, z in enumerate(zs))

    target = tf.constant(forward()[1].numpy())
    with tf.GradientTape() as tape:
        zs, ze = forward()
        logs = {f"branch{i}_loss": ref_mean(ref_ce(z, y), w) for i, z in enumerate(zs)}
        logs["ensemble_loss"] = ref_mean(ref_ce(ze, y), w)
        logs["distillation_loss"] = ref_mean(sum(ref_kl(target, z, temperature) for z in zs), w)
        total = sum(logs[f"branch{i}_loss"] for i in range(len(zs))) + logs["ensemble_loss"]
        total = total + weight * logs["distillation_loss"]
    grads = gradients(tape, total, mirror, variables)
    logs["loss"] = total
    return {k: float(v) for k, v in logs.items()}, mirror.sgd(grads, LR)


def build(m=3, **kwargs):
    model = NativeEnsemble(trunk_model(), branch_models(m), **kwargs)
    model.compile(keras.optimizers.SGD(LR), loss=hard_loss(), metrics=["accuracy"])
    return model


def test_one_step_losses_and_sgd_update_match_reference():
    model = build(3, temperature=2.0)
    model.rampup_weight.assign(0.6)
    x, y = batch(1)
    variables = model.trainable_variables
    names = {v.path for v in variables}
    assert any("gate_fc" in n for n in names) and any("gate_bn" in n for n in names)
    before = values_of(variables)
    expected, updated = reference(model, x, y, SAMPLE_WEIGHT, 2.0, 0.6)

    logs = model.train_on_batch(x, y, sample_weight=SAMPLE_WEIGHT, return_dict=True)

    for key, value in expected.items():
        np.testing.assert_allclose(logs[key], value, atol=2e-5, rtol=1e-5, err_msg=key)
    assert_sgd_update(variables, before, updated, atol=2e-5)


def test_each_network_runs_forward_once_per_step():
    trunk, trunk_count = trunk_model(counter=True)
    built = branch_models(2, counter=True)
    gate_in = keras.Input((FEATURE,))
    gate_count = CallCounter(name="gate_counter")
    gate = keras.Model(gate_in, L.Softmax()(L.Dense(2)(gate_count(gate_in))), name="gate")
    model = NativeEnsemble(trunk, [b for b, _ in built], gate=gate, rampup_epochs=0)
    model.compile(keras.optimizers.SGD(0.1), loss=hard_loss(), metrics=["accuracy"])
    counters = [trunk_count, gate_count] + [c for _, c in built]
    x, y = batch(2, n=3 * BATCH)
    start = [c.counts() for c in counters]
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    after = [c.counts() for c in counters]
    for (t0, i0), (t1, i1) in zip(start, after):
        assert (t1 - t0, i1 - i0) == (3.0, 0.0)
    model.evaluate(x, y, batch_size=BATCH, verbose=0)
    for (t1, i1), (t2, i2) in zip(after, [c.counts() for c in counters]):
        assert (t2 - t1, i2 - i1) == (0.0, 3.0)


def test_rampup_formula_and_fit_applies_it():
    assert sigmoid_rampup(0, 80) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(40, 80) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(80, 80) == sigmoid_rampup(200, 80) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0

    x, y = batch(3, n=2 * BATCH)
    model = build(2, rampup_epochs=2)
    history = model.fit(x, y, batch_size=BATCH, epochs=4, verbose=0).history
    np.testing.assert_allclose(history["rampup_weight"],
                               [math.exp(-5.0), math.exp(-1.25), 1.0, 1.0], rtol=1e-6)
    for epoch, w in enumerate(history["rampup_weight"]):  # the weight multiplies the KL term
        labels = sum(history[f"branch{i}_loss"][epoch] for i in range(2))
        total = labels + history["ensemble_loss"][epoch] + w * history["distillation_loss"][epoch]
        np.testing.assert_allclose(history["loss"][epoch], total, rtol=1e-5)

    # None: the paper's 80/300 of fit's epochs (6 epochs -> 2); an explicit RampUp wins.
    model = build(2)
    history = model.fit(x, y, batch_size=BATCH, epochs=6, verbose=0).history
    np.testing.assert_allclose(history["rampup_weight"][:3],
                               [math.exp(-5.0), math.exp(-1.25), 1.0], rtol=1e-6)
    history = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0,
                        callbacks=[RampUp(rampup_epochs=0)]).history
    assert history["rampup_weight"] == [1.0, 1.0]


def test_branch_and_ensemble_models_stand_alone(tmp_path):
    model = build(3)
    x, y = batch(4, n=2 * BATCH)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    predicted = model.predict(x, verbose=0)

    branch = model.branch_model(1)
    np.testing.assert_allclose(branch.predict(x, verbose=0), predicted["branch1"], atol=1e-6)
    assert branch.count_params() == (model.trunk.count_params()
                                     + model.branches[1].count_params())
    ensemble = model.ensemble_model()
    np.testing.assert_allclose(ensemble.predict(x, verbose=0), predicted["ensemble"],
                               atol=1e-6)
    gate_probs = to_np(model.gate(model.trunk(x), training=False))
    manual = sum(gate_probs[:, i : i + 1] * predicted[f"branch{i}"] for i in range(3))
    np.testing.assert_allclose(predicted["ensemble"], manual, atol=1e-5)
    for name, standalone in (("branch", branch), ("ensemble", ensemble)):
        path = tmp_path / f"{name}.keras"
        standalone.save(path)
        reloaded = keras.saving.load_model(path)
        np.testing.assert_allclose(reloaded.predict(x, verbose=0),
                                   standalone.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="index must be < 3"):
        model.branch_model(3)


def test_keras_round_trip(tmp_path):
    model = build(2, temperature=2.0, rampup_epochs=3)
    x, y = batch(5, n=2 * BATCH)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    model.temperature.assign(2.5)
    model.rampup_weight.assign(0.25)
    path = tmp_path / "one.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, NativeEnsemble)
    assert float(to_np(loaded.temperature)) == 2.5
    assert float(to_np(loaded.rampup_weight)) == 0.25
    assert loaded.rampup_epochs == 3
    for key, value in model.predict(x, verbose=0).items():
        np.testing.assert_allclose(loaded.predict(x, verbose=0)[key], value, atol=1e-6)
    a = model.evaluate(x, y, verbose=0, return_dict=True)
    b = loaded.evaluate(x, y, verbose=0, return_dict=True)
    for key, value in a.items():
        np.testing.assert_allclose(b[key], value, atol=1e-6, err_msg=key)


def _subclassed_trunk():
    class Trunk(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(FEATURE)

        def call(self, x):
            return self.dense(x)

    return Trunk()


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda: dict(trunk=trunk_model(), branches=branch_models(1)), ValueError,
         "branches must list at least 2"),
        (lambda: dict(trunk=trunk_model(), branches=branch_models(2), temperature=0), ValueError,
         "temperature must be a finite real number > 0"),
        (lambda: dict(trunk=trunk_model(), branches=branch_models(2), rampup_epochs=-1),
         ValueError, "rampup_epochs must be a non-negative integer"),
        (lambda: dict(trunk=trunk_model(), branches=[mlp(5, "a", n_in=FEATURE),
                                                     mlp(5, "b", n_in=FEATURE, n_out=4)]),
         ValueError, "output shape"),
        (lambda: dict(trunk=trunk_model(), branches=[mlp(5, "a", n_in=FEATURE),
                                                     mlp(5, "b", n_in=7)]),
         ValueError, "take the trunk's feature"),
        (lambda: dict(trunk=trunk_model(), branches=[
            mlp(5, "a", n_in=FEATURE), mlp(5, "b", n_in=FEATURE, activation="softmax")]),
         ValueError, "ends in a softmax"),
        (lambda: dict(trunk=trunk_model(), branches=branch_models(3),
                      gate=keras.Sequential([keras.Input((FEATURE,)), L.Dense(2)])),
         ValueError, r"there are 3 branches"),
        (lambda: dict(trunk=_subclassed_trunk(), branches=branch_models(2)), ValueError,
         "functional or Sequential"),
        (lambda: dict(trunk="trunk", branches=branch_models(2)), TypeError,
         "trunk must be a keras.Model"),
    ],
)
def test_bad_inputs_raise_before_training(make, error, pattern):
    with pytest.raises(error, match=pattern):
        NativeEnsemble(**make())


def test_rampup_callback_refuses_other_models():
    student = mlp(4, "student")
    student.compile("sgd", loss=hard_loss())
    x, y = batch(6)
    with pytest.raises(ValueError, match="rampup_weight"):
        student.fit(x, y, verbose=0, callbacks=[RampUp(2)])
    with pytest.raises(ValueError, match="rampup_epochs"):
        RampUp(rampup_epochs=-2)
