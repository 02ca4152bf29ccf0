"""Linear warm-up of the decoupled-KD loss over the first epochs (Zhao et al. 2022)."""

from __future__ import annotations

import keras

from keras_kd import validation
from keras_kd.losses.decoupled_kd import DecoupledKD


class DKDWarmup(keras.callbacks.Callback):
    """Assigns `min((epoch + 1) / epochs, 1)` to a `DecoupledKD`'s `warmup_factor` each epoch.

    Keras counts epochs from 0, the official trainer from 1 (`min(epoch / warmup, 1.0)` with
    `epoch = 1, 2, ...`): the first epoch gets `1 / epochs`, epoch `epochs` and later get 1.

    Args:
        loss: the `keras_kd.losses.DecoupledKD` instance given to the `Distiller`.
        epochs: warm-up length in epochs (20 in the paper), a positive integer.
        verbose: print the factor when it changes.

    Raises:
        TypeError: when `loss` is not a `DecoupledKD` or `epochs` is not an integer.
        ValueError: when `epochs < 1`.

    Example:
        >>> dkd = keras_kd.losses.DecoupledKD()
        >>> distiller = keras_kd.Distiller(teacher, student, distillation_losses=dkd)
        >>> distiller.fit(ds, epochs=240, callbacks=[keras_kd.callbacks.DKDWarmup(dkd)])

    The factor is logged as `dkd_warmup` in the epoch logs.

    Reference:
        Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022 (mdistiller
        distillers/DKD.py: `min(kwargs["epoch"] / self.warmup, 1.0) * dkd_loss(...)`).
    """

    def __init__(self, loss: DecoupledKD, epochs: int = 20, verbose: int = 0):
        super().__init__()
        if not isinstance(loss, DecoupledKD):
            raise TypeError(
                f"DKDWarmup needs a keras_kd.losses.DecoupledKD, got {type(loss).__name__}."
            )
        self.loss = loss
        self.epochs = validation.positive_int("epochs", epochs, hint="The paper uses 20.")
        self.verbose = verbose

    def factor(self, epoch: int) -> float:
        """The warm-up factor of the 0-based Keras `epoch`."""
        return min((epoch + 1) / self.epochs, 1.0)

    def on_epoch_begin(self, epoch, logs=None):
        value = self.factor(epoch)
        current = float(keras.ops.convert_to_numpy(self.loss.warmup_factor))
        self.loss.warmup_factor.assign(value)
        if self.verbose and value != current:
            print(f"\nEpoch {epoch + 1}: DKDWarmup sets the DKD warm-up factor to {value}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["dkd_warmup"] = float(keras.ops.convert_to_numpy(self.loss.warmup_factor))
