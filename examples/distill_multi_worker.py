r"""Distils an MNIST student on several workers with `tf.distribute.MultiWorkerMirroredStrategy`.

Start one copy per worker, each with `TF_CONFIG` naming every worker and its own index (on one
machine: localhost ports; on several: their host names). Every worker reads the MNIST files
shipped with keras_kd, takes its share of each global batch (`AutoShardPolicy.DATA`), and runs
`keras_kd.Distiller.fit`; the gradients are summed across workers by TensorFlow's collective
all-reduce, so all workers hold the same weights after each step, equal to one process training
on the same global batches. Worker 0 (the chief) writes `student.keras` to --output_dir; the
others write theirs to a temporary directory, as TensorFlow's multi-worker guide asks.

The teacher is a saved `.keras` model that outputs logits (or ends in a softmax, which is
undone), e.g. the one `examples/distill_mnist.py` writes.

Usage (two workers on this machine):
  python examples/distill_mnist.py --output_dir=runs/mnist     # writes runs/mnist/teacher.keras
  for i in 0 1; do
    TF_CONFIG='{"cluster": {"worker": ["localhost:23456", "localhost:23457"]},
                "task": {"type": "worker", "index": '$i'}}' \
    python examples/distill_multi_worker.py --teacher_path=runs/mnist/teacher.keras \
        --output_dir=runs/mnist_2_workers &
  done; wait
"""

import _cli  # examples/_cli.py

if __name__ == "__main__":
    _cli.before_tensorflow()  # before anything loads TensorFlow

import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from absl import app, flags  # noqa: E402

from keras_kd import datasets, validation  # noqa: E402

_TEACHER_PATH = flags.DEFINE_string("teacher_path", None, "A saved .keras teacher (required).")
_TEMPERATURE = flags.DEFINE_float("temperature", 4.0, "Soft-target temperature T (> 0).")
_STUDENT_LOSS_WEIGHT = flags.DEFINE_float(
    "student_loss_weight", 0.1, "Weight alpha of the hard-label loss, in [0, 1].")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs (>= 1).")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 128, "Global batch size, split evenly across the workers (>= 1).")
_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "train_examples", None, "Use only the first N training examples (quick runs).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", "/tmp/distill_multi_worker", "Where the chief writes student.keras.")

flags.mark_flag_as_required("teacher_path")
_cli.check_flag("teacher_path", _cli.existing_file)
_cli.check_flag("temperature", validation.positive, hint="It is the softening temperature T.")
_cli.check_flag("student_loss_weight", validation.unit_interval)
_cli.check_flag("epochs", validation.positive_int)
_cli.check_flag("batch_size", validation.positive_int)
_cli.check_flag("train_examples", validation.positive_int)
_cli.check_flag("output_dir", _cli.writable_dir)


def _mnist(split: str, limit: int | None):
    prefix = "train" if split == "train" else "t10k"
    x = datasets.read_idx(datasets.SHIPPED_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
    y = datasets.read_idx(datasets.SHIPPED_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    x, y = x[:limit], y[:limit]
    return (x[..., None] / 255.0).astype("float32"), y.astype("int64")


def main(argv):
    del argv
    _cli.after_flags()
    import tensorflow as tf

    # Before any TensorFlow op: the collectives are configured when the strategy is created.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras

    import keras_kd

    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    index = int(task.get("index", 0))
    workers = strategy.num_replicas_in_sync
    print(f"distill_multi_worker: worker {index}, {workers} replica(s) in sync")
    if _BATCH_SIZE.value % workers:
        raise app.UsageError(f"--batch_size={_BATCH_SIZE.value} must be a multiple of the "
                             f"{workers} replicas.")

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA

    def pipeline(arrays, shuffle: bool):
        dataset = tf.data.Dataset.from_tensor_slices(arrays)
        if shuffle:  # the same seed on every worker: they shard one global order
            dataset = dataset.shuffle(len(arrays[1]), seed=0)
        return dataset.batch(_BATCH_SIZE.value).with_options(options)

    train = pipeline(_mnist("train", _TRAIN_EXAMPLES.value), shuffle=True)
    test = pipeline(_mnist("test", None), shuffle=False)

    with strategy.scope():
        teacher = keras.saving.load_model(_TEACHER_PATH.value)
        student = keras_kd.models.mlp((256,), input_shape=(28, 28, 1), name="student")
        distiller = keras_kd.Distiller(
            teacher, student, keras_kd.SoftTargetDistillation(_TEMPERATURE.value),
            student_loss_weight=_STUDENT_LOSS_WEIGHT.value)
        distiller.compile(keras.optimizers.Adam(),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          metrics=["accuracy"])
    distiller.fit(train, validation_data=test, epochs=_EPOCHS.value, verbose=2 if index == 0
                  else 0)
    accuracy = distiller.evaluate(test, verbose=0, return_dict=True)["accuracy"]
    print(f"worker {index}: student test accuracy {accuracy:.4f}")

    out = Path(_OUTPUT_DIR.value) if index == 0 else Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    student.save(out / "student.keras")
    if index == 0:
        print(f"wrote {out / 'student.keras'}")


if __name__ == "__main__":
    app.run(main)
