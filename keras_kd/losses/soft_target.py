"""Soft-target distillation (Hinton et al. 2015)."""

from __future__ import annotations

import keras

from keras_kd import validation
from keras_kd.losses.base import DistillationLoss, make_temperature
from keras_kd.losses.functional import soft_target_kl, standardize_logits


@keras.saving.register_keras_serializable(package="keras_kd")
class SoftTargetDistillation(DistillationLoss):
    """Matches the student's softened class distribution to the teacher's.

    Args:
        temperature: softening temperature `T > 0`, stored in a non-trainable variable so
            `keras_kd.callbacks.TemperatureScheduler` can change it between steps.
        logit_standardization: z-score each example's teacher and student logits over the
            classes before softening (`keras_kd.losses.functional.standardize_logits`; Sun et
            al., "Logit Standardization in Knowledge Distillation", CVPR 2024, whose recipes
            use a base temperature of 2 and a distillation weight of 9). Default `False`.

    Returns (when called):
        `(batch,)` values `T^2 * KL(softmax(t/T) || softmax(s/T))` (with `t`, `s` replaced by
        `Z(t)`, `Z(s)` under logit standardization). For sequence / dense outputs
        `(batch, ..., classes)` the values are per position, `(batch, steps)` /
        `(batch, H, W)`: only the class axis is reduced, and the `Distiller` averages positions
        with Keras's temporal sample-weight convention `sum(w * l) / (batch * positions)`.

    Example:
        >>> loss = SoftTargetDistillation(temperature=4.0)
        >>> distiller = keras_kd.Distiller(teacher, student, distillation_losses=loss)

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
        `T^2 * KL(softmax(t/T) || softmax(s/T))`.
    """

    def __init__(
        self,
        temperature: float = 4.0,
        logit_standardization: bool = False,
        name: str | None = None,
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.temperature = make_temperature(self, temperature)
        self.logit_standardization = validation.one_of(
            "logit_standardization", logit_standardization, (False, True)
        )

    def output_family(self) -> str:
        return "categorical"

    def temperature_variable(self) -> keras.Variable:
        return self.temperature

    def call(self, teacher_features, student_features):
        t, s = teacher_features[0], student_features[0]
        if self.logit_standardization:
            t, s = standardize_logits(t), standardize_logits(s)
        return soft_target_kl(t, s, self.temperature)

    def get_config(self) -> dict:
        config = super().get_config()
        config["temperature"] = float(keras.ops.convert_to_numpy(self.temperature))
        config["logit_standardization"] = self.logit_standardization
        return config
