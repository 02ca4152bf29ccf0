"""Born-again networks: generation k+1 (same architecture) learns from generation k."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import keras

from keras_kd import validation
from keras_kd.recipes import _steps
from keras_kd.recipes._steps import RecipeResult
from keras_kd.teachers.ensemble import Ensemble


def _temperature_variable(losses) -> keras.Variable | None:
    for loss in losses:
        variable = loss.temperature_variable()
        if variable is not None:
            return variable
    return None


def born_again(
    make_student: Callable[[], keras.Model],
    teacher: keras.Model,
    generations: int,
    dataset,
    epochs: int | Sequence[int] = 1,
    ensemble_previous: bool = False,
    distiller_kwargs: dict | Sequence[dict] | None = None,
    compile_kwargs: dict | Sequence[dict] | None = None,
    callbacks: Sequence[Sequence[keras.callbacks.Callback] | None] | None = None,
    work_dir: str | os.PathLike | None = None,
    **fit_kwargs,
) -> RecipeResult:
    """Trains `generations` new networks, each distilled from the previous generation(s).

    `teacher` is generation 0 (usually a model of the same architecture trained on the labels).
    Generation `k + 1 = make_student()` is trained by a normal `Distiller.fit` from generation `k`,
    or, with `ensemble_previous=True`, from `Ensemble([gen_0, ..., gen_k])` averaging their
    softened distributions at the temperature of the step's distillation loss (the ensemble
    shares that loss's temperature variable, so a `TemperatureScheduler` moves both).
    `work_dir` makes an interrupted run resumable exactly as in `teacher_assistant_chain`.

    Args:
        make_student: builds a fresh, untrained model of the generation architecture.
        teacher: generation 0, trained.
        generations: number of generations to train (>= 1).
        dataset: what `fit` trains each generation on (`(x, y)` batches).
        epochs: epochs per generation, or one value per generation.
        ensemble_previous: teach generation `k + 1` with the ensemble of generations `0..k`.
        distiller_kwargs: `Distiller` keyword arguments, one dict or one per generation.
        compile_kwargs: `Distiller.compile` arguments, one dict or one per generation (default
            adam, `SparseCategoricalCrossentropy(from_logits=True)`, accuracy).
        callbacks: `None` or a list with one list of callbacks per generation.
        work_dir: directory for resuming; `None` keeps nothing on disk.
        **fit_kwargs: passed to every `fit` (`validation_data`, `verbose`, ...).

    Returns:
        `RecipeResult` whose `models` are all generations `[teacher, gen_1, ..., gen_n]` (so
        `models[k]` is generation `k`) and `histories` one dict per trained generation.

    Raises:
        TypeError, ValueError: before anything trains, for a bad argument: `generations < 1`,
            per-step lists of the wrong length, an unknown key or a bad value in the per-step
            keyword arguments, an unwritable or mismatched `work_dir`. `ValueError` also for a
            `make_student` that returns the same object twice.

    Example:
        >>> result = keras_kd.recipes.born_again(make_cnn, gen0, generations=2,
        ...                                      dataset=train_ds, epochs=5)
        >>> gen2 = result.models[2]

    Reference:
        Furlanello et al., "Born-Again Neural Networks", ICML 2018.
        `gen_{k+1} = argmin CE(y, s) + KD(gen_k or mean_{j<=k} gen_j, s)`.
    """
    if not callable(make_student):
        raise TypeError(
            f"make_student must be a callable returning a keras.Model, got {make_student!r}."
        )
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"teacher must be a keras.Model, got {type(teacher)!r}.")
    n = validation.positive_int("generations", generations)
    if not isinstance(ensemble_previous, bool):
        raise TypeError(f"ensemble_previous must be True or False, got {ensemble_previous!r}.")
    if dataset is None:
        raise TypeError("dataset must be what fit trains on ((x, y) batches), got None.")
    epochs = _steps.per_step("epochs", epochs, n, _steps.is_epochs)
    distiller_kwargs = _steps.per_step("distiller_kwargs", distiller_kwargs, n, _steps.is_kwargs)
    compile_kwargs = _steps.per_step("compile_kwargs", compile_kwargs, n, _steps.is_kwargs)
    callbacks = _steps.per_step_callbacks(callbacks, n)
    _steps.check_step_arguments(distiller_kwargs, compile_kwargs, fit_kwargs)
    work = _steps.WorkDir(work_dir, "born_again", n)

    models = [teacher]
    histories = []
    for k in range(n):
        student = make_student()
        if not isinstance(student, keras.Model):
            raise TypeError(f"make_student() must return a keras.Model, got {type(student)!r}.")
        if any(student is m for m in models):
            raise ValueError("make_student() must build a new model on every call.")
        if k < work.finished:
            histories.append(work.restore(k, student))
        else:
            losses = _steps.fresh_distillation_losses(distiller_kwargs[k])
            if ensemble_previous and len(models) > 1:
                temperature = _temperature_variable(losses)
                step_teacher = Ensemble(
                    list(models),
                    combine="probabilities",
                    temperature=1.0 if temperature is None else temperature,
                    name=f"generations_0_to_{k}",
                )
            else:
                step_teacher = models[-1]
            distiller = _steps.make_distiller(step_teacher, student, distiller_kwargs[k], losses)
            history = _steps.run_step(
                distiller, dataset, epochs[k], compile_kwargs[k], callbacks[k], fit_kwargs
            )
            work.save(k, student, history)
            histories.append(history)
        models.append(student)
    return RecipeResult(models=models, histories=histories, resumed_steps=work.finished_at_start)
