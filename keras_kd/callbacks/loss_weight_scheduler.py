"""Schedule the hard/soft balance and the per-path weights of a Distiller between epochs."""

from __future__ import annotations

from collections.abc import Callable

import keras

from keras_kd import validation
from keras_kd.callbacks.temperature_scheduler import schedule_label
from keras_kd.weighting import FixedWeighting


class LossWeightScheduler(keras.callbacks.Callback):
    """Assigns `student_loss_weight` and/or `distillation_loss_weights` at each epoch start.

    Args:
        student_loss_weight: `f(epoch) -> alpha in [0, 1]`, or `None` to leave it alone.
        distillation_loss_weights: `f(epoch) -> list of weights` (one per loss, >= 0), or
            `None`. Only for fixed weights (not learned weightings).
        verbose: print the values each epoch.

    Raises:
        ValueError: at an epoch start, before anything is assigned, when a schedule returns an
            invalid value (the message names the schedule and the epoch): `alpha` outside
            `[0, 1]`, `nan` or `inf`, or not one non-negative finite weight per loss.

    Example:
        >>> # Anneal from mostly-teacher to mostly-labels.
        >>> cb = keras_kd.callbacks.LossWeightScheduler(
        ...     student_loss_weight=lambda e: min(0.9, 0.1 + 0.1 * e))

    The current values are logged as `student_loss_weight` (and `distillation_loss_weight_i`).
    """

    def __init__(
        self,
        student_loss_weight: Callable | None = None,
        distillation_loss_weights: Callable | None = None,
        verbose: int = 0,
    ):
        super().__init__()
        if student_loss_weight is None and distillation_loss_weights is None:
            raise ValueError("LossWeightScheduler needs at least one schedule.")
        for name, fn in (("student_loss_weight", student_loss_weight),
                         ("distillation_loss_weights", distillation_loss_weights)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {fn!r}.")
        self.student_schedule = student_loss_weight
        self.path_schedule = distillation_loss_weights
        self.verbose = verbose

    def on_epoch_begin(self, epoch, logs=None):
        model = self.model
        # Every value is computed and checked before any variable is assigned.
        alpha = weights = None
        if self.student_schedule is not None:
            alpha = validation.unit_interval(
                "LossWeightScheduler: student_loss_weight schedule "
                f"{schedule_label(self.student_schedule)}({epoch})",
                self.student_schedule(epoch),
                hint="Make the schedule return the hard-label weight alpha in [0, 1].",
            )
        if self.path_schedule is not None:
            weighting = model.path_weighting
            if not isinstance(weighting, FixedWeighting):
                raise ValueError(
                    "LossWeightScheduler: distillation_loss_weights can only be scheduled for "
                    f"fixed weights, but the Distiller uses {type(weighting).__name__}."
                )
            weights = validation.weights(
                "LossWeightScheduler: distillation_loss_weights schedule "
                f"{schedule_label(self.path_schedule)}({epoch})",
                self.path_schedule(epoch),
                weighting.num_paths,
                hint="Make the schedule return one weight per distillation loss.",
            )
        if alpha is not None:
            model.student_loss_weight.assign(alpha)
        if weights is not None:
            weighting.weights_variable.assign(weights)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: student_loss_weight="
                  f"{float(keras.ops.convert_to_numpy(model.student_loss_weight))}")

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        model = self.model
        logs["student_loss_weight"] = float(keras.ops.convert_to_numpy(model.student_loss_weight))
        if isinstance(model.path_weighting, FixedWeighting):
            values = keras.ops.convert_to_numpy(model.path_weighting.weights_variable)
            for i, w in enumerate(values):
                logs[f"distillation_loss_weight_{i}"] = float(w)
