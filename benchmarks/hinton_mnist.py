r"""Hinton, Vinyals & Dean (2015), section 3 (MNIST), on a CPU budget.

Paper setting: a teacher 784-1200-1200-10 (ReLU) regularised with dropout and weight
constraints and trained on inputs jittered by up to two pixels gets 67 test errors; a student
784-800-800-10 with no regularisation gets 146; the same student trained to also match the
teacher's soft targets at T = 20 gets 74.

Here: the same architectures, dropout 0.2 on the input and 0.5 on the hidden layers, max-norm 4
on the teacher's hidden kernels, integer jitter of up to 2 px for the teacher only, Adam with a
cosine-decayed learning rate, and far fewer epochs than the paper (the defaults below). The students
train on the unjittered images; the distilled one uses `alpha = 0.1` on the hard labels and
the teacher's logits cached once (`keras_kd.cache_teacher_logits`). Both students start from
the same weights and see the same batches.

Usage:
  python benchmarks/hinton_mnist.py --output_dir=/tmp/hinton_mnist
"""

import json
import time
from pathlib import Path

import tensorflow as tf
from absl import app, flags

from keras_kd import datasets, models, report
from keras_kd.recipes import scratch_vs_distilled

_TEACHER_EPOCHS = flags.DEFINE_integer("teacher_epochs", 12, "Teacher epochs (jittered).")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Epochs of each student run.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_TEMPERATURE = flags.DEFINE_float("temperature", 20.0, "Soft-target temperature (paper: 20).")
_STUDENT_LOSS_WEIGHT = flags.DEFINE_float("student_loss_weight", 0.1, "alpha on hard labels.")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", None, "First N train examples only.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "/tmp/hinton_mnist", "Models, report, JSON.")

PAPER_ERRORS = {"teacher": 67, "student (scratch)": 146, "student (distilled)": 74}


def jitter(images: tf.Tensor, max_shift: int = 2) -> tf.Tensor:
    """Shifts each image by an independent integer offset in [-max_shift, max_shift]^2.

    Pixels shifted in are zero (MNIST background).
    """
    size = tf.shape(images)[1]
    padded = tf.pad(images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]])
    batch = tf.shape(images)[0]
    offsets = tf.random.uniform((batch, 2), 0, 2 * max_shift + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(size)[None, :]
    cols = offsets[:, 1:] + tf.range(size)[None, :]
    shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(shifted, cols, axis=2, batch_dims=1)


def main(argv):
    del argv
    start = time.perf_counter()
    split = f"train[:{_TRAIN_EXAMPLES.value}]" if _TRAIN_EXAMPLES.value else "train"
    train = datasets.load_arrays("mnist", split, data_dir=_DATA_DIR.value)
    test = datasets.load_arrays("mnist", "test", data_dir=_DATA_DIR.value)
    result = scratch_vs_distilled(
        teacher=models.mlp(
            (1200, 1200), dropout=0.5, input_dropout=0.2, max_norm=4.0, name="teacher"
        ),
        student_factory=lambda: models.mlp((800, 800), name="student"),
        train_data=train,
        test_data=test,
        temperature=_TEMPERATURE.value,
        student_loss_weight=_STUDENT_LOSS_WEIGHT.value,
        epochs=_EPOCHS.value,
        batch_size=_BATCH_SIZE.value,
        teacher_epochs=_TEACHER_EPOCHS.value,
        teacher_augment=jitter,
        seed=_SEED.value,
        output_dir=_OUTPUT_DIR.value,
        verbose=2,
    )
    seconds = time.perf_counter() - start
    report.write_report(result, _OUTPUT_DIR.value, title="Hinton et al. 2015, MNIST")
    print(f"\nWall time: {seconds:.0f} s\n")
    print("| model | params | epochs | test errors | paper errors |")
    print("|---|---:|---:|---:|---:|")
    for s in result.summaries:
        epochs = _TEACHER_EPOCHS.value if s.name == "teacher" else _EPOCHS.value
        print(f"| {s.name} | {s.params:,} | {epochs} | {s.test_errors} | {PAPER_ERRORS[s.name]} |")
    summary = {
        "wall_seconds": seconds,
        "settings": result.settings,
        "models": {
            s.name: {
                "params": s.params,
                "test_errors": s.test_errors,
                "test_accuracy": s.test_accuracy,
                "seconds": s.seconds,
                "val_accuracy": s.history.get("val_accuracy", []),
            }
            for s in result.summaries
        },
        "paper_errors": PAPER_ERRORS,
    }
    Path(_OUTPUT_DIR.value, "hinton_mnist.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app.run(main)
