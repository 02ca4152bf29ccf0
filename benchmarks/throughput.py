"""Distill step vs student step: how much a `keras_kd.Distiller` step costs over plain training.

Everything runs in one process on the same teacher and student (a CNN teacher about 10x the
student's multiply-adds) over the same batches of 28x28x1 images. Each measurement is one whole
`fit` epoch (or one pass of a compiled teacher forward) of several seconds, repeated `--repeats`
times in alternating order; the script reports medians of wall-clock and process-CPU time, then
prints a ready-to-paste Markdown table.

Ratios (targets from issue 2):
  1. keras_kd distill step / student-only step (`student.compile(...).fit`)
  2. keras_kd distill step / (student step + teacher forward)                      target <= 1.05
  3. keras_kd cached-logits distill step / student-only step                       target <= 1.10
  4. the same for `keras.distillation.Distiller` (it has no cached mode)
plus the XLA (`jit_compile=True`) distill step vs the default, and a `mixed_bfloat16` teacher
forward vs float32.

Usage:
  python benchmarks/throughput.py                   # Fashion-MNIST subset: ~4 min on 2 quiet cores
  python benchmarks/throughput.py --data=random --examples=12800 --noxla --nobf16   # quicker
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

import keras_kd  # noqa: E402
from keras_kd.datasets import read_idx  # noqa: E402

_DATA = flags.DEFINE_enum(
    "data", "fashion_mnist", ["fashion_mnist", "mnist", "random"],
    "Images: the first --examples training images of a dataset in ../shared/data, or random "
    "tensors of the same shape (28, 28, 1).",
)
_EXAMPLES = flags.DEFINE_integer(
    "examples", 38400, "Examples per timed epoch (300 steps of 128: ~4.5 s for the student)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size of every run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed epochs per measurement (median reported).")
_TEACHER_WIDTH = flags.DEFINE_integer("teacher_width", 32, "Filters of the teacher's first conv.")
_STUDENT_WIDTH = flags.DEFINE_integer("student_width", 16, "Filters of the student's first conv.")
_XLA = flags.DEFINE_bool("xla", True, "Also time the keras_kd distill step with jit_compile=True.")
_BF16 = flags.DEFINE_bool("bf16", True, "Also time a mixed_bfloat16 teacher forward.")
_KERAS = flags.DEFINE_bool("keras_distiller", True, "Also time keras.distillation.Distiller.")

_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
_TEMPERATURE = 4.0
_ALPHA = 0.1


def _images(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    if name == "random":
        rng = np.random.default_rng(0)
        return rng.random((n, 28, 28, 1), np.float32), rng.integers(0, 10, n).astype(np.int64)
    x = read_idx(_DATA_DIR / name / "train-images-idx3-ubyte.gz")[:n]
    y = read_idx(_DATA_DIR / name / "train-labels-idx1-ubyte.gz")[:n]
    if len(x) < n:
        raise ValueError(f"--examples={n} exceeds the {len(x)} images of {name}.")
    return (x[..., None].astype(np.float32) / 255.0), y.astype(np.int64)


def _teacher(width: int, name: str = "teacher") -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(width, 3, activation="relu")(inputs)
    h = keras.layers.Conv2D(width, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(2 * width, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(4 * width, activation="relu")(h)
    outputs = keras.layers.Dense(10, dtype="float32")(h)
    return keras.Model(inputs, outputs, name=name)


def _student(width: int) -> keras.Model:
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(width, 3, activation="relu")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(2 * width, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(4 * width, activation="relu")(h)
    outputs = keras.layers.Dense(10)(h)
    return keras.Model(inputs, outputs, name="student")


def _macs(model: keras.Model) -> int:
    """Multiply-adds of one forward pass of one example (conv and dense layers)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            k = int(np.prod(layer.kernel.shape))
            total += k * int(np.prod(layer.output.shape[1:3]))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def _hard_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _fit_epoch(model: keras.Model, dataset: tf.data.Dataset):
    return lambda: model.fit(dataset, epochs=1, verbose=0)


def _forward_epoch(model: keras.Model, dataset: tf.data.Dataset, steps: int):
    """One pass of `model(x, training=False)` over `dataset`, stepped like `fit` steps."""

    @tf.function
    def step(iterator):
        x, _ = next(iterator)
        return model(x, training=False)

    def run():
        iterator = iter(dataset)
        for _ in range(steps):
            out = step(iterator)
        return out.numpy()

    return run


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
    n, batch = _EXAMPLES.value, _BATCH_SIZE.value
    steps = n // batch
    n = steps * batch
    x, y = _images(_DATA.value, n)
    machine_start = _machine()

    teacher = _teacher(_TEACHER_WIDTH.value)
    student = _student(_STUDENT_WIDTH.value)
    print(f"teacher {teacher.count_params():,} params, {_macs(teacher):,} MACs/example; "
          f"student {student.count_params():,} params, {_macs(student):,} MACs/example")

    def pipeline(ds: tf.data.Dataset) -> tf.data.Dataset:
        return ds.batch(batch, drop_remainder=True).cache().prefetch(tf.data.AUTOTUNE)

    train_ds = pipeline(tf.data.Dataset.from_tensor_slices((x, y)))
    cached_ds = pipeline(keras_kd.cache_teacher_logits(teacher, x, y, batch_size=batch))

    student.compile(keras.optimizers.Adam(), _hard_loss(), metrics=["accuracy"])

    def kd_distiller(jit_compile=False, teacher_model=teacher):
        distiller = keras_kd.Distiller(
            teacher_model, student, keras_kd.SoftTargetDistillation(_TEMPERATURE),
            student_loss_weight=_ALPHA,
        )
        distiller.compile(keras.optimizers.Adam(), _hard_loss(), metrics=["accuracy"],
                          jit_compile=jit_compile)
        return distiller

    runs = {
        "student": _fit_epoch(student, train_ds),
        "teacher_forward": _forward_epoch(teacher, train_ds, steps),
        "keras_kd": _fit_epoch(kd_distiller(), train_ds),
        "keras_kd_cached": _fit_epoch(kd_distiller(teacher_model=None), cached_ds),
    }
    if _KERAS.value:
        keras_distiller = keras.distillation.Distiller(
            teacher, student,
            distillation_losses=keras.distillation.LogitsDistillation(temperature=_TEMPERATURE),
            student_loss_weight=_ALPHA,
        )
        keras_distiller.compile(keras.optimizers.Adam(), _hard_loss(), metrics=["accuracy"])
        runs["keras_distillation"] = _fit_epoch(keras_distiller, train_ds)
    if _XLA.value:
        runs["keras_kd_xla"] = _fit_epoch(kd_distiller(jit_compile=True), train_ds)
    if _BF16.value:
        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            teacher_bf16 = _teacher(_TEACHER_WIDTH.value, name="teacher_bf16")
        finally:
            keras.config.set_dtype_policy("float32")
        teacher_bf16.set_weights(teacher.get_weights())
        gap = np.max(np.abs(teacher_bf16.predict(x[:batch], verbose=0)
                            - teacher.predict(x[:batch], verbose=0)))
        print(f"mixed_bfloat16 teacher: max |logit difference| vs float32 on one batch {gap:.4f}")
        runs["teacher_forward_bf16"] = _forward_epoch(teacher_bf16, train_ds, steps)

    print(f"warm-up (tracing, filling the dataset caches): {len(runs)} runs")
    for name, run in runs.items():
        wall, _ = time_run(run)
        print(f"  warm-up {name:<28s} {wall:7.3f} s")
    print(f"timing: {_REPEATS.value} rounds x {len(runs)} runs of {steps} steps of {batch}")
    t = interleaved_medians(runs, _REPEATS.value)
    machine_end = _machine()

    def ratios(kind: str) -> dict[str, str]:
        s, f = t["student"][kind], t["teacher_forward"][kind]
        out = {
            "kd_student": _ratio(t["keras_kd"][kind], s),
            "kd_both": _ratio(t["keras_kd"][kind], s + f),
            "kd_cached": _ratio(t["keras_kd_cached"][kind], s),
        }
        if "keras_distillation" in t:
            out["k_student"] = _ratio(t["keras_distillation"][kind], s)
            out["k_both"] = _ratio(t["keras_distillation"][kind], s + f)
        return out

    wall, cpu = ratios("wall"), ratios("cpu")
    contended = max(os.getloadavg()) > (os.cpu_count() or 1)
    na = "n/a"
    data = (f"the first {n} Fashion-MNIST training images" if _DATA.value == "fashion_mnist"
            else f"the first {n} MNIST training images" if _DATA.value == "mnist"
            else f"{n} random tensors")
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}` — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} "
        f"UTC, TF {tf.__version__}, Keras {keras.__version__}.",
        f"Machine: {machine_start} at start; {machine_end.split('; ')[1]} at end.",
        f"Data: {data} (28x28x1, batch {batch}, {steps} steps per timed epoch, no shuffle, "
        "batched + cached + prefetched tf.data). Teacher "
        f"{teacher.count_params():,} params / {_macs(teacher):,} MACs per example, student "
        f"{student.count_params():,} params / {_macs(student):,} MACs (random weights: speed "
        f"only). Medians of {_REPEATS.value} interleaved epochs; wall-clock ratio (process-CPU "
        "ratio in brackets)."
        + (" The load average exceeded the CPU count: the wall-clock ratios are unreliable, "
           "trust the CPU ratios." if contended else ""),
        "",
        "| ratio | keras_kd | keras.distillation | target |",
        "|---|---:|---:|---:|",
        f"| distill step / student-only step | {wall['kd_student']} ({cpu['kd_student']}) | "
        f"{wall.get('k_student', na)} ({cpu.get('k_student', na)}) | — |",
        f"| distill step / (student step + teacher forward) | {wall['kd_both']} "
        f"({cpu['kd_both']}) | {wall.get('k_both', na)} ({cpu.get('k_both', na)}) | ≤ 1.05x |",
        f"| cached-logits distill step / student-only step | {wall['kd_cached']} "
        f"({cpu['kd_cached']}) | n/a (no cached mode) | ≤ 1.10x |",
        "",
        "| run (one epoch) | median wall s | median CPU s | ms/step (wall) |",
        "|---|---:|---:|---:|",
    ]
    for name, v in t.items():
        lines.append(f"| {name} | {v['wall']:.3f} | {v['cpu']:.3f} | "
                     f"{1000 * v['wall'] / steps:.1f} |")
    lines.append("")
    if "keras_kd_xla" in t:
        lines.append(
            "XLA: keras_kd distill step with `jit_compile=True` / default (`False`): "
            f"{_ratio(t['keras_kd_xla']['wall'], t['keras_kd']['wall'])} wall "
            f"({_ratio(t['keras_kd_xla']['cpu'], t['keras_kd']['cpu'])} CPU)."
        )
    if "teacher_forward_bf16" in t:
        lines.append(
            "mixed_bfloat16 teacher forward / float32 teacher forward: "
            f"{_ratio(t['teacher_forward_bf16']['wall'], t['teacher_forward']['wall'])} wall "
            f"({_ratio(t['teacher_forward_bf16']['cpu'], t['teacher_forward']['cpu'])} CPU)."
        )
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    app.run(main)
