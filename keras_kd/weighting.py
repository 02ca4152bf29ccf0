"""How several distillation paths are combined into one distillation loss.

`FixedWeighting` is what plain `distillation_loss_weights=[...]` builds. Learned weightings
(`keras_kd.UncertaintyWeighting`, ...) subclass `PathWeighting` and are passed in its place.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_kd import validation


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
        weights: one non-negative finite weight per distillation loss.

    Raises:
        TypeError / ValueError: for anything but a non-empty sequence of non-negative finite
            real numbers (see `keras_kd.validation.weights`).
    """

    def __init__(self, weights: Sequence[float], **kwargs):
        kwargs.pop("num_paths", None)
        weights = validation.weights("weights", weights)
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


@keras.saving.register_keras_serializable(package="keras_kd")
class UncertaintyWeighting(PathWeighting):
    """Learned path weights by homoscedastic uncertainty: `sum_i exp(-s_i) * d_i + s_i`.

    Each distillation path `i` gets a trainable log-variance `s_i` (optimized with the student).
    A path whose loss stays large is down-weighted (`exp(-s_i)` shrinks) while the `+ s_i` term
    keeps the weights from collapsing to zero. The effective weights `exp(-s_i)` are returned
    by `current_weights()` and logged by the `Distiller` each epoch as `<loss name>_weight`.

    Args:
        num_paths: number of distillation losses (one `s_i` each).
        initial_log_variance: initial `s_i` (0 gives every path weight 1).

    Example:
        >>> losses = [SoftTargetDistillation(), HintDistillation("t_mid", "s_mid")]
        >>> distiller = keras_kd.Distiller(
        ...     teacher, student, losses,
        ...     distillation_loss_weights=keras_kd.weighting.UncertaintyWeighting(2))

    Reference:
        Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for
        Scene Geometry and Semantics", CVPR 2018 (`L = sum_i exp(-s_i) L_i + s_i`,
        `s_i = log sigma_i^2`); applied to distillation paths as in Chennupati et al.,
        "Adaptive Distillation: Aggregating Knowledge from Multiple Paths for Efficient
        Distillation", BMVC 2021.
    """

    def __init__(self, num_paths: int, initial_log_variance: float = 0.0, **kwargs):
        num_paths = validation.positive_int(
            "num_paths", num_paths, hint="Pass the number of distillation losses."
        )
        initial_log_variance = validation.real_scalar("initial_log_variance", initial_log_variance)
        super().__init__(num_paths=num_paths, **kwargs)
        self.initial_log_variance = initial_log_variance
        self.log_variances = self.add_weight(
            shape=(num_paths,),
            initializer=keras.initializers.Constant(self.initial_log_variance),
            trainable=True,
            dtype="float32",
            name="log_variances",
        )

    def current_weights(self):
        return ops.exp(-self.log_variances)

    def call(self, path_losses):
        s = self.log_variances
        return ops.sum(path_losses * ops.exp(-s) + s, axis=-1)

    def get_config(self) -> dict:
        config = super().get_config()
        config["initial_log_variance"] = self.initial_log_variance
        return config
