"""Schedule the softening temperature of distillation losses between epochs."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import keras


def _accepts_two_arguments(fn: Callable) -> bool:
    """Whether `fn(epoch, current)` is a valid call (decided once, not by catching errors)."""
    try:
        inspect.signature(fn).bind(0, 1.0)
    except TypeError:
        return False
    except ValueError:  # no introspectable signature (some builtins): assume fn(epoch)
        return False
    return True


class TemperatureScheduler(keras.callbacks.Callback):
    """Sets the temperature of every loss that declares one, at the start of each epoch.

    Args:
        schedule: `schedule(epoch) -> temperature` (epoch is 0-based), or
            `schedule(epoch, current_temperature) -> temperature`.
        verbose: print the value when it changes.

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
        self._takes_current = _accepts_two_arguments(schedule)

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
            value = self.schedule(epoch, current)
        else:
            value = self.schedule(epoch)
        value = float(value)
        if not value > 0:
            raise ValueError(f"TemperatureScheduler: schedule({epoch}) gave {value}; need > 0.")
        for variable in variables:
            variable.assign(value)
        if self.verbose and value != current:
            print(f"\nEpoch {epoch + 1}: TemperatureScheduler sets temperature to {value}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["temperature"] = float(keras.ops.convert_to_numpy(self._variables()[0]))
