"""The ramp-up of a consistency weight between epochs (ONE, mean teacher)."""

from __future__ import annotations

import math

import keras

from keras_kd import validation

# The ONE authors' code ramps the weight up over 80 of its 300 epochs.
PAPER_RAMPUP_FRACTION = 80.0 / 300.0


def sigmoid_rampup(epoch: float, rampup_epochs: float) -> float:
    """`exp(-5 (1 - t)^2)` with `t = clip(epoch / rampup_epochs, 0, 1)`; 1 when the length is 0.

    Args:
        epoch: the 0-based epoch (the weight of epoch 0 is `exp(-5) = 0.0067`).
        rampup_epochs: epochs until the weight reaches 1.

    Returns:
        The weight in `(0, 1]`.

    Example:
        >>> sigmoid_rampup(0, 80), sigmoid_rampup(40, 80), sigmoid_rampup(80, 80)
        (0.006737946999085467, 0.2865047968601901, 1.0)

    Reference:
        Laine & Aila, "Temporal Ensembling for Semi-Supervised Learning", ICLR 2017; used per
        epoch by Lan, Zhu & Gong's ONE code (`ramps.sigmoid_rampup(epoch, 80)`).
    """
    if rampup_epochs == 0:
        return 1.0
    t = min(max(float(epoch), 0.0), float(rampup_epochs)) / float(rampup_epochs)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def rampup_length(rampup_epochs: int | None, epochs: int | None) -> int:
    """`rampup_epochs`, or the paper's share (80/300) of `fit`'s `epochs` when it is None."""
    if rampup_epochs is not None:
        return rampup_epochs
    if epochs is None:
        raise ValueError("RampUp(rampup_epochs=None) takes the paper's share of fit(epochs=...), "
                         "but fit did not say how many epochs it runs. Pass rampup_epochs=N.")
    return max(1, round(PAPER_RAMPUP_FRACTION * epochs))


class RampUp(keras.callbacks.Callback):
    """Sets the model's `rampup_weight` to `sigmoid_rampup(epoch, R)` at each epoch start.

    `keras_kd.online.NativeEnsemble.fit` adds one (with the model's `rampup_epochs`) unless
    the callbacks already hold a `RampUp`. The weight is a function of the epoch index alone,
    so a run resumed by `keras.callbacks.BackupAndRestore` (or `fit(initial_epoch=...)`)
    continues with the right value. The value is logged as `rampup_weight`.

    Args:
        rampup_epochs: `R`, the epochs until the weight reaches 1 (0: always 1). `None`: the
            paper's share, `round(80 / 300 * epochs)` of `fit(epochs=...)` (at least 1).
        verbose: print the value at each epoch start.

    Raises:
        TypeError, ValueError: a negative or non-integer `rampup_epochs`; at the first epoch,
            a model without a `rampup_weight` variable.

    Example:
        >>> one.fit(train_ds, epochs=30, callbacks=[keras_kd.online.RampUp(rampup_epochs=5)])

    Reference:
        Lan, Zhu & Gong, "Knowledge Distillation by On-the-Fly Native Ensemble", NeurIPS
        2018 (official code: `consistency_weight = sigmoid_rampup(epoch, 80)`).
    """

    def __init__(self, rampup_epochs: int | None = None, verbose: int = 0):
        super().__init__()
        if rampup_epochs is not None:
            rampup_epochs = validation.non_negative_int(
                "rampup_epochs", rampup_epochs,
                hint="It is the number of epochs until the KL weight reaches 1 (0: no ramp).")
        self.rampup_epochs = rampup_epochs
        self.verbose = verbose

    def _variable(self):
        variable = getattr(self.model, "rampup_weight", None)
        if not isinstance(variable, keras.Variable):
            raise ValueError(
                f"RampUp sets a model's `rampup_weight` variable, but '{self.model.name}' "
                f"({type(self.model).__name__}) has none. Use it with "
                "keras_kd.online.NativeEnsemble."
            )
        return variable

    def value(self, epoch: int) -> float:
        """The weight of the 0-based `epoch` in the current `fit`."""
        length = rampup_length(self.rampup_epochs, (self.params or {}).get("epochs"))
        return sigmoid_rampup(epoch, length)

    def on_epoch_begin(self, epoch, logs=None):
        value = self.value(epoch)
        self._variable().assign(value)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: RampUp sets rampup_weight to {value:.4f}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["rampup_weight"] = float(keras.ops.convert_to_numpy(self._variable()))
