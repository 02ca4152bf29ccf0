"""Scratch vs. distilled: the same student trained alone and from a teacher, on one budget.

The controlled comparison behind every "distillation helps" claim: two copies of one student
architecture start from the **same initial weights**, see the **same examples in the same
order** for the **same number of steps** with the same optimizer; only the loss differs
(hard labels alone vs. `keras_kd.Distiller` with soft targets).

Seeded runs are reproducible bit for bit: every model is built right after
`keras.utils.set_random_seed(seed)` (pass the teacher as a factory so it is too), the batches
come in a seed-determined order, and TensorFlow's op determinism is switched on. Because the
same student can still differ by tens of test errors from one seed to the next, the student
duel can be repeated over `num_seeds` consecutive seeds and reported as mean and spread.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_kd import validation
from keras_kd.distiller import Distiller
from keras_kd.losses.soft_target import SoftTargetDistillation
from keras_kd.teachers.cached import cache_teacher_logits
from keras_kd.validation import writable_dir

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
        history: per-epoch Keras history (`accuracy`, `val_accuracy`, ...); `val_` values are
            measured on the test data. Empty for a teacher that was loaded rather than trained.
        seconds: wall time of its training (the teacher's logits for distillation are computed
            once beforehand and not counted, except with `student_augment`, where the teacher
            runs inside each distillation step).
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
class SeedRun:
    """One repetition of the student duel: both students trained with one seed.

    Attributes:
        seed: the seed of their initial weights and batch order.
        scratch, distilled: the two students' `ModelSummary`.
    """

    seed: int
    scratch: ModelSummary
    distilled: ModelSummary

    @property
    def error_reduction(self) -> int:
        """Test errors the distilled student avoids relative to the scratch one."""
        return self.scratch.test_errors - self.distilled.test_errors


@dataclasses.dataclass
class ScratchVsDistilledResult:
    """What `scratch_vs_distilled` returns.

    Attributes:
        teacher: the teacher's `ModelSummary`.
        scratch, distilled: the students of the first seed (the ones saved to `output_dir`).
        settings: the budget and distillation settings (epochs, batch size, temperature, ...).
        num_test_examples: size of the test set the errors are counted on.
        seed_runs: one `SeedRun` per seed, the first holding `scratch` and `distilled`
            (filled with that single run when not given).
    """

    teacher: ModelSummary
    scratch: ModelSummary
    distilled: ModelSummary
    settings: dict
    num_test_examples: int
    seed_runs: list[SeedRun] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if not self.seed_runs:
            self.seed_runs = [SeedRun(self.settings.get("seed", 0), self.scratch, self.distilled)]

    @property
    def summaries(self) -> tuple[ModelSummary, ModelSummary, ModelSummary]:
        return (self.teacher, self.scratch, self.distilled)

    @property
    def error_reduction(self) -> int:
        """Test errors the distilled student avoids relative to the scratch one (first seed)."""
        return self.scratch.test_errors - self.distilled.test_errors

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.seed_runs]

    @property
    def error_reductions(self) -> list[int]:
        """`error_reduction` of every seed, in seed order."""
        return [run.error_reduction for run in self.seed_runs]


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


def _ordered(data, batch_size: int, seed: int, augment=None) -> tf.data.Dataset:
    """Shuffled each epoch in a seed-determined order, identical across runs with one seed.

    `data` is `(x, y)` arrays or an unbatched dataset of as many elements (cached teacher
    logits); `augment` transforms the first component of each batch.
    """
    ds = data if isinstance(data, tf.data.Dataset) else tf.data.Dataset.from_tensor_slices(data)
    ds = ds.shuffle(int(ds.cardinality()), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda a, *rest: (augment(a), *rest), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def evaluate_errors(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 1000):
    """Returns `(accuracy, errors)` of `model`'s argmax predictions on `(x, y)`."""
    # Eager calls, not `predict`: one traced function per model would make TensorFlow warn
    # about retracing when several models are measured in a row.
    logits = [
        keras.ops.convert_to_numpy(model(x[i : i + batch_size], training=False))
        for i in range(0, len(x), batch_size)
    ]
    predictions = np.argmax(np.concatenate(logits), axis=-1)
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
    optimizer: keras.optimizers.Optimizer | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
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
        optimizer: a fresh optimizer instead of Adam(`learning_rate`) cosine-decayed to 0
            (`learning_rate` is then unused).
        callbacks: callbacks of the `fit` call.

    Returns:
        `history.history` of `model.fit`.
    """
    x, y = _check_arrays("train_data", train_data)
    model.compile(
        optimizer=(optimizer if optimizer is not None
                   else _adam(learning_rate, epochs, len(x), batch_size)),
        loss=_hard_loss(),
        metrics=["accuracy"],
    )
    history = model.fit(
        _ordered((x, y), batch_size, seed, augment),
        validation_data=(
            tf.data.Dataset.from_tensor_slices(_check_arrays("test_data", test_data)).batch(1000)
            if test_data is not None
            else None
        ),
        epochs=epochs,
        shuffle=False,  # the dataset is already shuffled in a seed-determined order
        verbose=verbose,
        callbacks=list(callbacks),
    )
    return history.history


def _check_teacher(teacher, teacher_epochs: int) -> None:
    expected = (
        "a keras.Model, a no-argument callable that builds one, or the path of a saved .keras "
        "file"
    )
    if isinstance(teacher, keras.Model):
        return
    if isinstance(teacher, (str, os.PathLike)):
        if not Path(teacher).is_file():
            raise ValueError(
                f"teacher must be {expected}, got {os.fspath(teacher)!r}, which is not a file."
            )
        return
    if callable(teacher):
        if teacher_epochs == 0:
            raise ValueError(
                "teacher_epochs must be a positive integer when teacher is a factory (a teacher "
                "built here must be trained here), got 0."
            )
        return
    raise TypeError(f"teacher must be {expected}, got {teacher!r}.")


def _new_students(student_factory: Callable[[], keras.Model], seed: int):
    """Two students built after seeding, the second with the first one's initial weights."""
    keras.utils.set_random_seed(seed)
    scratch = student_factory()
    distilled = student_factory()
    if (
        scratch is distilled
        or not isinstance(scratch, keras.Model)
        or not isinstance(distilled, keras.Model)
    ):
        raise ValueError("student_factory must return a new keras.Model on every call.")
    distilled.set_weights(scratch.get_weights())
    return scratch, distilled


class _Phases:
    """Prints a numbered heading per phase and a one-line outcome (only when `verbose`)."""

    def __init__(self, total: int, verbose, num_test_examples: int):
        self.total, self.done, self.verbose = total, 0, verbose
        self.num_test_examples = num_test_examples

    def start(self, text: str) -> None:
        self.done += 1
        if self.verbose:
            print(f"\n[{self.done}/{self.total}] {text}", flush=True)

    def outcome(self, summary: ModelSummary) -> None:
        if self.verbose:
            took = f" in {summary.seconds:.0f} s" if summary.seconds else ""
            print(
                f"    {summary.name}: {summary.test_errors} test errors of "
                f"{self.num_test_examples:,} (accuracy {summary.test_accuracy:.4f}){took}",
                flush=True,
            )


def scratch_vs_distilled(
    teacher: keras.Model | str | os.PathLike | Callable[[], keras.Model],
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
    student_augment: Callable[[tf.Tensor], tf.Tensor] | None = None,
    seed: int = 0,
    num_seeds: int = 1,
    deterministic: bool = True,
    output_dir: str | os.PathLike | None = None,
    verbose: int | str = 0,
    optimizer: Callable[[], keras.optimizers.Optimizer] | None = None,
    callbacks: Callable[[], Sequence[keras.callbacks.Callback]] | None = None,
) -> ScratchVsDistilledResult:
    """Trains one student from scratch and distils an identical copy from `teacher`.

    Both students are built by `student_factory` after `keras.utils.set_random_seed(seed)`,
    the second receives the first one's initial weights, and both are trained with Adam
    (`learning_rate`, cosine-decayed to 0 over the run; or each with a fresh `optimizer()`)
    for `epochs` on `train_data` shuffled in the same seed-determined order.
    The scratch student minimises cross-entropy on the labels; the distilled one
    `alpha * CE + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))` through
    `keras_kd.Distiller`, with the teacher's logits computed once up front
    (`keras_kd.cache_teacher_logits`; exact, as students see no augmentation). With
    `student_augment`, both students train on transformed batches instead, and the teacher runs
    live on the very batch the distilled student sees ("consistent teaching", Beyer et al.
    2022), where cached logits of the untransformed images would be wrong. Accuracies are
    measured on `test_data` after the last epoch; the per-epoch `val_accuracy` is measured on
    `test_data` too, for monitoring only (nothing is selected on it).

    With `num_seeds > 1` the duel is repeated with seeds `seed, seed + 1, ...` (new initial
    weights and batch order each time, the same teacher) so that the report can give the mean
    and spread of both students; only the first seed's students are saved.

    Every argument is checked before anything is built, trained or written.

    Args:
        teacher: a logits `keras.Model`, the path of a saved `.keras` teacher, or a no-argument
            callable that builds one (called after seeding, so its initial weights and dropout
            masks follow `seed`; needs `teacher_epochs > 0`).
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
            (e.g. jitter).
        student_augment: optional batch-wise input transform for both students' training
            batches (the same draws for both, as both runs are seeded alike). The teacher then
            computes its soft targets on each transformed batch, live, in inference mode.
        seed: seed of the teacher's and the first students' initialisation and batch order.
        num_seeds: how many seeds (`seed`, `seed + 1`, ...) the two students are trained with.
        deterministic: switch on `tf.config.experimental.enable_op_determinism()`, so a rerun
            with the same seed gives the same weights bit for bit. The switch is process-wide
            and stays on afterwards (TensorFlow offers no public way back).
        output_dir: where to save `teacher.keras`, `student_scratch.keras` and `student.keras`
            (the distilled student), created if needed. If `None` they are saved to a temporary
            directory only to measure their size.
        verbose: Keras verbosity of the `fit` calls; when non-zero, a numbered heading and a
            one-line outcome are also printed for each phase (teacher, then per seed the scratch
            and the distilled student).
        optimizer: a no-argument callable returning a fresh optimizer, called once for each
            student run (scratch and distilled alike), instead of Adam(`learning_rate`)
            cosine-decayed to 0. The teacher, if trained here, keeps the Adam default.
        callbacks: a no-argument callable returning fresh callbacks (e.g. a learning-rate or
            momentum schedule), called once for each student `fit`.

    Returns:
        A `ScratchVsDistilledResult`.

    Raises:
        TypeError, ValueError: for a bad argument (the message names it), before any training;
            `ValueError` also for a student factory that returns the same model twice.

    Example:
        >>> result = scratch_vs_distilled(
        ...     "teacher.keras", lambda: keras_kd.models.mlp((32,), name="student"),
        ...     keras_kd.datasets.load_arrays("mnist", "train"),
        ...     keras_kd.datasets.load_arrays("mnist", "test"), temperature=8.0, epochs=5,
        ...     num_seeds=3)
        >>> result.error_reductions      # one value per seed

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    # ---------------------------------------------------------------- arguments, all up front
    x_train, y_train = _check_arrays("train_data", train_data)
    x_test, y_test = _check_arrays("test_data", test_data)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"train_data and test_data must hold inputs of one shape, got {x_train.shape[1:]} "
            f"and {x_test.shape[1:]}."
        )
    temperature = validation.positive(
        "temperature", temperature, hint="It is the softening temperature T, e.g. 4.0."
    )
    student_loss_weight = validation.unit_interval(
        "student_loss_weight",
        student_loss_weight,
        hint="It is alpha, the weight of the label loss.",
    )
    epochs = validation.positive_int("epochs", epochs)
    batch_size = validation.positive_int("batch_size", batch_size)
    learning_rate = validation.positive("learning_rate", learning_rate)
    teacher_epochs = validation.non_negative_int(
        "teacher_epochs", teacher_epochs, hint="Use 0 for a teacher that is already trained."
    )
    seed = validation.non_negative_int("seed", seed)
    num_seeds = validation.positive_int("num_seeds", num_seeds)
    if seed + num_seeds > 2**32:
        raise ValueError(
            f"seed + num_seeds must be at most 2**32 (NumPy's seed range), got {seed} + "
            f"{num_seeds}."
        )
    if not callable(student_factory):
        raise TypeError(
            f"student_factory must be a no-argument callable returning a keras.Model, got "
            f"{student_factory!r}."
        )
    for name, value in (("optimizer", optimizer), ("callbacks", callbacks)):
        if value is not None and not callable(value):
            raise TypeError(
                f"{name} must be a no-argument callable that returns a fresh {name} for each "
                f"student run (or None for the default), got {value!r}."
            )
    for name, value in (("teacher_augment", teacher_augment),
                        ("student_augment", student_augment)):
        if value is not None and not callable(value):
            raise TypeError(
                f"{name} must be a batch-wise x -> x callable or None, got {value!r}."
            )
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be True or False, got {deterministic!r}.")
    verbose = validation.one_of("verbose", verbose, (0, 1, 2, "auto"))
    _check_teacher(teacher, teacher_epochs)
    if output_dir is not None:
        out = writable_dir("output_dir", output_dir)  # last: no folder is left for a bad argument

    def student_optimizer() -> keras.optimizers.Optimizer:
        """A fresh optimizer for one student run: `optimizer()` or the Adam default."""
        if optimizer is not None:
            return optimizer()
        return _adam(learning_rate, epochs, len(x_train), batch_size)

    def student_callbacks() -> list[keras.callbacks.Callback]:
        return list(callbacks()) if callbacks is not None else []

    # ---------------------------------------------------------------- runs
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    seeds = list(range(seed, seed + num_seeds))
    phases = _Phases(1 + 2 * num_seeds, verbose, len(x_test))
    scratch_dir = None
    if output_dir is None:
        scratch_dir = tempfile.TemporaryDirectory(prefix="keras_kd_scratch_vs_distilled_")
        out = Path(scratch_dir.name)
    settings = {
        "temperature": temperature,
        "student_loss_weight": student_loss_weight,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "student_optimizer": "Adam, cosine decay to 0" if optimizer is None else "optimizer=",
        "teacher_epochs": teacher_epochs,
        "student_augment": None if student_augment is None else getattr(
            student_augment, "__name__", repr(student_augment)),
        "seed": seed,
        "num_seeds": num_seeds,
        "deterministic ops": deterministic,
        "train_examples": len(x_train),
    }

    def summary(name, model, history, seconds, filename=None, size=None):
        accuracy, errors = evaluate_errors(model, x_test, y_test)
        path = None if filename is None else out / filename
        if size is None:
            size = _saved_size(model, path)
        return ModelSummary(
            name=name,
            params=int(model.count_params()),
            file_size=int(size),
            test_accuracy=float(accuracy),
            test_errors=int(errors),
            path=os.fspath(path) if path is not None and scratch_dir is None else None,
            history={k: [float(v) for v in vs] for k, vs in history.items()},
            seconds=float(seconds),
        )

    try:
        # ------------------------------------------------------------ teacher
        keras.utils.set_random_seed(seed)
        if isinstance(teacher, (str, os.PathLike)):
            settings["teacher_path"] = os.fspath(teacher)
            teacher = keras.models.load_model(teacher)
            if not isinstance(teacher, keras.Model):
                raise TypeError(f"teacher must be a saved keras.Model, got {type(teacher)!r}.")
        elif not isinstance(teacher, keras.Model):
            teacher = teacher()
            if not isinstance(teacher, keras.Model):
                raise TypeError(f"teacher() must return a keras.Model, got {type(teacher)!r}.")
        first_students = _new_students(student_factory, seeds[0])  # checks the factory early

        teacher_history, start = {}, time.perf_counter()
        if teacher_epochs:
            phases.start(
                f"Teacher '{teacher.name}': {teacher.count_params():,} parameters, "
                f"{teacher_epochs} epoch(s) on {len(x_train):,} examples"
            )
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
        else:
            phases.start(
                f"Teacher '{teacher.name}': {teacher.count_params():,} parameters, already "
                "trained (not trained here)"
            )
        seconds = time.perf_counter() - start if teacher_epochs else 0.0
        teacher_summary = summary("teacher", teacher, teacher_history, seconds, "teacher.keras")
        phases.outcome(teacher_summary)
        cached_train = (cache_teacher_logits(teacher, x_train, y_train)
                        if student_augment is None else None)
        cached_test = cache_teacher_logits(teacher, x_test, y_test).batch(1000)

        # ------------------------------------------------------------ students, per seed
        runs = []
        for k, run_seed in enumerate(seeds):
            scratch, distilled = first_students if k == 0 else _new_students(
                student_factory, run_seed
            )
            of_seed = f"seed {run_seed}" + (f" ({k + 1} of {num_seeds})" if num_seeds > 1 else "")
            phases.start(
                f"Student from scratch, {of_seed}: {scratch.count_params():,} parameters, "
                f"{epochs} epoch(s), labels only"
            )
            keras.utils.set_random_seed(run_seed)
            start = time.perf_counter()
            scratch_history = train_classifier(
                scratch,
                (x_train, y_train),
                (x_test, y_test),
                epochs,
                batch_size,
                learning_rate,
                run_seed,
                student_augment,
                verbose,
                student_optimizer(),
                student_callbacks(),
            )
            scratch_summary = summary(
                "student (scratch)",
                scratch,
                scratch_history,
                time.perf_counter() - start,
                "student_scratch.keras" if k == 0 else None,
                None if k == 0 else runs[0].scratch.file_size,
            )
            phases.outcome(scratch_summary)

            phases.start(
                f"Distilled student, {of_seed}: same initial weights and batches, T = "
                f"{temperature:g}, alpha = {student_loss_weight:g}, {epochs} epoch(s)"
            )
            keras.utils.set_random_seed(run_seed)
            start = time.perf_counter()
            distiller = Distiller(
                teacher,
                distilled,
                distillation_losses=SoftTargetDistillation(temperature),
                student_loss_weight=student_loss_weight,
            )
            distiller.compile(
                optimizer=student_optimizer(),
                loss=_hard_loss(),
                metrics=["accuracy"],
            )
            # with student_augment the teacher runs live on each transformed batch
            distilled_train = _ordered(
                (x_train, y_train) if cached_train is None else cached_train,
                batch_size, run_seed, student_augment,
            )
            distilled_history = distiller.fit(
                distilled_train,
                validation_data=cached_test,
                epochs=epochs,
                shuffle=False,
                verbose=verbose,
                callbacks=student_callbacks(),
            ).history
            distilled_summary = summary(
                "student (distilled)",
                distilled,
                distilled_history,
                time.perf_counter() - start,
                "student.keras" if k == 0 else None,
                None if k == 0 else runs[0].distilled.file_size,
            )
            phases.outcome(distilled_summary)
            runs.append(SeedRun(run_seed, scratch_summary, distilled_summary))

        return ScratchVsDistilledResult(
            teacher=teacher_summary,
            scratch=runs[0].scratch,
            distilled=runs[0].distilled,
            settings=settings,
            num_test_examples=len(x_test),
            seed_runs=runs,
        )
    finally:
        if scratch_dir is not None:
            scratch_dir.cleanup()
