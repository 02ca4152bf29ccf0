r"""Exports a distilled student to TFLite in every variant and measures each with LiteRT.

Writes into --output_dir: student_{float32,float16,dynamic,int8}.tflite, student_qat_int8.tflite
(quantization-aware distillation), student_pruned_int8.tflite (50% sparsity, unless --noprune),
teacher_float32.tflite (with --teacher), deployment.md (accuracy, agreement, size, latency per
variant) and deployment.png (accuracy vs size).

Usage:
  python examples/distill_mnist.py --output_dir=/tmp/distill_mnist
  python examples/export_tflite.py --student=/tmp/distill_mnist/student.keras \
      --teacher=/tmp/distill_mnist/teacher.keras --output_dir=/tmp/deploy_mnist
  python examples/export_tflite.py --student=student.keras --dataset=fashion_mnist \
      --manual_dir=../shared/data/fashion_mnist
"""

import keras
from absl import app, flags

from keras_kd import datasets
from keras_kd.export import deployment_report

_STUDENT = flags.DEFINE_string("student", None, "The distilled student (.keras, logits output).")
_TEACHER = flags.DEFINE_string("teacher", None, "Optional teacher (.keras) for the comparison row.")
_DATASET = flags.DEFINE_enum("dataset", "mnist", ["mnist", "fashion_mnist", "cifar10"],
                             "Dataset the student was trained on.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Offline source files (keras_kd.datasets).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "train_examples", None, "First N train examples for calibration / QAT / pruning."
)
_TEST_EXAMPLES = flags.DEFINE_integer("test_examples", None, "First N test examples only.")
_QAT_EPOCHS = flags.DEFINE_integer("qat_epochs", 1, "Epochs of quantization-aware distillation.")
_PRUNE = flags.DEFINE_bool("prune", True, "Also build the pruned (50%) int8 variant.")
_PRUNE_EPOCHS = flags.DEFINE_integer("prune_epochs", 1, "Epochs of pruning distillation.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", 1, "LiteRT interpreter threads.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "/tmp/deploy", "Where to write the files.")


def _split(name: str, limit: int | None) -> str:
    return f"{name}[:{limit}]" if limit else name


def main(argv):
    del argv
    load = dict(data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value)
    x_train, y_train = datasets.load_arrays(
        _DATASET.value, _split("train", _TRAIN_EXAMPLES.value), **load
    )
    x_test, y_test = datasets.load_arrays(
        _DATASET.value, _split("test", _TEST_EXAMPLES.value), **load
    )
    rows = deployment_report(
        keras.saving.load_model(_STUDENT.value),
        x_train,
        y_train,
        x_test,
        y_test,
        _OUTPUT_DIR.value,
        teacher=keras.saving.load_model(_TEACHER.value) if _TEACHER.value else None,
        qat_epochs=_QAT_EPOCHS.value,
        prune=_PRUNE.value,
        prune_epochs=_PRUNE_EPOCHS.value,
        num_threads=_NUM_THREADS.value,
        title=f"Deployment of {_STUDENT.value} ({_DATASET.value})",
    )
    print(f"{len(rows)} variants written to {_OUTPUT_DIR.value}/deployment.md")


if __name__ == "__main__":
    flags.mark_flag_as_required("student")
    app.run(main)
