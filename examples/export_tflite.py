r"""Exports a distilled student to TFLite in every variant and measures each with LiteRT.

Writes into --output_dir: student_{float32,float16,dynamic,int8}.tflite, student_qat_int8.tflite
(quantization-aware distillation), student_pruned_int8.tflite (50% sparsity, unless --noprune),
teacher_float32.tflite (with --teacher), deployment.md (accuracy, agreement, size in KiB,
latency per variant) and deployment.png (accuracy against file size).

Every flag is checked before anything is loaded or converted. Output: a heading and a one-line
result per variant, the table at the end and the path of every file written. TensorFlow's and
TFDS's own log lines are hidden; --verbosity=0 shows them.

Usage:
  python examples/distill_mnist.py --output_dir=runs/mnist
  python examples/export_tflite.py --student=runs/mnist/student.keras \
      --teacher=runs/mnist/teacher.keras --output_dir=runs/mnist_tflite
  python examples/export_tflite.py --student=student.keras --dataset=fashion_mnist \
      --manual_dir=../shared/data/fashion_mnist --output_dir=runs/fashion_tflite
"""

import _cli  # examples/_cli.py

if __name__ == "__main__":
    _cli.before_tensorflow()  # before anything loads TensorFlow

import contextlib  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

from keras_kd import datasets, validation  # noqa: E402
from keras_kd.export import deployment_report, markdown_table  # noqa: E402

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


def _sources(values: dict) -> bool:
    """The dataset is built already, or can be built offline from the files at hand."""
    name, manual_dir = values["dataset"], values["manual_dir"]
    if datasets.is_prepared(name, values["data_dir"]) or (name == "mnist" and not manual_dir):
        return True
    if manual_dir is None:
        raise flags.ValidationError(
            f"--manual_dir is needed: {name} is not built in --data_dir yet; pass a directory "
            f"holding {', '.join(datasets.required_files(name))}."
        )
    missing = [f for f in datasets.required_files(name) if not (Path(manual_dir) / f).is_file()]
    if missing:
        raise flags.ValidationError(
            f"--manual_dir={manual_dir} lacks {', '.join(missing)} (needed to build {name})."
        )
    return True


_cli.check_flag("student", _cli.existing_file)
_cli.check_flag("teacher", _cli.existing_file)
_cli.check_flag("manual_dir", _cli.existing_dir)
_cli.check_flag("train_examples", validation.positive_int)
_cli.check_flag("test_examples", validation.positive_int)
_cli.check_flag("qat_epochs", validation.positive_int)
_cli.check_flag("prune_epochs", validation.positive_int)
_cli.check_flag("num_threads", validation.positive_int)
flags.register_multi_flags_validator(["dataset", "manual_dir", "data_dir"], _sources)
_cli.check_flag("output_dir", _cli.writable_dir)


def _split(name: str, limit: int | None) -> str:
    return f"{name}[:{limit}]" if limit else name


def main(argv):
    del argv
    verbose = _cli.after_flags()
    out = Path(_OUTPUT_DIR.value)
    print(
        f"export_tflite: every TFLite variant of {_STUDENT.value}, measured with LiteRT; files "
        f"go to {out}"
    )
    name = _DATASET.value
    data_dir = _DATA_DIR.value or datasets.default_data_dir()
    if datasets.is_prepared(name, data_dir):
        print(f"\nData: {name}, read from {data_dir}")
    else:
        print(f"\nData: building {name} in {data_dir} from local files (nothing is downloaded; "
              "once)")
    load = dict(data_dir=data_dir, manual_dir=_MANUAL_DIR.value, verbose=verbose)
    x_train, y_train = datasets.load_arrays(name, _split("train", _TRAIN_EXAMPLES.value), **load)
    x_test, y_test = datasets.load_arrays(name, _split("test", _TEST_EXAMPLES.value), **load)
    print(f"    {len(y_train):,} training examples (calibration, QAT, pruning) and "
          f"{len(y_test):,} test examples")

    # In quiet runs, the C++ lines LiteRT prints past every log setting are held back.
    with contextlib.nullcontext() if verbose else _cli.without_stderr_lines(_cli.LITERT_NOISE):
        rows = deployment_report(
            keras.saving.load_model(_STUDENT.value),
            x_train,
            y_train,
            x_test,
            y_test,
            out,
            teacher=keras.saving.load_model(_TEACHER.value) if _TEACHER.value else None,
            qat_epochs=_QAT_EPOCHS.value,
            prune=_PRUNE.value,
            prune_epochs=_PRUNE_EPOCHS.value,
            num_threads=_NUM_THREADS.value,
            title=f"Deployment of {Path(_STUDENT.value).name} ({name}, {len(y_test):,} test "
            "examples)",
            verbose=2,
        )
    print("\nSummary")
    print(markdown_table(rows))
    print("\nWritten:")
    for path in (out / "deployment.md", out / "deployment.png",
                 *(out / row["file"] for row in rows)):
        print(f"    {path}")


if __name__ == "__main__":
    flags.mark_flag_as_required("student")
    app.run(main)
