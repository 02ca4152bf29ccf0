"""`Distiller(teacher_precision=...)`: teacher-forward speed-up and change of the loss, real data.

Trains the CNN teacher of `throughput.py` for `--teacher_epochs` on Fashion-MNIST (the idx files
in ../shared/data/fashion_mnist, read through `keras_kd.datasets`), then in one process:
  1. times the Distiller's teacher forward (`distiller.signals`, traced) over the training images
     in float32, bfloat16 and float16: medians of interleaved whole passes (CPU and wall);
  2. computes the soft-target distillation loss (T = 4) of an untrained and of a briefly
     trained student against each precision's teacher logits on the 10,000 test images, and
     reports the absolute and relative change against float32, and the largest logit change.

Usage:
  python benchmarks/teacher_precision.py                  # ~3 min on 2 quiet cores
  python benchmarks/teacher_precision.py --forward_examples=12800 --rounds=3
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from _timing import interleaved_medians  # noqa: E402
from absl import app, flags  # noqa: E402
from throughput import _student, _teacher  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.losses import LOGITS  # noqa: E402

_EXAMPLES = flags.DEFINE_integer("forward_examples", 38400, "Training images per timed pass.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Interleaved rounds (median reported).")
_TEACHER_EPOCHS = flags.DEFINE_integer("teacher_epochs", 2, "Epochs of teacher training.")
_BATCH = 128
_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashion_mnist"
_PRECISIONS = ("float32", "bfloat16", "float16")


def _sce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def main(argv):
    del argv
    keras.utils.set_random_seed(0)
    x, y = keras_kd.datasets.load_arrays("fashion_mnist", "train", manual_dir=_DATA)
    x_test, y_test = keras_kd.datasets.load_arrays("fashion_mnist", "test", manual_dir=_DATA)
    teacher = _teacher(32)
    teacher.compile("adam", loss=_sce(), metrics=["accuracy"])
    teacher.fit(x, y, batch_size=_BATCH, epochs=_TEACHER_EPOCHS.value, verbose=2)
    accuracy = teacher.evaluate(x_test, y_test, verbose=0)[1]
    student = _student(8)
    distillers = {p: keras_kd.Distiller(teacher, student, teacher_precision=p)
                  for p in _PRECISIONS}

    images = tf.data.Dataset.from_tensor_slices(x[: _EXAMPLES.value]).batch(_BATCH).cache()
    for _ in images:
        pass

    def forward_pass(distiller):
        step = tf.function(lambda b: distiller.signals(b)[1][LOGITS])

        def run():
            for batch in images:
                out = step(batch)
            return out.numpy()

        return run

    runs = {p: forward_pass(d) for p, d in distillers.items()}
    for run in runs.values():
        run()
    t = interleaved_medians(runs, _ROUNDS.value)

    test = tf.constant(x_test)
    logits = {p: np.asarray(d.signals(test)[1][LOGITS], np.float64)
              for p, d in distillers.items()}

    def loss(teacher_logits, student_logits):
        return float(np.mean(keras_kd.losses.soft_target_kl(
            teacher_logits, student_logits, 4.0)))

    untrained = np.asarray(student(test), np.float64)
    trainer = keras_kd.Distiller(teacher, _student(8), student_loss_weight=0.1)
    trainer.compile("adam", loss=_sce())
    trainer.fit(x, y, batch_size=_BATCH, epochs=1, verbose=0)
    trained = np.asarray(trainer.student(test), np.float64)

    print(f"\nTeacher: {teacher.count_params()} parameters, test accuracy {accuracy:.4f} after "
          f"{_TEACHER_EPOCHS.value} epochs. Teacher forward over {_EXAMPLES.value} images, "
          f"batch {_BATCH}, medians of {_ROUNDS.value} interleaved passes:\n")
    print("| teacher precision | forward wall s | speed-up (wall) | forward CPU s | speed-up (CPU) "
          "| max abs logit change | KD loss, untrained student (change) | KD loss, trained "
          "student (change) |")
    print("|---|---|---|---|---|---|---|---|")
    base = t["float32"]
    for p in _PRECISIONS:
        lu, lt = loss(logits[p], untrained), loss(logits[p], trained)
        bu, bt = loss(logits["float32"], untrained), loss(logits["float32"], trained)
        change = np.abs(logits[p] - logits["float32"]).max()
        print(f"| {p} | {t[p]['wall']:.2f} | {base['wall'] / t[p]['wall']:.2f}x | "
              f"{t[p]['cpu']:.2f} | {base['cpu'] / t[p]['cpu']:.2f}x | {change:.4f} | "
              f"{lu:.5f} ({(lu - bu) / bu:+.2%}) | {lt:.5f} ({(lt - bt) / bt:+.2%}) |")


if __name__ == "__main__":
    app.run(main)
