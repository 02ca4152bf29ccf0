"""Shared machinery of the sequential recipes: per-step settings, one Distiller step, resuming.

A recipe is a list of steps, each a normal `Distiller.fit` of one (teacher, student) pair. Every
finished step saves the trained student to `work_dir/step_<k>.keras` and appends its history to
`work_dir/manifest.json`; a rerun with the same `work_dir` loads those weights into the given
models and continues with the first unfinished step.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Callable, Sequence

import keras

from keras_kd import losses as kd_losses
from keras_kd import validation
from keras_kd.distiller import Distiller
from keras_kd.validation import writable_dir  # noqa: F401 - used below and re-exported

MANIFEST = "manifest.json"


def default_compile() -> dict:
    """Adam, cross-entropy on integer labels and logits, accuracy."""
    return {
        "optimizer": "adam",
        "loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "metrics": ["accuracy"],
    }


@dataclasses.dataclass
class RecipeResult:
    """What a sequential recipe returns.

    Attributes:
        models: the trained models, in step order (the last one is the final student).
        histories: one `History.history` dict per step (`{"loss": [...], ...}`).
        resumed_steps: how many leading steps were restored from `work_dir` instead of trained.
    """

    models: list[keras.Model]
    histories: list[dict]
    resumed_steps: int = 0


def per_step(name: str, value, num_steps: int, is_single: Callable[[object], bool]) -> list:
    """Broadcasts one setting to every step, or checks a list that has one entry per step."""
    if is_single(value):
        return [value] * num_steps
    if isinstance(value, (list, tuple)) and len(value) == num_steps:
        for k, item in enumerate(value):
            if not is_single(item):
                raise TypeError(f"{name}[{k}] has an invalid type {type(item)!r}.")
        return list(value)
    raise ValueError(
        f"{name} must be one value for every step or a list of {num_steps} values "
        f"(one per step), got {value!r}."
    )


def is_epochs(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def is_kwargs(value) -> bool:
    return value is None or isinstance(value, dict)


def per_step_callbacks(callbacks, num_steps: int) -> list[list]:
    """`None`, or a list of `num_steps` callback lists (or `None`s), one per step."""
    if callbacks is None:
        return [[] for _ in range(num_steps)]
    if isinstance(callbacks, (list, tuple)) and len(callbacks) == num_steps:
        if all(c is None or isinstance(c, (list, tuple)) for c in callbacks):
            return [list(c or []) for c in callbacks]
    raise ValueError(
        f"callbacks must be None or a list of {num_steps} lists of keras callbacks, one per "
        f"step (use [] for a step without callbacks), got {callbacks!r}."
    )


def _parameter_names(function, exclude: Sequence[str]) -> list[str]:
    return [
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in ("self", *exclude)
    ]


def _check_keys(name: str, given: dict, allowed: list[str], supplied: dict[str, str]) -> None:
    for key in given:
        if key in supplied:
            raise ValueError(f"{name} must not contain {key!r}: {supplied[key]}.")
        if key not in allowed:
            raise ValueError(
                f"{name} has an unknown key {key!r}; the accepted keys are {', '.join(allowed)}."
            )


def check_step_arguments(
    distiller_kwargs: Sequence[dict | None],
    compile_kwargs: Sequence[dict | None],
    fit_kwargs: dict,
) -> None:
    """Checks every step's keyword arguments before the first step trains.

    Unknown keys, keys the recipe sets itself, loss names, `student_loss_weight` and a list of
    `distillation_loss_weights` are checked here, so a typo in the last step's settings fails
    at once rather than after the earlier steps have trained.

    Raises:
        TypeError, ValueError: naming the step and the key.
    """
    distiller_keys = _parameter_names(Distiller, ("teacher", "student"))
    recipe_sets = {
        "teacher": "each step's teacher is set by the recipe",
        "student": "each step's student is set by the recipe",
    }
    for k, kwargs in enumerate(distiller_kwargs):
        name = f"distiller_kwargs[{k}]" if len(distiller_kwargs) > 1 else "distiller_kwargs"
        kwargs = kwargs or {}
        _check_keys(name, kwargs, distiller_keys, recipe_sets)
        if "student_loss_weight" in kwargs:
            validation.unit_interval(
                f"{name}['student_loss_weight']",
                kwargs["student_loss_weight"],
                hint="It is alpha, the weight of the label loss.",
            )
        losses = fresh_distillation_losses(kwargs)  # unknown loss names raise here
        weights = kwargs.get("distillation_loss_weights")
        if weights is not None and not isinstance(weights, keras.layers.Layer):
            validation.weights(f"{name}['distillation_loss_weights']", weights, len(losses))
    # A Distiller override may take **kwargs on to keras.Model: accept the names of both.
    compile_keys = _parameter_names(Distiller.compile, ())
    compile_keys += [k for k in _parameter_names(keras.Model.compile, ()) if k not in compile_keys]
    for k, kwargs in enumerate(compile_kwargs):
        name = f"compile_kwargs[{k}]" if len(compile_kwargs) > 1 else "compile_kwargs"
        _check_keys(name, kwargs or {}, compile_keys, {})
    fit_keys = _parameter_names(Distiller.fit, ())
    fit_keys += [k for k in _parameter_names(keras.Model.fit, ()) if k not in fit_keys]
    _check_keys(
        "fit_kwargs",
        fit_kwargs,
        fit_keys,
        {
            "x": "pass the data as dataset",
            "epochs": "pass the recipe's epochs argument",
            "callbacks": "pass the recipe's callbacks argument (one list per step)",
        },
    )


def _copy(obj):
    """A fresh, unbuilt copy of a Keras object, so no state leaks from one step to the next."""
    return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))


def fresh_distillation_losses(distiller_kwargs: dict | None) -> list:
    """The step's distillation loss objects (fresh copies; the Distiller default otherwise)."""
    losses = (distiller_kwargs or {}).get("distillation_losses")
    if losses is None:
        return [kd_losses.SoftTargetDistillation(temperature=4.0)]
    losses = losses if isinstance(losses, (list, tuple)) else [losses]
    return [
        _copy(loss) if isinstance(loss, keras.layers.Layer) else kd_losses.get(loss)
        for loss in losses
    ]


def make_distiller(teacher, student, distiller_kwargs: dict | None, losses=None) -> Distiller:
    kwargs = dict(distiller_kwargs or {})
    kwargs["distillation_losses"] = losses or fresh_distillation_losses(kwargs)
    weights = kwargs.get("distillation_loss_weights")
    if isinstance(weights, keras.layers.Layer):
        kwargs["distillation_loss_weights"] = _copy(weights)
    return Distiller(teacher, student, **kwargs)


def compile_distiller(distiller: Distiller, compile_kwargs: dict | None) -> None:
    kwargs = default_compile()
    kwargs.update(compile_kwargs or {})
    if isinstance(kwargs.get("optimizer"), keras.optimizers.Optimizer):
        kwargs["optimizer"] = _copy(kwargs["optimizer"])  # one optimizer per student
    distiller.compile(**kwargs)


def _plain(history: dict) -> dict:
    return {key: [float(v) for v in values] for key, values in history.items()}


class WorkDir:
    """`work_dir` bookkeeping: saved steps and a json manifest (no-op when `path` is None)."""

    def __init__(self, path: str | os.PathLike | None, recipe: str, num_steps: int):
        self.path = None if path is None else os.fspath(path)
        self.recipe = recipe
        self.num_steps = num_steps
        self.steps: list[dict] = []
        self.finished_at_start = 0
        if self.path is None:
            return
        writable_dir("work_dir", self.path)
        manifest = os.path.join(self.path, MANIFEST)
        if os.path.exists(manifest):
            with open(manifest) as f:
                data = json.load(f)
            if data.get("recipe") != recipe or data.get("num_steps") != num_steps:
                raise ValueError(
                    f"work_dir {self.path!r} holds a '{data.get('recipe')}' run of "
                    f"{data.get('num_steps')} steps, not a '{recipe}' run of {num_steps} steps; "
                    "use a new work_dir."
                )
            self.steps = list(data["steps"])
        self.finished_at_start = len(self.steps)

    @property
    def finished(self) -> int:
        return len(self.steps)

    def restore(self, k: int, model: keras.Model) -> dict:
        """Loads finished step `k`'s weights into `model` and returns its history."""
        model.load_weights(os.path.join(self.path, self.steps[k]["model"]))
        return self.steps[k]["history"]

    def save(self, k: int, model: keras.Model, history: dict) -> None:
        if self.path is None:
            self.steps.append({"step": k, "history": history})
            return
        filename = f"step_{k}.keras"
        model.save(os.path.join(self.path, filename))
        self.steps.append({"step": k, "model": filename, "history": history})
        tmp = os.path.join(self.path, MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(
                {"recipe": self.recipe, "num_steps": self.num_steps, "steps": self.steps},
                f,
                indent=1,
            )
        os.replace(tmp, os.path.join(self.path, MANIFEST))


def run_step(
    distiller: Distiller,
    dataset,
    epochs: int,
    compile_kwargs: dict | None,
    callbacks: Sequence,
    fit_kwargs: dict,
) -> dict:
    """Compiles and fits one step; returns its history as plain floats."""
    compile_distiller(distiller, compile_kwargs)
    history = distiller.fit(dataset, epochs=epochs, callbacks=list(callbacks), **fit_kwargs)
    return _plain(history.history)
