"""RocketLaunching: one step against a reference, the gradient block, forward once, export."""

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
    N_IN,
    SAMPLE_WEIGHT,
    CallCounter,
    Mirror,
    assert_sgd_update,
    batch,
    dense_forward,
    gradients,
    hard_loss,
    ref_ce,
    ref_kl,
    ref_mean,
    to_np,
    values_of,
)

from keras_kd.export import to_tflite
from keras_kd.export.litert_eval import tflite_predict
from keras_kd.online import RocketLaunching

L = keras.layers


def nets(share=True, counter=False, booster_width=16):
    """Light: shared Dense(6) -> Dense(3); booster: shared Dense(6) -> Dense(w) -> Dense(3)."""
    inputs = keras.Input((N_IN,), name="x")
    counters = {}

    def count(name, h):
        if not counter:
            return h
        counters[name] = CallCounter(name=f"{name}_counter")
        return counters[name](h)

    if share:
        shared = L.Dense(6, activation="relu", name="shared")(count("shared", inputs))
        light_base = booster_base = shared
    else:
        light_base = L.Dense(6, activation="relu", name="light_base")(inputs)
        booster_base = L.Dense(6, activation="relu", name="booster_base")(inputs)
    light_out = L.Dense(N_CLASSES, name="light_logits")(count("light", light_base))
    h = L.Dense(booster_width, activation="relu", name="booster_hidden")(
        count("booster", booster_base))
    booster_out = L.Dense(N_CLASSES, name="booster_logits")(h)
    light = keras.Model(inputs, light_out, name="light")
    booster = keras.Model(inputs, booster_out, name="booster")
    return (light, booster, counters) if counter else (light, booster)


def booster_only(model):
    light_ids = {id(v) for v in model.light.trainable_variables}
    return [v for v in model.booster.trainable_variables if id(v) not in light_ids]


def shared_variables(model):
    light_ids = {id(v) for v in model.light.trainable_variables}
    return [v for v in model.booster.trainable_variables if id(v) in light_ids]


def reference(model, x, y, w, hint, block, weight, temperature=None, terms="all"):
    """The paper's loss in float64; `terms` keeps only some of it (for the block test)."""
    variables = model.trainable_variables
    mirror = Mirror(variables)
    x64 = tf.constant(x.astype(np.float64))

    def forward():
        return (dense_forward(model.light.layers, x64, mirror),
                dense_forward(model.booster.layers, x64, mirror))

    stopped = tf.constant(forward()[1].numpy())
    with tf.GradientTape() as tape:
        light, booster = forward()
        target = stopped if block else booster
        if hint == "logit_mse":
            values = tf.reduce_sum(tf.square(light - target), -1)
        else:
            values = ref_kl(target, light, temperature)
        logs = {"light_loss": ref_mean(ref_ce(light, y), w),
                "booster_loss": ref_mean(ref_ce(booster, y), w),
                "hint_loss": ref_mean(values, w)}
        total = {
            "all": logs["light_loss"] + logs["booster_loss"] + weight * logs["hint_loss"],
            "labels": logs["light_loss"] + logs["booster_loss"],
            "booster_label": logs["booster_loss"],
        }[terms]
    grads = gradients(tape, total, mirror, variables)
    logs["loss"] = total
    return {k: float(v) for k, v in logs.items()}, mirror.sgd(grads, LR)


def build(**kwargs):
    light, booster = nets(share=kwargs.pop("share", True))
    model = RocketLaunching(light, booster, **kwargs)
    model.compile(keras.optimizers.SGD(LR), loss=hard_loss(), metrics=["accuracy"])
    return model


CONFIGS = {
    "logit_mse_block": dict(hint="logit_mse", gradient_block=True, hint_weight=0.3),
    "logit_mse_no_block": dict(hint="logit_mse", gradient_block=False, hint_weight=0.3),
    "soft_target_block": dict(hint="soft_target", gradient_block=True, hint_weight=0.7,
                              temperature=2.0),
    "no_sharing": dict(hint="logit_mse", gradient_block=True, hint_weight=0.3, share=False,
                       share_layers=False),
}


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_one_step_losses_and_sgd_update_match_reference(config):
    kwargs = dict(CONFIGS[config])
    model = build(**kwargs)
    x, y = batch(1)
    variables = model.trainable_variables
    before = values_of(variables)
    expected, updated = reference(model, x, y, SAMPLE_WEIGHT, kwargs["hint"],
                                  kwargs["gradient_block"], kwargs["hint_weight"],
                                  kwargs.get("temperature"))
    logs = model.train_on_batch(x, y, sample_weight=SAMPLE_WEIGHT, return_dict=True)
    for key, value in expected.items():
        np.testing.assert_allclose(logs[key], value, atol=1e-5, rtol=1e-6, err_msg=key)
    assert_sgd_update(variables, before, updated)


def test_gradient_block_booster_learns_from_its_labels_alone():
    x, y = batch(2)
    blocked = build(hint_weight=0.5)
    _, booster_label_step = reference(blocked, x, y, SAMPLE_WEIGHT, "logit_mse", True, 0.5,
                                      terms="booster_label")
    _, labels_step = reference(blocked, x, y, SAMPLE_WEIGHT, "logit_mse", True, 0.5,
                               terms="labels")
    open_ = build(hint_weight=0.5, gradient_block=False)
    open_.set_weights(blocked.get_weights())
    blocked.train_on_batch(x, y, sample_weight=SAMPLE_WEIGHT)
    open_.train_on_batch(x, y, sample_weight=SAMPLE_WEIGHT)

    # Booster-only weights: the step of H(y, q) alone, with the block; not without it.
    own = booster_only(blocked)
    assert own and len(own) == 4
    for variable in own:
        np.testing.assert_allclose(to_np(variable), booster_label_step[id(variable)],
                                   atol=1e-6, err_msg=variable.path)
    gaps = [np.abs(to_np(b) - to_np(a)).max() for a, b in zip(own, booster_only(open_))]
    assert max(gaps) > 1e-3
    # Shared weights receive the hint (through the light net's path) besides both labels.
    shared = shared_variables(blocked)
    assert len(shared) == 2
    assert max(np.abs(to_np(v) - labels_step[id(v)]).max() for v in shared) > 1e-3


def test_both_nets_run_forward_once_and_shared_layers_once_per_step():
    light, booster, counters = nets(counter=True)
    model = RocketLaunching(light, booster)
    assert model.shares_one_graph
    model.compile(keras.optimizers.SGD(0.1), loss=hard_loss(), metrics=["accuracy"])
    x, y = batch(3, n=3 * BATCH)
    start = {k: c.counts() for k, c in counters.items()}
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    after = {k: c.counts() for k, c in counters.items()}
    for key in ("shared", "light", "booster"):
        assert (after[key][0] - start[key][0], after[key][1] - start[key][1]) == (3.0, 0.0), key
    model.evaluate(x, y, batch_size=BATCH, verbose=0)
    for key in ("shared", "light", "booster"):
        now = counters[key].counts()
        assert (now[0] - after[key][0], now[1] - after[key][1]) == (0.0, 3.0), key


def test_nets_on_different_inputs_still_train_each_once(tmp_path):
    base_in = keras.Input((N_IN,))
    counter = CallCounter(name="base_counter")
    base = keras.Model(base_in, L.Dense(6, activation="relu")(counter(base_in)), name="base")
    light = keras.Sequential([keras.Input((N_IN,)), base, L.Dense(N_CLASSES)], name="light")
    booster = keras.Sequential([keras.Input((N_IN,)), base, L.Dense(8, activation="relu"),
                                L.Dense(N_CLASSES)], name="booster")
    model = RocketLaunching(light, booster)
    assert not model.shares_one_graph
    model.compile(keras.optimizers.SGD(0.1), loss=hard_loss())
    x, y = batch(4, n=2 * BATCH)
    before = counter.counts()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    # The shared sub-model runs inside each net: twice per step.
    assert counter.counts()[0] - before[0] == 4.0
    model.save_weights(tmp_path / "rocket.weights.h5")  # weights save; config needs one graph
    with pytest.raises(ValueError, match="same keras.Input"):
        model.get_config()


def test_light_net_exports_alone_without_booster_weights(tmp_path):
    light, booster = nets(booster_width=512)
    model = RocketLaunching(light, booster)
    model.compile(keras.optimizers.Adam(0.01), loss=hard_loss())
    x, y = batch(5, n=2 * BATCH)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    want = to_np(light(x, training=False))
    np.testing.assert_allclose(model.predict(x, verbose=0)["light"], want, atol=1e-6)
    booster_params = sum(int(np.prod(v.shape)) for v in booster_only(model))
    assert booster_params > 20 * light.count_params()

    path = tmp_path / "light.keras"
    model.light.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.dumps(json.loads(archive.read("config.json")))
    assert "booster" not in config
    reloaded = keras.saving.load_model(path)
    assert reloaded.count_params() == light.count_params()
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), want, atol=1e-6)

    tflite = to_tflite(model.light, tmp_path / "light.tflite")
    np.testing.assert_allclose(tflite_predict(tflite, x), want, atol=1e-5)
    # The flatbuffer is smaller than the booster's own float32 weights: they are not in it.
    assert tflite.stat().st_size < 4 * booster_params


def test_keras_round_trip_keeps_the_layers_shared(tmp_path):
    model = build(hint="soft_target", temperature=3.0, hint_weight=0.2)
    x, y = batch(6, n=2 * BATCH)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    model.hint_weight.assign(0.05)
    path = tmp_path / "rocket.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, RocketLaunching)
    assert loaded.shares_one_graph and len(shared_variables(loaded)) == 2
    assert float(to_np(loaded.hint_weight)) == pytest.approx(0.05)
    assert float(to_np(loaded.temperature)) == 3.0
    assert (loaded.hint, loaded.gradient_block) == ("soft_target", True)
    assert (loaded.light.name, loaded.booster.name) == ("light", "booster")
    for key, value in model.predict(x, verbose=0).items():
        np.testing.assert_allclose(loaded.predict(x, verbose=0)[key], value, atol=1e-6)
    # Training the reloaded model moves the shared layers of both nets together.
    a = model.train_on_batch(x[:BATCH], y[:BATCH], return_dict=True)
    b = loaded.train_on_batch(x[:BATCH], y[:BATCH], return_dict=True)
    np.testing.assert_allclose(b["loss"], a["loss"], atol=1e-6)
    np.testing.assert_allclose(loaded.predict(x, verbose=0)["booster"],
                               model.predict(x, verbose=0)["booster"], atol=1e-5)

    unshared = build(share=False, share_layers=False)
    unshared.save(tmp_path / "unshared.keras")
    reloaded = keras.saving.load_model(tmp_path / "unshared.keras")
    assert not shared_variables(reloaded) and reloaded.share_layers is False


def _light_with_softmax():
    light, booster = nets()
    out = L.Softmax()(light.outputs[0])
    return keras.Model(light.inputs, out, name="soft_light"), booster


def _booster_inside_light():
    light, _ = nets()
    return light, keras.Model(light.inputs, light.outputs[0], name="booster")


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (lambda: (*nets(share=False), {}), ValueError, "shares no layer"),
        (lambda: (*nets(), dict(share_layers=False)), ValueError,
         "share_layers=False, but"),
        (lambda: (*nets(), dict(hint="attention")), ValueError, "hint must be one of"),
        (lambda: (*nets(), dict(temperature=4.0)), ValueError, "applies only to"),
        (lambda: (*nets(), dict(hint="soft_target", temperature=0.0)), ValueError,
         "temperature must be a finite real number > 0"),
        (lambda: (*nets(), dict(hint_weight=-0.1)), ValueError, "hint_weight"),
        (lambda: (*nets(), dict(gradient_block="False")), TypeError,
         "gradient_block must be True or False"),
        (lambda: (*_light_with_softmax(), {}), ValueError, "ends in a softmax"),
        (lambda: (*_booster_inside_light(), {}), ValueError, "no layers of its own"),
        (lambda: (nets()[0], "booster", {}), TypeError, "booster must be a keras.Model"),
    ],
)
def test_bad_inputs_raise_before_training(make, error, pattern):
    light, booster, kwargs = make()
    with pytest.raises(error, match=pattern):
        RocketLaunching(light, booster, **kwargs)


def test_different_output_shapes_raise():
    light, _ = nets()
    inputs = light.inputs[0]
    shared_out = light.get_layer("shared").output
    booster = keras.Model(inputs, L.Dense(5)(L.Dense(8)(shared_out)), name="booster")
    with pytest.raises(ValueError, match="output shape"):
        RocketLaunching(light, booster)
