"""How several distillation paths are combined into one distillation loss.

`FixedWeighting` is what plain `distillation_loss_weights=[...]` builds. Learned weightings
(`keras_kd.UncertaintyWeighting`, ...) subclass `PathWeighting` and are passed in its place.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops


class PathWeighting(keras.layers.Layer):
    """Combines per-example losses of several distillation paths into one per-example loss.

    Subclasses implement `call(path_losses)` for a `(batch, n_paths)` float32 tensor and return
    `(batch,)`, and `current_weights()` giving the effective weight of each path (logged).
    """

    def __init__(self, num_paths: int | None = None, **kwargs):
        kwargs.pop("dtype", None)
        super().__init__(dtype="float32", **kwargs)
        self.num_paths = num_paths

    def current_weights(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("dtype", None)
        config["num_paths"] = self.num_paths
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class FixedWeighting(PathWeighting):
    """`sum_i w_i * d_i` with weights in a non-trainable variable that callbacks may assign.

    Args:
        weights: one non-negative weight per distillation loss.
    """

    def __init__(self, weights: Sequence[float], **kwargs):
        kwargs.pop("num_paths", None)
        weights = [float(w) for w in weights]
        super().__init__(num_paths=len(weights), **kwargs)
        self.weights_variable = self.add_weight(
            shape=(len(weights),),
            initializer=keras.initializers.Constant(weights),
            trainable=False,
            dtype="float32",
            name="distillation_loss_weights",
        )

    def current_weights(self):
        return self.weights_variable

    def call(self, path_losses):
        return ops.sum(path_losses * self.weights_variable, axis=-1)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("num_paths", None)
        config["weights"] = [float(w) for w in ops.convert_to_numpy(self.weights_variable)]
        return config
