"""The fixed per-step cost of a Distiller step over the student's own step, and its op counts.

On a one-layer student (Flatten -> Dense(10), batch 128) a step costs well under a millisecond,
so whatever the Distiller adds per step (trackers, casts, reductions, bookkeeping) shows. This
script times, in one process, whole `fit` epochs of:
  student   the student compiled alone (`student.compile(...).fit`)
  cached    the Distiller on cached teacher logits (no teacher call)
  student_kd_step  the student alone in keras_kd's step machinery (`TrainingModel`: its step
            function and logged means, only the label loss): what the student costs when
            stepped as keras_kd steps every model, so `cached - student_kd_step` is what
            distillation itself adds (the soft-target loss, the cached tensor)
medians of interleaved rounds of process CPU time and wall-clock, and prints the per-step
difference in ms. It also counts the operations of each traced train step (the graph of
`train_step` on one batch), the shape of the fixed cost.

Usage:
  python benchmarks/step_overhead.py                         # 500-step epochs, 7 rounds
  python benchmarks/step_overhead.py --steps=100 --rounds=3  # quick look
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import interleaved_medians  # noqa: E402
from absl import app, flags  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.objective import StepResult, TrainingModel, weighted_mean  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 500, "Steps per timed epoch.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Interleaved rounds (median reported).")


def _student() -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))


def _sce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class _StudentAlone(TrainingModel):
    """The student trained on its labels alone, stepped by keras_kd's machinery."""

    def __init__(self, student: keras.Model):
        super().__init__()
        self.student = student
        self.track(["loss"])

    def call(self, x, training=False):
        return self.student(x, training=training)

    def compute_step(self, x, y, sample_weight, signals, training):
        logits = self.student(x, training=training)
        loss = weighted_mean(self.label_loss(y, logits), sample_weight)
        return StepResult(loss, {"loss": loss}, logits)


def _op_count(model: keras.Model, batch) -> int:
    """Operations in the graph of one traced `train_step` on `batch`."""
    concrete = tf.function(model.train_step).get_concrete_function(batch)
    return len(concrete.graph.get_operations())


def main(argv):
    del argv
    keras.utils.set_random_seed(0)
    n = _STEPS.value * _BATCH.value
    rng = np.random.default_rng(0)
    x = rng.random((n, 28, 28, 1), np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)

    student = _student()
    student.compile(keras.optimizers.SGD(0.01), loss=_sce())
    alone = _StudentAlone(_student())
    alone.compile(keras.optimizers.SGD(0.01), loss=_sce())
    plain = tf.data.Dataset.from_tensor_slices((x, y)).batch(_BATCH.value).cache()

    distiller = keras_kd.Distiller(None, _student(), keras_kd.losses.SoftTargetDistillation(4.0))
    distiller.compile(keras.optimizers.SGD(0.01), loss=_sce())
    # Teacher logits cached with the library (works with every version of the cache format).
    teacher = _student()
    cached = keras_kd.cache_teacher_logits(teacher, x, y, batch_size=1024)
    if cached.element_spec[1].shape.rank == 0:  # unbatched elements: batch them
        cached = cached.batch(_BATCH.value)
    cached = cached.cache()

    runs = {
        "student": lambda: student.fit(plain, epochs=1, verbose=0),
        "cached": lambda: distiller.fit(cached, epochs=1, verbose=0),
        "student_kd_step": lambda: alone.fit(plain, epochs=1, verbose=0),
    }
    for run in runs.values():  # warm-up: trace and fill the caches
        run()
    first_plain = next(iter(plain))
    first_cached = next(iter(cached))
    ops = {"student": _op_count(student, first_plain), "cached": _op_count(distiller, first_cached),
           "student_kd_step": _op_count(alone, first_plain)}
    t = interleaved_medians(runs, _ROUNDS.value)
    steps = _STEPS.value
    print(f"\nOne-layer student, batch {_BATCH.value}, {steps}-step epochs, "
          f"medians of {_ROUNDS.value} interleaved rounds:\n")
    print("| step | CPU ms/step | wall ms/step | ops in traced train_step |")
    print("|---|---|---|---|")
    for name in runs:
        print(f"| {name} | {1e3 * t[name]['cpu'] / steps:.3f} | "
              f"{1e3 * t[name]['wall'] / steps:.3f} | {ops[name]} |")
    extra_cpu = 1e3 * (t["cached"]["cpu"] - t["student"]["cpu"]) / steps
    extra_wall = 1e3 * (t["cached"]["wall"] - t["student"]["wall"]) / steps
    print(f"\nFixed cost of the cached distill step: {extra_cpu:+.3f} ms CPU, "
          f"{extra_wall:+.3f} ms wall per step (ratio CPU "
          f"{t['cached']['cpu'] / t['student']['cpu']:.3f}).")
    own_cpu = 1e3 * (t["cached"]["cpu"] - t["student_kd_step"]["cpu"]) / steps
    own_wall = 1e3 * (t["cached"]["wall"] - t["student_kd_step"]["wall"]) / steps
    print(f"Cost of distillation over the student stepped by keras_kd: {own_cpu:+.3f} ms CPU, "
          f"{own_wall:+.3f} ms wall per step.")


if __name__ == "__main__":
    app.run(main)
