"""Soft-target distillation (Hinton et al. 2015)."""

from __future__ import annotations

import keras

from keras_kd.losses.base import DistillationLoss, make_temperature
from keras_kd.losses.functional import soft_target_kl


@keras.saving.register_keras_serializable(package="keras_kd")
class SoftTargetDistillation(DistillationLoss):
    """Matches the student's softened class distribution to the teacher's.

    Args:
        temperature: softening temperature `T > 0`, stored in a non-trainable variable so
            `keras_kd.callbacks.TemperatureScheduler` can change it between steps.

    Returns (when called):
        `(batch,)` values `T^2 * KL(softmax(t/T) || softmax(s/T))`.

    Example:
        >>> loss = SoftTargetDistillation(temperature=4.0)
        >>> distiller = keras_kd.Distiller(teacher, student, distillation_losses=loss)

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
        `T^2 * KL(softmax(t/T) || softmax(s/T))`.
    """

    def __init__(self, temperature: float = 4.0, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.temperature = make_temperature(self, temperature)

    def temperature_variable(self) -> keras.Variable:
        return self.temperature

    def call(self, teacher_features, student_features):
        return soft_target_kl(teacher_features[0], student_features[0], self.temperature)

    def get_config(self) -> dict:
        config = super().get_config()
        config["temperature"] = float(keras.ops.convert_to_numpy(self.temperature))
        return config
