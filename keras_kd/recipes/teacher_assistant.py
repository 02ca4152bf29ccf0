"""Teacher-assistant chain (TAKD): teacher -> assistant_1 -> ... -> student, one Distiller each."""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras

from keras_kd.recipes import _steps
from keras_kd.recipes._steps import RecipeResult


def teacher_assistant_chain(
    teacher: keras.Model,
    assistants: Sequence[keras.Model],
    student: keras.Model,
    dataset,
    epochs: int | Sequence[int] = 1,
    distiller_kwargs: dict | Sequence[dict] | None = None,
    compile_kwargs: dict | Sequence[dict] | None = None,
    callbacks: Sequence[Sequence[keras.callbacks.Callback] | None] | None = None,
    work_dir: str | os.PathLike | None = None,
    **fit_kwargs,
) -> RecipeResult:
    """Distils `teacher` into `assistants[0]`, that into the next one, ..., the last into `student`.

    Step `k` is a normal `keras_kd.Distiller(teacher_k, student_k).fit(dataset, ...)` where
    `teacher_k` is the model trained at step `k - 1` (the object itself, frozen by the
    Distiller). The models given are trained in place; the returned models are those objects.
    With `work_dir`, each finished step saves its student to `work_dir/step_<k>.keras` and
    records its history in `work_dir/manifest.json`; calling again with the same `work_dir`
    (and freshly built models of the same architectures) loads the finished steps' weights and
    resumes with the first unfinished step.

    Args:
        teacher: the trained teacher (`keras.Model`, or a `keras_kd.teachers.Ensemble`).
        assistants: the intermediate models, largest first (may be empty).
        student: the final student.
        dataset: what `fit` trains each step on (`tf.data.Dataset` of `(x, y)`); used by every
            step, so it must not carry cached teacher outputs.
        epochs: epochs of every step, or a list with one value per step.
        distiller_kwargs: `Distiller` keyword arguments (`distillation_losses`,
            `student_loss_weight`, ...) for every step, or a list with one dict per step. Loss
            objects are copied for each step, so adapters never carry over.
        compile_kwargs: `Distiller.compile` arguments, one dict or one per step; default
            `optimizer="adam"`, `SparseCategoricalCrossentropy(from_logits=True)`, `["accuracy"]`.
            An optimizer instance is copied for each step.
        callbacks: `None` or a list with one list of callbacks per step.
        work_dir: directory for resuming (see above); `None` keeps nothing on disk.
        **fit_kwargs: passed to every `fit` (`validation_data`, `verbose`, ...).

    Returns:
        `RecipeResult`: `models` = `[*assistants, student]` trained, `histories` one dict per
        step, `resumed_steps` the number of steps loaded from `work_dir`.

    Raises:
        TypeError, ValueError: before anything trains, for a bad argument: a model that is not
            a `keras.Model` or is reused, per-step lists of the wrong length, an unknown key or
            a bad value in the per-step keyword arguments, an unwritable `work_dir` or one
            holding a different run.

    Example:
        >>> result = keras_kd.recipes.teacher_assistant_chain(
        ...     teacher, [assistant], student, train_ds, epochs=[5, 5],
        ...     distiller_kwargs={"student_loss_weight": 0.1}, work_dir="takd_run")
        >>> result.models[-1].evaluate(test_ds)

    Reference:
        Mirzadeh et al., "Improved Knowledge Distillation via Teacher Assistant", AAAI 2020.
        `teacher -> TA_1 -> ... -> TA_n -> student`, each arrow a distillation.
    """
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"teacher must be a keras.Model, got {type(teacher)!r}.")
    if not isinstance(assistants, (list, tuple)):
        raise TypeError(f"assistants must be a list of keras.Model, got {type(assistants)!r}.")
    students = [*assistants, student]
    for k, model in enumerate(students):
        if not isinstance(model, keras.Model):
            where = f"assistants[{k}]" if k < len(assistants) else "student"
            raise TypeError(f"{where} must be a keras.Model, got {type(model)!r}.")
    if len({id(m) for m in [teacher, *students]}) != len(students) + 1:
        raise ValueError("teacher, assistants and student must be distinct model objects.")
    if dataset is None:
        raise TypeError("dataset must be what fit trains on ((x, y) batches), got None.")
    n = len(students)
    epochs = _steps.per_step("epochs", epochs, n, _steps.is_epochs)
    distiller_kwargs = _steps.per_step("distiller_kwargs", distiller_kwargs, n, _steps.is_kwargs)
    compile_kwargs = _steps.per_step("compile_kwargs", compile_kwargs, n, _steps.is_kwargs)
    callbacks = _steps.per_step_callbacks(callbacks, n)
    _steps.check_step_arguments(distiller_kwargs, compile_kwargs, fit_kwargs)
    work = _steps.WorkDir(work_dir, "teacher_assistant_chain", n)

    histories = []
    current_teacher = teacher
    for k, model in enumerate(students):
        if k < work.finished:
            histories.append(work.restore(k, model))
        else:
            distiller = _steps.make_distiller(current_teacher, model, distiller_kwargs[k])
            history = _steps.run_step(
                distiller, dataset, epochs[k], compile_kwargs[k], callbacks[k], fit_kwargs
            )
            work.save(k, model, history)
            histories.append(history)
        current_teacher = model
    return RecipeResult(models=students, histories=histories, resumed_steps=work.finished_at_start)
