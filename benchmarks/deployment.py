r"""Deployment table: teacher, distilled student in every TFLite variant, QAT and pruned int8.

On real MNIST (or --dataset=fashion_mnist): trains a CNN teacher, distils a small CNN student
from the teacher's cached logits with `keras_kd.Distiller` (alpha = 0.1, T = 4), then runs
`keras_kd.export.deployment_report`: float32 / float16 / dynamic-range / full-int8 (post-training,
300 calibration images) files, a quantization-aware-distilled int8 file and a 50%-pruned
(distilled) int8 file, all evaluated with LiteRT on the full test set (1 thread). Sized for about
10-15 minutes on two quiet CPU cores (few epochs; see the flags).

Usage:
  python benchmarks/deployment.py --output_dir=/tmp/deployment_mnist
"""

import json
import time
from pathlib import Path

import keras
from absl import app, flags

import keras_kd
from keras_kd import datasets, models
from keras_kd.export import deployment_report, markdown_table

_DATASET = flags.DEFINE_enum("dataset", "mnist", ["mnist", "fashion_mnist"], "Dataset.")
_TEACHER_EPOCHS = flags.DEFINE_integer("teacher_epochs", 3, "Teacher epochs.")
_STUDENT_EPOCHS = flags.DEFINE_integer("student_epochs", 6, "Distillation epochs.")
_QAT_EPOCHS = flags.DEFINE_integer("qat_epochs", 1, "Quantization-aware distillation epochs.")
_PRUNE_EPOCHS = flags.DEFINE_integer("prune_epochs", 2, "Pruning distillation epochs.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "/tmp/deployment_mnist", "Output directory.")

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def main(argv):
    del argv
    start = time.time()
    keras.utils.set_random_seed(_SEED.value)
    manual_dir = SHARED_DATA / _DATASET.value
    x_train, y_train = datasets.load_arrays(_DATASET.value, "train", manual_dir=manual_dir)
    x_test, y_test = datasets.load_arrays(_DATASET.value, "test", manual_dir=manual_dir)
    out = Path(_OUTPUT_DIR.value)
    out.mkdir(parents=True, exist_ok=True)

    teacher = models.cnn((32, 64), dense_units=256, dropout=0.3, name="teacher")
    teacher.compile(keras.optimizers.Adam(1e-3),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    teacher.fit(x_train, y_train, batch_size=128, epochs=_TEACHER_EPOCHS.value, verbose=2)

    student = models.cnn((8, 16), dense_units=32, name="student")
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.1)
    distiller.compile(keras.optimizers.Adam(2e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    cached = keras_kd.cache_teacher_logits(teacher, x_train, y_train)
    distiller.fit(cached.shuffle(len(x_train), seed=_SEED.value).batch(128),
                  epochs=_STUDENT_EPOCHS.value, verbose=2)
    teacher.save(out / "teacher.keras")
    student.save(out / "student.keras")
    print(f"trained in {time.time() - start:.0f} s")

    rows = deployment_report(
        student, x_train, y_train, x_test, y_test, out, teacher=teacher,
        qat_epochs=_QAT_EPOCHS.value, prune_epochs=_PRUNE_EPOCHS.value,
        title=f"Deployment, {_DATASET.value}",
    )
    teacher_accuracy = teacher.evaluate(x_test, y_test, verbose=0)[1]
    print(markdown_table(rows))
    print(f"teacher Keras accuracy {100 * teacher_accuracy:.2f}%; "
          f"total {time.time() - start:.0f} s")
    (out / "deployment.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    app.run(main)
