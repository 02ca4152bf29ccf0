"""MutualLearning: one step against an independent reference, forward once, logs, saving."""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from online_helpers import (
    BATCH,
    LR,
    N_CLASSES,
    SAMPLE_WEIGHT,
    Mirror,
    assert_sgd_update,
    batch,
    gradients,
    hard_loss,
    mlp,
    model_forward,
    ref_ce,
    ref_kl,
    ref_mean,
    to_np,
    values_of,
)

from keras_kd.online import MutualLearning


def cohort(k=3):
    return [mlp(4 + 2 * i, f"peer_{i}") for i in range(k)]


def reference(peers, x, y, w, temperature):
    """Each peer's own loss, the others' outputs as constants, and its own gradient."""
    mirror = Mirror([v for p in peers for v in p.trainable_variables])
    constants = [model_forward(p, x, mirror).numpy() for p in peers]
    logs, grads, total = {}, {}, 0.0
    k_peers = len(peers)
    for k, peer in enumerate(peers):
        with tf.GradientTape() as tape:
            z = model_forward(peer, x, mirror)
            label = ref_mean(ref_ce(z, y), w)
            kl = sum(ref_kl(tf.constant(constants[j]), z, temperature)
                     for j in range(k_peers) if j != k) / (k_peers - 1)
            mimicry = ref_mean(kl, w)
            own = label + mimicry
        grads.update(gradients(tape, own, mirror, peer.trainable_variables))
        logs.update({f"peer{k}_loss": float(own), f"peer{k}_label_loss": float(label),
                     f"peer{k}_distillation_loss": float(mimicry)})
        total += float(own)
    logs["loss"] = total
    return logs, mirror.sgd(grads, LR), constants


def test_one_step_losses_and_sgd_update_match_reference():
    peers = cohort(3)
    x, y = batch(1)
    model = MutualLearning(peers, temperature=2.0)
    model.compile(keras.optimizers.SGD(LR), loss=hard_loss(), metrics=["accuracy"])
    variables = [v for p in peers for v in p.trainable_variables]
    before = values_of(variables)
    expected, updated, _ = reference(peers, x, y, SAMPLE_WEIGHT, 2.0)

    logs = model.train_on_batch(x, y, sample_weight=SAMPLE_WEIGHT, return_dict=True)

    for key, value in expected.items():
        np.testing.assert_allclose(logs[key], value, atol=1e-5, rtol=1e-6, err_msg=key)
    # One optimizer on the sum of the peers' losses = each peer's own gradient step.
    assert_sgd_update(variables, before, updated)
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in variables}

    # The temperature is a variable read at each step, not a constant of the traced step.
    model.temperature.assign(3.0)
    expected, _, _ = reference(peers, x, y, SAMPLE_WEIGHT, 3.0)
    logs = model.test_on_batch(x, y, sample_weight=SAMPLE_WEIGHT, return_dict=True)
    for key, value in expected.items():
        np.testing.assert_allclose(logs[key], value, atol=1e-5, rtol=1e-6, err_msg=key)


def test_sample_weights_change_every_term():
    peers = cohort(2)
    x, y = batch(2)
    model = MutualLearning(peers)
    model.compile(keras.optimizers.SGD(0.0), loss=hard_loss())
    plain = model.test_on_batch(x, y, return_dict=True)
    weighted = model.test_on_batch(x, y, sample_weight=SAMPLE_WEIGHT, return_dict=True)
    for key in ("peer0_label_loss", "peer0_distillation_loss", "peer1_distillation_loss"):
        assert abs(plain[key] - weighted[key]) > 1e-4, key


def test_each_peer_runs_forward_once_per_step():
    built = [mlp(4 + 2 * i, f"peer_{i}", counter=True) for i in range(3)]
    peers, counters = [p for p, _ in built], [c for _, c in built]
    x, y = batch(3, n=3 * BATCH)
    model = MutualLearning(peers)
    model.compile(keras.optimizers.SGD(0.1), loss=hard_loss(), metrics=["accuracy"])
    start = [c.counts() for c in counters]
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    after_fit = [c.counts() for c in counters]
    for (t0, i0), (t1, i1) in zip(start, after_fit):
        assert (t1 - t0, i1 - i0) == (3.0, 0.0)  # 3 steps, one training call each
    model.evaluate(x, y, batch_size=BATCH, verbose=0)
    for (t1, i1), (t2, i2) in zip(after_fit, [c.counts() for c in counters]):
        assert (t2 - t1, i2 - i1) == (0.0, 3.0)


def test_fit_and_evaluate_log_each_peer_and_the_ensemble():
    peers = cohort(2)
    x, y = batch(4, n=2 * BATCH)
    xv, yv = batch(5, n=2 * BATCH)
    model = MutualLearning(peers)
    model.compile(keras.optimizers.SGD(0.1), loss=hard_loss(), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=BATCH, epochs=2, validation_data=(xv, yv),
                        verbose=0).history
    keys = ["loss", "ensemble_accuracy"] + [
        f"peer{k}_{t}" for k in range(2) for t in ("loss", "label_loss", "distillation_loss",
                                                   "accuracy")]
    for key in keys:
        assert len(history[key]) == 2 and len(history[f"val_{key}"]) == 2, key

    logits = [to_np(p(xv, training=False)) for p in peers]
    probabilities = np.mean([np.exp(z - z.max(-1, keepdims=True))
                             / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)
                             for z in logits], axis=0)
    evaluated = model.evaluate(xv, yv, batch_size=BATCH, verbose=0, return_dict=True)
    for k, z in enumerate(logits):
        np.testing.assert_allclose(evaluated[f"peer{k}_accuracy"],
                                   np.mean(z.argmax(-1) == yv), atol=1e-6)
    np.testing.assert_allclose(evaluated["ensemble_accuracy"],
                               np.mean(probabilities.argmax(-1) == yv), atol=1e-6)
    np.testing.assert_allclose(evaluated["loss"], history["val_loss"][-1], atol=1e-6)
    predicted = model.predict(xv, verbose=0)
    np.testing.assert_allclose(np.exp(predicted["ensemble"]), probabilities, atol=1e-5)
    np.testing.assert_allclose(predicted["peer1"], logits[1], atol=1e-6)


def test_keras_round_trip_and_each_peer_saves_alone(tmp_path):
    peers = [mlp(4, "small"), mlp(32, "big")]
    x, y = batch(6, n=2 * BATCH)
    model = MutualLearning(peers, temperature=1.5)
    model.compile(keras.optimizers.Adam(0.01), loss=hard_loss(), metrics=["accuracy"])
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    model.temperature.assign(2.5)

    path = tmp_path / "dml.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, MutualLearning)
    assert float(to_np(loaded.temperature)) == 2.5
    assert loaded.get_config()["temperature"] == 2.5
    for key, value in model.predict(x, verbose=0).items():
        np.testing.assert_allclose(loaded.predict(x, verbose=0)[key], value, atol=1e-6)
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0, return_dict=True)["loss"],
        model.evaluate(x, y, verbose=0, return_dict=True)["loss"], atol=1e-6)
    # The optimizer state came back: the next step is the same.
    a = model.train_on_batch(x[:BATCH], y[:BATCH], return_dict=True)["loss"]
    b = loaded.train_on_batch(x[:BATCH], y[:BATCH], return_dict=True)["loss"]
    np.testing.assert_allclose(a, b, atol=1e-6)

    small = tmp_path / "small.keras"
    model.peers[0].save(small)
    reloaded = keras.saving.load_model(small)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0),
                               to_np(peers[0](x, training=False)), atol=1e-6)
    with zipfile.ZipFile(small) as archive:
        config = json.loads(archive.read("config.json"))
    assert "big" not in json.dumps(config)
    assert reloaded.count_params() == peers[0].count_params()


def _shared_pair():
    shared = keras.layers.Dense(5, activation="relu", name="shared")
    inputs = keras.Input((4,))
    h = shared(inputs)
    a = keras.Model(inputs, keras.layers.Dense(N_CLASSES)(h), name="a")
    b = keras.Model(inputs, keras.layers.Dense(N_CLASSES)(h), name="b")
    return [a, b]


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda: dict(peers=[mlp(4, "alone")]), ValueError, "peers must list at least 2"),
        (lambda: dict(peers=mlp(4, "alone")), TypeError, "peers must be a list"),
        (lambda: dict(peers=[mlp(4, "a"), "b"]), TypeError, r"peers\[1\] must be a keras.Model"),
        (lambda: dict(peers=[mlp(4, "a"), mlp(4, "b", n_out=5)]), ValueError,
         "output shape"),
        (lambda: dict(peers=[mlp(4, "a"), mlp(4, "b", activation="softmax")]), ValueError,
         "ends in a softmax"),
        (lambda: dict(peers=[mlp(4, "a"), mlp(4, "b")], temperature=0.0), ValueError,
         "temperature must be a finite real number > 0"),
        (lambda: dict(peers=[mlp(4, "a"), mlp(4, "b")], temperature=-1), ValueError,
         "temperature"),
        (lambda: dict(peers=_shared_pair()), ValueError, "share 2 variable"),
    ],
)
def test_bad_inputs_raise_before_training(make, error, pattern):
    with pytest.raises(error, match=pattern):
        MutualLearning(**make())


def test_same_peer_twice_raises():
    peer = mlp(4, "a")
    with pytest.raises(ValueError, match="same model object"):
        MutualLearning([peer, peer])


def test_compile_and_label_checks():
    model = MutualLearning(cohort(2))
    with pytest.raises(ValueError, match="needs a label loss"):
        model.compile("sgd")
    with pytest.raises(ValueError, match="bernoulli"):
        model.compile("sgd", loss="binary_crossentropy")
    with pytest.warns(UserWarning, match="from_logits=False"):
        model.compile("sgd", loss="sparse_categorical_crossentropy")
    model.compile(keras.optimizers.SGD(0.1), loss=hard_loss())
    x, y = batch(7)
    before = values_of(model.trainable_variables)
    with pytest.raises(ValueError, match="one-hot"):
        model.fit(x, np.eye(N_CLASSES)[y], batch_size=BATCH, verbose=0)
    for got, want in zip(values_of(model.trainable_variables), before):
        np.testing.assert_array_equal(got, want)
