r"""Hinton, Vinyals & Dean (2015), section 3 (MNIST), on a CPU budget.

Paper setting: a teacher 784-1200-1200-10 (ReLU) regularised with dropout and weight
constraints and trained on inputs jittered by up to two pixels gets 67 test errors; a student
784-800-800-10 with no regularisation gets 146; the same student trained to also match the
teacher's soft targets at T = 20 gets 74.

Here: the same architectures. The teacher is trained as in the dropout papers (Hinton et al.
2012, Srivastava et al. 2014, appendix B.1): dropout 0.2 on the input and 0.5 on the hidden
layers, a max-norm constraint on every hidden unit's incoming weights, integer jitter of up to
2 px, plain SGD whose momentum ramps linearly from 0.5 to 0.99 and whose learning rate decays
exponentially, the update being `v <- p v - (1 - p) eps g` as in those papers — for far fewer
epochs than their 3000 (`--teacher_epochs`). It is saved as
`<output_dir>/teacher_sgd_e<epochs>.keras` and reused by later runs; a larger `--teacher_epochs`
continues the longest shorter run saved there. With `--teacher_optimizer=adam` the teacher is
trained by the recipe instead (Adam, cosine-decayed learning rate, the same regularisation).
The students train on the unjittered images; the distilled one uses `alpha = 0.1` on the hard
labels and the teacher's logits cached once (`keras_kd.cache_teacher_logits`). Both students
start from the same weights and see the same batches. With `--student_jitter` (not the paper's
setting) both students train on jittered batches, the same draws for both, and the teacher
gives its soft targets on each jittered batch, live (`scratch_vs_distilled(student_augment=)`);
copy a trained teacher into that run's `--output_dir` to reuse it.

Usage:
  python benchmarks/hinton_mnist.py --output_dir=/tmp/hinton_mnist
"""

import json
import os
import re
import time
from pathlib import Path

import keras
import tensorflow as tf
from absl import app, flags

from keras_kd import datasets, models, report
from keras_kd.recipes import scratch_vs_distilled

_TEACHER_EPOCHS = flags.DEFINE_integer("teacher_epochs", 70, "Teacher epochs (jittered).")
_TEACHER_OPTIMIZER = flags.DEFINE_enum(
    "teacher_optimizer", "sgd", ["sgd", "adam"], "sgd: the dropout papers' recipe; adam: Adam.")
_TEACHER_LR = flags.DEFINE_float("teacher_learning_rate", 0.5, "SGD eps at epoch 0.")
_TEACHER_LR_DECAY = flags.DEFINE_float("teacher_lr_decay", 0.955, "eps decay per epoch.")
_MOMENTUM_EPOCHS = flags.DEFINE_integer("momentum_epochs", 15, "Epochs of the 0.5 -> 0.99 ramp.")
_MAX_NORM = flags.DEFINE_float("max_norm", 3.5, "Max L2 norm of a hidden unit's input weights.")
_EPOCHS = flags.DEFINE_integer("epochs", 10, "Epochs of each student run.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_TEMPERATURE = flags.DEFINE_float("temperature", 20.0, "Soft-target temperature (paper: 20).")
_STUDENT_LOSS_WEIGHT = flags.DEFINE_float("student_loss_weight", 0.1, "alpha on hard labels.")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", None, "First N train examples only.")
_STUDENT_JITTER = flags.DEFINE_bool(
    "student_jitter", False,
    "Jitter both students' batches as well, the teacher's soft targets then taken live on each "
    "jittered batch (consistent teaching, Beyer et al. 2022). Not the paper's setting.")
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


def teacher_model() -> keras.Model:
    return models.mlp((1200, 1200), dropout=0.5, input_dropout=0.2, max_norm=_MAX_NORM.value,
                      name="teacher")


class RampedMomentum(keras.callbacks.Callback):
    """The dropout papers' schedule: momentum `p` from 0.5 to 0.99 linearly over
    `--momentum_epochs`, `eps_e = eps_0 decay^e`, SGD learning rate `(1 - p) eps` (so that
    `v <- p v - (1 - p) eps g`). Keras bakes the momentum into the traced step, so the step is
    retraced at the start of each epoch of the ramp."""

    def on_epoch_begin(self, epoch, logs=None):
        ramp = min(1.0, epoch / max(1, _MOMENTUM_EPOCHS.value))
        momentum = 0.5 + ramp * (0.99 - 0.5)
        eps = _TEACHER_LR.value * _TEACHER_LR_DECAY.value**epoch
        optimizer = self.model.optimizer
        optimizer.learning_rate.assign((1.0 - momentum) * eps)
        if optimizer.momentum != momentum:
            optimizer.momentum = momentum
            self.model.make_train_function(force=True)
        print(f"teacher epoch {epoch + 1}: momentum {momentum:.3f}, eps {eps:.4f}", flush=True)


def _saved_teachers(epochs: int) -> list[tuple[int, Path]]:
    """`(epochs, path)` of the SGD teachers in `--output_dir` trained for fewer than `epochs`."""
    found = []
    for path in Path(_OUTPUT_DIR.value).glob("teacher_sgd_e*.keras"):
        match = re.fullmatch(r"teacher_sgd_e(\d+)\.keras", path.name)
        if match and int(match.group(1)) < epochs:
            found.append((int(match.group(1)), path))
    return sorted(found)


def train_teacher_sgd(train, test) -> str:
    """Trains the teacher with the dropout papers' recipe (or loads it) and returns its path.

    A teacher saved in `--output_dir` after fewer epochs of the same recipe is continued from
    there (weights and SGD state; the schedule resumes at its epoch) instead of starting over.
    """
    path = os.path.join(_OUTPUT_DIR.value, f"teacher_sgd_e{_TEACHER_EPOCHS.value}.keras")
    if os.path.exists(path):
        return path
    keras.utils.set_random_seed(_SEED.value)
    earlier = _saved_teachers(_TEACHER_EPOCHS.value)
    initial_epoch = 0
    if earlier:
        initial_epoch, start = earlier[-1]
        print(f"Continuing {start} from epoch {initial_epoch}", flush=True)
        teacher = keras.models.load_model(start)
    else:
        teacher = teacher_model()
        teacher.compile(
            keras.optimizers.SGD(0.5, momentum=0.5),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    x, y = train
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=_SEED.value)
    ds = ds.batch(_BATCH_SIZE.value).map(lambda a, b: (jitter(a), b))
    teacher.fit(ds.prefetch(tf.data.AUTOTUNE), epochs=_TEACHER_EPOCHS.value,
                initial_epoch=initial_epoch, validation_data=test, callbacks=[RampedMomentum()],
                verbose=2)
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    teacher.save(path)
    return path


def main(argv):
    del argv
    start = time.perf_counter()
    split = f"train[:{_TRAIN_EXAMPLES.value}]" if _TRAIN_EXAMPLES.value else "train"
    train = datasets.load_arrays("mnist", split, data_dir=_DATA_DIR.value)
    test = datasets.load_arrays("mnist", "test", data_dir=_DATA_DIR.value)
    sgd = _TEACHER_OPTIMIZER.value == "sgd"
    result = scratch_vs_distilled(
        teacher=train_teacher_sgd(train, test) if sgd else teacher_model,
        student_factory=lambda: models.mlp((800, 800), name="student"),
        train_data=train,
        test_data=test,
        temperature=_TEMPERATURE.value,
        student_loss_weight=_STUDENT_LOSS_WEIGHT.value,
        epochs=_EPOCHS.value,
        batch_size=_BATCH_SIZE.value,
        teacher_epochs=0 if sgd else _TEACHER_EPOCHS.value,
        teacher_augment=None if sgd else jitter,
        student_augment=jitter if _STUDENT_JITTER.value else None,
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
