"""Scratch vs. distilled: the same student trained alone and from a teacher, on one budget.

The controlled comparison behind every "distillation helps" claim: two copies of one student
architecture start from the **same initial weights**, see the **same examples in the same
order** for the **same number of steps** with the same optimizer; only the loss differs
(hard labels alone vs. `keras_kd.Distiller` with soft targets).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_kd.distiller import Distiller
from keras_kd.losses.soft_target import SoftTargetDistillation
from keras_kd.teachers.cached import cache_teacher_logits

Arrays = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass
class ModelSummary:
    """How one model did on the test set.

    Attributes:
        name: `"teacher"`, `"student (scratch)"` or `"student (distilled)"`.
        params: number of weights (`model.count_params()`).
        file_size: bytes of the saved `.keras` file (weights and architecture, no optimizer
            state).
        test_accuracy: accuracy on the test set after the last epoch.
        test_errors: number of misclassified test examples.
        path: where the model was saved, or `None` if it was only measured.
        history: per-epoch Keras history (`accuracy`, `val_accuracy`, ...); empty for a teacher
            that was loaded rather than trained.
        seconds: wall time spent training it.
    """

    name: str
    params: int
    file_size: int
    test_accuracy: float
    test_errors: int
    path: str | None
    history: dict[str, list[float]]
    seconds: float = 0.0


@dataclasses.dataclass
class ScratchVsDistilledResult:
    """What `scratch_vs_distilled` returns.

    Attributes:
        teacher, scratch, distilled: one `ModelSummary` each.
        settings: the budget and distillation settings (epochs, batch size, temperature, ...).
        num_test_examples: size of the test set the errors are counted on.
    """

    teacher: ModelSummary
    scratch: ModelSummary
    distilled: ModelSummary
    settings: dict
    num_test_examples: int

    @property
    def summaries(self) -> tuple[ModelSummary, ModelSummary, ModelSummary]:
        return (self.teacher, self.scratch, self.distilled)

    @property
    def error_reduction(self) -> int:
        """Test errors the distilled student avoids relative to the scratch one."""
        return self.scratch.test_errors - self.distilled.test_errors


def _check_arrays(name: str, data) -> Arrays:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"{name} must be an (x, y) pair of arrays, got {type(data)!r}.")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"{name} must hold the same non-zero number of inputs and labels, got {len(x)} and "
            f"{len(y)}."
        )
    return x, y.astype(np.int64)


def _hard_loss() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _adam(learning_rate: float, epochs: int, num_examples: int, batch_size: int):
    """Adam with the learning rate cosine-decayed to 0 over the run (steadier final epochs)."""
    steps = epochs * -(-num_examples // batch_size)
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps))


def _ordered(x, y, batch_size: int, seed: int, augment=None) -> tf.data.Dataset:
    """Shuffled each epoch in a seed-determined order, identical across runs with one seed."""
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        len(x), seed=seed, reshuffle_each_iteration=True
    )
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda a, b: (augment(a), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def evaluate_errors(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 1000):
    """Returns `(accuracy, errors)` of `model`'s argmax predictions on `(x, y)`."""
    predictions = np.argmax(model.predict(x, batch_size=batch_size, verbose=0), axis=-1)
    errors = int(np.sum(predictions != np.asarray(y)))
    return 1.0 - errors / len(y), errors


def _saved_size(model: keras.Model, path: Path) -> int:
    """Saves `model` without optimizer state (as deployed) and returns the file size.

    A compiled model would also store its optimizer's slots (2x the weights for Adam), which
    the student trained inside a `Distiller` lacks; an uncompiled clone is saved instead.
    """
    clone = model.__class__.from_config(model.get_config())  # not compiled, unlike clone_model
    clone.set_weights(model.get_weights())
    clone.save(path)
    return path.stat().st_size


def train_classifier(
    model: keras.Model,
    train_data: Arrays,
    test_data: Arrays | None = None,
    epochs: int = 5,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    augment: Callable[[tf.Tensor], tf.Tensor] | None = None,
    verbose: int = 0,
) -> dict[str, list[float]]:
    """Trains a logits classifier on hard labels with cosine-decayed Adam; returns its history.

    Args:
        model: a model that outputs logits.
        train_data: `(x, y)` arrays, integer labels.
        test_data: optional `(x, y)` evaluated after each epoch (`val_accuracy`; monitoring only,
            nothing is selected on it).
        epochs, batch_size, learning_rate: the budget.
        seed: shuffling seed.
        augment: optional batch-wise `x -> x` transform applied to training batches.
        verbose: Keras verbosity.

    Returns:
        `history.history` of `model.fit`.
    """
    x, y = _check_arrays("train_data", train_data)
    model.compile(
        optimizer=_adam(learning_rate, epochs, len(x), batch_size),
        loss=_hard_loss(),
        metrics=["accuracy"],
    )
    history = model.fit(
        _ordered(x, y, batch_size, seed, augment),
        validation_data=(
            tf.data.Dataset.from_tensor_slices(_check_arrays("test_data", test_data)).batch(1000)
            if test_data is not None
            else None
        ),
        epochs=epochs,
        shuffle=False,  # the dataset is already shuffled in a seed-determined order
        verbose=verbose,
    )
    return history.history


def scratch_vs_distilled(
    teacher: keras.Model | str | os.PathLike,
    student_factory: Callable[[], keras.Model],
    train_data: Arrays,
    test_data: Arrays,
    *,
    temperature: float = 4.0,
    student_loss_weight: float = 0.1,
    epochs: int = 5,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    teacher_epochs: int = 0,
    teacher_augment: Callable[[tf.Tensor], tf.Tensor] | None = None,
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
    verbose: int = 0,
) -> ScratchVsDistilledResult:
    """Trains one student from scratch and distils an identical copy from `teacher`.

    Both students are built by `student_factory` after `keras.utils.set_random_seed(seed)`,
    the second receives the first one's initial weights, and both are trained with Adam
    (`learning_rate`, cosine-decayed to 0 over the run) for `epochs` on `train_data` shuffled
    in the same seed-determined order.
    The scratch student minimises cross-entropy on the labels; the distilled one
    `alpha * CE + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))` through
    `keras_kd.Distiller`, with the teacher's logits computed once up front
    (`keras_kd.cache_teacher_logits`; exact, as students see no augmentation). Accuracies are
    measured on `test_data` after the last epoch; the per-epoch `val_accuracy` is monitoring
    only.

    Args:
        teacher: a logits `keras.Model`, or the path of a saved `.keras` teacher.
        student_factory: a no-argument callable returning a fresh (untrained) logits student.
        train_data: `(x, y)` training arrays, integer labels.
        test_data: `(x, y)` test arrays.
        temperature: soft-target temperature `T`.
        student_loss_weight: `alpha`, the weight of the hard-label loss in the distilled run.
        epochs: epochs of each student run.
        batch_size: batch size of every run.
        learning_rate: initial Adam learning rate of every run (cosine decay to 0).
        teacher_epochs: if > 0, `teacher` is first trained on `train_data` for that many epochs
            (use 0 for an already trained teacher).
        teacher_augment: optional batch-wise input transform for the teacher's training only
            (e.g. jitter). Students never see it.
        seed: initialisation and shuffling seed.
        output_dir: where to save `teacher.keras`, `student_scratch.keras` and `student.keras`
            (the distilled student). If `None` they are saved to a temporary directory only to
            measure their size.
        verbose: Keras verbosity of the `fit` calls.

    Returns:
        A `ScratchVsDistilledResult`.

    Raises:
        ValueError: for inconsistent data, a non-positive budget, or a student factory that
            returns the same model twice.

    Example:
        >>> result = scratch_vs_distilled(
        ...     "teacher.keras", lambda: keras_kd.models.mlp((32,), name="student"),
        ...     keras_kd.datasets.load_arrays("mnist", "train"),
        ...     keras_kd.datasets.load_arrays("mnist", "test"), temperature=8.0, epochs=5)
        >>> result.distilled.test_errors < result.scratch.test_errors

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    x_train, y_train = _check_arrays("train_data", train_data)
    x_test, y_test = _check_arrays("test_data", test_data)
    for arg, value, minimum in (
        ("epochs", epochs, 1),
        ("batch_size", batch_size, 1),
        ("teacher_epochs", teacher_epochs, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            kind = "a positive" if minimum else "a non-negative"
            raise ValueError(f"{arg} must be {kind} integer, got {value!r}.")

    scratch_dir = None
    if output_dir is None:
        scratch_dir = tempfile.TemporaryDirectory(prefix="keras_kd_scratch_vs_distilled_")
        out = Path(scratch_dir.name)
    else:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
    settings = {
        "temperature": float(temperature),
        "student_loss_weight": float(student_loss_weight),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": float(learning_rate),
        "teacher_epochs": teacher_epochs,
        "seed": seed,
        "train_examples": len(x_train),
    }
    try:
        # ------------------------------------------------------------ teacher
        if isinstance(teacher, (str, os.PathLike)):
            settings["teacher_path"] = os.fspath(teacher)
            teacher = keras.models.load_model(teacher)
        if not isinstance(teacher, keras.Model):
            raise TypeError(f"teacher must be a keras.Model or a path, got {type(teacher)!r}.")
        teacher_history, start = {}, time.perf_counter()
        if teacher_epochs:
            keras.utils.set_random_seed(seed)
            teacher_history = train_classifier(
                teacher,
                (x_train, y_train),
                (x_test, y_test),
                teacher_epochs,
                batch_size,
                learning_rate,
                seed,
                teacher_augment,
                verbose,
            )
        teacher_seconds = time.perf_counter() - start
        teacher_size = _saved_size(teacher, out / "teacher.keras")

        # ------------------------------------------------------------ students
        keras.utils.set_random_seed(seed)
        scratch = student_factory()
        distilled = student_factory()
        if scratch is distilled or not isinstance(scratch, keras.Model):
            raise ValueError("student_factory must return a new keras.Model on every call.")
        distilled.set_weights(scratch.get_weights())

        keras.utils.set_random_seed(seed)
        start = time.perf_counter()
        scratch_history = train_classifier(
            scratch,
            (x_train, y_train),
            (x_test, y_test),
            epochs,
            batch_size,
            learning_rate,
            seed,
            None,
            verbose,
        )
        scratch_seconds = time.perf_counter() - start

        keras.utils.set_random_seed(seed)
        start = time.perf_counter()
        cached_train = cache_teacher_logits(teacher, x_train, y_train)
        cached_test = cache_teacher_logits(teacher, x_test, y_test)
        distiller = Distiller(
            teacher,
            distilled,
            distillation_losses=SoftTargetDistillation(temperature),
            student_loss_weight=student_loss_weight,
        )
        distiller.compile(
            optimizer=_adam(learning_rate, epochs, len(x_train), batch_size),
            loss=_hard_loss(),
            metrics=["accuracy"],
        )
        distilled_history = distiller.fit(
            cached_train.shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE),
            validation_data=cached_test.batch(1000),
            epochs=epochs,
            shuffle=False,
            verbose=verbose,
        ).history
        distilled_seconds = time.perf_counter() - start

        def summary(name, model, history, seconds, filename, size=None):
            accuracy, errors = evaluate_errors(model, x_test, y_test)
            path = out / filename
            size = _saved_size(model, path) if size is None else size
            return ModelSummary(
                name=name,
                params=int(model.count_params()),
                file_size=int(size),
                test_accuracy=float(accuracy),
                test_errors=int(errors),
                path=os.fspath(path) if scratch_dir is None else None,
                history={k: [float(v) for v in vs] for k, vs in history.items()},
                seconds=float(seconds),
            )

        return ScratchVsDistilledResult(
            teacher=summary(
                "teacher", teacher, teacher_history, teacher_seconds, "teacher.keras", teacher_size
            ),
            scratch=summary(
                "student (scratch)",
                scratch,
                scratch_history,
                scratch_seconds,
                "student_scratch.keras",
            ),
            distilled=summary(
                "student (distilled)",
                distilled,
                distilled_history,
                distilled_seconds,
                "student.keras",
            ),
            settings=settings,
            num_test_examples=len(x_test),
        )
    finally:
        if scratch_dir is not None:
            scratch_dir.cleanup()
