"""The cost of RKD's angle term: keras_kd's Gram form against the explicit differences.

`keras_kd.losses.functional.rkd_angle` computes the cosines `<e_j - e_i, e_k - e_i> / (..)` from
the Gram matrix of the centred embeddings, in float64 (`batch^2 dim + batch^3`). The explicit
form (Park et al.'s code, and keras_kd's before this script) builds the `(batch, batch, dim)`
unit difference vectors and their `batch^3 dim` products. This script times, in one process,
runs of `--steps` forward + backward passes (the gradient with respect to the student
embedding, as in training) of both forms per configuration, medians of interleaved rounds of
process CPU time and wall-clock, and prints both forms' largest deviation from a float64 NumPy
reference on embeddings far from the origin.

Configurations (batch 128, teacher embedding 64 = the ResNet-20's pooled features):
  pooled    student embedding 64 (a pooled embedding)
  wide      student embedding 256
  flatten   student embedding 2048 (the 4-layer CIFAR student's flatten, 8x8x32: the
            `cifar10_students.py --student=cnn4 --methods=rkd` row)

Usage:
  python benchmarks/rkd_angle_cost.py --single_thread   # CPU time measures the work done
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import interleaved_medians  # noqa: E402
from absl import app, flags  # noqa: E402
from keras import ops  # noqa: E402

from keras_kd.losses.functional import rkd_angle  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 20, "Forward + backward passes per timed run.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds (median reported).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_SINGLE_THREAD = flags.DEFINE_bool(
    "single_thread", False,
    "One intra-op and one inter-op thread, so process CPU time measures the work done.")

CONFIGS = {"pooled": (64, 64), "wide": (64, 256), "flatten": (64, 2048)}


def _huber(x):
    ax = ops.abs(x)
    return ops.where(ax < 1.0, 0.5 * ops.square(x), ax - 0.5)


def explicit_angles(e):
    """Park et al.'s form: `(n, n, dim)` unit differences, then their `n^3 dim` products."""
    diff = e[None, :, :] - e[:, None, :]
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(diff), axis=-1, keepdims=True), 1e-12))
    unit = diff / norm
    return ops.einsum("ijd,ikd->ijk", unit, unit)


def explicit_rkd_angle(t, s):
    loss = _huber(explicit_angles(s) - explicit_angles(t))
    return ops.mean(ops.reshape(loss, (ops.shape(loss)[0], -1)), axis=-1)


def numpy_angle_loss(t, s):
    def angles(e):
        e = e.astype(np.float64)
        diff = e[None, :, :] - e[:, None, :]
        norm = np.linalg.norm(diff, axis=-1, keepdims=True)
        unit = np.divide(diff, norm, out=np.zeros_like(diff), where=norm > 0)
        return np.einsum("ijd,ikd->ijk", unit, unit)

    x = angles(s) - angles(t)
    huber = np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)
    return huber.reshape(len(t), -1).mean(axis=1)


def main(argv):
    del argv
    if _SINGLE_THREAD.value:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    rng = np.random.default_rng(0)
    n = _BATCH.value
    runs, deviations = {}, {}
    for config, (t_dim, s_dim) in CONFIGS.items():
        t = tf.constant(np.maximum(rng.normal(size=(n, t_dim)), 0).astype("float32"))
        s = tf.Variable(np.maximum(rng.normal(size=(n, s_dim)), 0).astype("float32"))
        for form, fn in (("explicit", explicit_rkd_angle), ("gram", rkd_angle)):

            @tf.function
            def step(fn=fn, t=t, s=s):
                with tf.GradientTape() as tape:
                    value = tf.reduce_sum(fn(t, s))
                return value, tape.gradient(value, s)

            step()  # trace and warm up

            def run(step=step):
                for _ in range(_STEPS.value):
                    value, grad = step()
                return float(value) + float(grad[0, 0])

            runs[f"{config}/{form}"] = run
            # values 100 spreads away from the origin: the cancellation a Gram form risks
            far_t, far_s = 100.0 + t.numpy(), -100.0 + s.numpy()
            got = ops.convert_to_numpy(fn(far_t, far_s))
            deviations[f"{config}/{form}"] = float(
                np.abs(got - numpy_angle_loss(far_t, far_s)).max())
    timings = interleaved_medians(runs, _ROUNDS.value)
    print(f"\nbatch {n}, {_STEPS.value} forward + backward passes per run, medians of "
          f"{_ROUNDS.value} interleaved rounds, single_thread={_SINGLE_THREAD.value}, load "
          f"average {os.getloadavg()[0]:.1f}\n")
    print("| config | form | CPU s / run | wall s / run | CPU ratio explicit / gram | "
          "max abs deviation from float64 NumPy (embeddings +-100) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, timing in timings.items():
        config, form = name.split("/")
        ratio = timings[f"{config}/explicit"]["cpu"] / timings[f"{config}/gram"]["cpu"]
        print(f"| {config} | {form} | {timing['cpu']:.2f} | {timing['wall']:.2f} | "
              f"{ratio if form == 'gram' else 1.0:.1f} | {deviations[name]:.1e} |")


if __name__ == "__main__":
    app.run(main)
