"""Soft-target distillation for binary / multi-label (sigmoid) outputs."""

from __future__ import annotations

import keras

from keras_kd.losses.base import DistillationLoss, make_temperature
from keras_kd.losses.functional import bernoulli_soft_target_kl


@keras.saving.register_keras_serializable(package="keras_kd")
class BinarySoftTargetDistillation(DistillationLoss):
    """Matches each softened sigmoid unit of the student to the teacher's.

    For binary classifiers (one sigmoid unit) and multi-label models (`C` independent sigmoid
    units). `SoftTargetDistillation` takes a softmax over the units, which is constant for a
    single unit (its loss is exactly 0); here every unit is its own Bernoulli distribution.
    It compares pre-sigmoid logits: the `Distiller`'s `LOGITS` tap undoes a final sigmoid
    found in the model's graph (see `keras_kd.features`), and `output_family()` is
    `"bernoulli"` so that probabilities declared with `teacher_output="probabilities"` are
    turned back into sigmoid logits.

    Args:
        temperature: softening temperature `T > 0`, stored in a non-trainable variable so
            `keras_kd.callbacks.TemperatureScheduler` can change it between steps.
        name: log key of this loss (default `binary_soft_target_distillation`).

    Returns (when called):
        `(batch,)` values `T^2 * sum_c KL(Bern(sigmoid(t_c/T)) || Bern(sigmoid(s_c/T)))`, or
        per-position values `(batch, steps)` / `(batch, H, W)` for sequence / dense outputs
        `(batch, ..., C)` (only the unit axis is summed; the `Distiller` averages positions
        with Keras's temporal sample-weight convention `sum(w * l) / (batch * positions)`).

    Raises:
        ValueError: for `temperature <= 0`, NaN or infinity.
        TypeError: for a temperature that is not a number.

    Example:
        >>> loss = BinarySoftTargetDistillation(temperature=2.0)
        >>> distiller = keras_kd.Distiller(teacher, student, distillation_losses=loss)

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015, applied
        per sigmoid unit. `T^2 * sum_c [p_c log(p_c/q_c) + (1-p_c) log((1-p_c)/(1-q_c))]`,
        `p = sigmoid(t/T)`, `q = sigmoid(s/T)`.
    """

    def __init__(self, temperature: float = 4.0, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = make_temperature(self, temperature)

    def output_family(self) -> str:
        return "bernoulli"

    def temperature_variable(self) -> keras.Variable:
        return self.temperature

    def call(self, teacher_features, student_features):
        return bernoulli_soft_target_kl(teacher_features[0], student_features[0], self.temperature)

    def get_config(self) -> dict:
        config = super().get_config()
        config["temperature"] = float(keras.ops.convert_to_numpy(self.temperature))
        return config
