"""Schedule the softening temperature of distillation losses between epochs."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import keras

from keras_kd import validation

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def schedule_label(fn: Callable) -> str:
    """How error messages name a schedule: its qualified name, else its repr."""
    return getattr(fn, "__qualname__", None) or repr(fn)


def requires_current(fn: Callable) -> bool:
    """Whether `fn` must be called `fn(epoch, current)`: its 2nd positional parameter is required.

    Decided once from the signature, never by catching errors. `lambda epoch, base=8.0: ...`
    is called `fn(epoch)` (its default is its own), `lambda epoch, current: ...` gets the current
    value, and a callable without an introspectable signature is called `fn(epoch)`.

    Raises:
        TypeError: when `fn` can be called neither as `fn(epoch)` nor as `fn(epoch, current)`.
    """
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no introspectable signature (some builtins)
        return False
    positional = [p for p in parameters if p.kind in _POSITIONAL]
    required = [p for p in positional if p.default is p.empty]
    keyword_only = [
        p.name for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty
    ]
    takes_epoch = bool(positional) or any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters
    )
    if len(required) > 2 or keyword_only or not takes_epoch:
        raise TypeError(
            f"schedule must be callable as schedule(epoch) or schedule(epoch, current), got "
            f"{schedule_label(fn)}{inspect.signature(fn)}. Give every other parameter a default."
        )
    return len(required) == 2


class TemperatureScheduler(keras.callbacks.Callback):
    """Sets the temperature of every loss that declares one, at the start of each epoch.

    Args:
        schedule: `schedule(epoch) -> temperature` (epoch is 0-based), or
            `schedule(epoch, current_temperature) -> temperature`. The current temperature is
            passed only when the second positional parameter has no default
            (`lambda epoch, base=8.0: ...` is called with the epoch alone).
        verbose: print the value when it changes.

    Raises:
        TypeError: at construction, when `schedule` is not callable with one of those forms.
        ValueError: at an epoch start, before any temperature is assigned, when the schedule
            returns a value that is not a finite real number > 0 (the message names the
            schedule and the epoch).

    Example:
        >>> cb = keras_kd.callbacks.TemperatureScheduler(lambda e: max(1.0, 8.0 - e))
        >>> distiller.fit(ds, epochs=8, callbacks=[cb])

    The temperature is logged as `temperature` in the epoch logs.
    """

    def __init__(self, schedule: Callable, verbose: int = 0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be callable, got {schedule!r}.")
        self.schedule = schedule
        self.verbose = verbose
        self._takes_current = requires_current(schedule)

    def _variables(self):
        variables = [
            loss.temperature_variable()
            for loss in self.model.distillation_losses
            if loss.temperature_variable() is not None
        ]
        if not variables:
            raise ValueError(
                "TemperatureScheduler: none of the Distiller's distillation_losses has a "
                "temperature."
            )
        return variables

    def on_epoch_begin(self, epoch, logs=None):
        variables = self._variables()
        current = float(keras.ops.convert_to_numpy(variables[0]))
        if self._takes_current:
            value, call = self.schedule(epoch, current), f"({epoch}, {current})"
        else:
            value, call = self.schedule(epoch), f"({epoch})"
        value = validation.positive(
            f"TemperatureScheduler: schedule {schedule_label(self.schedule)}{call}",
            value,
            hint="Make the schedule return a finite temperature > 0 for every epoch.",
        )
        for variable in variables:
            variable.assign(value)
        if self.verbose and value != current:
            print(f"\nEpoch {epoch + 1}: TemperatureScheduler sets temperature to {value}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["temperature"] = float(keras.ops.convert_to_numpy(self._variables()[0]))
