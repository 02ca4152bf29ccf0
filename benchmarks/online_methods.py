r"""Models that teach each other on Fashion-MNIST: DML, ONE and Rocket Launching vs their baselines.

Small CNNs on one fixed subset of the training images; every model of a method gets the same
budget (epochs, batch 128, Adam 1e-3) and, within a seed, the same initial weights and data order
as its baseline. Accuracies are on the full 10,000-image test set, mean +- std over seeds.

  dml     peer A (2-conv CNN) and peer B (MLP 784-256-10), each trained alone on the labels,
          vs the same two (same initial weights) trained as a `MutualLearning` cohort (T = 1);
          plus the cohort's ensemble (mean of the two peers' probabilities).
  one     the single network (trunk + one branch) trained alone, vs `NativeEnsemble` with 3
          branches over the same trunk (T = 3, the paper's ramp-up over 80/300 of the epochs):
          branch 0 exported alone (`branch_model(0)`), and the gated ensemble.
  rocket  light net (shared conv block + a small head) alone; booster (shared block + a deeper
          head) alone; `RocketLaunching` (lambda = 0.03, logit MSE, gradient block): light and
          booster; the paper's ablations: no gradient block, and no sharing (the light net and
          the booster each with their own copy of the lower block); and, to tell the hint's
          effect from the shared training's, the joint training with lambda = 0.

Usage:
  python benchmarks/online_methods.py                              # every method, 3 seeds
  python benchmarks/online_methods.py --method=rocket --seeds=0 --epochs=2   # quick look
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_kd.datasets import read_idx  # noqa: E402
from keras_kd.online import MutualLearning, NativeEnsemble, RocketLaunching  # noqa: E402

_METHOD = flags.DEFINE_enum("method", "all", ["all", "dml", "one", "rocket"], "Which method.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (initialisations, data order).")
_EPOCHS = flags.DEFINE_integer("epochs", 8, "Epochs of every training run.")
_TRAIN = flags.DEFINE_integer("train_examples", 10000, "Training subset size.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_OUTPUT = flags.DEFINE_string("output", None, "Optional JSON file for the per-seed numbers.")

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion_mnist"
L = keras.layers

ROWS = {
    "dml": (
        ("dml_a_alone", "peer A (2-conv CNN) trained alone",
         "DML Table 1 (CIFAR-10/100): each peer trained alone (independent)"),
        ("dml_a", "peer A in the DML cohort (`MutualLearning`, T = 1)",
         "DML: every peer of the cohort beats its independent copy"),
        ("dml_b_alone", "peer B (MLP 256) trained alone", "(second architecture of the pair)"),
        ("dml_b", "peer B in the DML cohort", "DML: gains largest for the smaller peer"),
        ("dml_ensemble", "DML cohort ensemble (mean probabilities)", "—"),
    ),
    "one": (
        ("one_single", "single network (trunk + 1 branch) alone",
         "ONE Table 1: the baseline network (e.g. ResNet-32 on CIFAR-10/100)"),
        ("one_branch", "ONE, branch 0 alone (`branch_model(0)`), 3 branches",
         "ONE: the target branch beats the baseline"),
        ("one_ensemble", "ONE, gated ensemble of the 3 branches (`ensemble_model()`)",
         "ONE: the ensemble is better still"),
    ),
    "rocket": (
        ("rocket_light_alone", "light net alone", "Rocket Table 1: light net basic"),
        ("rocket_light", "light net with Rocket (λ = 0.03, logit MSE, block, sharing)",
         "Rocket: light net improves over light alone"),
        ("rocket_booster", "booster in Rocket", "Rocket: booster in the joint training"),
        ("rocket_booster_alone", "booster alone", "Rocket Table 1: booster only"),
        ("rocket_light_no_block", "light net, Rocket without gradient block",
         "Rocket Table 2 ablation: no gradient block (worse in the paper)"),
        ("rocket_light_no_share", "light net, Rocket without parameter sharing",
         "Rocket Table 2 ablation: no parameter sharing (worse in the paper)"),
        ("rocket_light_no_hint", "light net, joint training with the booster, no hint (λ = 0)",
         "— (ours: separates the shared layers' effect from the hint's)"),
    ),
}


def load_data():
    x = read_idx(DATA_DIR / "train-images-idx3-ubyte.gz")
    y = read_idx(DATA_DIR / "train-labels-idx1-ubyte.gz").astype("int64")
    x_test = read_idx(DATA_DIR / "t10k-images-idx3-ubyte.gz")
    y_test = read_idx(DATA_DIR / "t10k-labels-idx1-ubyte.gz").astype("int64")
    order = np.random.default_rng(0).permutation(len(x))[: _TRAIN.value]  # fixed subset

    def prep(images):
        return (images.astype("float32") / 255.0)[..., None]

    return (prep(x[order]), y[order]), (prep(x_test), y_test)


def conv_bn(h, filters, name):
    h = L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(h)
    h = L.BatchNormalization(momentum=0.9, name=f"{name}_bn")(h)
    return L.ReLU(name=f"{name}_relu")(h)


# ---------------------------------------------------------------------------- DML
def peer_cnn(name):
    inputs = keras.Input((28, 28, 1))
    h = L.MaxPooling2D()(conv_bn(inputs, 8, f"{name}_c1"))
    h = L.MaxPooling2D()(conv_bn(h, 16, f"{name}_c2"))
    return keras.Model(inputs, L.Dense(10)(L.Flatten()(h)), name=name)


def peer_mlp(name):
    inputs = keras.Input((28, 28, 1))
    h = L.Dense(256, activation="relu")(L.Flatten()(inputs))
    return keras.Model(inputs, L.Dense(10)(h), name=name)


# ---------------------------------------------------------------------------- ONE
def one_trunk():
    inputs = keras.Input((28, 28, 1))
    h = L.MaxPooling2D()(conv_bn(inputs, 16, "trunk_c1"))
    h = L.MaxPooling2D()(conv_bn(h, 32, "trunk_c2"))
    return keras.Model(inputs, h, name="trunk")  # (7, 7, 32)


def one_branch(name):
    inputs = keras.Input((7, 7, 32))
    h = conv_bn(inputs, 32, f"{name}_c3")
    return keras.Model(inputs, L.Dense(10)(L.Flatten()(h)), name=name)


# ---------------------------------------------------------------------------- Rocket
def lower_block(inputs, name):
    return L.MaxPooling2D()(conv_bn(inputs, 16, f"{name}_c1"))  # (14, 14, 16)


def light_head(h):
    h = L.MaxPooling2D()(L.Conv2D(8, 3, padding="same", activation="relu", name="light_c2")(h))
    return L.Dense(10, name="light_logits")(L.Flatten()(h))


def booster_head(h):
    h = conv_bn(h, 32, "booster_c2")
    h = L.MaxPooling2D()(conv_bn(h, 32, "booster_c3"))
    h = conv_bn(h, 64, "booster_c4")
    return L.Dense(10, name="booster_logits")(L.Flatten()(h))


def rocket_nets(share: bool):
    inputs = keras.Input((28, 28, 1))
    shared = lower_block(inputs, "shared")
    light = keras.Model(inputs, light_head(shared if share else lower_block(inputs, "light")),
                        name="light")
    booster = keras.Model(
        inputs, booster_head(shared if share else lower_block(inputs, "booster")),
        name="booster")
    return light, booster


# ---------------------------------------------------------------------------- training
def accuracy(model, x, y) -> float:
    logits = model.predict(x, batch_size=1000, verbose=0)
    return float((logits.argmax(-1) == y).mean())


def compile_kwargs():
    return dict(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])


def run_seed(method: str, seed: int, data) -> dict:
    (x, y), (x_test, y_test) = data
    # The global seed too (tf.data combines it with the op seed): the data order of a method
    # must not depend on which methods ran before it in the process.
    keras.utils.set_random_seed(1000 * seed)
    train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    train = train.batch(_BATCH.value).prefetch(tf.data.AUTOTUNE)
    epochs = _EPOCHS.value

    def fit(model):
        model.compile(**compile_kwargs())
        model.fit(train, epochs=epochs, verbose=0)
        return model

    def seeded(build, offset, *args):
        keras.utils.set_random_seed(1000 * seed + offset)
        return build(*args)

    results = {}
    if method == "dml":
        a, b = seeded(peer_cnn, 1, "peer_a"), seeded(peer_mlp, 2, "peer_b")
        a0, b0 = a.get_weights(), b.get_weights()
        results["dml_a_alone"] = accuracy(fit(a), x_test, y_test)
        results["dml_b_alone"] = accuracy(fit(b), x_test, y_test)
        a, b = peer_cnn("peer_a"), peer_mlp("peer_b")
        a.set_weights(a0)
        b.set_weights(b0)
        keras.utils.set_random_seed(1000 * seed + 3)
        cohort = fit(MutualLearning([a, b], temperature=1.0))
        results["dml_a"] = accuracy(a, x_test, y_test)
        results["dml_b"] = accuracy(b, x_test, y_test)
        ensemble = cohort.predict(x_test, batch_size=1000, verbose=0)["ensemble"]
        results["dml_ensemble"] = float((ensemble.argmax(-1) == y_test).mean())
    elif method == "one":
        trunk, branch = seeded(one_trunk, 10), seeded(one_branch, 11, "branch_0")
        t0, b0 = trunk.get_weights(), branch.get_weights()
        inputs = keras.Input((28, 28, 1))
        single = keras.Model(inputs, branch(trunk(inputs)), name="single")
        results["one_single"] = accuracy(fit(single), x_test, y_test)
        trunk = one_trunk()
        trunk.set_weights(t0)
        branches = [one_branch("branch_0")] + [seeded(one_branch, 11 + i, f"branch_{i}")
                                               for i in range(1, 3)]
        branches[0].set_weights(b0)
        keras.utils.set_random_seed(1000 * seed + 12)
        one = fit(NativeEnsemble(trunk, branches, temperature=3.0))
        results["one_branch"] = accuracy(one.branch_model(0), x_test, y_test)
        results["one_ensemble"] = accuracy(one.ensemble_model(), x_test, y_test)
    else:
        light, booster = seeded(rocket_nets, 20, True)
        initial = (light.get_weights(), booster.get_weights())

        def nets(share=True):
            light, booster = rocket_nets(share)
            if share:  # the same starting point for every variant that shares
                light.set_weights(initial[0])
                booster.set_weights(initial[1])
            return light, booster

        results["rocket_light_alone"] = accuracy(fit(nets()[0]), x_test, y_test)
        results["rocket_booster_alone"] = accuracy(fit(nets()[1]), x_test, y_test)
        for key, kwargs, share in (("rocket", {}, True),
                                   ("rocket_no_block", dict(gradient_block=False), True),
                                   ("rocket_no_share", dict(share_layers=False), False),
                                   ("rocket_no_hint", dict(hint_weight=0.0), True)):
            if share:
                light, booster = nets()
            else:
                light, booster = seeded(nets, 21, False)
            fit(RocketLaunching(light, booster, **{"hint_weight": 0.03, **kwargs}))
            results[key.replace("rocket", "rocket_light")] = accuracy(light, x_test, y_test)
            if key == "rocket":
                results["rocket_booster"] = accuracy(booster, x_test, y_test)
    return results


def markdown(method: str, per_seed: list[dict]) -> str:
    lines = ["| model | test accuracy (%) | paper's counterpart |", "|---|---:|---|"]
    for key, label, paper in ROWS[method]:
        values = [100 * r[key] for r in per_seed]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {label} | {statistics.mean(values):.2f} ± {std:.2f} | {paper} |")
    return "\n".join(lines)


def describe() -> str:
    """Parameter counts of the architectures (random weights, for the record)."""
    trunk, branch = one_trunk(), one_branch("b")
    light, booster = rocket_nets(True)
    shared = sum(int(np.prod(v.shape)) for v in light.weights
                 if id(v) in {id(w) for w in booster.weights})
    return (f"params: peer A {peer_cnn('a').count_params():,}, peer B "
            f"{peer_mlp('b').count_params():,}; ONE trunk {trunk.count_params():,} + branch "
            f"{branch.count_params():,} each (+ gate); light {light.count_params():,}, booster "
            f"{booster.count_params():,} ({shared:,} shared)")


def main(argv):
    del argv
    data = load_data()
    print(describe(), flush=True)
    methods = ["dml", "one", "rocket"] if _METHOD.value == "all" else [_METHOD.value]
    seeds = [int(s) for s in _SEEDS.value]
    everything = {}
    start, cpu_start = time.time(), time.process_time()
    for method in methods:
        per_seed = []
        for seed in seeds:
            t0, c0 = time.time(), time.process_time()
            per_seed.append(run_seed(method, seed, data))
            print(f"{method} seed {seed}: {time.time() - t0:.0f} s wall, "
                  f"{time.process_time() - c0:.0f} s CPU {json.dumps(per_seed[-1])}", flush=True)
        everything[method] = per_seed
        print(f"\n{method}: {_TRAIN.value} training images, {_EPOCHS.value} epochs, seeds "
              f"{_SEEDS.value}\n\n{markdown(method, per_seed)}\n", flush=True)
    print(f"total {time.time() - start:.0f} s wall, {time.process_time() - cpu_start:.0f} s CPU; "
          f"command: python {' '.join(sys.argv)}")
    if _OUTPUT.value:
        Path(_OUTPUT.value).write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    app.run(main)
