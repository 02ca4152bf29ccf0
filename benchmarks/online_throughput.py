r"""DML step vs independent steps: what `keras_kd.online.MutualLearning` costs over training alone.

Everything runs in one process on the same two peer architectures over the same batches of
28x28x1 images. Each measurement is one whole `fit` epoch of several seconds (never single
steps): one epoch of `MutualLearning([peer_a, peer_b])`, one epoch of `peer_a` alone and one of
`peer_b` alone (each compiled with the same label loss, optimizer and metrics). Every run gets a
warm-up epoch, then all runs are timed `--repeats` times in alternating order; the script reports
medians of wall-clock and process-CPU time and prints a ready-to-paste Markdown table.

Ratio (target from issue 9):
  DML step of two peers / (peer A step + peer B step)                                <= 1.10
With `--all_methods`, also (no target, for information):
  ONE step with 3 branches / single network step (trunk + one branch)
  Rocket Launching step / (light step + booster step)

Usage:
  python benchmarks/online_throughput.py                    # Fashion-MNIST subset, ~4 min quiet
  python benchmarks/online_throughput.py --data=random --examples=12800 --repeats=3   # quicker
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import interleaved_medians, time_run  # noqa: E402

from keras_kd.datasets import read_idx  # noqa: E402
from keras_kd.online import MutualLearning, NativeEnsemble, RocketLaunching  # noqa: E402

_DATA = flags.DEFINE_enum(
    "data", "fashion_mnist", ["fashion_mnist", "mnist", "random"],
    "Images: the first --examples training images of a dataset in ../shared/data, or random "
    "tensors of the same shape (28, 28, 1).",
)
_EXAMPLES = flags.DEFINE_integer("examples", 38400, "Examples per timed epoch (300 steps of 128).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size of every run.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed epochs per run (median reported).")
_WIDTH = flags.DEFINE_integer("width", 16, "Filters of each peer's first conv.")
_ALL = flags.DEFINE_bool("all_methods", False, "Also time ONE and Rocket Launching steps.")

_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
L = keras.layers


def _images(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    if name == "random":
        rng = np.random.default_rng(0)
        return rng.random((n, 28, 28, 1), np.float32), rng.integers(0, 10, n).astype(np.int64)
    x = read_idx(_DATA_DIR / name / "train-images-idx3-ubyte.gz")[:n]
    y = read_idx(_DATA_DIR / name / "train-labels-idx1-ubyte.gz")[:n]
    if len(x) < n:
        raise ValueError(f"--examples={n} exceeds the {len(x)} images of {name}.")
    return (x[..., None].astype(np.float32) / 255.0), y.astype(np.int64)


def _peer(width: int, name: str) -> keras.Model:
    """The student CNN of benchmarks/throughput.py."""
    inputs = keras.Input((28, 28, 1))
    h = L.Conv2D(width, 3, activation="relu")(inputs)
    h = L.MaxPooling2D()(h)
    h = L.Conv2D(2 * width, 3, activation="relu")(h)
    h = L.MaxPooling2D()(h)
    h = L.Dense(4 * width, activation="relu")(L.Flatten()(h))
    return keras.Model(inputs, L.Dense(10)(h), name=name)


def _trunk(width: int) -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    h = L.MaxPooling2D()(L.Conv2D(width, 3, activation="relu")(inputs))
    return keras.Model(inputs, h, name="trunk")


def _branch(width: int, name: str) -> keras.Model:
    inputs = keras.Input((13, 13, width))
    h = L.MaxPooling2D()(L.Conv2D(2 * width, 3, activation="relu")(inputs))
    h = L.Dense(4 * width, activation="relu")(L.Flatten()(h))
    return keras.Model(inputs, L.Dense(10)(h), name=name)


def _rocket_nets(width: int) -> tuple[keras.Model, keras.Model]:
    inputs = keras.Input((28, 28, 1))
    shared = L.MaxPooling2D()(L.Conv2D(width, 3, activation="relu")(inputs))
    light = L.Dense(10)(L.Flatten()(L.MaxPooling2D()(L.Conv2D(width, 3, activation="relu")(
        shared))))
    h = L.Conv2D(2 * width, 3, activation="relu")(shared)
    h = L.MaxPooling2D()(L.Conv2D(4 * width, 3, activation="relu")(h))
    booster = L.Dense(10)(L.Flatten()(h))
    return keras.Model(inputs, light, name="light"), keras.Model(inputs, booster, name="booster")


def _compile(model: keras.Model) -> keras.Model:
    model.compile(keras.optimizers.Adam(),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _fit_epoch(model: keras.Model, dataset: tf.data.Dataset):
    return lambda: model.fit(dataset, epochs=1, verbose=0)


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{os.cpu_count()} logical CPUs ({cpu}); load average {load}"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x"


def main(argv):
    del argv
    keras.utils.set_random_seed(0)
    n, batch, width = _EXAMPLES.value, _BATCH_SIZE.value, _WIDTH.value
    steps = n // batch
    n = steps * batch
    x, y = _images(_DATA.value, n)
    machine_start = _machine()
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = dataset.batch(batch, drop_remainder=True).cache().prefetch(tf.data.AUTOTUNE)

    peer_params = _peer(width, "count").count_params()
    runs = {
        "peer_a": _fit_epoch(_compile(_peer(width, "peer_a")), dataset),
        "peer_b": _fit_epoch(_compile(_peer(width, "peer_b")), dataset),
        "dml": _fit_epoch(_compile(MutualLearning([_peer(width, "dml_a"),
                                                   _peer(width, "dml_b")])), dataset),
    }
    if _ALL.value:
        trunk, head = _trunk(width), _branch(width, "branch")
        inputs = keras.Input((28, 28, 1))
        runs["single"] = _fit_epoch(
            _compile(keras.Model(inputs, head(trunk(inputs)), name="single")), dataset)
        one = NativeEnsemble(_trunk(width), [_branch(width, f"b{i}") for i in range(3)])
        runs["one"] = _fit_epoch(_compile(one), dataset)
        light, booster = _rocket_nets(width)
        runs["light"] = _fit_epoch(_compile(light), dataset)
        runs["booster"] = _fit_epoch(_compile(booster), dataset)
        runs["rocket"] = _fit_epoch(_compile(RocketLaunching(*_rocket_nets(width))), dataset)

    print(f"warm-up (tracing, filling the dataset cache): {len(runs)} runs")
    for name, run in runs.items():
        wall, _ = time_run(run)
        print(f"  warm-up {name:<12s} {wall:7.3f} s")
    print(f"timing: {_REPEATS.value} rounds x {len(runs)} runs of {steps} steps of {batch}")
    t = interleaved_medians(runs, _REPEATS.value)
    machine_end = _machine()

    def ratio(run: str, parts: tuple[str, ...], kind: str) -> str:
        return _ratio(t[run][kind], sum(t[p][kind] for p in parts))

    contended = max(os.getloadavg()) > (os.cpu_count() or 1)
    command = "python benchmarks/online_throughput.py " + " ".join(sys.argv[1:])
    data = (f"the first {n} {_DATA.value} training images" if _DATA.value != "random"
            else f"{n} random tensors")
    lines = [
        f"Command: `{command.strip()}` — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} "
        f"UTC, TF {tf.__version__}, Keras {keras.__version__}.",
        f"Machine: {machine_start} at start; {machine_end.split('; ')[1]} at end.",
        f"Data: {data} (28x28x1, batch {batch}, {steps} steps per timed epoch, no shuffle, "
        "batched + cached + prefetched tf.data). Peers: two CNNs of "
        f"{peer_params:,} params each. Medians of "
        f"{_REPEATS.value} interleaved epochs; wall-clock ratio (process-CPU ratio in brackets)."
        + (" The load average exceeded the CPU count: the wall-clock ratios are unreliable, "
           "trust the CPU ratios." if contended else ""),
        "",
        "| ratio | measured | target |",
        "|---|---:|---:|",
        f"| DML step of two peers / (peer A step + peer B step) | "
        f"{ratio('dml', ('peer_a', 'peer_b'), 'wall')} "
        f"({ratio('dml', ('peer_a', 'peer_b'), 'cpu')}) | ≤ 1.10x |",
    ]
    if _ALL.value:
        lines += [
            f"| ONE step, 3 branches / single network step | {ratio('one', ('single',), 'wall')} "
            f"({ratio('one', ('single',), 'cpu')}) | — |",
            f"| Rocket step / (light step + booster step) | "
            f"{ratio('rocket', ('light', 'booster'), 'wall')} "
            f"({ratio('rocket', ('light', 'booster'), 'cpu')}) | — |",
        ]
    lines += ["", "| run (one epoch) | median wall s | median CPU s | ms/step (wall) |",
              "|---|---:|---:|---:|"]
    for name, v in t.items():
        lines.append(f"| {name} | {v['wall']:.3f} | {v['cpu']:.3f} | "
                     f"{1000 * v['wall'] / steps:.1f} |")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    app.run(main)
